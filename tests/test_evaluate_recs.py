"""The offline recommendation evaluation: no leakage of the future, input formats, and the MovieLens target."""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from operators.recs.config import RecConfig
from operators.recs.recommender import Recommender
from personalize import evaluate_recs
from personalize.evaluate_recs import (
    EXIT_OK,
    EXIT_USAGE,
    LogEntry,
    PopularityScorer,
    RecommenderScorer,
    Scorer,
    evaluate,
    in_time_order,
    load_movielens100k,
    parse_time,
)
from personalize.settings import Settings, load

MOVIELENS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "movielens-100k"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load(environ={})


def run_cli(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    evaluate_recs.add_arguments(parser)
    return evaluate_recs.run(parser.parse_args(list(argv)), settings)


class Spy:
    """Records the order of calls and what the scorer could know when asked."""

    def __init__(self, calls: list[tuple[str, int, str]]) -> None:
        self.calls = calls
        self.learned: set[tuple[str, str]] = set()

    def recommend(self, entry: LogEntry, seen: Collection[str], k: int) -> list[str]:
        assert (entry.user, entry.item) not in self.learned and entry.item not in seen
        self.calls.append(("recommend", entry.ts, entry.item))
        return [entry.item]  # a perfect oracle, if it were ever asked after learning

    def learn(self, entry: LogEntry, positive: bool) -> None:
        self.calls.append(("learn", entry.ts, entry.item))
        self.learned.add((entry.user, entry.item))


def test_every_positive_is_scored_before_it_is_learned() -> None:
    log = [LogEntry(1, "u", "a", 5.0, ""), LogEntry(2, "u", "b", 2.0, ""), LogEntry(3, "v", "a", 4.0, ""),
           LogEntry(4, "u", "a", 5.0, "")]
    calls: list[tuple[str, int, str]] = []
    metrics, counts = evaluate(log, {"spy": Spy(calls)}, 10, 4.0)
    assert calls == [("recommend", 1, "a"), ("learn", 1, "a"), ("learn", 2, "b"),
                     ("recommend", 3, "a"), ("learn", 3, "a"), ("learn", 4, "a")]
    assert counts == {"interactions": 4, "positives": 2, "repeats": 1, "catalogue": 2}
    assert metrics["spy"].hits == 2  # the oracle is right, yet it only ever saw the past


def test_items_never_seen_before_cannot_be_hits() -> None:
    """Every interaction is a new item: only a scorer that learned the future could hit."""
    log = [LogEntry(ts, f"user{ts % 3}", f"item{ts}", None, "cat") for ts in range(60)]
    scorers: dict[str, Scorer] = {"recommender": RecommenderScorer(Recommender(RecConfig())),
                                  "popularity": PopularityScorer()}
    metrics, counts = evaluate(log, scorers, 10, 4.0)
    assert counts["positives"] == 60
    assert all(m.hits == 0 for m in metrics.values())


def test_recommender_hits_a_pattern_it_has_learned() -> None:
    log = []
    for index in range(20):  # everybody who takes the tent takes the stove next
        log += [LogEntry(2 * index, f"u{index}", "tent", None, "camping"),
                LogEntry(2 * index + 1, f"u{index}", "stove", None, "camping")]
    metrics, _ = evaluate(log, {"r": RecommenderScorer(Recommender(RecConfig()))}, 1, 4.0)
    assert metrics["r"].hits >= 18


@pytest.mark.parametrize("seed", range(3))
def test_popularity_scorer_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    scorer = PopularityScorer()
    counts: dict[str, int] = {}
    for step in range(3000):
        item = f"i{int(rng.paretovariate(1.1)) % 50}"
        seen = {f"i{rng.randrange(50)}" for _ in range(5)}
        top = scorer.recommend(LogEntry(step, "u", item, None, ""), seen, 10)
        ranked = [i for i, _ in sorted(counts.items(), key=lambda pair: -pair[1]) if i not in seen]
        assert [counts[i] for i in top] == [counts[i] for i in ranked[:10]]
        scorer.learn(LogEntry(step, "u", item, None, ""), True)
        counts[item] = counts.get(item, 0) + 1
    assert [scorer.count[i] for i in scorer.order] == sorted(counts.values(), reverse=True)


@pytest.mark.parametrize(("text", "ms"), [
    ("881250949", 881_250_949_000), ("881250949.5", 881_250_949_500), ("1767225600000", 1_767_225_600_000),
    ("2026-01-01T00:00:00Z", 1_767_225_600_000), ("2026-01-01T00:00:00", 1_767_225_600_000),
])
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text) == ms


def test_csv_evaluation_writes_a_report(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["who;what;when;stars;kind"]
    for index in range(30):
        rows += [f"u{index};tent;2026-01-01T00:{index:02d}:00Z;5;camping",
                 f"u{index};stove;2026-01-01T00:{index:02d}:30Z;{4 if index % 2 else 2};camping"]
    data = tmp_path / "log.csv"
    data.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")  # out of time order on purpose
    out = tmp_path / "report.json"
    code = run_cli(settings, "--interactions", str(data), "--format", "csv", "--delimiter", ";", "--user-col", "who",
                   "--item-col", "what", "--time-col", "when", "--rating-col", "stars", "--category-col", "kind",
                   "--json", str(out), "--limit", "40")
    assert code == EXIT_OK
    report: dict[str, Any] = json.loads(out.read_text())
    assert report["interactions"] == 40 and report["catalogue"] == 2
    assert report["positives"] == 20 + 10  # every tent, the odd users' stoves
    recommender = report["methods"]["recommender"]
    assert set(recommender) >= {"hit_rate@10", "ndcg@10", "coverage", "events_per_s", "seconds"}
    assert recommender["hits"] >= 9  # after the first user, a liked stove follows the tent
    assert "HitRate@10" in capsys.readouterr().out


def test_csv_without_ratings_counts_every_interaction(tmp_path: Path, settings: Settings) -> None:
    data = tmp_path / "log.csv"
    data.write_text("user,item,timestamp\na,x,1\nb,x,2\nb,y,3\n")
    out = tmp_path / "report.json"
    assert run_cli(settings, "--interactions", str(data), "--json", str(out)) == EXIT_OK
    assert json.loads(out.read_text())["positives"] == 3


@pytest.mark.parametrize(("content", "argv", "message"), [
    (None, [], "no such file"),
    ("user,item,timestamp\n", ["--rating-col", "stars"], "no column stars"),
    ("user,item,timestamp\na,x,yesterday\n", [], "log.csv:2"),
    ("user,item,timestamp,rating\na,x,1,good\n", ["--rating-col", "rating"], "log.csv:2"),
])
def test_usage_errors_exit_2(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str],
                             content: str | None, argv: list[str], message: str) -> None:
    data = tmp_path / "log.csv"
    if content is not None:
        data.write_text(content)
    assert run_cli(settings, "--interactions", str(data), *argv) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_movielens_loader_takes_the_first_genre(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t5\t200\n2\t11\t3\t100\n")
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (tmp_path / "u.item").write_bytes("10|Caf\xe9 (1995)|01-Jan-1995||url|0|0|1\n11|B|x||u|0|1|1\n".encode("latin-1"))
    entries = in_time_order(load_movielens100k(tmp_path), None)
    assert entries == [LogEntry(100_000, "2", "11", 3.0, "Action"), LogEntry(200_000, "1", "10", 5.0, "Comedy")]


def test_movielens_100k_meets_the_target(tmp_path: Path, settings: Settings) -> None:
    if not (MOVIELENS / "u.data").is_file():
        pytest.skip(f"MovieLens-100K is not at {MOVIELENS} (download ml-100k from grouplens.org and unpack it there)")
    out = tmp_path / "ml.json"
    code = run_cli(settings, "--interactions", str(MOVIELENS / "u.data"), "--format", "movielens100k",
                   "--json", str(out))
    assert code == EXIT_OK
    report = json.loads(out.read_text())
    recommender, popularity = report["methods"]["recommender"], report["methods"]["popularity"]
    assert report["interactions"] == 100_000 and report["catalogue"] == 1682
    assert recommender["hit_rate@10"] >= 0.20
    assert recommender["hit_rate@10"] >= 2 * popularity["hit_rate@10"]
    assert recommender["coverage"] > popularity["coverage"]

"""The offline recommendation evaluation: no leakage of the future, input formats, and the MovieLens target."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from operators.recs.config import RecConfig, rec_config
from operators.recs.recommender import Recommender
from personalize import evaluate_recs
from personalize.evaluate_recs import (
    EXIT_OK,
    EXIT_USAGE,
    ItemKnnScorer,
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
    assert counts == {"interactions": 4, "positives": 2, "repeats": 1, "cold_start": 2, "catalogue": 2}
    assert metrics["spy"].hits == 2  # the oracle is right, yet it only ever saw the past


def test_items_never_seen_before_cannot_be_hits() -> None:
    """Every interaction is a new item: only a scorer that learned the future could hit."""
    log = [LogEntry(ts, f"user{ts % 3}", f"item{ts}", None, "cat") for ts in range(60)]
    scorers: dict[str, Scorer] = {"recommender": RecommenderScorer(Recommender(RecConfig())),
                                  "popularity": PopularityScorer(), "item-knn": ItemKnnScorer()}
    metrics, counts = evaluate(log, scorers, 10, 4.0)
    assert counts["positives"] == 60
    assert all(m.hits == 0 for m in metrics.values())


def test_recommender_and_item_knn_hit_a_pattern_they_have_learned() -> None:
    log = []
    for index in range(20):  # everybody who takes the tent takes the stove next
        log += [LogEntry(2 * index, f"u{index}", "tent", None, "camping"),
                LogEntry(2 * index + 1, f"u{index}", "stove", None, "camping")]
    metrics, counts = evaluate(log, {"r": RecommenderScorer(Recommender(RecConfig())), "knn": ItemKnnScorer()}, 1, 4.0)
    assert metrics["r"].hits >= 18 and metrics["knn"].hits >= 18
    assert counts["cold_start"] == 20 and metrics["r"].cold_hits == 0  # the tent is every user's first


def test_item_knn_weighs_pairs_by_distance_and_queries_newest_first() -> None:
    knn = ItemKnnScorer(window=3)
    for ts, item in enumerate(["a", "b", "c", "d"]):
        knn.learn(LogEntry(ts, "u", item, None, ""), True)
    assert knn.together("d") == {"c": 1.0, "b": 0.5, "a": pytest.approx(1 / 3)}
    assert "a" not in knn.together("a")
    for ts, item in enumerate(["e", "x", "a"]):  # e is 2 steps before a here, as b is for u's d
        knn.learn(LogEntry(10 + ts, "v", item, None, ""), True)
    assert knn.recommend(LogEntry(20, "w", "?", None, ""), (), 3) == []  # nothing known of w
    knn.learn(LogEntry(21, "w", "a", None, ""), True)
    knn.learn(LogEntry(22, "w", "d", None, ""), True)  # the newest: its neighbours weigh most
    assert knn.recommend(LogEntry(23, "w", "?", None, ""), {"a", "d", "x"}, 3) == ["c", "b", "e"]


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
    assert run_cli(settings, "--interactions", str(data), "--implicit", "--json", str(out)) == EXIT_OK
    assert json.loads(out.read_text())["positives"] == 3


def test_movielens_csv_column_names_work_without_flags(tmp_path: Path, settings: Settings) -> None:
    data = tmp_path / "ratings.csv"
    data.write_text("userId,movieId,rating,timestamp\n1,10,5.0,964982703\n2,10,1.0,964982704\n2,11,4.5,964982705\n")
    out = tmp_path / "report.json"
    assert run_cli(settings, "--interactions", str(data), "--json", str(out)) == EXIT_OK
    report = json.loads(out.read_text())
    assert (report["interactions"], report["positives"], report["cold_start"]) == (3, 2, 1)  # 1.0 is no positive
    assert set(report["methods"]) == {"recommender", "popularity", "item-knn"}


@pytest.mark.parametrize(("content", "argv", "message"), [
    (None, [], "no such file"),
    ("user,item,timestamp\n", ["--rating-col", "stars"], "no rating column 'stars'"),
    ("user,item,timestamp,stars\na,x,1,5\n", [], "no rating column 'rating': name it with --rating-col"),
    ("user,item,timestamp\n", ["--implicit", "--item-col", "sku"], "no column sku"),
    ("user,item,timestamp\na,x,yesterday\n", ["--implicit"], "log.csv:2"),
    ("user,item,timestamp,rating\na,x,1,good\n", ["--rating-col", "rating"], "log.csv:2"),
])
def test_usage_errors_exit_2(tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str],
                             content: str | None, argv: list[str], message: str) -> None:
    data = tmp_path / "log.csv"
    if content is not None:
        data.write_text(content)
    assert run_cli(settings, "--interactions", str(data), *argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1  # one line


def test_movielens_loader_takes_the_first_genre(tmp_path: Path) -> None:
    (tmp_path / "u.data").write_text("1\t10\t5\t200\n2\t11\t3\t100\n")
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    (tmp_path / "u.item").write_bytes("10|Caf\xe9 (1995)|01-Jan-1995||url|0|0|1\n11|B|x||u|0|1|1\n".encode("latin-1"))
    entries = in_time_order(load_movielens100k(tmp_path), None)
    assert entries == [LogEntry(100_000, "2", "11", 3.0, "Action"), LogEntry(200_000, "1", "10", 5.0, "Comedy")]


def needs_movielens() -> Path:
    if not (MOVIELENS / "u.data").is_file():
        pytest.skip(f"MovieLens-100K is not at {MOVIELENS} (download ml-100k from grouplens.org and unpack it there)")
    return MOVIELENS


@pytest.fixture(scope="module")
def movielens_report(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("ml") / "ml.json"
    code = run_cli(settings, "--interactions", str(needs_movielens() / "u.data"), "--format", "movielens100k",
                   "--json", str(out))
    assert code == EXIT_OK
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_movielens_100k_meets_the_target(movielens_report: dict[str, Any]) -> None:
    report = movielens_report
    methods = report["methods"]
    recommender, popularity, knn = methods["recommender"], methods["popularity"], methods["item-knn"]
    assert report["interactions"] == 100_000 and report["catalogue"] == 1682
    assert recommender["hit_rate@10"] >= 0.20
    assert recommender["hit_rate@10"] >= 2 * popularity["hit_rate@10"]
    assert recommender["hit_rate@10"] >= knn["hit_rate@10"]
    assert recommender["coverage"] > popularity["coverage"]
    assert 0 < report["cold_start"] < report["positives"]
    assert knn["hit_rate@10_cold"] == 0.0 < recommender["hit_rate@10_cold"]  # trending serves the first visit


def test_movielens_100k_does_not_depend_on_its_time_scale(movielens_report: dict[str, Any],
                                                          settings: Settings) -> None:
    """Every timestamp x40 (a log spanning decades instead of months) scores within 0.01 of the original."""
    scaled = [entry._replace(ts=entry.ts * 40) for entry in load_movielens100k(needs_movielens())]
    config = rec_config(dataclasses.asdict(settings.recommendations))
    metrics, _ = evaluate(in_time_order(scaled, None), {"r": RecommenderScorer(Recommender(config))}, 10, 4.0)
    unscaled = movielens_report["methods"]["recommender"]["hit_rate@10"]
    assert abs(metrics["r"].report(100_000, 1682)["hit_rate@10"] - unscaled) <= 0.01

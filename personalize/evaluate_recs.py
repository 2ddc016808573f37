"""Replay an interaction log through the job's recommender, without Flink, and measure it prequentially.

Interactions are replayed in time order. For every positive interaction (rating >= --positive-rating
when the log has ratings, every interaction otherwise) whose item the user has not interacted with
before, the user's top-k among items they have not interacted with is computed BEFORE the
interaction is learned: HitRate@k is the share of such interactions whose item is in that list,
NDCG@k weighs a hit at rank r by 1 / log2(r + 1), coverage is the share of the log's items ever
recommended. Every interaction is then learned: a positive one as a purchase, any other as a
product view (without ratings, every interaction is a product view). A global popularity baseline
(all interactions counted, no decay) is measured on the same replay.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from operators.events import Event
from operators.recs.config import rec_config
from operators.recs.recommender import Recommender
from operators.recs.user import UserRecState
from personalize.settings import Settings

HELP = "replay interactions in time order: recommender vs popularity HitRate@10, NDCG@10, coverage"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
FORMATS = ("movielens100k", "csv")
#: Epoch values below this are seconds, from it on milliseconds (1e11 s is the year 5138, 1e11 ms 1973).
MS_EPOCH_FROM = 100_000_000_000


class UsageError(ValueError):
    """The input cannot be read as asked (missing file, unknown column, unparseable value)."""


class LogEntry(NamedTuple):
    ts: int
    """Epoch milliseconds."""
    user: str
    item: str
    rating: float | None
    category: str


class Scorer(Protocol):
    """A method under evaluation: recommend from what it has learned so far, then learn."""

    def recommend(self, entry: LogEntry, seen: Collection[str], k: int) -> list[str]: ...

    def learn(self, entry: LogEntry, positive: bool) -> None: ...


class RecommenderScorer:
    """The job's :class:`Recommender` with one :class:`UserRecState` per user of the log."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender
        self.users: dict[str, UserRecState] = {}
        self.learned = 0

    def recommend(self, entry: LogEntry, seen: Collection[str], k: int) -> list[str]:
        user = self.users.get(entry.user)
        if user is None:  # a first interaction: rank for a fresh state, remember nothing yet
            user = UserRecState()
        return self.recommender.rank(user, (), entry.ts, k, exclude=seen).item_ids()

    def learn(self, entry: LogEntry, positive: bool) -> None:
        user = self.users.setdefault(entry.user, UserRecState())
        event_type = "purchase" if positive and entry.rating is not None else "product_view"
        self.learned += 1
        self.recommender.observe(user, Event(str(self.learned), event_type, entry.user, entry.user, "", entry.ts,
                                             entry.item, entry.category, 0.0, 1, "", ""))


class PopularityScorer:
    """All-time interaction counts, kept sorted by O(1) swaps so a top-k of unseen items is cheap."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.position: dict[str, int] = {}
        self.count: dict[str, int] = {}
        self.first: dict[int, int] = {}
        """Index of the first item in :attr:`order` with a given count."""

    def recommend(self, entry: LogEntry, seen: Collection[str], k: int) -> list[str]:
        top: list[str] = []
        for item in self.order:
            if item not in seen:
                top.append(item)
                if len(top) == k:
                    break
        return top

    def learn(self, entry: LogEntry, positive: bool) -> None:
        item, order, position, count, first = entry.item, self.order, self.position, self.count, self.first
        if item not in position:
            position[item], count[item] = len(order), 0
            first.setdefault(0, len(order))
            order.append(item)
        old = count[item]
        here, head = position[item], first[old]
        order[here], order[head] = order[head], item  # move to the front of its count's run, then promote
        position[order[here]], position[item] = here, head
        if head + 1 < len(order) and count[order[head + 1]] == old:
            first[old] = head + 1
        else:
            del first[old]
        count[item] = old + 1
        first.setdefault(old + 1, head)


@dataclasses.dataclass
class Metrics:
    k: int
    scored: int = 0
    hits: int = 0
    ndcg: float = 0.0
    seconds: float = 0.0
    recommended: set[str] = dataclasses.field(default_factory=set)

    def record(self, top: list[str], item: str) -> None:
        self.scored += 1
        self.recommended.update(top)
        if item in top:
            self.hits += 1
            self.ndcg += 1.0 / math.log2(top.index(item) + 2)

    def report(self, interactions: int, catalogue: int) -> dict[str, Any]:
        return {
            f"hit_rate@{self.k}": round(self.hits / self.scored, 4) if self.scored else 0.0,
            f"ndcg@{self.k}": round(self.ndcg / self.scored, 4) if self.scored else 0.0,
            "coverage": round(len(self.recommended) / catalogue, 4) if catalogue else 0.0,
            "hits": self.hits,
            "events_per_s": round(interactions / self.seconds) if self.seconds else None,
            "seconds": round(self.seconds, 2),
        }


def evaluate(log: Iterable[LogEntry], scorers: Mapping[str, Scorer], k: int,
             positive_rating: float) -> tuple[dict[str, Metrics], dict[str, int]]:
    """The prequential loop: score each new positive interaction with every scorer, then let all learn it."""
    metrics = {name: Metrics(k) for name in scorers}
    seen: dict[str, set[str]] = {}
    counts = {"interactions": 0, "positives": 0, "repeats": 0}
    items: set[str] = set()
    clock = time.perf_counter
    for entry in log:
        counts["interactions"] += 1
        items.add(entry.item)
        user_seen = seen.setdefault(entry.user, set())
        positive = entry.rating is None or entry.rating >= positive_rating
        if positive and entry.item in user_seen:
            counts["repeats"] += 1  # not a prediction of something new: not scored
        elif positive:
            counts["positives"] += 1
            for name, scorer in scorers.items():
                started = clock()
                metrics[name].record(scorer.recommend(entry, user_seen, k), entry.item)
                metrics[name].seconds += clock() - started
        for name, scorer in scorers.items():
            started = clock()
            scorer.learn(entry, positive)
            metrics[name].seconds += clock() - started
        user_seen.add(entry.item)
    counts["catalogue"] = len(items)
    return metrics, counts


def parse_time(text: str) -> int:
    """Epoch seconds or milliseconds (by magnitude), or ISO-8601 (UTC when it names no zone), to ms."""
    try:
        value = float(text)
    except ValueError:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp() * 1000)
    return int(value if abs(value) >= MS_EPOCH_FROM else value * 1000)


def load_movielens100k(path: Path) -> list[LogEntry]:
    """``u.data`` (user, item, rating, unix seconds; tab separated); categories from ``u.item`` beside it."""
    data = path / "u.data" if path.is_dir() else path
    if not data.is_file():
        raise UsageError(f"{data}: no such file")
    categories = _movielens_genres(data.parent)
    entries = []
    with data.open(encoding="latin-1") as handle:
        for line_number, line in enumerate(handle, 1):
            fields = line.split("\t")
            if len(fields) != 4:
                raise UsageError(f"{data}:{line_number}: expected 4 tab-separated fields, got {len(fields)}")
            user, item, rating, ts = fields
            try:
                entries.append(LogEntry(int(ts) * 1000, user, item, float(rating), categories.get(item, "")))
            except ValueError as exc:
                raise UsageError(f"{data}:{line_number}: {exc}") from None
    return entries


def _movielens_genres(directory: Path) -> dict[str, str]:
    """Item -> first genre flagged in ``u.item`` (names from ``u.genre``); empty without ``u.item``."""
    items = directory / "u.item"
    if not items.is_file():
        return {}
    genre_file = directory / "u.genre"
    names = {}
    if genre_file.is_file():
        for line in genre_file.read_text(encoding="latin-1").splitlines():
            if "|" in line:
                name, index = line.rsplit("|", 1)
                names[int(index)] = name
    categories = {}
    for line in items.read_text(encoding="latin-1").splitlines():
        fields = line.split("|")
        flags = fields[5:]
        first = next((index for index, flag in enumerate(flags) if flag.strip() == "1"), None)
        if first is not None:
            categories[fields[0]] = names.get(first, f"genre-{first}")
    return categories


def load_csv(path: Path, user_col: str, item_col: str, time_col: str, rating_col: str | None,
             category_col: str | None, delimiter: str) -> list[LogEntry]:
    """A CSV file with a header row; the named columns (ratings and categories optional)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        wanted = [c for c in (user_col, item_col, time_col, rating_col, category_col) if c]
        missing = [column for column in wanted if column not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{path}: no column {', '.join(missing)} (columns: {', '.join(reader.fieldnames or [])})")
        entries = []
        for line_number, row in enumerate(reader, 2):
            try:
                rating = float(row[rating_col]) if rating_col else None
                entries.append(LogEntry(parse_time(row[time_col]), row[user_col], row[item_col], rating,
                                        row[category_col] if category_col else ""))
            except (TypeError, ValueError) as exc:
                raise UsageError(f"{path}:{line_number}: {exc}") from None
    return entries


def in_time_order(entries: list[LogEntry], limit: int | None) -> list[LogEntry]:
    """Stable by time: simultaneous interactions keep the file's order. ``limit`` keeps the earliest."""
    ordered = sorted(entries, key=lambda entry: entry.ts)
    return ordered[:limit] if limit is not None else ordered


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--interactions", required=True, help="u.data (or its directory) or a CSV file")
    parser.add_argument("--format", choices=FORMATS, default="csv", help="input format (default: csv)")
    parser.add_argument("--user-col", default="user", help="CSV column of the user id (default: user)")
    parser.add_argument("--item-col", default="item", help="CSV column of the item id (default: item)")
    parser.add_argument("--time-col", default="timestamp",
                        help="CSV column of the time: epoch s or ms, or ISO-8601 (default: timestamp)")
    parser.add_argument("--rating-col", help="CSV column of a rating (default: none, every interaction is positive)")
    parser.add_argument("--category-col", help="CSV column of the item's category (default: none)")
    parser.add_argument("--delimiter", default=",", help="CSV delimiter (default: ,)")
    parser.add_argument("--positive-rating", type=float, default=4.0,
                        help="ratings from this value on are positive (default: 4)")
    parser.add_argument("-k", type=int, default=10, help="list length scored (default: 10)")
    parser.add_argument("--limit", type=int, help="replay only the earliest N interactions")
    parser.add_argument("--json", help="write the report as JSON to this file")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.k < 1 or (args.limit is not None and args.limit < 1):
        print("personalize evaluate recs: -k and --limit must be positive", file=sys.stderr)
        return EXIT_USAGE
    path = Path(args.interactions)
    try:
        if args.format == "movielens100k":
            entries = load_movielens100k(path)
        else:
            entries = load_csv(path, args.user_col, args.item_col, args.time_col, args.rating_col,
                               args.category_col, args.delimiter)
    except UsageError as exc:
        print(f"personalize evaluate recs: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log = in_time_order(entries, args.limit)
    config = rec_config(dataclasses.asdict(settings.recommendations))
    scorers: dict[str, Scorer] = {"recommender": RecommenderScorer(Recommender(config)),
                                  "popularity": PopularityScorer()}
    started = time.perf_counter()
    metrics, counts = evaluate(log, scorers, args.k, args.positive_rating)
    report = {
        "input": str(path), "format": args.format, "k": args.k, "positive_rating": args.positive_rating,
        **counts, "seconds": round(time.perf_counter() - started, 2),
        "methods": {name: m.report(counts["interactions"], counts["catalogue"]) for name, m in metrics.items()},
        "config": dataclasses.asdict(config),
    }
    print(format_table(report))
    if args.json:
        try:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        except OSError as exc:
            print(f"personalize evaluate recs: cannot write {args.json}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK


def format_table(report: Mapping[str, Any]) -> str:
    k = report["k"]
    lines = [f"{report['input']}: {report['positives']:,} positives scored of {report['interactions']:,} interactions, "
             f"{report['catalogue']:,} items, {report['seconds']:.1f} s"]
    lines.append(f"{'method':<12} {'HitRate@' + str(k):>11} {'NDCG@' + str(k):>9} {'coverage':>9} {'events/s':>9}")
    for name, values in report["methods"].items():
        lines.append(f"{name:<12} {values[f'hit_rate@{k}']:>11.4f} {values[f'ndcg@{k}']:>9.4f} "
                     f"{values['coverage']:>9.4f} {values['events_per_s'] or 0:>9,}")
    return "\n".join(lines)

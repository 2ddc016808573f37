"""Offline check of the experiment logic with a known answer: ``personalize experiments report``.

The generator plants an effect (``EventGenerator(buyers=...)``): users in an arm whose treatment is
``personalized`` are ``--lift`` times as likely to buy at all as users of the other arms (the rest browse
alike but never add to a cart), so a personalized arm's share of converted users and its revenue per
exposed user are ``--lift`` times the control's in expectation. The replay drives the job's pure experiment
logic (operators/experiments) over the generated events in emission order, after validation and
deduplication: every user is assigned by the keyed hash, every session start counts as "a list was
emitted" (an exposure; for a ``none`` arm the shadow list), and clicks, carts, purchases and identity
merges are attributed in event time. The list is the same for every arm, the stream's most viewed items
(a static popularity list): this checks the measurement (assignment, attribution, counters, statistics
recover a lift planted in the users), not the recommender, which ``personalize evaluate recs`` measures
(docs/experiments.md#the-offline-check).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TextIO

from connectors.redis_client import connect
from connectors.redis_keys import experiment_metrics_key
from operators.events import Event
from operators.experiments.assignment import assign
from operators.experiments.attribution import Bounds, Counts, ExperimentState
from operators.experiments.config import Experiment, ExperimentError, parse_experiment, parse_experiments
from operators.experiments.stats import ArmMetrics, arm_metrics, metrics_record
from operators.validation import Rejection, parse_event
from personalize.generator import EventGenerator
from personalize.settings import ExperimentSettings, GeneratorSettings, Settings, SettingsError

HELP = "replay generated events through the experiment logic: per-arm table, planted lift recovered?"
OFFLINE_SECRET = b"personalize offline experiment replay"
"""The replay's assignment key: fixed, so a report is reproducible (the job uses its own secret)."""


def demo_experiment(aa: bool = False) -> Experiment:
    """Popularity-only control against personalized lists, 50/50; ``aa``: two identical personalized arms."""
    second = "b" if aa else "recs"
    return parse_experiment({
        "id": "offline-aa" if aa else "offline-ab", "control": "a" if aa else "control", "conversion_window": "24h",
        "arms": [{"id": "a" if aa else "control", "weight": 1, "treatment": "personalized" if aa else "popularity"},
                 {"id": second, "weight": 1, "treatment": "personalized"}]})


def bounds_of(settings: ExperimentSettings) -> Bounds:
    return Bounds(settings.max_exposures, settings.max_items, settings.lateness_ms)


def buyer_share(experiment: Experiment, arm_id: str, lift: float) -> float:
    """The planted probability that a user of the arm buys at all: personalized arms ``lift`` times the others."""
    personalized = experiment.arm(arm_id).treatment == "personalized"  # type: ignore[union-attr]
    return min(1.0, lift) if personalized else min(1.0, 1 / lift)


def planted_lift(experiment: Experiment, arm_id: str, lift: float) -> float:
    """The known answer: the arm's converted-user rate over the control's, minus 1, in expectation."""
    return buyer_share(experiment, arm_id, lift) / buyer_share(experiment, experiment.control, lift) - 1


@dataclass(frozen=True)
class Report:
    experiment: Experiment
    lift: float
    """The planted factor on personalized arms' add-to-cart probability."""
    metrics: list[ArmMetrics]
    events: int
    list_items: tuple[str, ...]
    confidence: float


def _events(generator: EventGenerator) -> Iterator[Event]:
    """Valid, first-seen events in emission order (what the job's validation and deduplication let through)."""
    seen: set[str] = set()
    for record in generator.records():
        event = parse_event(record.value, record.ts)
        if not isinstance(event, Rejection) and event.event_id not in seen:
            seen.add(event.event_id)
            yield event


def replay(generator_settings: GeneratorSettings, experiment: Experiment, lift: float, bounds: Bounds,
           list_size: int = 20, confidence: float = 0.95) -> Report:
    def buyers(user_key: str) -> float:
        return buyer_share(experiment, assign(OFFLINE_SECRET, experiment, user_key), lift)

    events = list(_events(EventGenerator(generator_settings, buyers=buyers)))
    views = Counter(e.item_id for e in events if e.type == "product_view")
    shown = tuple(item for item, _ in views.most_common(list_size))
    active = {experiment.id: experiment}
    states: dict[str, ExperimentState] = defaultdict(ExperimentState)
    sessions: dict[str, str] = {}
    counts: dict[str, Counts] = defaultdict(Counts)
    for event in events:
        state = states[event.user_key]
        deltas = []
        if event.type == "identify" and (visitor := states.pop("anon:" + event.anonymous_id, None)):
            deltas += state.merge(visitor, bounds)
        if event.session_id and sessions.get(event.user_key) != event.session_id:
            sessions[event.user_key] = event.session_id
            deltas += state.expose([experiment], event.user_key, OFFLINE_SECRET, event.ts, shown, bounds)
        deltas += state.on_event(event, active, OFFLINE_SECRET, bounds)
        for _, arm, delta in deltas:
            counts[arm] += delta
    return Report(experiment, lift, arm_metrics(experiment, counts, confidence), len(events), shown, confidence)


def _pct(value: float | None, signed: bool = False) -> str:
    return "-" if value is None else f"{value:+.1%}" if signed else f"{value:.2%}"


def _range(interval: list[float] | None, spec: str) -> str:
    return "-" if interval is None else f"[{interval[0]:{spec}}, {interval[1]:{spec}}]"


def print_arms(record: dict[str, Any], treatments: Mapping[str, str], out: TextIO,
               planted: Callable[[str], float] | None = None) -> None:
    """One row per arm of an ``experiments.metrics`` record; ``planted``: the known lift of each arm (offline)."""
    header = (f"{'arm':<14}{'treatment':<13}{'exposed':>8}{'exposures':>10}{'clicks':>8}{'conv.':>7}{'conv. users':>12}"
              f"{'revenue':>11}{'conv. rate':>11}{'rate CI':>18}{'rev/user':>9}{'lift':>8}{'lift CI':>18}"
              f"{'p':>7}{'rev. diff CI':>18}")
    print(header + (f"{'planted':>9}{'in CI':>6}" if planted else ""), file=out)
    for arm in record["arms"]:
        v = arm["versus_control"]
        lift_ci = v["relative_lift_ci"] if v else None
        p_value = f"{v['p_value']:.3f}" if v and v["p_value"] is not None else "-"
        row = (f"{arm['arm']:<14}{treatments.get(arm['arm'], '?'):<13}{arm['exposed_users']:>8,}"
               f"{arm['exposures']:>10,}{arm['clicks']:>8,}{arm['conversions']:>7,}{arm['converted_users']:>12,}"
               f"{arm['revenue']:>11,.2f}{_pct(arm['conversion_rate']):>11}"
               f"{_range(arm['conversion_rate_ci'], '.1%'):>18}{(arm['revenue_per_user'] or 0):>9.2f}"
               f"{_pct(v['relative_lift'] if v else None, True):>8}{_range(lift_ci, '+.1%'):>18}"
               f"{p_value:>7}"
               f"{_range(v['revenue_difference_ci'] if v else None, '+.2f'):>18}")
        if planted:
            known = planted(arm["arm"])
            recovered = "-" if not lift_ci else "yes" if lift_ci[0] <= known <= lift_ci[1] else "NO"
            row += f"{_pct(known if v else None, True):>9}{recovered:>6}"
        print(row, file=out)


def print_report(report: Report, out: TextIO) -> None:
    experiment = report.experiment
    print(f"experiment {experiment.id} (control: {experiment.control}), {report.events:,} events replayed, "
          f"personalized arms planted to buy x{report.lift:g} as often, list of {len(report.list_items)} items, "
          f"intervals at {report.confidence:.0%}", file=out)
    print_arms(metrics_record(experiment, report.metrics, 0, report.confidence),
               {arm.id: arm.treatment for arm in experiment.arms}, out,
               lambda arm: planted_lift(experiment, arm, report.lift))


def print_live(settings: Settings, out: TextIO) -> int:
    """What the running job published: each experiment's latest metrics record in Redis."""
    client = connect(settings.redis, decode_responses=True)
    configured = {e.id: e for e in parse_experiments(list(settings.experiments.definitions))}
    keys = sorted(client.scan_iter(experiment_metrics_key(settings.redis.key_prefix, "*"), count=100))
    if not keys:
        print(f"no experiment metrics in Redis at {settings.redis.url} under {settings.redis.key_prefix!r} yet "
              f"(no experiment runs, or nobody was exposed)", file=out)
        return 0
    for key in keys:
        record = json.loads(client.get(key))  # type: ignore[arg-type]
        definition = configured.get(record["experiment_id"])
        print(f"experiment {record['experiment_id']} v{record['experiment_version']} (control: "
              f"{record['control']}), counts complete up to event time {record['event_time']}, intervals at "
              f"{record['confidence']:.0%}", file=out)
        print_arms(record, {arm.id: arm.treatment for arm in definition.arms} if definition else {}, out)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, help="generated records (default: generator.events)")
    parser.add_argument("--users", type=int, help="generated users (default: generator.users)")
    parser.add_argument("--seed", type=int, help="generator seed (default: generator.seed)")
    parser.add_argument("--lift", type=float, default=1.5,
                        help="planted factor on the add-to-cart probability of users in personalized arms (1.5)")
    parser.add_argument("--aa", action="store_true", help="an A/A test: two identical arms (no lift can show)")
    parser.add_argument("--experiment", help="replay this configured experiment (experiments.definitions) instead "
                                             "of the built-in popularity-vs-personalized one")
    parser.add_argument("--list-size", type=int, default=20, help="items in the simulated list (20)")
    parser.add_argument("--live", action="store_true",
                        help="instead of a replay: the running job's metrics of every experiment, from Redis")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.live:
        return print_live(settings, sys.stdout)
    if args.lift <= 0 or args.list_size < 1:
        raise SettingsError("--lift must be positive and --list-size at least 1")
    experiment = demo_experiment(args.aa)
    if args.experiment:
        try:
            configured = {e.id: e for e in parse_experiments(list(settings.experiments.definitions))}
        except ExperimentError as exc:
            raise SettingsError(str(exc)) from None
        if args.experiment not in configured:
            raise SettingsError(f"--experiment: {args.experiment!r} is not in experiments.definitions "
                                f"(configured: {sorted(configured) or 'none'})")
        experiment = configured[args.experiment]
    generator = replace(settings.generator, **{
        name: value for name, value in (("events", args.events), ("users", args.users), ("seed", args.seed))
        if value is not None})
    report = replay(generator, experiment, args.lift, bounds_of(settings.experiments), args.list_size,
                    settings.experiments.confidence)
    print_report(report, sys.stdout)
    return 0

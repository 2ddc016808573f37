"""Evaluate the online segment models on a seeded generated stream or labelled events, without Flink.

Runs the job's pure logic in event-time order: parse_event -> dedup/profile -> FeatureOperator
(with session timers) -> the model trainer, snapshots, scorer, hysteresis and delayed intent
labels. Reports the adjusted Rand index between each user's latest published cluster (after a
warm-up) and the persona (planted by the generator or given by a labels file), progressive-validation
ROC AUC and log loss of purchase intent, and learning cost; compares the candidate clusterers on the
same stream. Users who have events but were never scored are reported and, in a second ARI, counted
as a cluster of their own.
"""

from __future__ import annotations

import argparse
import heapq
import sys
import time
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from river import metrics

from operators.events import Event, user_key_of
from operators.features.operator import FeatureOperator, FeatureVector, UserFeatures
from operators.features.rfm import LocalPopulation
from operators.models.clustering import CLUSTERERS, Assignment
from operators.models.config import ModelConfig
from operators.models.drift import DriftEvent
from operators.models.inputs import behaviour_input, intent_example, intent_input, intent_values
from operators.models.intent import IntentLabeler, Labelled, PendingExamples
from operators.models.membership import Membership, MembershipPolicy, update_membership
from operators.models.training import ModelScorer, ModelSnapshot, ModelTrainer, learns_from
from operators.profile import ProfileOperator, UserProfile
from operators.validation import Limits, parse_event
from personalize.generator import PERSONA_MIXES, EventGenerator
from personalize.labelled_events import InputError, load_events, load_labels
from personalize.paths import write_json_report
from personalize.settings import ModelSettings, Settings
from state.signing import canonical

HELP = "online clusters vs planted personas (ARI), purchase-intent AUC and log loss, learning cost"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
TARGET_ARI = 0.7
TARGET_AUC = 0.8
DEFAULT_EVENTS = 100_000
DEFAULT_USERS = 600
DEFAULT_WARMUP = 0.3
UNSCORED = -1
"""The cluster of users who have events but no scoring after the warm-up, in ``ari_with_unscored``."""


def model_config(models: ModelSettings) -> ModelConfig:
    """The ``models`` settings section: the fields of :class:`ModelConfig` plus the job's ``enabled``."""
    return ModelConfig(**{name: value for name, value in vars(models).items() if name != "enabled"})


class LabelledStream(NamedTuple):
    events: list[Event]
    """Valid events, in any order."""
    personas: dict[str, str]
    """User (``user_id``, or the key of a visitor who never identified) -> persona."""


def limits_of(settings: Settings) -> Limits:
    validation = settings.validation
    return Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)


def generated_stream(settings: Settings, mix: str = "default") -> LabelledStream:
    """The generator's valid events with their planted personas (``mix``: a name of ``PERSONA_MIXES``)."""
    generator = EventGenerator(settings.generator, PERSONA_MIXES[mix])
    limits = limits_of(settings)
    events = [e for r in generator.records() if isinstance(e := parse_event(r.value, r.ts, limits), Event)]
    return LabelledStream(events, generator.personas())


class Purchase(NamedTuple):
    user_key: str
    ts: int
    vector: FeatureVector | None
    """What the purchase event itself emitted: learned and scored, never an intent example (the next
    item of the same order would label it positive milliseconds later: bookkeeping, not intent)."""


@dataclass(frozen=True)
class Timeline:
    """What the keyed user operator hands to the models, in processing (= event-time) order."""

    steps: list[FeatureVector | Purchase]
    owners: dict[str, str]
    """Key -> user id for anonymous keys that identified later (persona ground truth is per user id)."""
    personas: dict[str, str]
    keys: frozenset[str]
    """User keys with at least one valid event."""
    events: int
    """Valid events processed (duplicates included, as the job receives them)."""
    start_ts: int
    end_ts: int
    us_per_event: float
    """Dedup, profile and features, per valid event."""


def feature_timeline(settings: Settings, stream: LabelledStream | None = None) -> Timeline:
    """Featurize ``stream`` (default: the generated one) in event-time order as the keyed user operator would."""
    from jobs.pipeline import feature_config  # the job's own settings -> FeatureConfig (imports, never runs, Flink)

    stream = stream or generated_stream(settings)
    if not stream.events:
        raise InputError("no valid events")
    events = sorted(stream.events, key=lambda e: e.ts)
    job = settings.job
    profile_operator = ProfileOperator(job.dedup_window_ms, job.dedup_max_ids_per_user)
    config = feature_config(settings.features)
    feature_operator = FeatureOperator(config, LocalPopulation())
    profiles: dict[str, UserProfile] = {}
    features: dict[str, UserFeatures] = {}
    session_timers: list[tuple[int, str]] = []
    steps: list[FeatureVector | Purchase] = []
    owners: dict[str, str] = {}
    started = time.perf_counter()
    for event in events:
        while session_timers and session_timers[0][0] < event.ts:  # the watermark has passed the timer
            timer_ts, key = heapq.heappop(session_timers)
            state = features[key]
            state.sessions.timer_fired(timer_ts)
            closed = feature_operator.close_session(state, key, timer_ts)
            if closed is not None:
                steps.append(closed)
        key = event.user_key
        profiles[key], update = profile_operator.process(profiles.get(key), event)
        if update is None:
            continue
        if event.type == "identify":
            owners[user_key_of("", event.anonymous_id)] = event.user_id
        features[key], vector = feature_operator.process(features.get(key), event)
        expiry = features[key].sessions.needs_timer(config.session_gap_ms)
        if expiry is not None:
            heapq.heappush(session_timers, (expiry, key))
        if event.type == "purchase":
            steps.append(Purchase(key, event.ts, vector))
        elif vector is not None:
            steps.append(vector)
    seconds = time.perf_counter() - started
    return Timeline(steps, owners, stream.personas, frozenset(profiles), len(events), events[0].ts, events[-1].ts,
                    1e6 * seconds / max(len(events), 1))


Scoring = tuple[int, int, int | None, FeatureVector]
"""(event time, scored cluster, cluster after hysteresis, the vector scored)."""


class ModelRun:
    """The job's model wiring over a timeline, with everything measured along the way.

    Keyed parts (pending intent examples, their deadline timers, memberships) are dicts by user
    key; the trainer and the scorer are single, as in the job, and the scorer only ever sees
    published snapshots.
    """

    def __init__(self, config: ModelConfig, warmup_ts: int) -> None:
        self.config = config
        self.warmup_ts = warmup_ts
        self.trainer = ModelTrainer(config)
        self.scorer = ModelScorer()
        self.labeler = IntentLabeler(config.intent_horizon_ms, config.intent_max_pending)
        self.policy = MembershipPolicy(config.hysteresis_margin, config.hysteresis_patience)
        self.pending: dict[str, PendingExamples] = {}
        self.deadlines: list[tuple[int, str]] = []
        self.memberships: dict[str, Membership] = {}
        self.last_cluster: dict[str, int] = {}
        self.snapshots: list[ModelSnapshot] = []
        self.drifts: list[DriftEvent] = []
        self.latest: dict[str, Scoring] = {}
        """Each key's latest scoring after the warm-up."""
        self.cluster_switches = self.membership_switches = 0
        self.positives = self.negatives = self.scored = 0
        self.vector_learn_s = self.intent_learn_s = self.score_s = 0.0

    def step(self, step: FeatureVector | Purchase) -> None:
        while self.deadlines and self.deadlines[0][0] < step.ts:  # timers the watermark has passed
            deadline, key = heapq.heappop(self.deadlines)
            self._learn_labelled(self.labeler.expire(self.pending[key], deadline), deadline)
        if isinstance(step, FeatureVector):
            self._vector(step, example=True)
            return
        if step.user_key in self.pending:
            self._learn_labelled(self.labeler.purchase(self.pending[step.user_key], step.ts), step.ts)
        if step.vector is not None:
            self._vector(step.vector, example=False)

    def _learn_labelled(self, settled: list[Labelled], ts: int) -> None:
        for example, label in settled:
            started = time.perf_counter()
            self._drift(self.trainer.learn_intent(intent_example(example), label, ts))
            self.intent_learn_s += time.perf_counter() - started
            self.positives += label
            self.negatives += not label

    def _drift(self, drift: DriftEvent | None) -> None:
        if drift is not None:
            self.drifts.append(drift)

    def _vector(self, vector: FeatureVector, example: bool) -> None:
        key, values = vector.user_key, vector.values
        if learns_from(vector, self.config):
            started = time.perf_counter()
            self._drift(self.trainer.learn_vector(values, vector.ts))
            self.vector_learn_s += time.perf_counter() - started
        started = time.perf_counter()
        score = self.scorer.score(values)
        self.score_s += time.perf_counter() - started
        if score is not None:
            self.scored += 1
            if score.assignment is not None:
                self._membership(key, score.assignment, vector)
        if example:
            pending = self.pending.setdefault(key, PendingExamples())
            self.labeler.add(pending, vector.ts, intent_values(intent_input(values)))
            heapq.heappush(self.deadlines, (self.labeler.next_deadline(pending) or vector.ts, key))
        snapshot = self.trainer.maybe_snapshot()
        if snapshot is not None:
            self.scorer.load(snapshot)
            self.snapshots.append(snapshot)

    def _membership(self, key: str, assignment: Assignment, vector: FeatureVector) -> None:
        previous = self.memberships.get(key, Membership())
        membership = update_membership(self.policy, previous, assignment)
        self.cluster_switches += self.last_cluster.get(key, assignment.cluster) != assignment.cluster
        self.membership_switches += previous.cluster not in (None, membership.cluster)
        self.memberships[key], self.last_cluster[key] = membership, assignment.cluster
        if vector.ts >= self.warmup_ts:
            self.latest[key] = (vector.ts, assignment.cluster, membership.cluster, vector)


def run_models(timeline: Timeline, config: ModelConfig, warmup_ts: int) -> ModelRun:
    run = ModelRun(config, warmup_ts)
    for step in timeline.steps:
        run.step(step)
    return run


def adjusted_rand(pairs: Iterator[tuple[str, int | None]]) -> float:
    metric = metrics.AdjustedRand()
    for persona, cluster in pairs:
        metric.update(persona, cluster)
    return float(metric.get())


def per_user(timeline: Timeline, run: ModelRun) -> dict[str, Scoring]:
    """Each planted user's latest scoring across their keys (anonymous, then identified)."""
    latest: dict[str, Scoring] = {}
    for key, scoring in run.latest.items():
        user = timeline.owners.get(key, key)
        if user in timeline.personas and (user not in latest or scoring[0] > latest[user][0]):
            latest[user] = scoring
    return latest


def users_with_events(timeline: Timeline) -> set[str]:
    """Labelled users with at least one valid event under their own key or one that identified as them."""
    return {user for key in timeline.keys if (user := timeline.owners.get(key, key)) in timeline.personas}


def unscored_report(personas: Mapping[str, str], clusters: Mapping[str, int], active: Set[str],
                    early: Set[str] = frozenset()) -> dict[str, Any]:
    """How many of the ``active`` users (those with events) have no cluster, of them how many were scored
    only before the warm-up (``early``), and the ARI over all of them with the unscored ones as a cluster
    of their own: leaving them out would flatter a model that scores few."""
    unscored = active - clusters.keys()
    return {"unscored": {"users": len(unscored), "share": round(len(unscored) / len(active), 4) if active else 0.0,
                         "before_warmup": len(unscored & early)},
            "ari_with_unscored": round(adjusted_rand(
                (personas[user], clusters.get(user, UNSCORED)) for user in sorted(active)), 4)}


def summarize(timeline: Timeline, run: ModelRun) -> dict[str, Any]:
    personas, trainer = timeline.personas, run.trainer
    latest = per_user(timeline, run)
    active = users_with_events(timeline)
    clusterer = trainer.models.clusterer
    vectors = sum(isinstance(step, FeatureVector) or step.vector is not None for step in timeline.steps)
    examples = run.positives + run.negatives
    final = run.snapshots[-1] if run.snapshots else None
    return {
        "clusterer": trainer.config.clusterer,
        "users_labelled": len(personas),
        "users_with_events": len(active),
        "users_scored": len(latest),
        "ari": round(adjusted_rand((personas[u], s[1]) for u, s in latest.items()), 4),
        **unscored_report(personas, {user: s[1] for user, s in latest.items()}, active,
                          {timeline.owners.get(key, key) for key in run.last_cluster}),
        "ari_with_hysteresis": round(adjusted_rand((personas[u], s[2]) for u, s in latest.items()), 4),
        "ari_final_model": round(adjusted_rand(
            (personas[u], clusterer.predict_one(behaviour_input(s[3].values))) for u, s in latest.items()), 4),
        "clusters_used": len({s[1] for s in latest.values()}),
        "intent": {
            "roc_auc": round(trainer.intent_auc.get(), 4), "log_loss": round(trainer.intent_log_loss.get(), 4),
            "examples": examples, "positive_share": round(run.positives / examples, 4) if examples else None,
        },
        "cost_us": {
            "learn_per_vector": round(1e6 * run.vector_learn_s / max(trainer.vectors_learned, 1), 1),
            "learn_per_intent_example": round(1e6 * run.intent_learn_s / max(examples, 1), 1),
            "score_per_vector": round(1e6 * run.score_s / max(run.scored, 1), 1),
            "learn_per_event": round(1e6 * (run.vector_learn_s + run.intent_learn_s) / timeline.events, 2),
        },
        "vectors": vectors,
        "vectors_learned": trainer.vectors_learned,
        "switches": {"cluster": run.cluster_switches, "with_hysteresis": run.membership_switches},
        "snapshots": len(run.snapshots),
        "snapshot_model_bytes": len(canonical(final.model.to_data())) if final else 0,
        "drifts": [drift.drift_id for drift in run.drifts],
        "clusters": final.summary()["clusters"] if final else [],
    }


def evaluate(settings: Settings, clusterers: list[str], warmup: float,
             stream: LabelledStream | None = None) -> dict[str, Any]:
    """The default model's report plus a comparison of ``clusterers`` on the same feature timeline."""
    timeline = feature_timeline(settings, stream)
    config = model_config(settings.models)
    warmup_ts = timeline.start_ts + int(warmup * (timeline.end_ts - timeline.start_ts))
    names = [config.clusterer, *(name for name in clusterers if name != config.clusterer)]
    reports = [summarize(timeline, run_models(timeline, replace(config, clusterer=name), warmup_ts)) for name in names]
    return {
        "warmup": warmup, "valid_events": timeline.events, "features_us_per_event": round(timeline.us_per_event, 1),
        "targets": {"ari": TARGET_ARI, "roc_auc": TARGET_AUC},
        "default": reports[0],
        "comparison": [{name: report[name] for name in ("clusterer", "ari", "ari_with_hysteresis",
                                                        "ari_final_model", "ari_with_unscored", "clusters_used",
                                                        "cost_us")}
                       for report in reports],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help=f"records (default {DEFAULT_EVENTS:,})")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help=f"users (default {DEFAULT_USERS})")
    parser.add_argument("--seed", type=int, help="generator seed (default: generator.seed)")
    parser.add_argument("--personas", choices=PERSONA_MIXES, default="default",
                        help="generated persona mix: default, or heldout (kinds the models were not tuned on)")
    parser.add_argument("--events-file", type=Path,
                        help="evaluate on these events (JSON Lines in the event contract) instead of generated ones")
    parser.add_argument("--labels", type=Path,
                        help="with --events-file: user -> persona, a .json object or a CSV with user_id,persona")
    parser.add_argument("--warmup", type=float, default=DEFAULT_WARMUP,
                        help=f"share of the stream's event-time span before scorings count (default {DEFAULT_WARMUP})")
    parser.add_argument("--clusterer", action="append", choices=CLUSTERERS,
                        help="compare this clusterer (repeatable; default: all); models.clusterer is always run")
    parser.add_argument("--json", help="write the full report to this file")


def _print_report(report: dict[str, Any]) -> None:
    default, source = report["default"], report["source"]
    invalid = source.get("invalid_lines")
    if invalid is not None:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in sorted(source["invalid_by_reason"].items()))
        print(f"{source['events_file']}: {source['lines']:,} lines, {invalid:,} invalid"
              + (f" ({reasons})" if reasons else ""))
    unscored = default["unscored"]
    print(f"{report['valid_events']:,} events, {default['users_with_events']} labelled users with events, "
          f"{default['users_scored']} scored, {unscored['users']} unscored ({unscored['share']:.1%}; "
          f"{unscored['before_warmup']} only before the warm-up); "
          f"features {report['features_us_per_event']} us/event")
    print(f"{'clusterer':<13} {'ARI':>6} {'ARI hyst':>8} {'ARI final':>9} {'ARI all':>8} {'clusters':>8} "
          f"{'learn us':>9} {'score us':>9}")
    for row in report["comparison"]:
        cost = row["cost_us"]
        print(f"{row['clusterer']:<13} {row['ari']:>6.3f} {row['ari_with_hysteresis']:>8.3f} "
              f"{row['ari_final_model']:>9.3f} {row['ari_with_unscored']:>8.3f} {row['clusters_used']:>8} "
              f"{cost['learn_per_vector']:>9.1f} {cost['score_per_vector']:>9.1f}")
    intent = default["intent"]
    share = f"{intent['positive_share']:.1%}" if intent["positive_share"] is not None else "no"
    print(f"intent: ROC AUC {intent['roc_auc']:.3f}, log loss {intent['log_loss']:.3f} over "
          f"{intent['examples']:,} examples ({share} positive); "
          f"learning {default['cost_us']['learn_per_event']} us/event")
    for cluster in default["clusters"]:
        print(f"  cluster {cluster['cluster']}: {cluster['text']} ({cluster['share']:.0%})")


def _stream(args: argparse.Namespace, settings: Settings) -> tuple[Settings, LabelledStream, dict[str, Any]]:
    """The settings, events and personas to evaluate, and how the report names their source."""
    if args.events_file is not None:
        load = load_events(args.events_file, limits_of(settings))
        labels = load_labels(args.labels)
        source = {"events_file": str(args.events_file), "labels_file": str(args.labels), "lines": load.lines,
                  "invalid_lines": sum(load.invalid.values()), "invalid_by_reason": dict(load.invalid)}
        return settings, LabelledStream(load.events, labels), source
    generator = replace(settings.generator, events=args.events, users=args.users,
                        seed=settings.generator.seed if args.seed is None else args.seed)
    settings = replace(settings, generator=generator)
    source = {"generator": {"events": generator.events, "users": generator.users, "seed": generator.seed,
                            "personas": args.personas}}
    return settings, generated_stream(settings, args.personas), source


def run(args: argparse.Namespace, settings: Settings) -> int:
    usage = ""
    if args.events < 1 or args.users < 1 or not 0 <= args.warmup < 1:
        usage = "--events and --users must be positive, 0 <= --warmup < 1"
    elif (args.events_file is None) != (args.labels is None):
        usage = "--events-file and --labels go together"
    try:
        if usage:
            raise InputError(usage)
        settings, stream, source = _stream(args, settings)
        report = {"source": source, **evaluate(settings, args.clusterer or list(CLUSTERERS), args.warmup, stream)}
    except InputError as exc:
        print(f"personalize evaluate segments: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print_report(report)
    if args.json and not write_json_report(args.json, report, "evaluate segments"):
        return EXIT_FAILURE
    default = report["default"]
    missed = [f"{name} {value:.3f} < {target}" for name, value, target in (
        ("ARI", default["ari"], TARGET_ARI), ("intent ROC AUC", default["intent"]["roc_auc"], TARGET_AUC))
        if value < target]
    if missed:
        print("below target: " + "; ".join(missed))
        return EXIT_FAILURE
    return EXIT_OK

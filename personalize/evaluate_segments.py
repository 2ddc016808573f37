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
from operators.features.operator import FeatureVector
from operators.models.clustering import CLUSTERERS
from operators.models.config import ModelConfig
from operators.models.drift import DriftEvent
from operators.models.inputs import behaviour_input
from operators.models.training import ModelScorer, ModelSnapshot, ModelTrainer
from operators.models.user import TrainingInput, UserModels, UserModelState
from operators.user_core import StageFeatures, StageProfile, Step
from operators.validation import Limits, parse_event
from personalize.generator import PERSONA_MIXES, EventGenerator
from personalize.labelled_events import InputError, load_events, load_labels
from personalize.paths import write_json_report
from personalize.settings import ModelSettings, Settings
from state.cache import ValueCache
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
    """Featurize ``stream`` (default: the generated one) in event-time order: the job's per-user core in the
    local runner, with features alone (the models under evaluation run on its vectors, :class:`ModelRun`)."""
    from jobs.local_runner import LocalRunner
    from jobs.pipeline import local_core  # the job's own wiring (imports, never runs, Flink)

    stream = stream or generated_stream(settings)
    if not stream.events:
        raise InputError("no valid events")
    events = sorted(stream.events, key=lambda e: e.ts)
    core = local_core(replace(settings, models=replace(settings.models, enabled=False),
                              rules=replace(settings.rules, enabled=False),
                              recommendations=replace(settings.recommendations, enabled=False),
                              privacy=replace(settings.privacy, enabled=False),
                              experiments=replace(settings.experiments, definitions=())))
    steps: list[FeatureVector | Purchase] = []
    owners: dict[str, str] = {}
    keys: set[str] = set()
    current: list[Event] = []
    """The event being applied (empty while wake-ups fire)."""

    def collect(user: str, step: Step) -> None:
        vectors = [write.vector for write in step.redis if isinstance(write, StageFeatures)]
        event = current[0] if current else None
        if event is None or event.type != "purchase" or not any(isinstance(w, StageProfile) for w in step.redis):
            steps.extend(vectors)
            return
        # A purchase: a session it closed first, then what the purchase itself emitted (if anything).
        own = vectors.pop() if vectors and vectors[-1].ts == event.ts else None
        steps.extend(vectors)
        steps.append(Purchase(user, event.ts, own))

    # Sorted input: a wake-up fires before the first later event. Values stay decoded, as in the job.
    runner = LocalRunner(core, 0, collect, ValueCache(settings.job.state_cache_users, float("inf")), 2000)
    started = time.perf_counter()
    for event in events:
        keys.add(event.user_key)
        if event.type == "identify":
            owners[user_key_of("", event.anonymous_id)] = event.user_id
        current[:] = [event]
        runner.event(event.user_key, event)
        current.clear()
    seconds = time.perf_counter() - started
    return Timeline(steps, owners, stream.personas, frozenset(keys), len(events), events[0].ts, events[-1].ts,
                    1e6 * seconds / max(len(events), 1))


Scoring = tuple[int, int, int | None, FeatureVector]
"""(event time, scored cluster, cluster after hysteresis, the vector scored)."""


class ModelRun:
    """The job's model steps over a timeline (``UserModels`` per user, the trainer, the scorer), with
    everything measured along the way.

    Users' model states and their intent-deadline wake-ups are dicts and a heap, as the runner keeps
    them; the trainer and the scorer are single, as in the job, and the scorer only ever sees
    published snapshots (loaded as soon as they are published).
    """

    def __init__(self, config: ModelConfig, warmup_ts: int) -> None:
        self.config = config
        self.warmup_ts = warmup_ts
        self.trainer = ModelTrainer(config)
        self.scorer = ModelScorer()
        self.models = UserModels(config)
        self.states: dict[str, UserModelState] = {}
        self.deadlines: list[tuple[int, str]] = []
        self.last_cluster: dict[str, int] = {}
        self.snapshots: list[ModelSnapshot] = []
        self.drifts: list[DriftEvent] = []
        self.latest: dict[str, Scoring] = {}
        """Each key's latest scoring after the warm-up."""
        self.cluster_switches = self.membership_switches = 0
        self.positives = self.negatives = self.scored = self.rescored = 0
        self.vector_learn_s = self.intent_learn_s = self.score_s = 0.0

    def step(self, step: FeatureVector | Purchase) -> None:
        while self.deadlines and self.deadlines[0][0] < step.ts:  # wake-ups the watermark has passed
            deadline, key = heapq.heappop(self.deadlines)
            state = self.states[key]
            if self.models.deadline(state) == deadline:
                self._learn(self.models.expire(state, deadline))
                self._rescore(key, state, deadline)
                self._wake(key, state, deadline)
        key = step.user_key
        state = self.states.setdefault(key, UserModelState())
        before = self.models.deadline(state)
        if isinstance(step, FeatureVector):
            self._vector(state, step, by_purchase=False)
        else:
            self._learn(self.models.purchase(state, step.ts))
            if step.vector is not None:
                self._vector(state, step.vector, by_purchase=True)
        self._wake(key, state, before)

    def _wake(self, key: str, state: UserModelState, before: int | None) -> None:
        """Wake at the user's next intent deadline when it moved (as the core does)."""
        deadline = self.models.deadline(state)
        if deadline is not None and deadline != before:
            heapq.heappush(self.deadlines, (deadline, key))

    def _learn(self, inputs: list[TrainingInput]) -> None:
        for training_input in inputs:
            started = time.perf_counter()
            drift = training_input.learn(self.trainer)
            elapsed = time.perf_counter() - started
            if training_input.label is None:
                self.vector_learn_s += elapsed
            else:
                self.intent_learn_s += elapsed
                self.positives += training_input.label
                self.negatives += not training_input.label
            if drift is not None:
                self.drifts.append(drift)

    def _rescore(self, key: str, state: UserModelState, deadline: int) -> None:
        """At an intent deadline, the latest vector's cluster with a newer snapshot (as the core does)."""
        if not self.models.rescorable(state, self.scorer):
            return
        self.models.rescore(state, self.scorer)
        score, latest = self.models.last_score, self.latest.get(key)
        if score is None or score.assignment is None:
            return
        self.rescored += 1
        if latest is not None:  # the vector was scored after the warm-up
            self.latest[key] = (deadline, score.assignment.cluster, state.membership.cluster, latest[3])

    def _vector(self, state: UserModelState, vector: FeatureVector, by_purchase: bool) -> None:
        key = vector.user_key
        self._learn(self.models.vector(state, vector, by_purchase))
        previous = state.membership
        started = time.perf_counter()
        self.models.score(state, vector, self.scorer)
        self.score_s += time.perf_counter() - started
        score = self.models.last_score
        if score is not None:
            self.scored += 1
            if score.assignment is not None:
                cluster = score.assignment.cluster
                self.cluster_switches += self.last_cluster.get(key, cluster) != cluster
                self.membership_switches += previous.cluster not in (None, state.membership.cluster)
                self.last_cluster[key] = cluster
                if vector.ts >= self.warmup_ts:
                    self.latest[key] = (vector.ts, cluster, state.membership.cluster, vector)
        snapshot = self.trainer.maybe_snapshot()
        if snapshot is not None:
            self.scorer.load(snapshot)
            self.snapshots.append(snapshot)


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
        "rescored": run.rescored,
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

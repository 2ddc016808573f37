"""Thin Flink functions: load state, call the pure operator, store state, emit."""

from __future__ import annotations

import contextlib
import functools
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, TimeDomain, TimerService
from pyflink.datastream.functions import (
    KeyedBroadcastProcessFunction,
    KeyedProcessFunction,
    ProcessFunction,
    RuntimeContext,
)
from pyflink.datastream.state import ValueStateDescriptor

from connectors.kafka import OUTPUT_TYPE
from connectors.pii_secret import SecretSource
from connectors.redis_keys import USER_KEYS
from connectors.redis_writer import DeadLetterCounter, UserStateSink
from jobs.metrics import JobMetrics, redis_readings
from operators.deadletter import dead_letter
from operators.events import Event
from operators.experiments.attribution import Bounds
from operators.experiments.config import (
    STOPPED,
    Experiment,
    ExperimentCatalog,
    ExperimentError,
    entry_from_json,
    is_experiment_command,
)
from operators.experiments.config import parse_command as parse_experiment_command
from operators.experiments.serving import EXPERIMENTS_ROUTE, ExperimentPolicy, by_experiment
from operators.features.operator import FeatureOperator
from operators.features.rfm import PopulationScorer
from operators.models.config import ModelConfig
from operators.models.training import ModelScorer, ModelSnapshot, ModelTrainer
from operators.models.user import TrainingInput
from operators.privacy.erasure import ErasureSettings
from operators.privacy.identity import (
    routing_key,
)
from operators.privacy.pii import PiiHasher, Redactor, SecretError, pseudonymize_event
from operators.recs.config import RecConfig
from operators.recs.model import ItemModel
from operators.recs.serving import Forget, RecommendationServer, RecommenderCore
from operators.rules.catalog import RuleBook, RuleCatalog, RuleEntry, parse_command
from operators.rules.engine import SegmentEngine
from operators.rules.language import RuleError
from operators.segment_spec import SegmentSpec, parse_segment
from operators.user_core import (
    RECS_ROUTE,
    TRAINER_KEY,
    TRAINING_ROUTE,
    CoreSettings,
    StageErase,
    StageFeatures,
    StageForget,
    StageModelScores,
    StageProfile,
    StageSegmentChange,
    Step,
    UserCore,
    shard_of,
)
from operators.validation import (
    INVALID_EXPERIMENT,
    INVALID_INTERNAL,
    INVALID_RULE,
    INVALID_SNAPSHOT,
    Limits,
    Rejection,
    parse_event,
)
from state.codecs import decode_experiments, encode_experiments
from state.descriptors import (
    EXPERIMENT_CATALOG,
    ITEM_MODEL_STATE,
    MODEL_SNAPSHOT,
    MODEL_SNAPSHOT_KEY,
    RULE_CATALOG,
    TRAINER_STATE,
    experiment_state,
    global_object_log,
    global_object_state,
    published_recs_state,
    user_value,
)
from state.internal import InternalRecordError, decode_internal, encode_internal, internal_signer
from state.slots import (
    CONSENT,
    ERASED_STATES,
    IDENTITY,
    KEPT_STATES,
    RECOMMENDER_STATES,
    USER_SLOTS,
    StoredValues,
)
from state.snapshots import SnapshotError, decode_snapshot, encode_snapshot, snapshot_signer

EVENT_TYPE = Types.ROW_NAMED(
    list(Event._fields),
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(),
     Types.STRING(), Types.STRING(), Types.DOUBLE(), Types.INT(), Types.STRING(), Types.STRING()],
)
#: With micro-batching, what parsing emits: the shard an event goes to, and its key and fields as a
#: JSON array (lists of text reach Python intact; jobs/shards.py says why not lists of rows).
KEYED_EVENT_TYPE = Types.ROW_NAMED(["shard", "record"], [Types.INT(), Types.STRING()])
DEAD_LETTERS = OutputTag("dead-letters", OUTPUT_TYPE)
LATE_EVENTS = OutputTag("late-events", OUTPUT_TYPE)
#: The internal records' routes (``operators/user_core.py``). They travel on the main output, split off
#: in Java (jobs/pipeline.py), because PyFlink 2.0.2 drops side outputs of a keyed broadcast function's
#: ``on_timer`` (intent deadlines and retention are timers).
INTERNAL_ROUTES = (TRAINING_ROUTE, RECS_ROUTE, EXPERIMENTS_ROUTE)
#: Flink's final watermark (Long.MAX_VALUE) when a bounded source finishes.
END_OF_INPUT_WATERMARK = 2**63 - 1


@dataclass(frozen=True)
class IngestPrivacy:
    """PII protection at ingest (docs/privacy.md): keyed hashing of ids, redaction of dead letters."""

    hash_identifiers: bool
    redact_deadletters: bool
    secret: SecretSource
    """Resolved on the worker (``open``), so the key is not in the job graph."""
    internal_topic: str = ""
    """Identity stitching's internal topic: its records are the job's own (already validated and hashed)."""


@dataclass(frozen=True)
class SegmentInput:
    """The input topic whose records are in the Segment spec (docs/events.md), and how they map."""

    topic: str
    spec: SegmentSpec


@dataclass(frozen=True)
class Sharding:
    """Micro-batching (``job.micro_batch_ms``): parsing keys each event, so lists form in Java."""

    shards: int
    key: Callable[[Row], str]


class ParseEvents(ProcessFunction):
    """Validate raw Kafka rows (the Segment spec's topic through its mapper first); valid events go on
    (pseudonymized when configured), everything else to the dead-letter side output (redacted when
    configured)."""

    def __init__(self, limits: Limits, deadletter_topic: str,
                 counter: Callable[[], DeadLetterCounter] | None = None, privacy: IngestPrivacy | None = None,
                 segment: SegmentInput | None = None, sharding: Sharding | None = None) -> None:
        self.limits = limits
        self.deadletter_topic = deadletter_topic
        self.counter_factory = counter
        self.privacy = privacy
        self.segment = segment
        self.sharding = sharding

    def open(self, runtime_context: RuntimeContext) -> None:
        self.counter = self.counter_factory() if self.counter_factory is not None else None
        self.metrics = metrics = JobMetrics(runtime_context.get_metrics_group())
        self.events_in = metrics.labelled("events_in", "event_type")
        self.dead_letters = metrics.labelled("dead_letters", "reason")
        privacy = self.privacy
        self.hasher = PiiHasher(privacy.secret.resolve()) if privacy and privacy.hash_identifiers else None
        self.redactor = Redactor(self.hasher) if privacy and privacy.redact_deadletters else None
        self.internal_signer = internal_signer(privacy.secret.resolve()) if privacy and privacy.internal_topic else None

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        self.metrics.tick()
        payload, topic, partition, offset, record_ts = value
        result: Event | tuple[Event, ...] | Rejection
        if self.internal_signer is not None and self.privacy is not None and topic == self.privacy.internal_topic:
            try:
                yield self._keyed(Row(*decode_internal(payload, self.internal_signer)))
                return
            except InternalRecordError as exc:
                result = Rejection(INVALID_INTERNAL, str(exc))
        elif self.segment is not None and topic == self.segment.topic:
            result = parse_segment(payload, record_ts, self.limits, self.segment.spec)
        else:
            result = parse_event(payload, record_ts, self.limits)
        if isinstance(result, Rejection):
            key, letter = dead_letter(result, payload, topic, partition, offset, record_ts)
            self.dead_letters.inc(result.reason)
            if self.counter is not None:
                self.counter.count(result.reason)
            if self.redactor is not None:
                letter = self.redactor.dead_letter(letter)
            yield DEAD_LETTERS, Row(key, letter, self.deadletter_topic)
            return
        for event in (result,) if isinstance(result, Event) else result:
            self.events_in.inc(event.type)
            yield self._keyed(Row(*(pseudonymize_event(event, self.hasher) if self.hasher is not None else event)))

    def _keyed(self, event: Row) -> Row:
        """The event, or with micro-batching its shard and its key and fields as JSON (:data:`KEYED_EVENT_TYPE`)."""
        sharding = self.sharding
        if sharding is None:
            return event
        key = sharding.key(event)
        return Row(shard_of(key, sharding.shards), orjson.dumps((key, *event)).decode())

    def close(self) -> None:
        close_function(self)
        counter = getattr(self, "counter", None)
        if counter is not None:
            counter.close()


def user_key(event: Row) -> str:
    return event[2]


def identity_key(event: Row) -> str:
    """With identity stitching: ``identify`` at the anonymous key (which owns the state to hand over)."""
    return routing_key(Event(*event))


def subtask_index(runtime_context: RuntimeContext) -> int:
    """This instance's index. PyFlink 2.0.2's thread mode calls a Java method Flink 2.0 removed
    (``getIndexOfThisSubtask``); the index now lives in the task info."""
    try:
        return runtime_context.get_index_of_this_subtask()
    except AttributeError:
        return int(runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PrivacyOperators:
    """Erasure in the user operator (docs/privacy.md); consent and identity stitching are the core's
    (``CoreSettings.consent``, ``CoreSettings.identity``)."""

    secret: SecretSource
    """Resolved on the worker (``open``): the key of erasure confirmations' subject hashes."""
    tombstone_topics: tuple[str, ...]
    """The user-keyed topics the user operator writes (profiles, features, segments)."""
    confirmation_topic: str
    consent_state_ttl_ms: int

    def erasure(self, secret: bytes | None = None) -> ErasureSettings:
        """What the erasure plan needs, with the job's secret (resolved here, on the worker) unless given."""
        return ErasureSettings(ERASED_STATES, KEPT_STATES, RECOMMENDER_STATES, len(USER_KEYS), self.tombstone_topics,
                               self.confirmation_topic, PiiHasher(secret or self.secret.resolve()))


@dataclass(frozen=True)
class UserOperators:
    """Everything the keyed user function needs, built on the client and shipped to the workers."""

    core: CoreSettings
    """What the per-user core does (``operators/user_core.py``)."""
    rules: RuleBook | None
    """The initial segment rules; None: no segments."""
    state_ttl_ms: int
    redis: Callable[[], UserStateSink]
    population: Callable[[int], PopulationScorer]
    """Builds the R/F/M population scorer of the parallel instance with this index."""
    flush_interval_ms: int
    privacy: PrivacyOperators | None = None
    """Erasure (with ``core.consent``); None: every event is personalized."""
    secret: SecretSource | None = None
    """The job's secret (resolved on the worker): the key of the snapshots' signatures."""
    max_snapshot_bytes: int = 1 << 20
    redact_deadletters: bool = False
    """Redact the dead letters of control records too (rule commands, snapshots), as ingest does events'."""
    experiments: tuple[Experiment, ...] = ()
    """The configured experiments: segment changes say the user's arm (commands change them at run time)."""
    experiment_bounds: Bounds = field(default_factory=Bounds)
    cache_users: int = 0
    """The micro-batched operator's decoded-value cache: users kept beyond those with unwritten changes."""


class UserFunction(KeyedBroadcastProcessFunction):
    """Keyed by user: the thin Flink shell of the per-user core (``operators/user_core.py``).

    Per event or event-time timer it loads the user's values, calls the core, stores what changed and
    carries out the step: Redis writes, timers, records, the late side output, internal records for the
    trainer and the recommender. The broadcast input carries rule commands and model snapshots: every
    instance applies them (kept in broadcast state) and hands the core the rules and scorer to use.
    """

    def __init__(self, operators: UserOperators) -> None:
        self.operators = operators

    def open(self, runtime_context: RuntimeContext) -> None:
        ops = self.operators
        self.value_states = {slot.name: self._user_state(runtime_context, user_value(slot, ops.state_ttl_ms))
                             for slot in USER_SLOTS}
        """The user's values by logical name (``state/slots.py``), as the core reads and writes them."""
        self.metrics = metrics = JobMetrics(runtime_context.get_metrics_group())
        privacy = ops.privacy
        erasure: ErasureSettings | None = None
        internal: Callable[[Event], bytes] | None = None
        if privacy is not None:
            self.value_states["consent"] = self._user_state(runtime_context,
                                                            user_value(CONSENT, privacy.consent_state_ttl_ms))
            erasure = privacy.erasure()
            self.without_consent = metrics.counter("events_without_consent")
            self.erasures = metrics.counter("erasures")
            if ops.core.identity is not None:
                self.value_states["identity"] = self._user_state(runtime_context,
                                                                 user_value(IDENTITY, ops.state_ttl_ms))
                internal = functools.partial(encode_internal, signer=internal_signer(privacy.secret.resolve()))
        self.subtask = subtask_index(runtime_context)
        self.core = UserCore(ops.core, FeatureOperator(ops.core.features, ops.population(self.subtask)),
                             erasure, internal)
        self.snapshot_loaded = False
        if self.core.user_models is not None:
            assert ops.secret is not None, "models need the job's secret (snapshot signatures)"
            self.snapshot_signer = snapshot_signer(ops.secret.resolve())
        self.invalid_snapshots = metrics.counter("invalid_snapshots")
        self.redactor = Redactor() if ops.redact_deadletters else None
        self.sink = ops.redis()
        redis_readings(metrics, self.sink)
        self.dead_letters = metrics.labelled("dead_letters", "reason")
        self.segment_entries = metrics.labelled("segment_entries", "segment")
        self.segment_exits = metrics.labelled("segment_exits", "segment")
        self.late_events = metrics.counter("late_events")
        self.flush_timer_set = False
        self.catalog: RuleCatalog | None = None
        self.engine: SegmentEngine | None = None
        self.experiments = ExperimentsInUse(ops.experiments, ops.secret, ops.experiment_bounds) \
            if ops.core.recs is not None and ops.secret is not None else None

    def _user_state(self, runtime_context: RuntimeContext, descriptor: ValueStateDescriptor) -> Any:
        """One of the user's values (``value``/``update``/``clear``): here a keyed ``ValueState``."""
        return runtime_context.get_state(descriptor)

    def _engine(self, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> SegmentEngine | None:
        """The compiled rules; loaded once from the broadcast state (restored from a checkpoint)."""
        book = self.operators.rules
        if book is None:
            return None
        if self.engine is None:
            applied = [RuleEntry.from_json(data) for _, data in ctx.get_broadcast_state(RULE_CATALOG).items()]
            self.catalog = book.catalog(applied)
            rule_set = self.catalog.rule_set(book.compiler())
            self.engine = SegmentEngine(rule_set)
            self.sink.write_rules(self.subtask, rule_set.fingerprint, self.catalog.entries.values())
        return self.engine

    def _scorer(self, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> ModelScorer:
        """The scorer, with the snapshot from the broadcast state once (restored from a checkpoint)."""
        if not self.snapshot_loaded:
            self.snapshot_loaded = True
            stored = ctx.get_broadcast_state(MODEL_SNAPSHOT).get(MODEL_SNAPSHOT_KEY)
            if stored:
                try:
                    snapshot = decode_snapshot(bytes(stored), self.snapshot_signer, len(stored))
                except SnapshotError:  # kept by an older version (schema v2) or under another secret: no
                    self.invalid_snapshots.inc()  # clusters until the trainer's next snapshot, not a crash loop
                else:
                    self.core.scorer.load(snapshot)
                    self.sink.write_model_instance(self.subtask, snapshot)
        return self.core.scorer

    def process_broadcast_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """A rule command or a model snapshot (the two control topics share the broadcast input)."""
        if value[1] == self.operators.core.topics["models"]:
            yield from self._load_snapshot(value, ctx)
            return
        yield from self._apply_rule_command(value, ctx)

    def _load_snapshot(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """Score with a newer snapshot from now on; it stays in broadcast state for a restore.

        Only a record this job's trainer signed is a snapshot (docs/security.md): anything else is
        dead-lettered (by one instance for all) and the model in use stays.
        """
        payload = value[0]
        try:
            snapshot = decode_snapshot(payload, self.snapshot_signer, self.operators.max_snapshot_bytes)
        except SnapshotError as exc:
            self.invalid_snapshots.inc()
            if self.subtask == 0:
                yield self._dead_letter(Rejection(INVALID_SNAPSHOT, str(exc)), value)
            return
        if self._scorer(ctx).load(snapshot):
            ctx.get_broadcast_state(MODEL_SNAPSHOT).put(MODEL_SNAPSHOT_KEY, bytes(payload))
            self.sink.write_model_instance(self.subtask, snapshot)

    def _dead_letter(self, rejection: Rejection, value: Row) -> Row:
        """A control record (rule command, snapshot) this operator cannot use, as a dead letter."""
        payload, topic, partition, offset, record_ts = value
        key, letter = dead_letter(rejection, payload, topic, partition, offset, record_ts)
        self.dead_letters.inc(rejection.reason)
        if self.redactor is not None:
            letter = self.redactor.dead_letter(letter)
        return Row(key, letter, self.operators.core.topics["deadletter"])

    def _apply_rule_command(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """Apply a rule command, or (one instance for all) emit an error record and change nothing."""
        payload = value[0]
        if is_experiment_command(_document(payload)):
            if self.experiments is None:
                if self.subtask == 0:
                    yield self._dead_letter(Rejection(INVALID_EXPERIMENT, "experiments need recommendations "
                                                      "(recommendations.enabled is false)"), value)
                return
            with contextlib.suppress(ExperimentError):  # the recommender reads it too, and dead-letters it once
                self.experiments.apply(payload, ctx)
            return
        book = self.operators.rules
        if book is None or self._engine(ctx) is None or self.catalog is None:
            return
        compiler = book.compiler()
        try:
            entry = self.catalog.apply(parse_command(payload, compiler))
        except RuleError as exc:
            if self.subtask == 0:
                yield self._dead_letter(Rejection(INVALID_RULE, str(exc)), value)
            return
        ctx.get_broadcast_state(RULE_CATALOG).put(entry.id, entry.to_json())
        rule_set = self.catalog.rule_set(compiler)
        self.engine = SegmentEngine(rule_set)
        self.sink.write_rules(self.subtask, rule_set.fingerprint, [entry])

    def process_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Iterator[Any]:
        """Load the user's values, run the core on the event, store and carry out its step."""
        self._prepare(ctx)
        timers = ctx.timer_service()
        values = self._values()
        step = self.core.on_event(values, ctx.get_current_key(), Event(*value), timers.current_watermark())
        yield from self._carry_out(values, step, timers)

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.flush_timer_set = False
            self.sink.flush()
            self.metrics.tick()
            return
        timers = ctx.timer_service()
        if timers.current_watermark() >= END_OF_INPUT_WATERMARK:
            return  # a bounded input ended: that is not time passing, so nothing expires
        self._prepare(ctx)
        values = self._values()
        step = self.core.on_timer(values, ctx.get_current_key(), timestamp)
        yield from self._carry_out(values, step, timers)

    def _prepare(self, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> None:
        """The rules and the model snapshot the core uses, from the broadcast state at the first call."""
        self.core.engine = self._engine(ctx)
        self.core.experiments = self.experiments.load(ctx) if self.experiments is not None else None
        if self.core.user_models is not None:
            self._scorer(ctx)

    def _values(self) -> StoredValues:
        return StoredValues(self.value_states)

    def _carry_out(self, values: StoredValues, step: Step, timers: TimerService) -> Iterator[Any]:
        """Store the user's values, stage the Redis writes, set the wake-ups, emit records and messages."""
        values.store()
        sink = self.sink
        for write in step.redis:
            match write:
                case StageProfile(update):
                    sink.stage_profile(update)
                case StageFeatures(vector):
                    sink.stage_features(vector)
                case StageModelScores(user, version, fields):
                    sink.stage_model_scores(user, version, fields)
                case StageSegmentChange(change, record):
                    (self.segment_entries if change.action == "enter" else self.segment_exits).inc(change.segment)
                    sink.stage_segment_change(change, record)
                case StageForget(user):
                    sink.stage_forget(user)
                case StageErase(user):
                    sink.stage_erase(user)
        for wakeup in step.wakeups:
            timers.register_event_time_timer(wakeup)
        for output in step.records:
            yield Row(*output)
        for late in step.late:
            self.late_events.inc()
            yield LATE_EVENTS, Row(*late)
        for route_name, receiver, message in step.sends:
            yield from self._send(route_name, receiver, message)
        if step.unconsented:
            self.without_consent.inc(step.unconsented)
        if step.erasures:
            self.erasures.inc(step.erasures)
        # Flush a quiet stream's tail too: what event time changed (a closed session's vector, expiries,
        # dormancy) reaches Redis even when no event follows.
        flush_later(self, timers, self.operators.flush_interval_ms)
        self.metrics.tick()

    def _send(self, route: str, receiver: str, message: Any) -> Iterator[Row]:
        """An internal record for the trainer or a recommender shard (``receiver``): one per message here;
        the micro-batched operator sends a list's messages to a receiver as one record."""
        yield Row(receiver.encode("utf-8"), pickle.dumps(message), route)

    def close(self) -> None:
        close_function(self)


class GlobalObject:
    """One global model object in keyed state under a constant key (the trainer's, a recommender
    shard's): written whole at most every ``write_interval_ms``, with a write-ahead log in between.

    In PyFlink's thread mode every ``update`` of a pickled state pickles at once, and these objects
    are large (the trainer ~25 KB, an item model megabytes): writing them per record cost more than
    everything else the job does. Instead each input is appended to a list state (a few hundred
    bytes) and the object is written, and the log cleared, once per interval. A restore loads the
    object and replays its log through ``replay``, so the model is exactly the one of the checkpoint.
    """

    def __init__(self, runtime_context: RuntimeContext, name: str, create: Callable[[], Any],
                 replay: Callable[[Any, bytes], None], write_interval_ms: int) -> None:
        self.state = runtime_context.get_state(global_object_state(name))
        self.log = runtime_context.get_list_state(global_object_log(name))
        self.create = create
        self.replay = replay
        self.write_interval_ms = write_interval_ms
        self.objects: dict[str, Any] = {}
        self.written: dict[str, int] = {}
        """Key -> processing time of its last whole write."""
        self.dirty: set[str] = set()

    def get(self, key: str) -> Any:
        """The object of ``key`` (the current key): from memory, else restored (state plus log), else new."""
        current = self.objects.get(key)
        if current is None:
            current = self.objects[key] = self.state.value() or self.create()
            for entry in self.log.get() or ():
                self.replay(current, bytes(entry))
        return current

    def changed(self, key: str, timers: TimerService, entry: bytes, force: bool = False) -> None:
        """``key``'s object (the current key's) learned ``entry``: write it whole if forced or due, else
        log the entry and write by a timer."""
        now = timers.current_processing_time()
        last = self.written.get(key)
        if force or last is None or now - last >= self.write_interval_ms:
            self._write(key, now)
            return
        self.log.add(entry)
        if key not in self.dirty:
            self.dirty.add(key)
            timers.register_processing_time_timer(last + self.write_interval_ms)

    def write(self, key: str, timers: TimerService) -> None:
        """Write ``key``'s object (the current key's) whole now, e.g. after a change no log entry replays."""
        self._write(key, timers.current_processing_time())

    def on_timer(self, key: str, now: int) -> None:
        """A processing-time timer of ``key`` (the current key) fired: write its object if it waits and is
        due (the function's other timers, e.g. Redis flushes, come here too)."""
        if key in self.dirty and now - self.written[key] >= self.write_interval_ms:
            self._write(key, now)

    def _write(self, key: str, now: int) -> None:
        self.state.update(self.objects[key])
        self.log.clear()
        self.written[key] = now
        self.dirty.discard(key)


def _document(payload: bytes | None) -> Any:
    """A control record's JSON, or None when it is not JSON (the parser that owns it says why)."""
    try:
        return orjson.loads(payload or b"")
    except orjson.JSONDecodeError:
        return None


def messages(payload: bytes) -> list[Any]:
    """The messages of an internal record: one (per-event user operator), or a list of them (a model's
    log) or of each one pickled (micro-batched: pickled when sent)."""
    message = pickle.loads(payload)
    if not isinstance(message, list):
        return [message]
    return [pickle.loads(item) if isinstance(item, bytes) else item for item in message]


def learn_interaction(config: RecConfig, model: ItemModel, entry: bytes) -> None:
    """Replay logged interactions into an item model."""
    for interaction in messages(entry):
        model.learn(interaction, config)


def learn_training_input(trainer: ModelTrainer, entry: bytes) -> None:
    """Replay logged training inputs exactly as they were processed (a snapshot one triggers was published)."""
    for training_input in messages(entry):
        training_input.learn(trainer)
        trainer.maybe_snapshot()


class ExperimentsInUse:
    """The experiments a job instance uses: the configured ones, then the control topic's commands, kept in
    the operator's broadcast state for a restore (the user operator and the recommender each keep theirs)."""

    def __init__(self, configured: tuple[Experiment, ...], secret: SecretSource, bounds: Bounds) -> None:
        self.configured, self.secret, self.bounds = configured, secret, bounds
        self.catalog: ExperimentCatalog | None = None
        self.policy: ExperimentPolicy | None = None
        self.key: bytes | None = None
        """The assignment key, resolved when an experiment first runs (a job without one needs no secret)."""

    def load(self, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> ExperimentPolicy | None:
        """The active experiments as a policy (None: none runs); read from broadcast state at the first call."""
        if self.catalog is None:
            self.catalog = ExperimentCatalog.of(self.configured)
            for experiment_id, data in ctx.get_broadcast_state(EXPERIMENT_CATALOG).items():
                self.catalog.entries[experiment_id] = entry_from_json(data)
            self._use(self.catalog)
        return self.policy

    def apply(self, payload: bytes, ctx: KeyedBroadcastProcessFunction.Context) -> None:
        """Apply an experiment command; raises :class:`ExperimentError` (changing nothing) when it cannot."""
        self.load(ctx)
        assert self.catalog is not None
        try:
            self._key()
        except SecretError as exc:  # checked at start only when the settings define experiments
            raise ExperimentError(f"experiments need the job's secret (the assignment key): {exc}") from None
        entry = self.catalog.apply(parse_experiment_command(payload))
        ctx.get_broadcast_state(EXPERIMENT_CATALOG).put(entry.experiment.id, entry.to_json())
        self._use(self.catalog)

    def _use(self, catalog: ExperimentCatalog) -> None:
        active = catalog.active()
        kept = frozenset(i for i, entry in catalog.entries.items() if entry.status != STOPPED)
        self.policy = ExperimentPolicy(active, self._key(), self.bounds, kept) if active else None

    def _key(self) -> bytes:
        if self.key is None:
            self.key = self.secret.resolve()
        return self.key


@dataclass(frozen=True)
class RecommenderSettings:
    """What the recommender function needs, built on the client."""

    config: RecConfig
    topic: str
    redis_ttl_s: int
    state_ttl_ms: int
    redis: Callable[[], UserStateSink]
    flush_interval_ms: int
    state_write_ms: int
    experiments: tuple[Experiment, ...]
    """The configured experiments (docs/experiments.md); commands on the control topic change them."""
    bounds: Bounds
    secret: SecretSource
    """The assignment key (the job's secret), resolved on the worker."""
    deadletter_topic: str
    redact_deadletters: bool
    """Redact the dead letters of control records (``privacy.redact_deadletters``), as the user operator does."""


class CodedTable:
    """A ``MapState`` of bytes seen as a table of decoded values (``operators.recs.serving.UserTable``)."""

    def __init__(self, state: Any, encode: Callable[[Any], bytes], decode: Callable[[bytes], Any]) -> None:
        self.state, self.encode, self.decode = state, encode, decode

    def get(self, key: str) -> Any | None:
        data = self.state.get(key)
        return None if data is None else self.decode(data)

    def put(self, key: str, value: Any) -> None:
        self.state.put(key, self.encode(value))

    def remove(self, key: str) -> None:
        self.state.remove(key)


class RecommenderFunction(KeyedBroadcastProcessFunction):
    """Keyed by recommender shard: the shell of :class:`RecommenderCore`. Loads the shard's item model and
    the users' published lists and experiment states, calls the core with each record's requests, then
    stages and emits its lists, tombstones and per-arm counters (to the experiment metrics operator).
    The broadcast input is the control topic: experiment commands change the experiments in use."""

    def __init__(self, settings: RecommenderSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        config = self.settings.config
        self.models = GlobalObject(runtime_context, ITEM_MODEL_STATE, lambda: RecommendationServer(config).model,
                                   functools.partial(learn_interaction, config), self.settings.state_write_ms)
        self.published = runtime_context.get_map_state(published_recs_state(self.settings.state_ttl_ms))
        self.experiment_states = CodedTable(
            runtime_context.get_map_state(experiment_state(self.settings.state_ttl_ms)),
            encode_experiments, decode_experiments)
        self.core = RecommenderCore(config)
        self.experiments = ExperimentsInUse(self.settings.experiments, self.settings.secret, self.settings.bounds)
        self.subtask = subtask_index(runtime_context)
        self.sink = self.settings.redis()
        self.flush_timer_set = False
        self.metrics = metrics = JobMetrics(runtime_context.get_metrics_group())
        redis_readings(metrics, self.sink)
        self.rec_lists = metrics.counter("rec_lists")
        self.shadow_lists = metrics.counter("rec_shadow_lists")

    def process_broadcast_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """An experiment command applies (kept in broadcast state for a restore), or (one instance for all) is
        dead-lettered and changes nothing. Rule commands are the user operator's."""
        payload = value[0]
        if not is_experiment_command(_document(payload)):
            return  # a rule command, or not JSON: the user operator applies or reports it
        try:
            self.experiments.apply(payload, ctx)
        except ExperimentError as exc:
            if self.subtask == 0:
                key, letter = dead_letter(Rejection(INVALID_EXPERIMENT, str(exc)), payload, *value[1:])
                if self.settings.redact_deadletters:
                    letter = Redactor().dead_letter(letter)
                yield Row(key, letter, self.settings.deadletter_topic)

    def process_element(self, row: Row, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Iterator[Any]:
        settings = self.settings
        shard = ctx.get_current_key()
        self.core.experiments = self.experiments.load(ctx)
        step = self.core.on_requests(self.models.get(shard), messages(row[1]), self.published, self.experiment_states)
        lists = 0
        for output in step.outputs:
            user = output.user_key
            if isinstance(output, Forget):
                self.sink.stage_forget_recs(user)
                if output.erase:  # after any list still in flight: compacted topics forget the user
                    yield Row(user.encode("utf-8"), None, settings.topic)
            else:
                self.sink.stage_recs(output, settings.redis_ttl_s)
                lists += 1
                yield Row(user.encode("utf-8"), output.to_json(int(time.time() * 1000)), settings.topic)
        if lists:
            self.rec_lists.inc(lists)
        if step.shadows:
            self.shadow_lists.inc(step.shadows)
        policy = self.core.experiments
        for experiment_id, deltas in by_experiment(step.deltas).items():
            assert policy is not None  # only a policy counts
            yield Row(experiment_id.encode("utf-8"), pickle.dumps((policy.by_id[experiment_id], deltas)),
                      EXPERIMENTS_ROUTE)
        if step.interactions:
            self.models.changed(shard, ctx.timer_service(), pickle.dumps(step.interactions))
        flush_later(self, ctx.timer_service(), settings.flush_interval_ms)
        self.metrics.tick()

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterator[Any]:
        """The Redis flush timer, or a shard's model write timer."""
        self.models.on_timer(ctx.get_current_key(), timestamp)
        self.flush_timer_set = False
        self.sink.flush()
        self.metrics.tick()
        return iter(())

    def close(self) -> None:
        close_function(self)


@dataclass(frozen=True)
class TrainerSettings:
    config: ModelConfig
    topics: dict[str, str]
    """``models`` (snapshots) and ``drift``."""
    redis: Callable[[], UserStateSink]
    state_write_ms: int
    secret: SecretSource
    """The job's secret (resolved on the worker): the key of the snapshots' signatures."""


class ModelTrainerFunction(KeyedProcessFunction):
    """The one place the segment models learn (keyed by a constant): publishes versioned snapshots to
    the snapshot topic, which the user operator reads back, and drift events to Kafka and Redis."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        config = self.settings.config
        self.trainers = GlobalObject(runtime_context, TRAINER_STATE,
                                     lambda: ModelTrainer(config, lineage=uuid.uuid4().hex[:12]),
                                     learn_training_input, self.settings.state_write_ms)
        self.sink = self.settings.redis()
        self.signer = snapshot_signer(self.settings.secret.resolve())
        self.end_timer_set = False
        self.quality: dict[str, float] = {}
        self.metrics = metrics = JobMetrics(runtime_context.get_metrics_group())
        redis_readings(metrics, self.sink)
        metrics.reading("model_version", lambda: int(self.quality.get("version", 0)))
        metrics.reading("intent_auc_permille", lambda: int(1000 * self.quality.get("intent_auc", 0.0)))
        metrics.reading("intent_log_loss_permille", lambda: int(1000 * self.quality.get("intent_log_loss", 0.0)))

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        topics = self.settings.topics
        trainer: ModelTrainer = self.trainers.get(TRAINER_KEY)
        published = False
        value: TrainingInput
        for value in messages(row[1]):
            drift = value.learn(trainer)
            if drift is not None:
                self.sink.write_drift(drift)
                yield Row(drift.model.encode("utf-8"), drift.to_json(), topics["drift"])
            snapshot = trainer.maybe_snapshot()
            if snapshot is not None:
                published = True
                yield self._publish(trainer, snapshot)
        # A published version is in state before any later checkpoint: a restore never re-issues it.
        self.trainers.changed(TRAINER_KEY, ctx.timer_service(), bytes(row[1]), force=published)
        if not self.end_timer_set:  # deduplicated by Flink, and kept in state across a restore
            ctx.timer_service().register_event_time_timer(END_OF_INPUT_WATERMARK)
            self.end_timer_set = True
        self.metrics.tick()

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        """A state write timer, or the end of a bounded input: publish what was learned since the last snapshot."""
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.trainers.on_timer(ctx.get_current_key(), timestamp)
            self.metrics.tick()
            return
        trainer: ModelTrainer = self.trainers.get(TRAINER_KEY)
        snapshot = trainer.maybe_snapshot(final=True)
        if snapshot is not None:
            yield self._publish(trainer, snapshot)
            self.trainers.write(TRAINER_KEY, ctx.timer_service())

    def _publish(self, trainer: ModelTrainer, snapshot: ModelSnapshot) -> Row:
        """Redis gets the snapshot's summary with the trainer's quality; the returned row goes to the snapshot topic."""
        quality = trainer.quality()
        self.quality = {"version": snapshot.version, **quality}
        self.sink.write_model(snapshot, quality)
        return Row(b"models", encode_snapshot(snapshot, self.signer), self.settings.topics["models"])

    def close(self) -> None:
        close_function(self)


def flush_later(function: Any, timers: TimerService, interval_ms: int) -> None:
    """Flush the function's Redis sink now when due, else at most ``interval_ms`` from now (one timer);
    nothing when nothing is staged."""
    if function.sink.due():
        function.sink.flush()
    elif not function.flush_timer_set and not function.sink.empty():
        timers.register_processing_time_timer(timers.current_processing_time() + interval_ms)
        function.flush_timer_set = True


def close_function(function: Any) -> None:
    """Push the function's last counts and close its Redis sink (either may be absent when ``open`` failed:
    keep that error visible)."""
    metrics = getattr(function, "metrics", None)
    if metrics is not None:
        metrics.push()
    sink = getattr(function, "sink", None)
    if sink is not None:
        sink.close()

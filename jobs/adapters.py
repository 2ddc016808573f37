"""Thin Flink functions: load state, call the pure operator, store state, emit."""

from __future__ import annotations

import functools
import pickle
import time
import uuid
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
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
from jobs.metrics import LabelledCounter, redis_gauges
from operators.deadletter import dead_letter, late_record
from operators.events import Event
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import FeatureOperator, FeatureVector, UserFeatures
from operators.features.rfm import PopulationScorer
from operators.models.config import ModelConfig
from operators.models.training import ModelScorer, ModelSnapshot, ModelTrainer
from operators.models.user import Rescored, TrainingInput, UserModels, UserModelState
from operators.privacy.consent import COUNTER_STRIDE, ConsentPolicy, ConsentState
from operators.privacy.erasure import ErasureSettings, Held, plan_erasure
from operators.privacy.identity import (
    ERASE_TYPE,
    HANDOVER_TYPE,
    ErasureCommand,
    Handover,
    IdentityState,
    Route,
    forwarded,
    link,
    merge_record,
    route,
    routing_key,
)
from operators.privacy.merge import StateMerger
from operators.privacy.pii import PiiHasher, Redactor, pseudonymize_event
from operators.profile import ProfileOperator, UserProfile
from operators.recs.config import RecConfig
from operators.recs.model import ItemModel
from operators.recs.serving import Published, RecommendationServer, RecRequest
from operators.recs.user import UserRecState
from operators.rules.catalog import RuleBook, RuleCatalog, RuleEntry, parse_command
from operators.rules.engine import RuleState, SegmentChange, SegmentEngine
from operators.rules.language import RuleError
from operators.segment_spec import SegmentSpec, parse_segment
from operators.validation import INVALID_INTERNAL, INVALID_RULE, INVALID_SNAPSHOT, Limits, Rejection, parse_event
from state.codecs import (
    decode_consent,
    decode_features,
    decode_identity,
    decode_models,
    decode_profile,
    decode_recs,
    decode_rules,
    encode_consent,
    encode_features,
    encode_identity,
    encode_models,
    encode_profile,
    encode_recs,
    encode_rules,
)
from state.descriptors import (
    ITEM_MODEL_STATE,
    MODEL_SNAPSHOT,
    MODEL_SNAPSHOT_KEY,
    RULE_CATALOG,
    TRAINER_STATE,
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
    PUBLISHED_RECS_STATE,
    USER_SLOTS,
    decode_states,
    encode_states,
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
#: Routes (``topic`` values) of the user operator's internal records: pickled training inputs for the
#: trainer, pickled recommendation requests for the recommender; ``k`` is the receiver's key. They
#: travel on the main output, split off in Java (jobs/pipeline.py), because PyFlink 2.0.2 drops side
#: outputs of a keyed broadcast function's ``on_timer`` (intent deadlines and retention are timers).
TRAINING_ROUTE = "__training__"
RECS_ROUTE = "__recommend__"
INTERNAL_ROUTES = (TRAINING_ROUTE, RECS_ROUTE)
#: Key of the single trainer (the whole stream of training inputs goes to one place).
TRAINER_KEY = "trainer"
#: Events that change a user's list without teaching the model (others do it through an interaction).
LIST_EVENTS = frozenset({"checkout_start", "remove_from_cart"})
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
        metrics = runtime_context.get_metrics_group()
        self.events_in = LabelledCounter(metrics, "events_in", "event_type")
        self.dead_letters = LabelledCounter(metrics, "dead_letters", "reason")
        privacy = self.privacy
        self.hasher = PiiHasher(privacy.secret.resolve()) if privacy and privacy.hash_identifiers else None
        self.redactor = Redactor(self.hasher) if privacy and privacy.redact_deadletters else None
        self.internal_signer = internal_signer(privacy.secret.resolve()) if privacy and privacy.internal_topic else None

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
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
        counter = getattr(self, "counter", None)
        if counter is not None:
            counter.close()


def retention_due(features: UserFeatures, config: FeatureConfig) -> int:
    """When an idle user's state goes: the day boundary after ``retention_ms`` of event-time silence
    (one retention timer per user and day of activity, not per event)."""
    retention = features.reference_ts + config.retention_ms
    return retention - retention % DAY_MS + DAY_MS


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
    """Consent gating and erasure in the user operator (docs/privacy.md)."""

    consent: ConsentPolicy
    secret: SecretSource
    """Resolved on the worker (``open``): the key of erasure confirmations' subject hashes."""
    tombstone_topics: tuple[str, ...]
    """The user-keyed topics the user operator writes (profiles, features, segments)."""
    confirmation_topic: str
    consent_state_ttl_ms: int
    key_prefix: str
    identity: IdentityOperators | None = None
    """Identity stitching; None: an anonymous visitor and the user they log in as stay two profiles."""


@dataclass(frozen=True)
class IdentityOperators:
    """Identity stitching (docs/privacy.md): the internal topic that carries handovers, forwarded
    events and erasure cascades to another key, and the merges output."""

    internal_topic: str
    merges_topic: str
    max_links: int


@dataclass(frozen=True)
class UserOperators:
    """Everything the keyed user function needs, built on the client and shipped to the workers."""

    profile: ProfileOperator
    features: FeatureConfig
    features_enabled: bool
    rules: RuleBook | None
    """The initial segment rules; None: no segments."""
    topics: dict[str, str]
    """Output topic per record kind: profiles, features, late, segments, deadletter."""
    state_ttl_ms: int
    allowed_lateness_ms: int
    redis: Callable[[], UserStateSink]
    population: Callable[[int], PopulationScorer]
    """Builds the R/F/M population scorer of the parallel instance with this index."""
    flush_interval_ms: int
    models: ModelConfig | None = None
    """Online models (needs features); None: no scoring, no training inputs."""
    recs: RecConfig | None = None
    """Recommendations; None: no requests to the recommender."""
    rec_shards: int = 1
    """Recommender instances (``recommendations.shards``): requests are keyed by :func:`rec_shard`."""
    privacy: PrivacyOperators | None = None
    """Consent and erasure; None: every event is personalized."""
    secret: SecretSource | None = None
    """The job's secret (resolved on the worker): the key of the snapshots' signatures."""
    max_snapshot_bytes: int = 1 << 20
    redact_deadletters: bool = False
    """Redact the dead letters of control records too (rule commands, snapshots), as ingest does events'."""


def shard_of(key: str, shards: int) -> int:
    """The shard of a key (stable across runs, restarts and rescaling)."""
    return zlib.crc32(key.encode("utf-8")) % shards


def rec_shard(user_key: str, shards: int) -> str:
    """The recommender instance a user's requests go to."""
    return str(shard_of(user_key, shards))


class UserFunction(KeyedBroadcastProcessFunction):
    """Keyed by user: dedup + profile + features + segment rules in one operator (one state access each).

    Emits profile updates, feature vectors and segment changes to Kafka, stages them for Redis,
    sends events later than the allowed lateness to the late side output, closes sessions, exits
    segments and expires idle users with event-time timers. The broadcast input carries rule
    commands: every instance applies them to its copy of the rule catalog (kept in broadcast
    state), and users see the new rules at their next event or timer.
    """

    def __init__(self, operators: UserOperators) -> None:
        self.operators = operators

    def open(self, runtime_context: RuntimeContext) -> None:
        ops = self.operators
        (self.profile_state, self.feature_state, self.rule_state, self.model_state, self.rec_state) = (
            self._user_state(runtime_context, user_value(slot, ops.state_ttl_ms)) for slot in USER_SLOTS)
        self.user_models = UserModels(ops.models) if ops.models is not None and ops.features_enabled else None
        self.scorer = ModelScorer()
        self.snapshot_loaded = False
        if self.user_models is not None:
            assert ops.secret is not None, "models need the job's secret (snapshot signatures)"
            self.snapshot_signer = snapshot_signer(ops.secret.resolve())
        self.invalid_snapshots = runtime_context.get_metrics_group().counter("invalid_snapshots")
        self.redactor = Redactor() if ops.redact_deadletters else None
        self.segments_now: tuple[str, ...] = ()
        """The user's segments after the latest rule step (what the recommender's trending lists use)."""
        self.sink = ops.redis()
        metrics = runtime_context.get_metrics_group()
        redis_gauges(metrics, self.sink)
        self.dead_letters = LabelledCounter(metrics, "dead_letters", "reason")
        self.segment_entries = LabelledCounter(metrics, "segment_entries", "segment")
        self.segment_exits = LabelledCounter(metrics, "segment_exits", "segment")
        self.subtask = subtask_index(runtime_context)
        self.features = FeatureOperator(ops.features, ops.population(self.subtask))
        self.late_events = metrics.counter("late_events")
        self.flush_timer_set = False
        self.catalog: RuleCatalog | None = None
        self.engine: SegmentEngine | None = None
        privacy = ops.privacy
        if privacy is not None:
            self.consent_state = self._user_state(runtime_context, user_value(CONSENT, privacy.consent_state_ttl_ms))
            self.erasure = ErasureSettings(ERASED_STATES, KEPT_STATES, PUBLISHED_RECS_STATE, len(USER_KEYS),
                                           privacy.tombstone_topics, privacy.confirmation_topic,
                                           PiiHasher(privacy.secret.resolve()))
            metrics = runtime_context.get_metrics_group()
            self.without_consent = metrics.counter("events_without_consent")
            self.erasures = metrics.counter("erasures")
        self.identity = privacy.identity if privacy is not None else None
        if self.identity is not None and privacy is not None:
            self.identity_state = self._user_state(runtime_context, user_value(IDENTITY, ops.state_ttl_ms))
            self.internal_signer = internal_signer(privacy.secret.resolve())

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
                snapshot = decode_snapshot(bytes(stored), self.snapshot_signer, len(stored))
                self.scorer.load(snapshot)
                self.sink.write_model_instance(self.subtask, snapshot)
        return self.scorer

    def process_broadcast_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """A rule command or a model snapshot (the two control topics share the broadcast input)."""
        if value[1] == self.operators.topics["models"]:
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
        return Row(key, letter, self.operators.topics["deadletter"])

    def _apply_rule_command(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """Apply a rule command, or (one instance for all) emit an error record and change nothing."""
        payload = value[0]
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
        """Apply an event. What a timer would have done before the event's time is done first (a user
        past retention is forgotten, a session past its gap is closed), so the outputs do not depend
        on whether the watermark reached the timer before this event arrived."""
        event = Event(*value)
        ops = self.operators
        timers = ctx.timer_service()
        engine = self._engine(ctx)
        if ops.privacy is not None:
            admitted = yield from self._privacy(event, ctx.get_current_key(), engine, timers)
            if admitted is None:
                return
            event = admitted
        features: UserFeatures | None = None
        if ops.features_enabled:
            stored_features = self.feature_state.value()
            features = decode_features(stored_features) if stored_features else None
            if features is not None:
                due = retention_due(features, ops.features)
                if due <= event.ts:
                    yield from self._forget(event.user_key, features, engine, due, timers)
                    features = None
        stored = self.profile_state.value()
        profile, update = ops.profile.process(
            decode_profile(stored) if stored
            else UserProfile(first_seen=event.ts, last_seen=event.ts, seq=self._counter_base()), event)
        if update is None:
            return
        self.profile_state.update(encode_profile(profile))
        self.sink.stage_profile(update)
        yield Row(update.user_key.encode("utf-8"), update.to_json(), ops.topics["profiles"])
        if not ops.features_enabled and engine is None:
            self._schedule_flush(timers)
            return
        if event.ts < timers.current_watermark() - ops.allowed_lateness_ms:
            self.late_events.inc()
            yield LATE_EVENTS, Row(event.user_key.encode("utf-8"), late_record(event), ops.topics["late"])
        else:
            decision: dict[str, Any] = {}
            rescored: Rescored | None = None
            if ops.features_enabled:
                if features is not None:
                    yield from self._close_due_session(features, event.user_key, event.ts)
                features, vector = self.features.process(features or UserFeatures(version=self._counter_base()), event)
                decision = features.decision
                yield from self._after_features(features, vector, timers)
                if self.user_models is not None:
                    purchase = event.ts if event.type == "purchase" else None
                    rescored, intent = yield from self._models(vector, purchase, None, ctx, timers)
                    decision["intent"] = intent
            if engine is not None:
                first_seen = profile.first_seen
                yield from self._segments(timers, lambda state: engine.observe(state, event, first_seen, decision)
                                          + self._model_segment(engine, state, event.user_key, event.ts, rescored))
            if ops.recs is not None:
                yield from self._recommend(event, profile.seq - profile.seq % COUNTER_STRIDE)
        self._schedule_flush(timers)

    def _privacy(self, event: Event, key: str, engine: SegmentEngine | None,
                 timers: TimerService) -> Generator[Any, None, Event | None]:
        """Identity routing and consent before anything else: the event to process here (a merged
        handover's identify), or None when it was forwarded, handed over, erased or not consented."""
        identity = self.identity
        step = None
        if identity is not None:
            if event.type == ERASE_TYPE:
                yield from self._cascaded_erasure(event, key, engine, timers)
                return None
            step = route(self._identity_state(), event, key)
            if step.route is Route.FORWARD:  # the anonymous key merged: its events (consent too) count there
                yield self._internal(forwarded(event, step.target))
                return None
        if not (yield from self._consent(event, engine, timers)):
            return None
        if step is not None and step.route is Route.HANDOVER:
            yield from self._hand_over(event, key, step.state, step.target, engine, timers)
            return None
        if identity is not None and event.type == HANDOVER_TYPE:
            return (yield from self._merge(Handover.from_event(event), engine))
        return event

    def _identity_state(self) -> IdentityState | None:
        stored = self.identity_state.value()
        return decode_identity(stored) if stored else None

    def _internal(self, event: Event) -> Row:
        """A record for another key, through the internal topic (read back as input, keyed by ``user_key``)."""
        assert self.identity is not None
        return Row(event.user_key.encode("utf-8"), encode_internal(event, self.internal_signer),
                   self.identity.internal_topic)

    def _user_states(self) -> dict[str, Any]:
        """The five user states by their logical names (``state/slots.py``)."""
        states = (self.profile_state, self.feature_state, self.rule_state, self.model_state, self.rec_state)
        return dict(zip((slot.name for slot in USER_SLOTS), states, strict=True))

    def _hand_over(self, identify: Event, key: str, alias: IdentityState | None, target: str,
                   engine: SegmentEngine | None, timers: TimerService) -> Iterator[Any]:
        """The anonymous key logs in: its segments exit, its population share goes, its stored state
        travels to the known user and only the alias stays here."""
        stored = {name: bytes(data) for name, state in self._user_states().items() if (data := state.value())}
        yield from self._leave(key, identify.ts, "merge", engine,
                               decode_features(stored["features"]) if "features" in stored else None,
                               decode_rules(stored["rules"]) if "rules" in stored else None)
        self.sink.stage_forget(key)
        assert alias is not None
        self.identity_state.update(encode_identity(alias))
        yield self._internal(Handover(key, target, identify, stored).to_event())
        self._schedule_flush(timers)

    def _merge(self, handover: Handover, engine: SegmentEngine | None) -> Generator[Any, None, Event]:
        """Merge an anonymous key's state into this known user's (once: a re-delivered handover is
        recognised by the link), emit the merge event; the identify is then processed as usual."""
        assert self.identity is not None
        identity = self._identity_state()
        if identity is None or handover.source not in identity.linked:
            ops = self.operators
            merger = StateMerger(self.features, ops.recs or RecConfig(), engine.rules.signals if engine else {},
                                 ops.profile.dedup_max_ids, ops.models.intent_max_pending if ops.models else 16)
            states = self._user_states()
            known = decode_states({name: state.value() for name, state in states.items()})
            merged = encode_states(merger.merge(known, decode_states(handover.states), self._counter_base()))
            for name, state in states.items():
                if name in merged:
                    state.update(merged[name])
                else:
                    state.clear()
            self.identity_state.update(encode_identity(
                link(identity, handover.source, handover.identify.ts, self.identity.max_links)))
            carried = tuple(slot.name for slot in USER_SLOTS if slot.name in handover.states)
            key, record = merge_record(handover, carried)
            yield Row(key, record, self.identity.merges_topic)
        return handover.identify

    def _cascaded_erasure(self, event: Event, key: str, engine: SegmentEngine | None,
                          timers: TimerService) -> Iterator[Any]:
        """A related key (alias target or linked anonymous key) was erased: the same person, so this
        key erases too and stops personalizing."""
        privacy = self.operators.privacy
        assert privacy is not None
        command = ErasureCommand.from_event(event)
        stored = self.consent_state.value()
        step = privacy.consent.cascaded(decode_consent(stored) if stored else None, command.reason, command.ts)
        self.consent_state.update(encode_consent(step.state))
        yield from self._erase(key, step.erase, command.ts, step.state.generation, engine, timers, command.source)

    def _consent(self, event: Event, engine: SegmentEngine | None,
                 timers: TimerService) -> Generator[Any, None, bool]:
        """Apply a consent change (a withdrawal or an erasure request erases the user at once) and
        decide whether the event may be personalized; the generator's value says so."""
        privacy = self.operators.privacy
        assert privacy is not None
        stored = self.consent_state.value()
        consent: ConsentState | None = decode_consent(stored) if stored else None
        if event.type == "consent_change":
            step = privacy.consent.apply(consent, event)
            if not step.stale:
                self.consent_state.update(encode_consent(step.state))
            if step.erase:
                yield from self._erase(event.user_key, step.erase, event.ts, step.state.generation, engine, timers)
                return False
            consent = step.state
        if not privacy.consent.may_personalize(consent, event.ts):
            self.without_consent.inc()
            return False
        return True

    def _counter_base(self) -> int:
        """Where the current user's new counters start: above every id erased before (docs/privacy.md)."""
        if self.operators.privacy is None:
            return 0
        stored = self.consent_state.value()
        return decode_consent(stored).counter_base if stored else 0

    def _erase(self, user: str, reason: str, ts: int, generation: int, engine: SegmentEngine | None,
               timers: TimerService, source: str = "") -> Iterator[Any]:
        """Erase the user now: exit every segment, clear every keyed state but consent, delete the
        Redis keys and change-stream entries, tombstone the user-keyed topics, confirm (docs/privacy.md)."""
        stored_features, stored_rules = self.feature_state.value(), self.rule_state.value()
        rules = decode_rules(stored_rules) if stored_rules else None
        identity = self._identity_state() if self.identity is not None else None
        held = Held(segments=tuple(rules.members) if rules is not None else (),
                    related=identity.related_keys() if identity is not None else (),
                    recs=self.rec_state.value() is not None)
        plan = plan_erasure(user, reason, ts, generation, held, self.erasure, source)
        yield from self._leave(user, ts, "erasure", engine,
                               decode_features(stored_features) if stored_features else None, rules, erase=True)
        if self.identity is not None:
            self.identity_state.clear()
            for command in plan.cascade:  # one hop: a cascade never returns to its source
                yield self._internal(command.to_event())
        self.sink.stage_erase(user)
        for tombstone in plan.tombstones:
            yield Row(tombstone.key, None, tombstone.topic)
        yield Row(plan.confirmation.key(), plan.confirmation.to_json(), self.erasure.confirmation_topic)
        self.erasures.inc()
        self._schedule_flush(timers)

    def _models(self, vector: FeatureVector | None, purchase_ts: int | None, now: int | None,
                ctx: KeyedBroadcastProcessFunction.ReadOnlyContext,
                timers: TimerService) -> Generator[Any, None, tuple[Rescored | None, float | None]]:
        """Settle intent examples (a purchase at ``purchase_ts``: positives; a timer at ``now``:
        negatives), send the trainer its inputs, score a new vector.

        Returns (a membership change, the intent score) as the generator's value.
        """
        models = self.user_models
        assert models is not None
        stored = self.model_state.value()
        if not stored and vector is None:
            return None, None
        state = decode_models(stored) if stored else UserModelState()
        deadline_before = models.deadline(state)
        inputs = models.purchase(state, purchase_ts) if purchase_ts is not None else []
        if now is not None:
            inputs += models.expire(state, now)
        rescored = None
        if vector is not None:
            inputs += models.vector(state, vector, by_purchase=purchase_ts is not None)
            rescored = models.score(state, vector, self._scorer(ctx))
            self.sink.stage_model_scores(vector.user_key, vector.version, [
                "model_version", state.version, "cluster", state.membership.cluster
                if state.membership.cluster is not None else "", "intent",
                "" if state.intent is None else round(state.intent, 4), "ts", vector.ts])
        self.model_state.update(encode_models(state))
        deadline = models.deadline(state)
        if deadline is not None and deadline != deadline_before:
            timers.register_event_time_timer(deadline)
        for training_input in inputs:
            yield from self._send(TRAINING_ROUTE, TRAINER_KEY, training_input)
        return rescored, state.intent

    @staticmethod
    def _model_segment(engine: SegmentEngine, state: RuleState, user: str, now: int,
                       rescored: Rescored | None) -> list[SegmentChange]:
        if rescored is None:
            return []
        return engine.move_model_segment(state, user, rescored.entered, now,
                                         {"kind": rescored.cause, "model_version": rescored.score.version},
                                         rescored.score.version)

    def _recommend(self, event: Event, seq_base: int) -> Iterator[Any]:
        """Update the user's recommendation state; ask the recommender for a list when it may change
        (``seq_base``: the user's counter base, read off the profile ``seq``)."""
        config = self.operators.recs
        assert config is not None
        if event.type not in config.event_weights and event.type not in LIST_EVENTS:
            return  # neither teaches the model nor changes the list: no state access
        stored = self.rec_state.value()
        user = decode_recs(stored) if stored else UserRecState()
        interaction = user.remember(event, config, "", self.segments_now)
        self.rec_state.update(encode_recs(user))
        yield from self._rec_request(RecRequest(event.user_key, event.event_id, event.ts, interaction, user,
                                           self.segments_now, seq_base=seq_base))

    def _rec_request(self, request: RecRequest) -> Iterator[Row]:
        yield from self._send(RECS_ROUTE, rec_shard(request.user_key, self.operators.rec_shards), request)

    def _send(self, route: str, receiver: str, message: Any) -> Iterator[Row]:
        """An internal record for the trainer or a recommender shard (``receiver``): one per message here;
        the micro-batched operator sends a list's messages to a receiver as one record."""
        yield Row(receiver.encode("utf-8"), pickle.dumps(message), route)

    def _close_due_session(self, features: UserFeatures, user: str, now: int) -> Iterator[Row]:
        """Close the open session if its gap has passed by ``now``, exactly as its timer would."""
        expiry = features.sessions.expiry(self.operators.features.session_gap_ms)
        if expiry is not None and expiry <= now:
            features.sessions.timer_fired(expiry)
            vector = self.features.close_session(features, user, expiry)
            if vector is not None:
                self.sink.stage_features(vector)
                yield Row(user.encode("utf-8"), vector.to_json(), self.operators.topics["features"])

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.flush_timer_set = False
            self.sink.flush()
            return
        timers = ctx.timer_service()
        if timers.current_watermark() >= END_OF_INPUT_WATERMARK:
            return  # a bounded input ended: that is not time passing, so nothing expires
        user = ctx.get_current_key()
        engine = self._engine(ctx)
        rescored: Rescored | None = None
        stored_features = self.feature_state.value()
        if stored_features:
            features = decode_features(stored_features)
            if retention_due(features, self.operators.features) <= timestamp:
                yield from self._forget(user, features, engine, timestamp, timers)
                return
            session_timer = features.sessions.timer_at
            vector = None
            if session_timer is not None and session_timer <= timestamp:  # not a rule timer: close the session
                features.sessions.timer_fired(timestamp)
                vector = self.features.close_session(features, user, timestamp)
                yield from self._after_features(features, vector, timers)
            if self.user_models is not None:  # intent deadlines, and scoring the closed session's vector
                rescored, _ = yield from self._models(vector, None, timestamp, ctx, timers)
        if engine is not None and (self.rule_state.value() or rescored is not None):
            yield from self._segments(timers, lambda state: engine.advance(state, user, timestamp)
                                      + self._model_segment(engine, state, user, timestamp, rescored))
        # What event time changed (a closed session's vector, expiries, dormancy) reaches Redis even
        # when no event follows: a quiet stream's last changes must not wait for the next one.
        self._schedule_flush(timers)

    def _forget(self, user: str, features: UserFeatures, engine: SegmentEngine | None, timestamp: int,
                timers: TimerService) -> Iterator[Any]:
        """Idle past retention: exit every segment, then nothing of the user stays behind."""
        stored_rules = self.rule_state.value()
        yield from self._leave(user, timestamp, "retention", engine, features,
                               decode_rules(stored_rules) if stored_rules else None)
        self.sink.stage_forget(user)
        self._schedule_flush(timers)

    def _leave(self, user: str, ts: int, cause: str, engine: SegmentEngine | None, features: UserFeatures | None,
               rules: RuleState | None, erase: bool = False) -> Iterator[Any]:
        """The user leaves this operator (retention, erasure, a merge into another key): their R/F/M
        leaves the population, every segment is exited with ``cause``, the recommender forgets the
        list (and tombstones it on ``erase``), and the five user states are cleared."""
        if features is not None:
            self.features.forget(features)
        if engine is not None and rules is not None:
            yield from self._emit_changes(engine.forget(rules, user, ts, cause))
        if self.operators.recs is not None and self.rec_state.value():
            yield from self._rec_request(RecRequest(user, "", ts, None, None, (), erase=erase))
        for state in self._user_states().values():
            state.clear()

    def _segments(self, timers: TimerService,
                  step: Callable[[RuleState], list[SegmentChange]]) -> Iterator[Row]:
        """Load the user's rule state, run ``step``, store it, set the next rule timer, emit the changes."""
        stored = self.rule_state.value()
        state = decode_rules(stored) if stored else RuleState(seq=self._counter_base())
        wake_before = state.wake
        changes = step(state)
        self.segments_now = tuple(sorted(state.members))
        self.rule_state.update(encode_rules(state))
        if state.wake is not None and state.wake != wake_before:
            timers.register_event_time_timer(state.wake)
        yield from self._emit_changes(changes)

    def _emit_changes(self, changes: list[SegmentChange]) -> Iterator[Row]:
        if not changes:
            return
        processing_time = int(time.time() * 1000)
        for change in changes:
            record = change.to_json(processing_time)
            (self.segment_entries if change.action == "enter" else self.segment_exits).inc(change.segment)
            self.sink.stage_segment_change(change, record)
            yield Row(change.user_key.encode("utf-8"), record, self.operators.topics["segments"])

    def _after_features(self, features: UserFeatures, vector: FeatureVector | None,
                        timers: TimerService) -> Iterator[Row]:
        config = self.operators.features
        expiry = features.sessions.needs_timer(config.session_gap_ms)
        if expiry is not None:
            timers.register_event_time_timer(expiry)
        timers.register_event_time_timer(retention_due(features, config))
        self.feature_state.update(encode_features(features))
        if vector is not None:
            self.sink.stage_features(vector)
            yield Row(vector.user_key.encode("utf-8"), vector.to_json(), self.operators.topics["features"])

    def _schedule_flush(self, timers: TimerService) -> None:
        # Flush a quiet stream's tail too: one processing-time timer per pending batch.
        flush_later(self, timers, self.operators.flush_interval_ms)

    def close(self) -> None:
        close_sink(self)


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


def messages(payload: bytes) -> list[Any]:
    """The messages of an internal record: one (per-event user operator) or a list (micro-batched)."""
    message = pickle.loads(payload)
    return message if isinstance(message, list) else [message]


def learn_interaction(config: RecConfig, model: ItemModel, entry: bytes) -> None:
    """Replay logged interactions into an item model."""
    for interaction in messages(entry):
        model.learn(interaction, config)


def learn_training_input(trainer: ModelTrainer, entry: bytes) -> None:
    """Replay logged training inputs exactly as they were processed (a snapshot one triggers was published)."""
    for training_input in messages(entry):
        training_input.learn(trainer)
        trainer.maybe_snapshot()


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


class RecommenderFunction(KeyedProcessFunction):
    """Keyed by recommender shard: learns every request's interaction into the shard's item model,
    ranks the requesting user's list and publishes it when it changed meaningfully."""

    def __init__(self, settings: RecommenderSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        config = self.settings.config
        self.models = GlobalObject(runtime_context, ITEM_MODEL_STATE, lambda: RecommendationServer(config).model,
                                   functools.partial(learn_interaction, config), self.settings.state_write_ms)
        self.published = runtime_context.get_map_state(published_recs_state(self.settings.state_ttl_ms))
        self.sink = self.settings.redis()
        self.flush_timer_set = False
        metrics = runtime_context.get_metrics_group()
        redis_gauges(metrics, self.sink)
        self.rec_lists = metrics.counter("rec_lists")

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        """Learn every request's interaction in order; rank for a user once per record, at their last
        request in it (a list of several: the micro-batched user operator's)."""
        settings = self.settings
        shard = ctx.get_current_key()
        requests: list[RecRequest] = messages(row[1])
        server = RecommendationServer(settings.config, self.models.get(shard))
        last = {request.user_key: index for index, request in enumerate(requests)}
        lists = 0
        for index, value in enumerate(requests):
            user = value.user_key
            if value.user is None:
                server.handle(value, None)
                self.published.remove(user)
                self.sink.stage_forget_recs(user)
                if value.erase:  # after any list still in flight: compacted topics forget the user
                    yield Row(user.encode("utf-8"), None, settings.topic)
            elif last[user] != index:  # a later request of the user in this record ranks for both
                server.learn(value)
            else:
                stored = self.published.get(user)
                recs = server.handle(value, Published(*stored) if stored else None)
                if recs is not None:
                    self.published.put(user, (recs.seq, tuple(recs.ranking.item_ids())))
                    record = recs.to_json(int(time.time() * 1000))
                    self.sink.stage_recs(recs, settings.redis_ttl_s)
                    lists += 1
                    yield Row(user.encode("utf-8"), record, settings.topic)
        if lists:
            self.rec_lists.inc(lists)
        interactions = [request.interaction for request in requests if request.interaction is not None]
        if interactions:
            self.models.changed(shard, ctx.timer_service(), pickle.dumps(interactions))
        flush_later(self, ctx.timer_service(), settings.flush_interval_ms)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        """The Redis flush timer, or a shard's model write timer."""
        self.models.on_timer(ctx.get_current_key(), timestamp)
        self.flush_timer_set = False
        self.sink.flush()
        return iter(())

    def close(self) -> None:
        close_sink(self)


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
        metrics = runtime_context.get_metrics_group()
        redis_gauges(metrics, self.sink)
        metrics.gauge("model_version", lambda: int(self.quality.get("version", 0)))
        metrics.gauge("intent_auc_permille", lambda: int(1000 * self.quality.get("intent_auc", 0.0)))
        metrics.gauge("intent_log_loss_permille", lambda: int(1000 * self.quality.get("intent_log_loss", 0.0)))

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

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        """A state write timer, or the end of a bounded input: publish what was learned since the last snapshot."""
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.trainers.on_timer(ctx.get_current_key(), timestamp)
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
        close_sink(self)


def flush_later(function: Any, timers: TimerService, interval_ms: int) -> None:
    """Flush the function's Redis sink now when due, else at most ``interval_ms`` from now (one timer);
    nothing when nothing is staged."""
    if function.sink.due():
        function.sink.flush()
    elif not function.flush_timer_set and not function.sink.empty():
        timers.register_processing_time_timer(timers.current_processing_time() + interval_ms)
        function.flush_timer_set = True


def close_sink(function: Any) -> None:
    sink = getattr(function, "sink", None)  # absent when open() failed: keep that error visible
    if sink is not None:
        sink.close()

"""Thin Flink functions: load state, call the pure operator, store state, emit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, TimeDomain, TimerService
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, ProcessFunction, RuntimeContext

from connectors.kafka import OUTPUT_TYPE
from connectors.redis_writer import UserStateSink
from operators.deadletter import dead_letter, late_record
from operators.events import Event
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import FeatureOperator, FeatureVector, UserFeatures
from operators.features.rfm import PopulationScorer
from operators.profile import ProfileOperator
from operators.rules.catalog import RuleBook, RuleCatalog, RuleEntry, parse_command
from operators.rules.engine import RuleState, SegmentChange, SegmentEngine
from operators.rules.language import RuleError
from operators.validation import Limits, Rejection, parse_event
from state.codecs import decode_features, decode_profile, decode_rules, encode_features, encode_profile, encode_rules
from state.descriptors import RULE_CATALOG, features_state, profile_state, rules_state

EVENT_TYPE = Types.ROW_NAMED(
    list(Event._fields),
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(),
     Types.STRING(), Types.STRING(), Types.DOUBLE(), Types.INT(), Types.STRING(), Types.STRING()],
)
DEAD_LETTERS = OutputTag("dead-letters", OUTPUT_TYPE)
LATE_EVENTS = OutputTag("late-events", OUTPUT_TYPE)
#: Flink's final watermark (Long.MAX_VALUE) when a bounded source finishes.
END_OF_INPUT_WATERMARK = 2**63 - 1


class ParseEvents(ProcessFunction):
    """Validate raw Kafka rows; valid events go on, everything else to the dead-letter side output."""

    def __init__(self, limits: Limits, deadletter_topic: str) -> None:
        self.limits = limits
        self.deadletter_topic = deadletter_topic

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        payload, topic, partition, offset, record_ts = value
        result = parse_event(payload, record_ts, self.limits)
        if isinstance(result, Rejection):
            key, letter = dead_letter(result, payload, topic, partition, offset, record_ts)
            yield DEAD_LETTERS, Row(key, letter, self.deadletter_topic)
        else:
            yield Row(*result)


def retention_due(features: UserFeatures, config: FeatureConfig) -> int:
    """When an idle user's state goes: the day boundary after ``retention_ms`` of event-time silence
    (one retention timer per user and day of activity, not per event)."""
    retention = features.reference_ts + config.retention_ms
    return retention - retention % DAY_MS + DAY_MS


def user_key(event: Row) -> str:
    return event[2]


def subtask_index(runtime_context: RuntimeContext) -> int:
    """This instance's index. PyFlink 2.0.2's thread mode calls a Java method Flink 2.0 removed
    (``getIndexOfThisSubtask``); the index now lives in the task info."""
    try:
        return runtime_context.get_index_of_this_subtask()
    except AttributeError:
        return int(runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask())  # type: ignore[attr-defined]


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
        self.profile_state = runtime_context.get_state(profile_state(ops.state_ttl_ms))
        self.feature_state = runtime_context.get_state(features_state(ops.state_ttl_ms))
        self.rule_state = runtime_context.get_state(rules_state(ops.state_ttl_ms))
        self.sink = ops.redis()
        self.subtask = subtask_index(runtime_context)
        self.features = FeatureOperator(ops.features, ops.population(self.subtask))
        self.late_events = runtime_context.get_metrics_group().counter("late_events")
        self.flush_timer_set = False
        self.catalog: RuleCatalog | None = None
        self.engine: SegmentEngine | None = None

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

    def process_broadcast_element(self, value: Row, ctx: KeyedBroadcastProcessFunction.Context) -> Iterator[Any]:
        """A rule command: apply it, or (one instance for all) emit an error record and change nothing."""
        payload, topic, partition, offset, record_ts = value
        book = self.operators.rules
        if book is None or self._engine(ctx) is None or self.catalog is None:
            return
        compiler = book.compiler()
        try:
            entry = self.catalog.apply(parse_command(payload, compiler))
        except RuleError as exc:
            if self.subtask == 0:
                key, letter = dead_letter(Rejection("invalid_rule", str(exc)), payload, topic, partition, offset,
                                          record_ts)
                yield Row(key, letter, self.operators.topics["deadletter"])
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
        profile, update = ops.profile.process(decode_profile(stored) if stored else None, event)
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
            if ops.features_enabled:
                if features is not None:
                    yield from self._close_due_session(features, event.user_key, event.ts)
                features, vector = self.features.process(features, event)
                decision = features.decision
                yield from self._after_features(features, vector, timers)
            if engine is not None:
                first_seen = profile.first_seen
                yield from self._segments(timers, lambda state: engine.observe(state, event, first_seen, decision))
        self._schedule_flush(timers)

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
        stored_features = self.feature_state.value()
        if stored_features:
            features = decode_features(stored_features)
            if retention_due(features, self.operators.features) <= timestamp:
                yield from self._forget(user, features, engine, timestamp, timers)
                return
            session_timer = features.sessions.timer_at
            if session_timer is not None and session_timer <= timestamp:  # not a rule timer: close the session
                features.sessions.timer_fired(timestamp)
                vector = self.features.close_session(features, user, timestamp)
                yield from self._after_features(features, vector, timers)
        if engine is not None and self.rule_state.value():
            yield from self._segments(timers, lambda state: engine.advance(state, user, timestamp))

    def _forget(self, user: str, features: UserFeatures, engine: SegmentEngine | None, timestamp: int,
                timers: TimerService) -> Iterator[Row]:
        """Idle past retention: exit every segment, then nothing of the user stays behind."""
        self.features.forget(features)
        stored_rules = self.rule_state.value()
        if engine is not None and stored_rules:
            yield from self._emit_changes(engine.forget(decode_rules(stored_rules), user, timestamp, "retention"))
        self.profile_state.clear()
        self.feature_state.clear()
        self.rule_state.clear()
        self.sink.stage_forget(user)
        self._schedule_flush(timers)

    def _segments(self, timers: TimerService,
                  step: Callable[[RuleState], list[SegmentChange]]) -> Iterator[Row]:
        """Load the user's rule state, run ``step``, store it, set the next rule timer, emit the changes."""
        stored = self.rule_state.value()
        state = decode_rules(stored) if stored else RuleState()
        wake_before = state.wake
        changes = step(state)
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
        if self.sink.due():
            self.sink.flush()
        elif not self.flush_timer_set:
            # Flush a quiet stream's tail too: one processing-time timer per pending batch.
            timers.register_processing_time_timer(timers.current_processing_time() + self.operators.flush_interval_ms)
            self.flush_timer_set = True

    def close(self) -> None:
        sink = getattr(self, "sink", None)  # absent when open() failed: keep that error visible
        if sink is not None:
            sink.close()

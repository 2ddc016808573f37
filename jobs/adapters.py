"""Thin Flink functions: load state, call the pure operator, store state, emit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag, TimeDomain, TimerService
from pyflink.datastream.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext

from connectors.kafka import OUTPUT_TYPE
from connectors.redis_writer import UserStateSink
from operators.deadletter import dead_letter, late_record
from operators.events import Event
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import FeatureOperator, FeatureVector, UserFeatures
from operators.features.rfm import PopulationScorer
from operators.profile import ProfileOperator
from operators.validation import Limits, Rejection, parse_event
from state.codecs import decode_features, decode_profile, encode_features, encode_profile
from state.descriptors import features_state, profile_state

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
    topics: dict[str, str]
    """Output topic per record kind: profiles, features, late."""
    state_ttl_ms: int
    allowed_lateness_ms: int
    redis: Callable[[], UserStateSink]
    population: Callable[[int], PopulationScorer]
    """Builds the R/F/M population scorer of the parallel instance with this index."""
    flush_interval_ms: int


class UserFunction(KeyedProcessFunction):
    """Keyed by user: dedup + profile + features in one operator (one state read and write each).

    Emits profile updates and feature vectors to Kafka, stages both for Redis, sends events later
    than the allowed lateness to the late side output, closes sessions and expires idle users with
    event-time timers.
    """

    def __init__(self, operators: UserOperators) -> None:
        self.operators = operators

    def open(self, runtime_context: RuntimeContext) -> None:
        ops = self.operators
        self.profile_state = runtime_context.get_state(profile_state(ops.state_ttl_ms))
        self.feature_state = runtime_context.get_state(features_state(ops.state_ttl_ms))
        self.sink = ops.redis()
        self.features = FeatureOperator(ops.features, ops.population(subtask_index(runtime_context)))
        self.late_events = runtime_context.get_metrics_group().counter("late_events")
        self.flush_timer_set = False

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        event = Event(*value)
        stored = self.profile_state.value()
        profile, update = self.operators.profile.process(decode_profile(stored) if stored else None, event)
        if update is None:
            return
        self.profile_state.update(encode_profile(profile))
        self.sink.stage_profile(update)
        yield Row(update.user_key.encode("utf-8"), update.to_json(), self.operators.topics["profiles"])
        timers = ctx.timer_service()
        if not self.operators.features_enabled:
            self._schedule_flush(timers)
            return
        if event.ts < timers.current_watermark() - self.operators.allowed_lateness_ms:
            self.late_events.inc()
            yield LATE_EVENTS, Row(event.user_key.encode("utf-8"), late_record(event),
                                   self.operators.topics["late"])
        else:
            stored_features = self.feature_state.value()
            features, vector = self.features.process(
                decode_features(stored_features) if stored_features else None, event)
            yield from self._after_features(features, vector, timers)
        self._schedule_flush(timers)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.flush_timer_set = False
            self.sink.flush()
            return
        if ctx.timer_service().current_watermark() >= END_OF_INPUT_WATERMARK:
            return  # a bounded input ended: that is not time passing, so nothing expires
        stored_features = self.feature_state.value()
        if not stored_features:
            return
        features = decode_features(stored_features)
        features.sessions.timer_fired(timestamp)
        if features.reference_ts + self.operators.features.retention_ms <= timestamp:
            self.features.forget(features)
            self.profile_state.clear()  # idle past retention: nothing of the user stays behind
            self.feature_state.clear()
            self.sink.stage_forget(ctx.get_current_key())
            self._schedule_flush(ctx.timer_service())
            return
        vector = self.features.close_session(features, ctx.get_current_key(), timestamp)
        yield from self._after_features(features, vector, ctx.timer_service())

    def _after_features(self, features: UserFeatures, vector: FeatureVector | None,
                        timers: TimerService) -> Iterator[Row]:
        config = self.operators.features
        expiry = features.sessions.needs_timer(config.session_gap_ms)
        if expiry is not None:
            timers.register_event_time_timer(expiry)
        # One retention timer per user and day of activity, not per event.
        retention = features.reference_ts + config.retention_ms
        timers.register_event_time_timer(retention - retention % DAY_MS + DAY_MS)
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
        self.sink.close()

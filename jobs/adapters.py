"""Thin Flink functions: load state, call the pure operator, store state, emit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pyflink.common import Row, Types
from pyflink.datastream import OutputTag
from pyflink.datastream.functions import KeyedProcessFunction, ProcessFunction, RuntimeContext

from connectors.kafka import OUTPUT_TYPE
from connectors.redis_writer import ProfileSink
from operators.deadletter import dead_letter
from operators.events import Event
from operators.profile import ProfileOperator
from operators.validation import Limits, Rejection, parse_event
from state.codecs import decode_profile, encode_profile
from state.descriptors import profile_state

EVENT_TYPE = Types.ROW_NAMED(
    list(Event._fields),
    [Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.STRING(), Types.LONG(),
     Types.STRING(), Types.STRING(), Types.DOUBLE(), Types.INT(), Types.STRING(), Types.STRING()],
)
DEAD_LETTERS = OutputTag("dead-letters", OUTPUT_TYPE)


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


class UserProfileFunction(KeyedProcessFunction):
    """Keyed by user: dedup + profile, emits profile updates to Kafka and stages them for Redis."""

    def __init__(self, operator: ProfileOperator, profiles_topic: str, state_ttl_ms: int,
                 redis_sink: Callable[[], ProfileSink], flush_interval_ms: int) -> None:
        self.operator = operator
        self.profiles_topic = profiles_topic
        self.state_ttl_ms = state_ttl_ms
        self.redis_sink = redis_sink
        self.flush_interval_ms = flush_interval_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        self.state = runtime_context.get_state(profile_state(self.state_ttl_ms))
        self.sink = self.redis_sink()
        self.flush_timer_set = False

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        stored = self.state.value()
        profile, update = self.operator.process(decode_profile(stored) if stored else None, Event(*value))
        if update is None:
            return
        self.state.update(encode_profile(profile))
        self.sink.stage(update)
        if self.sink.due():
            self.sink.flush()
        elif not self.flush_timer_set:
            # Flush a quiet stream's tail too: one processing-time timer per pending batch.
            timers = ctx.timer_service()
            timers.register_processing_time_timer(timers.current_processing_time() + self.flush_interval_ms)
            self.flush_timer_set = True
        yield Row(update.user_key.encode("utf-8"), update.to_json(), self.profiles_topic)

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Row]:
        self.flush_timer_set = False
        self.sink.flush()
        yield from ()

    def close(self) -> None:
        self.sink.close()

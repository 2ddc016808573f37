"""The micro-batched user operator: one Python call per list of a shard's events, not per event.

Parsing keys each event and puts its shard next to it; ``MicroBatchOperator`` (Java, ``jobs/java``)
groups the records between two watermarks into one list per shard and emits every list before the
watermark that follows it and before every checkpoint barrier, so nothing is buffered across a
checkpoint and event time downstream sees what it would see record by record. Flink keys the lists
by shard, in Java. :class:`ShardFunction` then runs the per-user core (through :class:`UserFunction`)
for each event in turn, with each user's values read at most once and written at most once per list
(:class:`Slot`) and the users' timers kept per shard (:class:`ShardTimers`). See docs/architecture.md.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import orjson
from pyflink.common import Row, Types
from pyflink.datastream import DataStream, TimeDomain, TimerService
from pyflink.datastream.data_stream import KeyedStream
from pyflink.datastream.functions import KeyedBroadcastProcessFunction, RuntimeContext
from pyflink.datastream.state import MapState, MapStateDescriptor, ValueStateDescriptor
from pyflink.java_gateway import get_gateway

from jobs.adapters import UserFunction
from state.cache import ValueCache
from state.descriptors import USER_WAKEUPS, by_user
from state.slots import StoredValues

#: A shard's list: its events' records (:data:`KEYED_EVENT_TYPE`'s ``record``) in arrival order.
BATCH_TYPE = Types.BASIC_ARRAY(Types.STRING())


def micro_batched(keyed_events: DataStream, interval_ms: int, max_records: int) -> KeyedStream:
    """``keyed_events`` (:data:`KEYED_EVENT_TYPE`) as lists per shard, keyed by shard in Java.

    PyFlink's own ``key_by`` would call Python once more per list; its ``KeyedStream`` only needs
    rows of (key, value) keyed on field 0, which the Java operator emits directly.
    """
    gateway = get_gateway()
    operator = gateway.jvm.personalize.flink.MicroBatchOperator(interval_ms, max_records)
    lists = keyed_events._j_data_stream.transform(
        "micro-batch", Types.ROW([Types.INT(), BATCH_TYPE]).get_java_type_info(), operator)
    lists.uid("micro-batch")
    keyed = lists.keyBy(gateway.jvm.KeyByKeySelector(), Types.ROW([Types.INT()]).get_java_type_info())
    return KeyedStream(keyed, BATCH_TYPE, DataStream(lists))


class UserCursor:
    """The user whose values the slots and timers address (the user operator's "current key")."""

    user = ""


class Slot:
    """One of the user operator's values for every user of a shard: a ``MapState`` user -> bytes behind
    the ``value()`` read the user operator makes for the cursor's user. Writes come from the
    :class:`ValueCache` (``ShardFunction._write``)."""

    def __init__(self, state: MapState, cursor: UserCursor) -> None:
        self.state = state
        self.cursor = cursor

    def value(self) -> bytes | None:
        return self.state.get(self.cursor.user)


class ShardTimers:
    """The ``TimerService`` the user operator sees: its event-time timers are per user, Flink's are per
    shard. A wake-up time maps to its users in a ``MapState``, with one Flink timer per distinct time;
    like Flink's, a user's timer at a time it already has is registered once."""

    def __init__(self, wakeups: MapState, cursor: UserCursor) -> None:
        self.wakeups = wakeups
        self.cursor = cursor
        self.service: TimerService | None = None
        """The shard's timer service, set at every call (:meth:`enter`)."""
        self.watermark: int | None = None
        """The shard's watermark in this call, read once: it cannot move until the call returns, and
        each read is a call into Java (one per event before)."""
        self.pending: dict[int, set[str]] = {}

    def enter(self, service: TimerService) -> None:
        """A new call into the operator, with the shard's timer service."""
        self.service = service
        self.watermark = None

    def register_event_time_timer(self, timestamp: int) -> None:
        self.pending.setdefault(timestamp, set()).add(self.cursor.user)

    def register_processing_time_timer(self, timestamp: int) -> None:
        assert self.service is not None
        self.service.register_processing_time_timer(timestamp)

    def current_watermark(self) -> int:
        if self.watermark is None:
            assert self.service is not None
            self.watermark = self.service.current_watermark()
        return self.watermark

    def current_processing_time(self) -> int:
        assert self.service is not None
        return self.service.current_processing_time()

    def due(self, timestamp: int) -> list[str]:
        """The users to wake at ``timestamp`` (Flink's timer for it fired), in a stable order; taken out."""
        stored = self.wakeups.get(timestamp)
        if stored is None:
            return []
        self.wakeups.remove(timestamp)
        return sorted(orjson.loads(stored))

    def store(self) -> None:
        assert self.service is not None
        for timestamp, users in self.pending.items():
            stored = self.wakeups.get(timestamp)
            if stored is not None:
                users.update(orjson.loads(stored))
            self.wakeups.put(timestamp, orjson.dumps(sorted(users)))
            self.service.register_event_time_timer(timestamp)
        self.pending.clear()


class UserContext:
    """The context the user operator's steps see: the shard's, with the cursor's user as current key."""

    def __init__(self, cursor: UserCursor, timers: ShardTimers) -> None:
        self.cursor = cursor
        self.timers = timers
        self.ctx: Any = None

    def get_current_key(self) -> str:
        return self.cursor.user

    def timer_service(self) -> ShardTimers:
        return self.timers

    def get_broadcast_state(self, descriptor: MapStateDescriptor) -> Any:
        return self.ctx.get_broadcast_state(descriptor)

    def time_domain(self) -> Any:
        return self.ctx.time_domain()


class ShardFunction(UserFunction):
    """:class:`UserFunction` keyed by shard, called with a shard's list of events (or a wake-up time).

    Users' decoded values stay in a :class:`ValueCache` between calls. A list's changes are written when
    the batcher's empty list for the shard says a checkpoint barrier comes next; a wake-up's too when that
    marker is owed, else at the wake-up's end (:meth:`ValueCache.woken`).
    """

    def open(self, runtime_context: RuntimeContext) -> None:
        self.cursor = UserCursor()
        self.slots: list[Slot] = []
        self.outbox: dict[tuple[str, str], list[bytes]] = {}
        """Internal messages of the current list per (route, receiver), each pickled when sent (a cached
        value it holds may change with the user's next event): one record each at the list's end."""
        super().open(runtime_context)
        self.timers = ShardTimers(runtime_context.get_map_state(USER_WAKEUPS), self.cursor)
        self.context = UserContext(self.cursor, self.timers)
        self.cache = ValueCache(self.operators.cache_users, self.operators.state_ttl_ms / 1000)

    def _user_state(self, runtime_context: RuntimeContext, descriptor: ValueStateDescriptor) -> Slot:
        slot = Slot(runtime_context.get_map_state(by_user(descriptor)), self.cursor)
        self.slots.append(slot)
        return slot

    def _values(self) -> StoredValues:
        return self.cache.values(self.cursor.user, self.value_states)

    def process_element(self, value: Any, ctx: KeyedBroadcastProcessFunction.ReadOnlyContext) -> Iterator[Any]:
        context = self._enter(ctx)
        if not value:  # the batcher's marker: a checkpoint barrier follows
            self.cache.write_group(ctx.get_current_key(), self._write)
            return
        for record in value:
            key, *event = orjson.loads(record)
            self.cursor.user = key
            yield from super().process_element(event, context)
        self.cache.defer(ctx.get_current_key(), self.cache.take_changed())
        yield from self._store()

    def on_timer(self, timestamp: int, ctx: KeyedBroadcastProcessFunction.OnTimerContext) -> Iterator[Any]:
        context = self._enter(ctx)
        # A processing-time timer is the Redis flush: one call, for no user.
        users = [""] if ctx.time_domain() == TimeDomain.PROCESSING_TIME else self.timers.due(timestamp)
        for user in users:
            self.cursor.user = user
            yield from super().on_timer(timestamp, context)
        self.cache.woken(ctx.get_current_key(), self._write)
        yield from self._store()

    def _enter(self, ctx: Any) -> UserContext:
        self.context.ctx = ctx
        self.timers.enter(ctx.timer_service())
        return self.context

    def _write(self, user: str, name: str, data: bytes | None) -> None:
        state = self.value_states[name].state
        if data is None:
            state.remove(user)
        else:
            state.put(user, data)

    def _send(self, route: str, receiver: str, message: Any) -> Iterator[Row]:
        self.outbox.setdefault((route, receiver), []).append(pickle.dumps(message))
        return iter(())

    def _store(self) -> Iterator[Row]:
        """The end of a list (or of a wake-up): store the timers, send the messages, trim the cache."""
        self.timers.store()
        for (route, receiver), messages in self.outbox.items():
            yield Row(receiver.encode("utf-8"), pickle.dumps(messages), route)
        self.outbox.clear()
        self.cache.trim()

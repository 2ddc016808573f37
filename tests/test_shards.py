"""The micro-batched user operator's state and timer plumbing (jobs/shards.py), with dict-backed fakes."""

from __future__ import annotations

from typing import Any

from jobs.shards import ShardTimers, Slot, UserCursor


class FakeMapState:
    """Counts reads and writes, as the cost of a list is its state accesses."""

    def __init__(self, items: dict[Any, Any] | None = None) -> None:
        self.items = dict(items or {})
        self.gets = self.puts = self.removes = 0

    def get(self, key: Any) -> Any:
        self.gets += 1
        return self.items.get(key)

    def put(self, key: Any, value: Any) -> None:
        self.puts += 1
        self.items[key] = value

    def remove(self, key: Any) -> None:
        self.removes += 1
        self.items.pop(key, None)


class FakeTimerService:
    def __init__(self, watermark: int = 0) -> None:
        self.event_timers: list[int] = []
        self.watermark = watermark

    def register_event_time_timer(self, timestamp: int) -> None:
        self.event_timers.append(timestamp)

    def current_watermark(self) -> int:
        return self.watermark


def test_a_slot_reads_each_user_once_and_writes_each_change_once_per_list() -> None:
    state, cursor = FakeMapState({"a": b"a0"}), UserCursor()
    slot = Slot(state, cursor)
    cursor.user = "a"
    assert slot.value() == b"a0"
    slot.update(b"a1")
    slot.update(b"a2")
    assert slot.value() == b"a2"
    cursor.user = "b"
    assert slot.value() is None
    slot.update(b"b1")
    cursor.user = "a"
    assert slot.value() == b"a2"
    assert state.items == {"a": b"a0"}, "nothing reaches Flink's state before the list ends"
    slot.store()
    assert state.items == {"a": b"a2", "b": b"b1"}
    assert (state.gets, state.puts) == (2, 2)


def test_a_cleared_value_is_removed_and_reads_as_empty_after_the_list() -> None:
    state, cursor = FakeMapState({"a": b"a0"}), UserCursor()
    slot = Slot(state, cursor)
    cursor.user = "a"
    slot.clear()
    assert slot.value() is None
    slot.store()
    assert state.items == {}
    assert slot.value() is None


def test_users_waking_at_the_same_time_share_one_flink_timer() -> None:
    wakeups, cursor, service = FakeMapState(), UserCursor(), FakeTimerService()
    timers = ShardTimers(wakeups, cursor)
    timers.service = service  # type: ignore[assignment]
    for user in ("b", "a", "b"):
        cursor.user = user
        timers.register_event_time_timer(1000)
    cursor.user = "c"
    timers.register_event_time_timer(2000)
    timers.store()
    assert sorted(service.event_timers) == [1000, 2000]
    cursor.user = "d"
    timers.register_event_time_timer(1000)
    timers.store()
    assert timers.due(1000) == ["a", "b", "d"]
    assert timers.due(1000) == [], "a wake-up is handed out once"
    assert timers.due(2000) == ["c"]
    assert wakeups.items == {}

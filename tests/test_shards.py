"""The micro-batched user operator's state and timer plumbing (jobs/shards.py), with dict-backed fakes."""

from __future__ import annotations

from typing import Any

from jobs.shards import ShardTimers, Slot, UserCursor
from operators.profile import UserProfile
from state.cache import ValueCache, Write
from state.codecs import encode_profile

T0 = 1_767_225_600_000


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


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def profile(seq: int) -> UserProfile:
    return UserProfile(counts={"search": seq}, first_seen=T0, last_seen=T0 + seq, seq=seq)


def shard(users: dict[str, UserProfile]) -> tuple[FakeMapState, UserCursor, dict[str, Slot], Write]:
    """A shard's profile slot over a map state, and the write-back the operator gives the cache."""
    state, cursor = FakeMapState({user: encode_profile(value) for user, value in users.items()}), UserCursor()
    slots = {"profile": Slot(state, cursor)}

    def write(user: str, name: str, data: bytes | None) -> None:
        if data is None:
            slots[name].state.remove(user)
        else:
            slots[name].state.put(user, data)
    return state, cursor, slots, write


def call(cache: ValueCache, cursor: UserCursor, slots: dict[str, Slot], user: str,
         change: UserProfile | bool | None = False) -> UserProfile | None:
    """One call of the core for ``user``: read the profile, maybe change it (None clears it), store."""
    cursor.user = user
    values = cache.values(user, slots)
    seen = values.get("profile")
    if change is not False:
        values.put("profile", change)
    values.store()
    return seen


def test_a_user_is_decoded_once_while_cached_and_written_only_when_the_barrier_comes() -> None:
    state, cursor, slots, write = shard({"a": profile(1)})
    cache = ValueCache(max_users=10, max_idle_s=3600)
    assert call(cache, cursor, slots, "a", profile(2)) == profile(1)
    cache.defer(7, cache.take_changed())  # the end of a list of shard 7
    assert call(cache, cursor, slots, "a", profile(3)) == profile(2)
    cache.defer(7, cache.take_changed())
    assert state.items == {"a": encode_profile(profile(1))}, "nothing reaches Flink's state before the marker"
    cache.write_group(8, write)  # another shard's marker writes nothing of shard 7
    assert state.puts == 0
    cache.write_group(7, write)
    assert state.items == {"a": encode_profile(profile(3))}
    assert (state.gets, state.puts) == (1, 1)
    cache.write_group(7, write)
    assert state.puts == 1, "written once per checkpoint, however many calls changed it"


def test_a_cleared_value_is_removed_at_the_write_and_reads_as_empty() -> None:
    state, cursor, slots, write = shard({"a": profile(1)})
    cache = ValueCache(max_users=10, max_idle_s=3600)
    call(cache, cursor, slots, "a", None)
    cache.write(cache.take_changed(), write)  # a wake-up's changes: written at its end
    assert state.items == {}
    assert call(cache, cursor, slots, "a") is None


def test_a_wake_up_waits_for_the_marker_only_when_one_is_owed() -> None:
    """After a list of shard 7 the batcher owes it a marker before the barrier, so a wake-up's changes wait
    for it; after the marker (the barrier may be next, and an idle input can move the watermark first) or in
    a shard without a list since, they are written at the wake-up's end."""
    state, cursor, slots, write = shard({"a": profile(1), "b": profile(1)})
    cache = ValueCache(max_users=10, max_idle_s=3600)
    call(cache, cursor, slots, "a", profile(2))
    cache.defer(7, cache.take_changed())  # the end of a list of shard 7
    call(cache, cursor, slots, "a", profile(3))  # a session close of a
    cache.woken(7, write)
    call(cache, cursor, slots, "b", profile(3))  # and an intent deadline of b, the same shard
    cache.woken(7, write)
    assert state.puts == 0, "both wait for the marker"
    cache.write_group(7, write)
    assert state.items == {"a": encode_profile(profile(3)), "b": encode_profile(profile(3))} and state.puts == 2
    call(cache, cursor, slots, "a", profile(4))  # a wake-up between the marker and the barrier
    cache.woken(7, write)
    assert state.items["a"] == encode_profile(profile(4)) and state.puts == 3
    call(cache, cursor, slots, "b", profile(5))  # shard 8 got no list since its last marker
    cache.woken(8, write)
    assert state.items["b"] == encode_profile(profile(5)) and state.puts == 4


def test_only_unchanged_users_are_evicted_oldest_first() -> None:
    _state, cursor, slots, write = shard({user: profile(1) for user in "abcd"})
    cache = ValueCache(max_users=2, max_idle_s=3600)
    call(cache, cursor, slots, "a", profile(2))
    cache.defer(0, cache.take_changed())
    for user in "bcd":
        call(cache, cursor, slots, user)
    cache.trim()
    assert list(cache.users) == ["a", "d"], "a waits for its write; b and c go"
    cache.write_group(0, write)
    call(cache, cursor, slots, "e")
    cache.trim()
    assert list(cache.users) == ["d", "e"]
    assert call(cache, cursor, slots, "a") == profile(2), "read back from Flink's state"


def test_an_entry_idle_past_the_state_ttl_is_read_again_unless_it_has_unwritten_changes() -> None:
    state, cursor, slots, _write = shard({"a": profile(1), "b": profile(1)})
    clock = Clock()
    cache = ValueCache(max_users=10, max_idle_s=60, clock=clock)
    call(cache, cursor, slots, "a")
    call(cache, cursor, slots, "b", profile(5))
    cache.defer(0, cache.take_changed())
    state.items["a"] = encode_profile(profile(9))  # as if Flink's TTL had dropped and something rewrote it
    clock.now = 61
    assert call(cache, cursor, slots, "a") == profile(9)
    assert call(cache, cursor, slots, "b") == profile(5)


def test_stored_bytes_are_the_values_as_they_are_now() -> None:
    """A login hands the visitor's values over as bytes: the cached ones, not Flink's older ones."""
    state, cursor, slots, _write = shard({"a": profile(1)})
    cache = ValueCache(max_users=10, max_idle_s=3600)
    call(cache, cursor, slots, "a", profile(4))
    cursor.user = "a"
    assert cache.values("a", slots).stored(["profile"]) == {"profile": encode_profile(profile(4))}
    assert state.items["a"] == encode_profile(profile(1))


def test_users_waking_at_the_same_time_share_one_flink_timer() -> None:
    wakeups, cursor, service = FakeMapState(), UserCursor(), FakeTimerService()
    timers = ShardTimers(wakeups, cursor)
    timers.enter(service)  # type: ignore[arg-type]
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


class CountingTimerService(FakeTimerService):
    def __init__(self, watermark: int) -> None:
        super().__init__(watermark)
        self.reads = 0

    def current_watermark(self) -> int:
        self.reads += 1
        return self.watermark


def test_the_watermark_is_read_from_java_once_per_call() -> None:
    """It cannot move within a call; each read crosses into Java (it was one read per event)."""
    timers = ShardTimers(FakeMapState(), UserCursor())
    first, second = CountingTimerService(1000), CountingTimerService(2000)
    timers.enter(first)  # type: ignore[arg-type]
    assert [timers.current_watermark() for _ in range(3)] == [1000] * 3 and first.reads == 1
    timers.enter(second)  # type: ignore[arg-type]
    assert timers.current_watermark() == 2000 and second.reads == 1

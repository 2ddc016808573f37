"""ProfileOperator (counts, first/last seen, seq, dedup), its state codec and dead-letter records."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import struct
from collections import Counter

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.deadletter import MAX_KEPT_PAYLOAD_BYTES, dead_letter
from operators.dedup import RecentIds, fingerprint
from operators.events import Event
from operators.jsontext import compact_json, sorted_json
from operators.profile import ProfileOperator, ProfileUpdate, UserProfile
from operators.validation import Rejection
from state.codecs import PROFILE_CODEC_VERSION, CodecError, decode_profile, encode_profile

FAST = settings(max_examples=150, deadline=None, database=None)
T0 = 1_767_225_600_000
HOUR_MS = 3_600_000


def event(event_id: str, ts: int, event_type: str = "page_view", user_key: str = "u-1") -> Event:
    return Event(event_id=event_id, type=event_type, user_key=user_key, user_id=user_key, anonymous_id="", ts=ts,
                 item_id="", category="", price=0.0, quantity=1, session_id="", attributes="")


def run(operator: ProfileOperator, events: list[Event],
        profile: UserProfile | None = None) -> tuple[UserProfile | None, list[ProfileUpdate | None]]:
    updates = []
    for e in events:
        profile, update = operator.process(profile, e)
        updates.append(update)
    return profile, updates


# --- ProfileOperator ------------------------------------------------------------------------------------------

def test_counts_per_type_and_updates_are_snapshots() -> None:
    types = ["page_view", "product_view", "page_view", "add_to_cart", "page_view", "purchase"]
    profile, updates = run(ProfileOperator(), [event(f"e{i}", T0 + i, t) for i, t in enumerate(types)])
    assert profile is not None and profile.counts == Counter(types)
    assert [u.counts for u in updates if u][:2] == [{"page_view": 1}, {"page_view": 1, "product_view": 1}]


@pytest.mark.parametrize(("offsets", "first", "last"), [
    ([0, 1, 2], 0, 2),
    ([5, 3, 9, 4], 3, 9),
    ([9, 8, 7], 7, 9),
    ([4, 4, 4], 4, 4),
], ids=["in-order", "out-of-order", "reversed", "same-time"])
def test_first_and_last_seen_are_event_time_min_and_max(offsets: list[int], first: int, last: int) -> None:
    profile, updates = run(ProfileOperator(), [event(f"e{i}", T0 + o * 1000) for i, o in enumerate(offsets)])
    assert profile is not None
    assert (profile.first_seen, profile.last_seen) == (T0 + first * 1000, T0 + last * 1000)
    final = updates[-1]
    assert final is not None and (final.first_seen, final.last_seen) == (profile.first_seen, profile.last_seen)
    assert [u.event_ts for u in updates if u] == [T0 + o * 1000 for o in offsets]


def test_seq_increments_only_on_accepted_events() -> None:
    ids = ["a", "b", "a", "c", "b", "d"]
    profile, updates = run(ProfileOperator(), [event(i, T0 + n) for n, i in enumerate(ids)])
    assert [u.seq if u else None for u in updates] == [1, 2, None, 3, None, 4]
    assert profile is not None and profile.seq == 4 == sum(profile.counts.values())


def test_duplicate_returns_none_and_leaves_state_unchanged() -> None:
    profile, _ = run(ProfileOperator(), [event("a", T0), event("b", T0 + 5000, "search")])
    before = copy.deepcopy(profile)
    after, update = ProfileOperator().process(profile, event("a", T0 + 9000, "purchase"))
    assert update is None
    assert after == before


def test_late_event_older_than_the_window_is_remembered_so_its_resend_is_a_duplicate() -> None:
    """Topics replay at different speeds: ids are kept however old; the window only orders eviction."""
    operator = ProfileOperator(dedup_window_ms=HOUR_MS)
    late = event("late", T0 - 2 * HOUR_MS)
    profile, updates = run(operator, [event("new", T0), late, late])
    assert [u.seq if u else None for u in updates] == [1, 2, None]
    assert profile is not None and profile.recent.seen[fingerprint("late")] == T0 - 2 * HOUR_MS


def test_resend_older_than_dedup_window_counts_as_new_once_evicted_by_the_cap() -> None:
    operator = ProfileOperator(dedup_window_ms=HOUR_MS, dedup_max_ids=2)
    stream = [event("old", T0), event("b", T0 + 2 * HOUR_MS), event("c", T0 + 2 * HOUR_MS + 1), event("old", T0)]
    profile, updates = run(operator, stream)
    assert [u.seq if u else None for u in updates] == [1, 2, 3, 4]
    assert profile is not None and profile.counts == {"page_view": 4}


def test_resend_older_than_dedup_window_is_still_a_duplicate_while_there_is_room() -> None:
    """Ids are only dropped when the set is full, so an old re-send is caught as long as there is room."""
    operator = ProfileOperator(dedup_window_ms=HOUR_MS)
    _, updates = run(operator, [event("a", T0), event("b", T0 + 5 * HOUR_MS), event("a", T0)])
    assert updates[2] is None


def test_resend_within_window_is_a_duplicate_even_when_full() -> None:
    operator = ProfileOperator(dedup_window_ms=HOUR_MS, dedup_max_ids=4)
    stream = [event(f"e{i}", T0 + i) for i in range(10)] + [event("e9", T0 + 9), event("e6", T0 + 6)]
    profile, updates = run(operator, stream)
    assert updates[-2:] == [None, None]
    assert profile is not None and len(profile.recent.seen) == 4


STREAMS = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10 * HOUR_MS)), max_size=80)


@FAST
@given(STREAMS, st.integers(1, 3 * HOUR_MS), st.integers(1, 16))
def test_dedup_state_stays_bounded_and_counts_are_consistent(
        stream: list[tuple[int, int]], window_ms: int, max_ids: int) -> None:
    operator = ProfileOperator(dedup_window_ms=window_ms, dedup_max_ids=max_ids)
    profile: UserProfile | None = None
    accepted: list[int] = []
    for number, offset in stream:
        profile, update = operator.process(profile, event(f"id-{number}", T0 + offset))
        assert len(profile.recent.seen) <= max_ids
        if update is not None:
            accepted.append(T0 + offset)
            assert update.seq == len(accepted) == profile.seq
    if profile is not None:
        assert sum(profile.counts.values()) == profile.seq == len(accepted)
        assert (profile.first_seen, profile.last_seen) == (min(accepted), max(accepted))


@FAST
@given(STREAMS)
def test_replay_gives_identical_updates(stream: list[tuple[int, int]]) -> None:
    events = [event(f"id-{n}", T0 + o) for n, o in stream]
    first = [u.to_json() if u else None for u in run(ProfileOperator(dedup_max_ids=8), events)[1]]
    second = [u.to_json() if u else None for u in run(ProfileOperator(dedup_max_ids=8), events)[1]]
    assert first == second


@pytest.mark.parametrize(("window_ms", "kept"), [
    (2_000, {"z", "w"}),
    (7_000, {"y", "z", "w"}),
    (100_000, {"y", "z", "w"}),
], ids=["all-expired-go", "expired-go-first", "oldest-goes-when-none-expired"])
def test_recent_ids_evict_expired_first_then_oldest_when_full(window_ms: int, kept: set[str]) -> None:
    recent, newest = RecentIds.empty(), 0
    for event_id, ts in [("x", 0), ("y", 5_000), ("z", 9_000), ("w", 10_000)]:
        assert recent.check_and_add(event_id, ts, newest_ts=newest, window_ms=window_ms, max_ids=3) is False
        newest = max(newest, ts)
    assert set(recent.seen) == {fingerprint(k) for k in kept}


MOSTLY_ORDERED = st.lists(st.tuples(st.integers(0, 30), st.integers(-HOUR_MS // 4, HOUR_MS)), max_size=80).map(
    lambda steps: list(zip([n for n, _ in steps], itertools.accumulate(step for _, step in steps), strict=True)))
"""(id number, event time) with time mostly moving forward, so ids expire a few at a time."""


@FAST
@given(STREAMS | MOSTLY_ORDERED, st.integers(1, 2 * HOUR_MS), st.integers(1, 8))
def test_recent_ids_evict_only_what_the_cap_requires(
        stream: list[tuple[int, int]], window_ms: int, max_ids: int) -> None:
    """New ids are always kept until full; then expired ids go, then the oldest, down to max_ids and no further."""
    recent, newest = RecentIds.empty(), 0
    for number, ts in stream:
        before = dict(recent.seen)
        if not recent.check_and_add(f"id-{number}", ts, newest, window_ms, max_ids):
            candidates = {**before, fingerprint(f"id-{number}"): ts}
            live = {k: t for k, t in candidates.items() if t >= max(newest, ts) - window_ms}
            if len(candidates) <= max_ids:
                assert recent.seen == candidates
            else:
                assert recent.seen.items() <= live.items()
                assert len(recent.seen) == min(max_ids, len(live))
                dropped = [t for k, t in live.items() if k not in recent.seen]
                assert not dropped or max(dropped) <= min(recent.seen.values())
        newest = max(newest, ts)


def test_late_id_older_than_the_window_is_dropped_at_once_when_full_so_its_resend_counts_as_new() -> None:
    recent = RecentIds(seen={fingerprint("x"): 9_000, fingerprint("y"): 9_500, fingerprint("z"): 9_900})
    assert recent.check_and_add("late", 0, newest_ts=9_900, window_ms=5_000, max_ids=3) is False
    assert fingerprint("late") not in recent.seen and len(recent.seen) == 3
    assert recent.check_and_add("late", 0, newest_ts=9_900, window_ms=5_000, max_ids=3) is False


# --- ProfileUpdate --------------------------------------------------------------------------------------------

def update(counts: dict[str, int], seq: int = 3) -> ProfileUpdate:
    return ProfileUpdate(user_key="anon:a-1", seq=seq, counts=counts, first_seen=T0, last_seen=T0 + 5,
                         event_id="e-3", event_type="search", event_ts=T0 + 5)


def test_update_id_is_user_and_seq() -> None:
    assert update({}).update_id == "anon:a-1:3"
    assert update({}, seq=4).update_id != update({}).update_id


def test_update_json_is_compact_sorted_and_independent_of_count_order() -> None:
    forward = update({"search": 1, "page_view": 2}).to_json()
    assert forward == update({"page_view": 2, "search": 1}).to_json()
    assert forward == (b'{"counts":{"page_view":2,"search":1},"event":{"id":"e-3","ts":1767225600005,'
                       b'"type":"search"},"first_seen":1767225600000,"id":"anon:a-1:3","last_seen":1767225600005,'
                       b'"seq":3,"user":"anon:a-1"}')
    assert json.loads(forward)["id"] == "anon:a-1:3"


# --- state codec ----------------------------------------------------------------------------------------------

def assert_round_trip(profile: UserProfile) -> None:
    """Exact: the user operator keeps decoded values between calls, so a value read back must equal it."""
    decoded = decode_profile(encode_profile(profile))
    assert decoded == profile
    assert encode_profile(decoded) == encode_profile(profile)


def test_codec_round_trip_of_an_operator_profile() -> None:
    stream = [event(f"e{i}", T0 + i * 1_234, t) for i, t in enumerate(["page_view", "search", "purchase"] * 20)]
    profile, _ = run(ProfileOperator(), stream)
    assert profile is not None
    assert_round_trip(profile)


def test_codec_round_trip_of_an_empty_profile() -> None:
    assert decode_profile(encode_profile(UserProfile())) == UserProfile()


@FAST
@given(STREAMS.filter(bool), st.integers(1, 64))
def test_codec_round_trip_of_random_profiles(stream: list[tuple[int, int]], max_ids: int) -> None:
    profile, _ = run(ProfileOperator(dedup_max_ids=max_ids), [event(f"id-{n}", T0 + o) for n, o in stream])
    assert profile is not None
    assert_round_trip(profile)


@pytest.mark.parametrize("data", [b"", bytes([0]), bytes([PROFILE_CODEC_VERSION + 1]) + b"\x00" * 8, b"{}"],
                         ids=["empty", "version-0", "next-version", "json"])
def test_codec_refuses_unknown_versions(data: bytes) -> None:
    with pytest.raises(CodecError, match="unknown profile codec version"):
        decode_profile(data)


def test_codec_keeps_ages_past_49_days_exactly_and_clamps_only_a_broken_clock() -> None:
    """Ages are milliseconds: uint32, or uint64 once one passes 2**32 ms; an id newer than last_seen
    (never from the operator) is stored at age 0."""
    old = UserProfile(last_seen=T0, recent=RecentIds(seen={1: T0 - 7_501, 2: T0 - 2**33 * 1000}))
    assert decode_profile(encode_profile(old)) == old
    assert len(encode_profile(old)) > len(encode_profile(UserProfile(last_seen=T0, recent=RecentIds(seen={1: T0}))))
    broken = UserProfile(last_seen=T0, recent=RecentIds(seen={1: T0 + 5_000, 3: T0 - 7_500}))
    assert decode_profile(encode_profile(broken)).recent.seen == {1: T0, 3: T0 - 7_500}


def test_codec_still_reads_version_1_with_ages_in_seconds() -> None:
    header = b'{"c":{"search":1},"f":1000,"l":9000,"s":1,"n":2}'
    data = bytes([1]) + struct.pack("<I", len(header)) + header + struct.pack("<2I2I", 7, 8, 0, 3)
    assert decode_profile(data).recent.seen == {7: 9000, 8: 6000}


def test_codec_writes_its_version_first() -> None:
    assert encode_profile(UserProfile())[0] == PROFILE_CODEC_VERSION


def test_encoded_profile_with_128_ids_stays_small() -> None:
    types = ["page_view", "product_view", "search", "add_to_cart", "remove_from_cart", "checkout_start",
             "purchase", "email_open", "email_click", "profile_update", "identify", "consent_change"]
    stream = [event(f"e-42-{i:08d}", T0 + i * 60_000, types[i % len(types)]) for i in range(1_000)]
    profile, _ = run(ProfileOperator(), stream)
    assert profile is not None and len(profile.recent.seen) == 128
    assert len(encode_profile(profile)) < 1_536


# --- dead letters ---------------------------------------------------------------------------------------------

REJECTION = Rejection("invalid_json", "Expecting value: line 1 column 1 (char 0)")


def letter(payload: bytes | None) -> tuple[bytes, dict[str, object]]:
    key, value = dead_letter(REJECTION, payload, "events.behavior", 3, 1_234, T0)
    assert value == json.dumps(json.loads(value), separators=(",", ":"), sort_keys=True).encode()
    return key, json.loads(value)


def test_dead_letter_identity_and_source() -> None:
    key, record = letter(b"{")
    assert key == b"events.behavior:3:1234"
    assert record["id"] == "events.behavior:3:1234"
    assert record["source"] == {"topic": "events.behavior", "partition": 3, "offset": 1_234, "timestamp": T0}
    assert (record["reason"], record["detail"]) == REJECTION


@pytest.mark.parametrize(("payload", "text"), [
    (b"{not json", "{not json"),
    ("{\"note\": \"café ☕\"}".encode(), "{\"note\": \"café ☕\"}"),
    (b"", ""),
    (None, ""),
], ids=["ascii", "multibyte-utf8", "empty", "none"])
def test_dead_letter_keeps_utf8_payload_as_text(payload: bytes | None, text: str) -> None:
    _, record = letter(payload)
    assert record["payload"] == text and "payload_base64" not in record
    assert record["payload_bytes"] == len(payload or b"") and record["truncated"] is False


def test_dead_letter_keeps_binary_payload_as_base64() -> None:
    payload = "{\"note\": \"café\"}".encode("latin-1")
    _, record = letter(payload)
    assert "payload" not in record
    assert base64.b64decode(str(record["payload_base64"])) == payload


def test_dead_letter_truncates_large_payloads_and_records_their_size() -> None:
    payload = b"x" * (MAX_KEPT_PAYLOAD_BYTES + 10)
    _, record = letter(payload)
    assert record["truncated"] is True and record["payload_bytes"] == MAX_KEPT_PAYLOAD_BYTES + 10
    assert record["payload"] == "x" * MAX_KEPT_PAYLOAD_BYTES
    _, exact = letter(payload[:MAX_KEPT_PAYLOAD_BYTES])
    assert exact["truncated"] is False


def test_dead_letter_cut_inside_a_multibyte_character_falls_back_to_base64() -> None:
    payload = b"x" + "é".encode() * MAX_KEPT_PAYLOAD_BYTES
    _, record = letter(payload)
    assert record["truncated"] is True and "payload" not in record
    assert base64.b64decode(str(record["payload_base64"])) == payload[:MAX_KEPT_PAYLOAD_BYTES]


def test_output_json_is_compact_with_sorted_keys_and_utf8() -> None:
    assert sorted_json({"b": [1, 2.5], "a": "café", "c": None}) == '{"a":"café","b":[1,2.5],"c":null}'.encode()


def test_numpy_scalars_and_float_subclasses_are_written_as_numbers() -> None:
    class Score(float):
        pass

    document = {"f": numpy.float64(0.5), "i": numpy.int64(3), "h": numpy.float32(0.25), "s": Score(1.5)}
    assert json.loads(compact_json(document)) == {"f": 0.5, "i": 3, "h": 0.25, "s": 1.5}

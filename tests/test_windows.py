"""WindowSpec and SlidingCount: exact bucket-granular sliding counts with bounded state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.features.config import WINDOW_1H, WINDOW_7D, WINDOW_24H, WINDOW_30D, WINDOW_180D
from operators.features.windows import SlidingCount, WindowSpec

FAST = settings(max_examples=300, deadline=None, database=None)
#: A small window for hand-checked examples: 6 buckets of 10 ms.
SPEC = WindowSpec("w", 60, 10)


# --- WindowSpec ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "bucket"), [(0, 10), (-60, 10), (60, 0), (60, -10), (65, 10), (5, 10)])
def test_window_spec_rejects_lengths_that_are_not_a_positive_multiple_of_the_bucket(length: int, bucket: int) -> None:
    with pytest.raises(ValueError, match="positive multiple"):
        WindowSpec("bad", length, bucket)


def test_window_spec_buckets_and_bucket_of() -> None:
    assert SPEC.buckets == 6
    assert WindowSpec("one", 10, 10).buckets == 1
    assert [SPEC.bucket_of(ts) for ts in (0, 9, 10, 19, 59, 60)] == [0, 0, 1, 1, 5, 6]


def test_default_windows_have_the_documented_bucket_counts() -> None:
    assert [w.buckets for w in (WINDOW_1H, WINDOW_24H, WINDOW_7D, WINDOW_30D, WINDOW_180D)] == [12, 24, 28, 30, 180]


def test_covers_is_the_n_buckets_ending_with_the_reference_bucket() -> None:
    reference = 95  # bucket 9: the window is buckets 4..9
    assert [b for b in range(0, 12) if SPEC.covers(b, reference)] == [4, 5, 6, 7, 8, 9]
    assert SPEC.covers(9, 90) and SPEC.covers(9, 99)  # anywhere in the reference bucket
    assert not SPEC.covers(10, 99)  # the future is not in the window
    assert not SPEC.covers(3, 99)


# --- SlidingCount: exact small examples ----------------------------------------------------------------------


def test_add_and_total_in_order() -> None:
    counter = SlidingCount()
    for ts in (0, 5, 12, 25, 25):
        assert counter.add(SPEC, ts, ts)
    assert counter.buckets == {0: 2, 1: 1, 2: 2}
    assert counter.total(SPEC, 25) == 5
    assert counter.total(SPEC, 59) == 5  # bucket 5: window 0..5
    assert counter.total(SPEC, 60) == 3  # bucket 6: bucket 0 has left
    assert counter.total(SPEC, 75) == 2  # bucket 7: window 2..7
    assert counter.total(SPEC, 80) == 0
    assert len(counter) == 3  # total never mutates


def test_add_with_amount_sums() -> None:
    counter = SlidingCount()
    counter.add(SPEC, 10, 10, 2.5)
    counter.add(SPEC, 11, 11, 4)
    assert counter.total(SPEC, 11) == 6.5


def test_out_of_order_event_inside_the_window_is_counted_in_its_own_bucket() -> None:
    counter = SlidingCount()
    assert counter.add(SPEC, 50, 50)
    assert counter.add(SPEC, 12, 50)  # bucket 1, window at reference 50 is 0..5
    assert counter.buckets == {5: 1, 1: 1}
    assert counter.total(SPEC, 50) == 2
    assert counter.total(SPEC, 65) == 2  # bucket 6: window 1..6 still holds both
    assert counter.total(SPEC, 70) == 1  # bucket 7: window 2..7, only the event at 50


def test_event_already_outside_the_window_is_not_counted() -> None:
    counter = SlidingCount()
    counter.add(SPEC, 100, 100)  # bucket 10: window 5..10
    assert not counter.add(SPEC, 49, 100)  # bucket 4
    assert counter.add(SPEC, 50, 100)  # bucket 5, the oldest still in
    assert counter.buckets == {10: 1, 5: 1}
    assert counter.total(SPEC, 100) == 2


def test_event_newer_than_the_reference_counts_against_itself() -> None:
    """add() uses max(reference, ts): a caller passing a stale reference never loses a new event."""
    counter = SlidingCount()
    assert counter.add(SPEC, 200, 0)
    assert counter.total(SPEC, 200) == 1


def test_prune_drops_exactly_the_buckets_that_left_the_window() -> None:
    counter = SlidingCount()
    for ts in (0, 10, 20, 30, 40, 50):
        counter.add(SPEC, ts, ts)
    assert len(counter) == 6
    counter.prune(SPEC, 59)  # bucket 5: window 0..5, nothing leaves
    assert sorted(counter.buckets) == [0, 1, 2, 3, 4, 5]
    counter.prune(SPEC, 72)  # bucket 7: window 2..7
    assert sorted(counter.buckets) == [2, 3, 4, 5]
    assert counter.total(SPEC, 72) == 4
    counter.prune(SPEC, 1000)
    assert len(counter) == 0
    assert counter.total(SPEC, 1000) == 0


def test_prune_and_total_agree_for_any_later_reference() -> None:
    counter = SlidingCount()
    for ts in range(0, 120, 7):
        counter.add(SPEC, ts, ts)
    before = {ref: counter.total(SPEC, ref) for ref in range(119, 200)}
    counter.prune(SPEC, 119)
    assert {ref: counter.total(SPEC, ref) for ref in range(119, 200)} == before
    assert len(counter) <= SPEC.buckets


# --- property: brute force over random out-of-order streams ------------------------------------------------


specs = st.builds(
    lambda bucket, n: WindowSpec("p", bucket * n, bucket),
    st.integers(min_value=1, max_value=20), st.integers(min_value=1, max_value=8),
)


@st.composite
def streams(draw: st.DrawFn) -> tuple[WindowSpec, list[tuple[int, bool, int]]]:
    """A spec and steps (ts, prune_after, query_offset): ts within a few windows' span, in random order."""
    spec = draw(specs)
    span = spec.length_ms * 4
    steps = draw(st.lists(
        st.tuples(st.integers(min_value=0, max_value=span), st.booleans(),
                  st.integers(min_value=0, max_value=spec.length_ms * 2)),
        min_size=1, max_size=60,
    ))
    return spec, steps


@FAST
@given(streams())
def test_sliding_count_matches_brute_force_over_random_streams(
        case: tuple[WindowSpec, list[tuple[int, bool, int]]]) -> None:
    spec, steps = case
    counter = SlidingCount()
    accepted: list[int] = []  # events inside the window relative to max-ts-so-far when they arrived
    reference: int | None = None
    for ts, prune, offset in steps:
        reference = ts if reference is None else max(reference, ts)
        newest = reference // spec.bucket_ms
        inside_on_arrival = newest - spec.buckets < ts // spec.bucket_ms <= newest
        assert counter.add(spec, ts, reference) == inside_on_arrival
        if inside_on_arrival:
            accepted.append(ts)
        if prune:
            counter.prune(spec, reference)
            assert len(counter) <= spec.buckets
        for query in (reference, reference + offset):
            query_bucket = query // spec.bucket_ms
            expected = sum(1 for t in accepted if query_bucket - spec.buckets < t // spec.bucket_ms <= query_bucket)
            assert counter.total(spec, query) == expected
    assert reference is not None
    counter.prune(spec, reference)
    assert len(counter) <= spec.buckets
    assert all(spec.covers(bucket, reference) for bucket in counter.buckets)
    assert all(value > 0 for value in counter.buckets.values())


@FAST
@given(specs, st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=200))
def test_state_stays_bounded_when_pruned_after_every_event(spec: WindowSpec, stamps: list[int]) -> None:
    counter = SlidingCount()
    reference = 0
    for ts in stamps:
        reference = max(reference, ts)
        counter.add(spec, ts, reference)
        counter.prune(spec, reference)
        assert len(counter) <= spec.buckets


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([WINDOW_1H, WINDOW_24H, WINDOW_7D, WINDOW_30D]), st.integers(0, 2**42),
       st.integers(-3000, 3000))
def test_bounds_are_what_covers_total_and_prune_use(spec: WindowSpec, reference: int, offset: int) -> None:
    oldest, newest = spec.bounds(reference)
    bucket = spec.bucket_of(reference) + offset % (spec.buckets + 2) - spec.buckets
    assert spec.covers(bucket, reference) == (oldest < bucket <= newest)
    counter = SlidingCount({bucket: 2, newest: 1})
    assert counter.total(spec, reference) == counter.total_within(oldest, newest)
    counter.prune_to(oldest)
    assert all(b > oldest for b in counter.buckets) and newest in counter.buckets

"""Sliding event-time counts in bounded, sparse buckets.

A window of length ``W`` with buckets of width ``b`` counts the events whose bucket lies in the
``W / b`` buckets ending with the reference time's bucket. That is exact at bucket granularity
(a 24 h window with 1 h buckets covers between 23 and 24 hours of history) and costs at most
``W / b`` integers per counted key, however many events arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WindowSpec:
    name: str
    length_ms: int
    bucket_ms: int

    def __post_init__(self) -> None:
        if self.length_ms <= 0 or self.bucket_ms <= 0 or self.length_ms % self.bucket_ms:
            raise ValueError(f"window {self.name}: length must be a positive multiple of the bucket width")

    @property
    def buckets(self) -> int:
        return self.length_ms // self.bucket_ms

    def bucket_of(self, ts: int) -> int:
        return ts // self.bucket_ms

    def bounds(self, reference_ts: int) -> tuple[int, int]:
        """``(oldest, newest)``: the window ending with ``reference_ts``'s bucket holds buckets in between
        (``oldest`` excluded)."""
        newest = reference_ts // self.bucket_ms
        return newest - self.length_ms // self.bucket_ms, newest

    def covers(self, bucket: int, reference_ts: int) -> bool:
        """Whether ``bucket`` falls inside the window that ends with ``reference_ts``'s bucket."""
        oldest, newest = self.bounds(reference_ts)
        return oldest < bucket <= newest


@dataclass
class SlidingCount:
    """Sparse ``bucket -> count`` (or sum) for one window; buckets outside the window are dropped."""

    buckets: dict[int, float] = field(default_factory=dict)

    def add(self, spec: WindowSpec, ts: int, reference_ts: int, amount: float = 1) -> bool:
        """Count an event at ``ts``; False (and nothing counted) when it is already outside the window."""
        bucket = spec.bucket_of(ts)
        if not spec.covers(bucket, max(reference_ts, ts)):
            return False
        self.buckets[bucket] = self.buckets.get(bucket, 0) + amount
        return True

    def total(self, spec: WindowSpec, reference_ts: int) -> float:
        return self.total_within(*spec.bounds(reference_ts))

    def total_within(self, oldest: int, newest: int) -> float:
        """The count in buckets ``oldest < bucket <= newest`` (:meth:`WindowSpec.bounds`, computed once for many
        counters of one window)."""
        return sum(value for bucket, value in self.buckets.items() if oldest < bucket <= newest)

    def prune(self, spec: WindowSpec, reference_ts: int) -> None:
        self.prune_to(spec.bounds(reference_ts)[0])

    def prune_to(self, oldest: int) -> None:
        """Drop the buckets at or before ``oldest`` (the first of :meth:`WindowSpec.bounds`)."""
        buckets = self.buckets
        if min(buckets, default=oldest + 1) <= oldest:
            for bucket in [b for b in buckets if b <= oldest]:
                del buckets[bucket]

    def __len__(self) -> int:
        return len(self.buckets)

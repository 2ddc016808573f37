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

    def covers(self, bucket: int, reference_ts: int) -> bool:
        """Whether ``bucket`` falls inside the window that ends with ``reference_ts``'s bucket."""
        newest = self.bucket_of(reference_ts)
        return newest - self.buckets < bucket <= newest


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
        return sum(value for bucket, value in self.buckets.items() if spec.covers(bucket, reference_ts))

    def prune(self, spec: WindowSpec, reference_ts: int) -> None:
        oldest = spec.bucket_of(reference_ts) - spec.buckets
        for bucket in [b for b in self.buckets if b <= oldest]:
            del self.buckets[bucket]

    def __len__(self) -> int:
        return len(self.buckets)

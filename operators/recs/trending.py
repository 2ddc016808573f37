"""Exponentially decayed counts on a landmark scale, and a trending list built on them.

The clock is a tick count (the item model counts the interactions it learned, so a half-life is a
number of interactions and the same whatever a data set's time scale). Decaying every stored count
on every tick would cost O(state) per tick. Instead a unit at ``tick`` adds
``w * 2 ** ((tick - origin) / half_life)``: every count then equals its true decayed value times the
same factor ``2 ** ((now - origin) / half_life)``, so comparisons and ratios between counts of one
clock are exact at any ``now`` without touching them. When the factor grows past
``2 ** REBASE_HALF_LIVES`` the owner rescales its counts once and moves the origin (once per 64
half-lives).
"""

from __future__ import annotations

from dataclasses import dataclass, field

REBASE_HALF_LIVES = 64
#: A trending list's share view is rebuilt once the list gained this share of weight (see ``Trending.shares``).
SHARES_GROWTH = 0.02


def growth(tick: int, origin: int, half_life: int) -> float:
    """The landmark-scale weight of one unit observed at ``tick``."""
    return 2.0 ** ((tick - origin) / half_life)


def needs_rebase(tick: int, origin: int, half_life: int) -> bool:
    return tick - origin > REBASE_HALF_LIVES * half_life


@dataclass
class Trending:
    """Decayed counts of at most ``capacity`` keys, with an exact top-``size`` list.

    The pool holds every key whose count beat ``threshold`` (the ``size``-th best count at the last
    pruning). Counts only grow on the landmark scale, so a key outside the pool never outranks the
    ``size``-th key inside it: the pool's top ``size`` is the exact top ``size``. The pool is pruned
    when it doubles, and the tail of the counts when it doubles past ``capacity`` (a dropped key starts
    again from zero, which a trending list may: it was at the bottom).

    >>> trending = Trending(size=2, capacity=4)
    >>> for key, amount in [("a", 1.0), ("b", 3.0), ("c", 2.0), ("a", 5.0)]:
    ...     trending.add(key, amount)
    >>> trending.top()
    [('a', 6.0), ('b', 3.0)]
    """

    size: int
    capacity: int
    counts: dict[str, float] = field(default_factory=dict)
    pool: dict[str, None] = field(default_factory=dict)
    threshold: float = 0.0
    ranked: list[tuple[str, float]] | None = None
    """The sorted pool, cached until a pooled count changes."""
    total: float = 0.0
    """Weight ever added (landmark scale): how much the list changed."""
    view: list[tuple[str, float]] | None = None
    """:meth:`shares`, cached until :attr:`total` grew by ``SHARES_GROWTH``."""
    view_total: float = 0.0

    def __post_init__(self) -> None:
        if self.capacity < 2 * self.size:
            raise ValueError("capacity must be at least twice the size")

    def add(self, key: str, amount: float) -> None:
        counts = self.counts
        value = counts[key] = counts.get(key, 0.0) + amount
        self.total += amount
        if key in self.pool or value > self.threshold:
            self.pool[key] = None
            self.ranked = None
            if len(self.pool) >= 2 * self.size:
                self._refill(list(self.pool))
        if len(counts) > 2 * self.capacity:
            for dropped in sorted(counts, key=counts.__getitem__, reverse=True)[self.capacity:]:
                del counts[dropped]
                self.pool.pop(dropped, None)

    def remove(self, key: str) -> None:
        if self.counts.pop(key, None) is not None and key in self.pool:
            self._refill(list(self.counts))  # rare (an evicted item was trending): rebuild from all counts

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        if self.ranked is None:
            counts = self.counts
            best = sorted(self.pool, key=counts.__getitem__, reverse=True)[: self.size]
            self.ranked = [(key, counts[key]) for key in best]
        return self.ranked if n is None else self.ranked[:n]

    def shares(self) -> list[tuple[str, float]]:
        """The top list as ``count / best count``, rebuilt only once the list gained 2% more weight.

        Every ranking reads it and nearly every event changes the counts; between rebuilds the
        shares move by at most a few percent, which a blend weight of 0.15 cannot turn into a
        different list often enough to pay for a rebuild per ranking.
        """
        if self.view is None or self.total > self.view_total * (1.0 + SHARES_GROWTH):
            top = self.top()
            best = top[0][1] if top else 0.0
            self.view = [(key, count / best) for key, count in top] if best > 0.0 else []
            self.view_total = self.total
        return self.view

    def rescale(self, factor: float) -> None:
        self.counts = {key: value * factor for key, value in self.counts.items()}
        self.threshold *= factor
        self.total *= factor
        self.view_total *= factor
        self.ranked = None

    def _refill(self, keys: list[str]) -> None:
        best = sorted(keys, key=self.counts.__getitem__, reverse=True)[: self.size]
        self.pool = dict.fromkeys(best)
        self.threshold = self.counts[best[-1]] if len(best) == self.size else 0.0
        self.ranked = self.view = None

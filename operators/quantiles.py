"""Approximate quantiles of a *population's current values*: decrementable and mergeable.

Streaming sketches (t-digest, KLL) summarise a stream of observations. Scoring a user against
"everyone now" needs the distribution of each user's *current* value instead: when a user's spend
changes, the old value must leave the summary. A log-binned histogram supports that exactly
(remove = decrement a bin), merges by adding bins (parallel instances own disjoint users), and is
small: a few dozen non-empty integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class PopulationHistogram:
    """Log-binned histogram of current per-user values (>= 0) that supports removal and merging.

    Values in ``[low, high)`` fall into bins that each span a factor ``r = 10 ** (1 / bins_per_decade)``
    (1.155 at 16 per decade). Values below ``low``, zero included, share one bin; values from ``high``
    up join the last bin.

    Error bound: :meth:`quantile` returns a value in the same bin as the exact q-quantile of the
    population (its ``ceil(q * count)``-th smallest value), so for values in ``[low, high)`` the
    relative error is below ``r - 1``: 15.5% at 16 bins per decade. Below ``low`` the absolute error is
    below ``low``; above ``high`` the error is unbounded (clamped). :meth:`rank` interpolates in log
    space inside a bin, so it is exact at bin edges and off by at most the share of the population in
    the value's own bin; a score can only be wrong for values in a bin a score boundary falls into.

    Serialised bin indices (:attr:`bins`, :meth:`to_dict`): ``-1`` is the zero bin, ``0..`` the log bins.

    >>> spend = PopulationHistogram()
    >>> for value in [5, 20, 40, 80, 300]:
    ...     spend.add(value)
    >>> spend.score(300), spend.score(5)
    (5, 1)
    >>> spend.move(300, 6)  # that user's spend changed
    >>> spend.count, spend.score(40)
    (5, 4)
    """

    ZERO_BIN = -1

    def __init__(self, low: float = 1e-2, high: float = 1e7, bins_per_decade: int = 16) -> None:
        if not 0 < low < high or bins_per_decade < 1:
            raise ValueError("need 0 < low < high and bins_per_decade >= 1")
        self.low = low
        self.high = high
        self.bins_per_decade = bins_per_decade
        log_bins = math.ceil(math.log10(high / low) * bins_per_decade)
        # Slot 0 is the zero bin, slot k >= 1 is log bin k - 1: a dense list keeps rank() a C-level sum.
        self._counts = [0] * (log_bins + 1)
        self._edges = [0.0] + [low * 10 ** (k / bins_per_decade) for k in range(log_bins + 1)]
        self._log_ratio = math.log(10) / bins_per_decade
        self._total = 0

    def _slot(self, value: float) -> int:
        if value < self.low:
            return 0
        last = len(self._counts) - 1  # also catches rounding up just below ``high``
        return min(int(math.log10(min(value, self.high) / self.low) * self.bins_per_decade) + 1, last)

    def add(self, value: float) -> None:
        self._counts[self._slot(value)] += 1
        self._total += 1

    def remove(self, value: float) -> None:
        """Take one ``value`` out; a value that is not there changes nothing (counts never go negative)."""
        slot = self._slot(value)
        if self._counts[slot]:
            self._counts[slot] -= 1
            self._total -= 1

    def move(self, old: float | None, new: float | None) -> None:
        """One user's value changed from ``old`` to ``new`` (None: not in the population)."""
        if old is not None:
            self.remove(old)
        if new is not None:
            self.add(new)

    def merged(self, others: Iterable[PopulationHistogram]) -> PopulationHistogram:
        """A new histogram of this population and ``others`` (disjoint users, same binning)."""
        result = PopulationHistogram(self.low, self.high, self.bins_per_decade)
        for histogram in (self, *others):
            if (histogram.low, histogram.high, histogram.bins_per_decade) != (
                    self.low, self.high, self.bins_per_decade):
                raise ValueError("cannot merge histograms with different binning")
            result._counts = [mine + theirs for mine, theirs in zip(result._counts, histogram._counts, strict=True)]
            result._total += histogram._total
        return result

    @property
    def count(self) -> int:
        return self._total

    @property
    def bins(self) -> dict[int, int]:
        """Non-empty bins by index (``ZERO_BIN`` for values below ``low``)."""
        return {slot - 1: count for slot, count in enumerate(self._counts) if count}

    def rank(self, value: float) -> float:
        """Fraction of the population at or below ``value``, interpolated inside its bin (0.5 when empty)."""
        if not self._total:
            return 0.5
        slot = self._slot(value)
        if slot == 0:
            fraction = max(value, 0.0) / self.low
        else:
            fraction = min(max(math.log(value / self._edges[slot]) / self._log_ratio, 0.0), 1.0)
        return (sum(self._counts[:slot]) + fraction * self._counts[slot]) / self._total

    def quantile(self, q: float) -> float:
        """The smallest value whose :meth:`rank` is ``q``: the inverse of :meth:`rank`."""
        if not 0 <= q <= 1:
            raise ValueError("q must be within [0, 1]")
        if not self._total:
            raise ValueError("an empty population has no quantiles")
        target, seen, slot = q * self._total, 0, 0
        while not self._counts[slot] or seen + self._counts[slot] < target:
            seen += self._counts[slot]
            slot += 1
        fraction = (target - seen) / self._counts[slot]
        lower, upper = self._edges[slot], self._edges[slot + 1]
        if slot == 0:
            return fraction * upper
        return lower * (upper / lower) ** fraction

    def score(self, value: float, levels: int = 5) -> int:
        """1..levels: the quantile band of ``value`` in the population (the middle one when empty)."""
        if not self._total:
            return (levels + 1) // 2
        return 1 + min(levels - 1, int(self.rank(value) * levels))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with only the non-empty bins."""
        return {"low": self.low, "high": self.high, "bins_per_decade": self.bins_per_decade,
                "bins": {str(index): count for index, count in self.bins.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PopulationHistogram:
        histogram = cls(data["low"], data["high"], data["bins_per_decade"])
        for index, count in data["bins"].items():
            slot = int(index) + 1
            if not 0 <= slot < len(histogram._counts) or int(count) < 0:
                raise ValueError(f"bin {index}: {count} does not fit this binning")
            histogram._counts[slot] = int(count)
        histogram._total = sum(histogram._counts)
        return histogram

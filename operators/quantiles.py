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

    Values in ``[low, high]`` fall into bins of equal width in log space (``bins_per_decade`` per
    factor of ten; at 16 a bin spans 15.5%, which bounds the relative error of :meth:`quantile`).
    Values below ``low`` (including zero) share one bin; values above ``high`` join the last bin.

    >>> spend = PopulationHistogram()
    >>> for value in [5, 20, 40, 80, 300]:
    ...     spend.add(value)
    >>> spend.score(300), spend.score(5)
    (5, 1)
    >>> spend.move(300, 6)  # that user's spend changed
    >>> spend.count
    5
    """

    ZERO_BIN = -1

    def __init__(self, low: float = 1e-2, high: float = 1e7, bins_per_decade: int = 16) -> None:
        if not 0 < low < high or bins_per_decade < 1:
            raise ValueError("need 0 < low < high and bins_per_decade >= 1")
        self.low = low
        self.high = high
        self.bins_per_decade = bins_per_decade
        self._last_bin = math.ceil(math.log10(high / low) * bins_per_decade) - 1
        self.bins: dict[int, int] = {}

    def _bin(self, value: float) -> int:
        if value < self.low:
            return self.ZERO_BIN
        return min(int(math.log10(value / self.low) * self.bins_per_decade), self._last_bin)

    def _edges(self, index: int) -> tuple[float, float]:
        if index == self.ZERO_BIN:
            return 0.0, self.low
        return (self.low * 10 ** (index / self.bins_per_decade),
                self.low * 10 ** ((index + 1) / self.bins_per_decade))

    def add(self, value: float) -> None:
        index = self._bin(value)
        self.bins[index] = self.bins.get(index, 0) + 1

    def remove(self, value: float) -> None:
        index = self._bin(value)
        remaining = self.bins.get(index, 0) - 1
        if remaining > 0:
            self.bins[index] = remaining
        else:
            self.bins.pop(index, None)

    def move(self, old: float | None, new: float | None) -> None:
        """One user's value changed from ``old`` to ``new`` (None: not in the population)."""
        if old is not None:
            self.remove(old)
        if new is not None:
            self.add(new)

    def merged(self, others: Iterable[PopulationHistogram]) -> PopulationHistogram:
        result = PopulationHistogram(self.low, self.high, self.bins_per_decade)
        for histogram in (self, *others):
            if (histogram.low, histogram.high, histogram.bins_per_decade) != (self.low, self.high,
                                                                                 self.bins_per_decade):
                raise ValueError("cannot merge histograms with different binning")
            for index, count in histogram.bins.items():
                result.bins[index] = result.bins.get(index, 0) + count
        return result

    @property
    def count(self) -> int:
        return sum(self.bins.values())

    def rank(self, value: float) -> float:
        """Fraction of the population at or below ``value``, interpolated (in log space) inside its bin."""
        total = self.count
        if not total:
            return 0.5
        index = self._bin(value)
        below = sum(count for bin_index, count in self.bins.items() if bin_index < index)
        lower, upper = self._edges(index)
        if index == self.ZERO_BIN:
            fraction = value / self.low if self.low else 1.0
        else:
            fraction = math.log(max(min(value, upper), lower) / lower) / math.log(upper / lower)
        return (below + fraction * self.bins.get(index, 0)) / total

    def quantile(self, q: float) -> float:
        """Approximate inverse of :meth:`rank` (bin-level accuracy)."""
        total = self.count
        if not total:
            return 0.0
        target, seen = q * total, 0
        for index in sorted(self.bins):
            count = self.bins[index]
            if seen + count >= target:
                lower, upper = self._edges(index)
                fraction = (target - seen) / count
                if index == self.ZERO_BIN:
                    return lower + fraction * (upper - lower)
                return lower * (upper / lower) ** fraction
            seen += count
        return self._edges(max(self.bins))[1]

    def score(self, value: float, levels: int = 5) -> int:
        """1..levels: the quantile band of ``value`` in the population (the middle one when empty)."""
        if not self.bins:
            return (levels + 1) // 2
        return 1 + min(levels - 1, int(self.rank(value) * levels))

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "bins_per_decade": self.bins_per_decade,
                "bins": {str(index): count for index, count in self.bins.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PopulationHistogram:
        histogram = cls(data["low"], data["high"], data["bins_per_decade"])
        histogram.bins = {int(index): int(count) for index, count in data["bins"].items() if int(count) > 0}
        return histogram

"""Recency, frequency and monetary value over a sliding window, scored against the population."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from operators.features.config import DAY_MS
from operators.features.windows import SlidingCount, WindowSpec
from operators.quantiles import PopulationHistogram

RFM_METRICS = ("recency_days", "frequency", "monetary")


class PopulationScorer(Protocol):
    """Where R/F/M scores come from: the distribution of current values over all users."""

    def move(self, metric: str, old: float | None, new: float | None) -> None: ...
    def score(self, metric: str, value: float) -> int: ...


@dataclass
class LocalPopulation:
    """A :class:`PopulationScorer` over this process's users only (tests, offline replays).

    The job uses ``connectors.population.SharedPopulation`` instead, which merges the
    distributions of all parallel instances through Redis.
    """

    histograms: dict[str, PopulationHistogram] = field(
        default_factory=lambda: {metric: PopulationHistogram() for metric in RFM_METRICS}
    )

    def move(self, metric: str, old: float | None, new: float | None) -> None:
        self.histograms[metric].move(old, new)

    def score(self, metric: str, value: float) -> int:
        return self.histograms[metric].score(value)


@dataclass
class PurchaseHistory:
    """Purchases and spend per day bucket within the RFM window, plus the last purchase time."""

    count: SlidingCount = field(default_factory=SlidingCount)
    spend: SlidingCount = field(default_factory=SlidingCount)
    last_purchase_ts: int | None = None
    scored: tuple[float, float, float] | None = None
    """The (recency_days, frequency, monetary) this user last contributed to the population."""

    def add(self, window: WindowSpec, ts: int, amount: float, reference_ts: int) -> None:
        if self.count.add(window, ts, reference_ts):
            self.spend.add(window, ts, reference_ts, amount)
        self.last_purchase_ts = ts if self.last_purchase_ts is None else max(self.last_purchase_ts, ts)

    def prune(self, window: WindowSpec, reference_ts: int) -> None:
        self.count.prune(window, reference_ts)
        self.spend.prune(window, reference_ts)


@dataclass(frozen=True)
class Rfm:
    recency_days: float | None
    frequency: int
    monetary: float
    r: int
    f: int
    m: int

    @property
    def average_order_value(self) -> float:
        return self.monetary / self.frequency if self.frequency else 0.0


def rfm_of(history: PurchaseHistory, window: WindowSpec, reference_ts: int, population: PopulationScorer) -> Rfm:
    """Current RFM and scores; moves this user's contribution in the population when it changed.

    Users without a purchase in the window are outside the scored population and score 1/1/1.
    Recency is scored inversely (more recent = higher). The population holds each user's values
    as of their latest event, so recencies of quiet users are a little stale: an approximation.
    """
    oldest, newest = window.bounds(reference_ts)
    frequency = int(history.count.total_within(oldest, newest))
    monetary = round(history.spend.total_within(oldest, newest), 2)
    recency = None
    if history.last_purchase_ts is not None:
        recency = round(max(reference_ts - history.last_purchase_ts, 0) / DAY_MS, 1)
    current = (recency, float(frequency), monetary) if frequency and recency is not None else None
    if current != history.scored:
        old = history.scored
        for index, metric in enumerate(RFM_METRICS):
            population.move(metric, None if old is None else old[index], None if current is None else current[index])
        history.scored = current
    if current is None:
        return Rfm(recency, frequency, monetary, 1, 1, 1)
    return Rfm(
        recency, frequency, monetary,
        r=6 - population.score("recency_days", current[0]),
        f=population.score("frequency", current[1]),
        m=population.score("monetary", current[2]),
    )

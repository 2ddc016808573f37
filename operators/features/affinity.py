"""Time-decayed category affinity: recent, strong signals count most."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

#: Decimal digits an affinity score keeps (the state codecs store it as JSON).
SCORE_DIGITS = 6


def decay(score: float, elapsed_ms: int, half_life_ms: int) -> float:
    return score * 0.5 ** (elapsed_ms / half_life_ms)


@dataclass
class CategoryAffinity:
    """``category -> (score, as_of_ts)``; score(t) = sum of weight * 2^(-(t - ts) / half_life).

    Exponential decay makes out-of-order events exact: an older event adds its weight already
    decayed to the stored time. At most ``max_categories`` are kept; the weakest is dropped.
    """

    scores: dict[str, tuple[float, int]] = field(default_factory=dict)

    def add(self, category: str, weight: float, ts: int, half_life_ms: int, max_categories: int) -> None:
        score, as_of = self.scores.get(category, (0.0, ts))
        if ts >= as_of:
            score, as_of = decay(score, ts - as_of, half_life_ms) + weight, ts
        else:
            score += decay(weight, as_of - ts, half_life_ms)
        # Kept at the precision the state codec stores, so a value read back equals the one kept in memory.
        self.scores[category] = (round(score, SCORE_DIGITS), as_of)
        if len(self.scores) > max_categories:
            reference = max(t for _, t in self.scores.values())
            weakest = min(self.scores, key=lambda c: self.at(c, reference, half_life_ms))
            del self.scores[weakest]

    def at(self, category: str, reference_ts: int, half_life_ms: int) -> float:
        score, as_of = self.scores[category]
        return decay(score, max(reference_ts - as_of, 0), half_life_ms)

    def top(self, reference_ts: int, half_life_ms: int, n: int) -> list[tuple[str, float]]:
        return heapq.nsmallest(n, ((c, self.at(c, reference_ts, half_life_ms)) for c in self.scores),
                               key=lambda item: (-item[1], item[0]))

"""Item-to-item similarity from co-visitation weight ``C(q, j)`` and item masses ``N(q)``, ``N(j)``.

All three are measured on MovieLens-100K in docs/recommendations.md; the evaluation command lets
a shop measure them on its own data (the ``similarity`` setting).
"""

from __future__ import annotations

import math
from collections.abc import Callable


def jaccard(together: float, mass: float, other_mass: float) -> float:
    """SAR's default: bounded by 1, favours neither rare nor popular neighbours."""
    return together / max(mass + other_mass - together, together)


def cosine(together: float, mass: float, other_mass: float) -> float:
    return together / math.sqrt(mass * other_mass)


def lift(together: float, mass: float, other_mass: float) -> float:
    """Favours rare neighbours (serendipity over accuracy)."""
    return together / (mass * other_mass)


#: The ``similarity`` setting's choices.
SIMILARITIES: dict[str, Callable[[float, float, float], float]] = {"jaccard": jaccard, "cosine": cosine, "lift": lift}

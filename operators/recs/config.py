"""Recommendation parameters, built from the ``recommendations`` section of the settings.

The defaults are generic for a shop's event stream (days-scale half-lives, small bounded lists);
``docs/recommendations.md`` says why each is what it is and what it costs in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

from operators.features.config import DAY_MS
from operators.recs.similarity import SIMILARITIES

#: Blend weights of the candidate sources (each source is first scaled to a maximum of 1).
DEFAULT_WEIGHTS = {"covisit": 1.0, "trending": 0.15, "affinity": 0.1, "recent": 0.1, "cart": 0.5}
SOURCES = tuple(DEFAULT_WEIGHTS)
#: How strongly an event of each type says "this user wants this item"; other types teach nothing.
DEFAULT_EVENT_WEIGHTS = {"product_view": 1.0, "add_to_cart": 2.0, "purchase": 3.0}


@dataclass(frozen=True)
class RecConfig:
    k: int = 10
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    recent_items: int = 50
    """Distinct items remembered per user; a new item is paired with all of them (co-visitation window)."""
    query_items: int = 10
    """The user's most recent items whose neighbours are scored."""
    position_decay: float = 0.8
    """The n-th most recent item counts ``position_decay ** n`` (n = 0 is the newest)."""
    similarity: str = "cosine"
    """How co-visitation weight is normalised: ``jaccard``, ``cosine`` or ``lift`` (docs/recommendations.md)."""
    max_neighbours: int = 200
    """Co-visitation weights kept per item (up to 1.5x between prunings; the weakest go)."""
    scored_neighbours: int = 100
    """Strongest neighbours of a query item that are scored."""
    max_items: int = 20_000
    """Items in the global model; the least recently seen is forgotten first."""
    pair_decay: float = 0.3
    """A pair of items ``d`` steps apart in a user's sequence (1: consecutive) counts ``d ** -pair_decay``."""
    covisit_half_life: int = 1_000_000
    """Co-visitation half-life in interactions learned by the model (the interaction clock)."""
    trending_half_life: int = 5_000
    """Trending half-life in interactions learned by the model."""
    trending_pool: int = 50
    """Top items kept per trending list (global and per segment)."""
    category_pool: int = 20
    """Top items kept per category for the affinity source."""
    max_segments: int = 64
    affinity_half_life_ms: int = 7 * DAY_MS
    top_categories: int = 3
    max_categories: int = 10
    """Categories tracked per user (the weakest affinity goes)."""
    max_cart: int = 20
    max_purchased: int = 100
    max_per_category: int = 5
    """Diversity cap per category in one list; 0 disables it."""
    exclude_purchased: bool = True
    pinned_items: tuple[str, ...] = ()
    checkout_timeout_ms: int = 30 * 60_000
    """Recommendations stay suppressed this long after a ``checkout_start`` unless a purchase ends it."""
    min_change: float = 0.3
    """Share of a list's items that must be new for it to be re-emitted (a new top 3 always is)."""

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown recommendation sources {sorted(unknown)}; known: {list(SOURCES)}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, not {self.similarity!r}")
        if self.scored_neighbours > self.max_neighbours:
            raise ValueError("scored_neighbours must not exceed max_neighbours")
        if not 0.0 < self.position_decay <= 1.0:
            raise ValueError("position_decay must be in (0, 1]")
        if self.pair_decay < 0.0:
            raise ValueError("pair_decay must not be negative")
        if self.covisit_half_life < 1 or self.trending_half_life < 1:
            raise ValueError("covisit_half_life and trending_half_life must be at least 1 interaction")

    @cached_property
    def pair_weights(self) -> tuple[float, ...]:
        """Weight of a pair by its distance in the user's sequence, for the ``recent_items`` previous items."""
        return tuple((distance + 1) ** -self.pair_decay for distance in range(self.recent_items))


def rec_config(section: Mapping[str, Any]) -> RecConfig:
    """The config from a ``recommendations`` section (e.g. ``dataclasses.asdict(settings.recommendations)``).

    Keys the operators do not use (Redis TTL and the like) are ignored, so the settings section can
    carry the job's own knobs next to these.
    """
    known = {f.name for f in fields(RecConfig)}
    values = {name: value for name, value in section.items() if name in known}
    if "pinned_items" in values:
        values["pinned_items"] = tuple(values["pinned_items"])
    for name in ("weights", "event_weights"):
        if name in values:
            values[name] = dict(values[name])
    return RecConfig(**values)

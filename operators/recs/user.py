"""Per-user recommendation state: what the user saw, carted and bought, and category affinity."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TypeVar

from operators.events import Event
from operators.features.affinity import CategoryAffinity
from operators.recs.config import RecConfig
from operators.recs.model import Interaction

V = TypeVar("V")


@dataclass
class UserRecState:
    """Bounded by configuration: ``recent_items + max_cart + max_purchased`` items and ``max_categories``."""

    recent: dict[str, float] = field(default_factory=dict)
    """Distinct items, oldest first, with the strongest event weight seen for each."""
    cart: dict[str, int] = field(default_factory=dict)
    """Items added to the cart and neither removed nor bought, oldest first, with the time added."""
    purchased: dict[str, int] = field(default_factory=dict)
    """Bought items, least recently bought first, with the time bought."""
    affinity: CategoryAffinity = field(default_factory=CategoryAffinity)
    checkout_ts: int = 0
    """Time of an open ``checkout_start`` (0: none); a purchase closes it."""
    reference_ts: int = 0
    """Newest event time seen."""
    arms: dict[str, str] = field(default_factory=dict)
    """The user's arm per experiment, remembered when first needed, so it survives a login (identity
    stitching merges it: docs/experiments.md)."""

    def remember(self, event: Event, config: RecConfig, category: str = "",
                 segments: tuple[str, ...] = ()) -> Interaction | None:
        """Apply an event; return what the global model should learn from it (None: nothing).

        ``category`` stands in for an event without one (the catalogue's, say). The interaction
        pairs the item with the items seen *before* it, so the model learns "seen together"
        without ever seeing the user.
        """
        self.reference_ts = max(self.reference_ts, event.ts)
        item = event.item_id
        if event.type == "checkout_start":
            self.checkout_ts = event.ts
        elif event.type == "add_to_cart" and item:
            _bounded_put(self.cart, item, event.ts, config.max_cart)
        elif event.type == "remove_from_cart":
            self.cart.pop(item, None)
        elif event.type == "purchase" and item:
            self.cart.pop(item, None)
            _bounded_put(self.purchased, item, event.ts, config.max_purchased)
            self.checkout_ts = 0
        weight = config.event_weights.get(event.type, 0.0)
        if not item or weight <= 0.0:
            return None
        category = event.category or category
        previous = tuple(reversed([seen for seen in self.recent if seen != item]))
        _bounded_put(self.recent, item, max(weight, self.recent.get(item, 0.0)), config.recent_items)
        if category:
            self.affinity.add(category, weight, event.ts, config.affinity_half_life_ms, config.max_categories)
        return Interaction(item, category, event.ts, weight, previous, segments, _announced_availability(event))

    def query(self, config: RecConfig) -> list[tuple[str, float]]:
        """The newest ``query_items`` items with weight ``event weight * position_decay ** age``."""
        newest = list(reversed(self.recent))[: config.query_items]
        return [(item, self.recent[item] * config.position_decay ** age) for age, item in enumerate(newest)]

    def top_categories(self, config: RecConfig) -> list[tuple[str, float]]:
        return self.affinity.top(self.reference_ts, config.affinity_half_life_ms, config.top_categories)


def _bounded_put(items: dict[str, V], key: str, value: V, limit: int) -> None:
    """Insert or move ``key`` to the newest end; drop the oldest beyond ``limit``."""
    items.pop(key, None)
    items[key] = value
    while len(items) > limit:
        del items[next(iter(items))]


def _announced_availability(event: Event) -> bool | None:
    """``properties.available`` of the event, if it is a boolean (a catalogue signal riding on events)."""
    if '"available"' not in event.attributes:  # skip the JSON parse for the usual event
        return None
    properties = json.loads(event.attributes).get("properties")
    available = properties.get("available") if isinstance(properties, dict) else None
    return available if isinstance(available, bool) else None

"""What rules remember of a user's events: the newest timestamps of each signal, nothing more.

A condition "at least K events within W" only ever needs the K newest timestamps: it holds while
the K-th newest is inside the window and stops holding exactly when that one leaves it. So a
signal keeps at most ``keep`` timestamps (the largest K any rule asks of it) per entity, and no
evaluation re-scans a window.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cached_property

from operators.events import Event

#: Entities a per-item or per-category signal tracks per user; the least recently seen goes first.
MAX_ENTITIES = 20


@dataclass(frozen=True)
class Signal:
    """A kind of event a rule counts: its types, optionally one item or category, optionally per entity."""

    types: tuple[str, ...]
    per: str = ""
    """``item`` or ``category``: timestamps are kept per item or category ("the same product")."""
    item: str = ""
    category: str = ""

    @cached_property
    def key(self) -> str:
        """Stable name of the signal in keyed state (it must not change between job versions)."""
        key = "+".join(self.types)
        if self.per:
            key += f"/per:{self.per}"
        if self.item:
            key += f"/item:{self.item}"
        if self.category:
            key += f"/category:{self.category}"
        return key

    def entity(self, event: Event) -> str | None:
        """The entity the event counts for, "" when not per entity; None when it does not match."""
        if event.type not in self.types:
            return None
        if (self.item and event.item_id != self.item) or (self.category and event.category != self.category):
            return None
        if self.per == "item":
            return event.item_id or None
        if self.per == "category":
            return event.category or None
        return ""


@dataclass(frozen=True)
class Retention:
    """How much of a signal rules need: the newest ``keep`` timestamps, none older than ``horizon_ms``."""

    keep: int
    horizon_ms: int

    def merge(self, other: Retention) -> Retention:
        return Retention(max(self.keep, other.keep), max(self.horizon_ms, other.horizon_ms))


@dataclass
class SignalLog:
    """Sorted newest timestamps per entity of one signal.

    ``floor`` is the newest timestamp dropped because only ``keep`` are kept (-1: none): at and
    below it the log is incomplete, so absence checks (sequences) never look there.
    """

    entities: dict[str, list[int]] = field(default_factory=dict)
    floor: int = -1

    def add(self, entity: str, ts: int, retention: Retention) -> None:
        times = self.entities.setdefault(entity, [])
        bisect.insort(times, ts)
        if len(times) > retention.keep:
            self.floor = max(self.floor, times.pop(0))
        if len(self.entities) > MAX_ENTITIES:
            stalest = min(self.entities, key=lambda name: (self.entities[name][-1], name))
            del self.entities[stalest]

    def prune(self, now: int, retention: Retention) -> None:
        """Drop timestamps no rule can see any more (older than the horizon)."""
        oldest = now - retention.horizon_ms
        for entity, times in list(self.entities.items()):
            cut = bisect.bisect_right(times, oldest)
            if cut == len(times):
                del self.entities[entity]
            elif cut:
                del times[:cut]

    def times(self, entity: str = "") -> list[int]:
        return self.entities.get(entity, [])

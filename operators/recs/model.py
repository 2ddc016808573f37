"""The global item model: catalogue, item-to-item co-visitation and trending popularity.

One model serves every user. It learns from :class:`Interaction` records, which the per-user state
(:mod:`operators.recs.user`) derives from events: the item, how strong the signal was, and the
user's previous items to pair it with. The model never sees user ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import NamedTuple

from operators.recs.config import RecConfig
from operators.recs.similarity import SIMILARITIES
from operators.recs.trending import Trending, growth, needs_rebase

#: Capacity of a trending list's counts, in multiples of its size: room for risers below the top.
TRENDING_CAPACITY = 10
#: Similarities of an item are recomputed once its co-visitation row gained this share of weight.
RESORT_GROWTH = 0.1


class Interaction(NamedTuple):
    """What the global model learns from one user event (flat, so it crosses operator boundaries)."""

    item_id: str
    category: str
    ts: int
    weight: float
    previous: tuple[str, ...]
    """The user's recent items before this one, newest first."""
    segments: tuple[str, ...]
    available: bool | None
    """Availability announced by the event (``properties.available``), None when it says nothing."""


@dataclass
class ItemEntry:
    category: str = ""
    available: bool = True
    mass: float = 0.0
    """Decayed interaction weight of the item (co-visitation clock)."""
    neighbours: dict[str, float] = field(default_factory=dict)
    """Decayed co-visitation weight with each neighbour (co-visitation clock)."""
    added: float = 0.0
    """Total weight ever added to :attr:`neighbours` (co-visitation clock): how much the row changed."""
    top: list[tuple[str, float]] = field(default_factory=list)
    """Most similar neighbours and their similarity, derived from :attr:`neighbours`, refreshed lazily."""
    top_added: float = 0.0
    """:attr:`added` when :attr:`top` was computed."""


@dataclass
class ItemModel:
    """Bounded global state: ``max_items`` entries, ``1.5 * max_neighbours`` weights each, fixed-size lists."""

    items: dict[str, ItemEntry] = field(default_factory=dict)
    """Catalogue in least-recently-seen-first order (a seen item moves to the end)."""
    learned: int = 0
    """Interactions learned: the clock co-visitation and trending decay on (a half-life is a number of
    interactions, so the model behaves the same whatever the data's time scale)."""
    covisit_origin: int = 0
    trending_origin: int = 0
    trending: Trending | None = None
    segments: dict[str, Trending] = field(default_factory=dict)
    """Trending list per segment name, least recently updated first."""
    categories: dict[str, Trending] = field(default_factory=dict)
    """Trending list per category, feeding the affinity source."""

    def learn(self, interaction: Interaction, config: RecConfig) -> None:
        item = interaction.item_id
        entry = self.touch(item, interaction.category, interaction.available, config)
        self.learned += 1
        weight = interaction.weight * self._covisit_unit(config)
        entry.mass += weight
        limit = config.max_neighbours + config.max_neighbours // 2
        items = self.items
        # the weight table has recent_items entries: zip pairs with the newest recent_items only
        for other, closeness in zip(interaction.previous, config.pair_weights, strict=False):
            neighbour = items.get(other) if other != item else None
            if neighbour is None:
                continue
            added = weight * closeness
            for owner, key in ((entry, other), (neighbour, item)):
                row = owner.neighbours
                row[key] = row.get(key, 0.0) + added
                owner.added += added
                if len(row) > limit:
                    _prune(row, config.max_neighbours)
        trending_unit = interaction.weight * self._trending_unit(config)
        self._global_trending(config).add(item, trending_unit)
        for segment in interaction.segments:
            self._segment_trending(segment, config).add(item, trending_unit)
        if entry.category:
            self._category_trending(entry.category, config).add(item, trending_unit)

    def touch(self, item: str, category: str, available: bool | None, config: RecConfig) -> ItemEntry:
        """Add or refresh a catalogue entry (also the way a catalogue feed updates an item)."""
        entry = self.items.pop(item, None)
        if entry is None:
            entry = ItemEntry()
            while len(self.items) >= config.max_items:
                self._evict(next(iter(self.items)))
        self.items[item] = entry
        if category and category != entry.category:
            self._leave_category(item, entry.category)
            entry.category = category
        if available is not None:
            entry.available = available
        return entry

    def is_available(self, item: str) -> bool:
        entry = self.items.get(item)
        return entry is not None and entry.available

    def category_of(self, item: str) -> str:
        entry = self.items.get(item)
        return entry.category if entry is not None else ""

    def covisit_scores(self, query: Sequence[tuple[str, float]], config: RecConfig) -> dict[str, float]:
        """``sum over query items q of weight(q) * similarity(q, j)`` over the scored neighbours j of each q."""
        items = self.items
        scores: dict[str, float] = {}
        get = scores.get
        for item, weight in query:
            entry = items.get(item)
            if entry is not None:
                for other, similarity in self._similar(entry, config):
                    scores[other] = get(other, 0.0) + weight * similarity
        return scores

    def trending_scores(self, segments: Iterable[str], config: RecConfig) -> dict[str, float]:
        """Mean over the user's known segments and the global list of ``count / list's best count``."""
        lists = [self.segments[s] for s in segments if s in self.segments]
        if self.trending is not None:
            lists.append(self.trending)
        if len(lists) == 1:  # the usual case: the global list alone, no averaging
            return dict(lists[0].shares())
        scores: dict[str, float] = {}
        for trending in lists:
            for item, share in trending.shares():
                scores[item] = scores.get(item, 0.0) + share / len(lists)
        return scores

    def category_scores(self, affinities: Sequence[tuple[str, float]], config: RecConfig) -> dict[str, float]:
        """``affinity(c) / best affinity * count(j) / best count in c`` for the top items j of category c."""
        scores: dict[str, float] = {}
        best_affinity = max((a for _, a in affinities), default=0.0)
        if best_affinity <= 0.0:
            return scores
        for category, affinity in affinities:
            trending = self.categories.get(category)
            if trending is None:
                continue
            scale = affinity / best_affinity
            for item, share in trending.shares():
                if scale * share > scores.get(item, 0.0):
                    scores[item] = scale * share
        return scores

    def _similar(self, entry: ItemEntry, config: RecConfig) -> list[tuple[str, float]]:
        """Similarity to the entry's ``scored_neighbours`` strongest co-visited items.

        Recomputed only once the row has gained 10% more weight: similarities move little in between,
        and recomputing on every query would cost a sort per query item.
        """
        if entry.added > entry.top_added * (1.0 + RESORT_GROWTH):
            items, mass, measure = self.items, entry.mass, SIMILARITIES[config.similarity]
            top = []
            if mass > 0.0:  # sorted() in C beats heapq.nlargest's Python loop for 100 of 300
                strongest = sorted(entry.neighbours.items(), key=itemgetter(1), reverse=True)
                for other, together in strongest[: config.scored_neighbours]:
                    neighbour = items.get(other)
                    if neighbour is not None and neighbour.mass > 0.0:
                        top.append((other, measure(together, mass, neighbour.mass)))
            entry.top = top
            entry.top_added = entry.added
        return entry.top

    def _covisit_unit(self, config: RecConfig) -> float:
        if needs_rebase(self.learned, self.covisit_origin, config.covisit_half_life):
            factor = 1.0 / growth(self.learned, self.covisit_origin, config.covisit_half_life)
            for entry in self.items.values():
                entry.mass *= factor
                entry.added *= factor
                entry.top_added *= factor
                entry.neighbours = {key: value * factor for key, value in entry.neighbours.items()}
            self.covisit_origin = self.learned
        return growth(self.learned, self.covisit_origin, config.covisit_half_life)

    def _trending_unit(self, config: RecConfig) -> float:
        if needs_rebase(self.learned, self.trending_origin, config.trending_half_life):
            factor = 1.0 / growth(self.learned, self.trending_origin, config.trending_half_life)
            for trending in self._all_trending():
                trending.rescale(factor)
            self.trending_origin = self.learned
        return growth(self.learned, self.trending_origin, config.trending_half_life)

    def _all_trending(self) -> list[Trending]:
        lists = [*self.segments.values(), *self.categories.values()]
        return [self.trending, *lists] if self.trending is not None else lists

    def _global_trending(self, config: RecConfig) -> Trending:
        if self.trending is None:
            self.trending = Trending(config.trending_pool, TRENDING_CAPACITY * config.trending_pool)
        return self.trending

    def _segment_trending(self, segment: str, config: RecConfig) -> Trending:
        trending = self.segments.pop(segment, None)
        if trending is None:
            trending = Trending(config.trending_pool, TRENDING_CAPACITY * config.trending_pool)
            while len(self.segments) >= config.max_segments:
                del self.segments[next(iter(self.segments))]
        self.segments[segment] = trending
        return trending

    def _category_trending(self, category: str, config: RecConfig) -> Trending:
        trending = self.categories.get(category)
        if trending is None:
            trending = self.categories[category] = Trending(config.category_pool,
                                                            TRENDING_CAPACITY * config.category_pool)
        return trending

    def _evict(self, item: str) -> None:
        """Forget an item wherever it is a key; weights that name it in other rows age out of them."""
        entry = self.items.pop(item)
        for trending in (self.trending, *self.segments.values()):
            if trending is not None:
                trending.remove(item)
        self._leave_category(item, entry.category)

    def _leave_category(self, item: str, category: str) -> None:
        trending = self.categories.get(category)
        if trending is not None:
            trending.remove(item)
            if not trending.counts:
                del self.categories[category]


def _prune(row: dict[str, float], keep: int) -> None:
    for key in sorted(row, key=row.__getitem__, reverse=True)[keep:]:
        del row[key]

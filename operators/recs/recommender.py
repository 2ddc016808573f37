"""Blend the candidate sources into one ranked list per user, with reasons, under the business rules."""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field

from operators.events import Event
from operators.recs import rules
from operators.recs.config import RecConfig
from operators.recs.model import Interaction, ItemModel
from operators.recs.user import UserRecState

PINNED = "pinned"
#: Sources that propose items the user already has; the others leave those items to them.
REMINDERS = frozenset({"recent", "cart"})


@dataclass(frozen=True, slots=True)
class Candidate:
    item_id: str
    score: float
    reasons: dict[str, float]
    """Each source's share of :attr:`score` (``pinned`` for promoted items)."""


@dataclass(frozen=True, slots=True)
class Ranking:
    candidates: list[Candidate] = field(default_factory=list)
    suppressed: str = ""
    """Why the list is empty on purpose (``checkout``); empty when it is not suppressed."""

    def item_ids(self) -> list[str]:
        return [candidate.item_id for candidate in self.candidates]


class Recommender:
    """Learns from events into a user's state and the global :class:`ItemModel`; ranks candidates.

    ``model`` is an attribute so a job can hand in the model it restored or received.

    >>> recommender = Recommender(RecConfig())
    >>> alice, bob = UserRecState(), UserRecState()
    >>> for user, item, ts in [(alice, "dune", 1), (alice, "foundation", 2), (bob, "dune", 3)]:
    ...     _ = recommender.observe(user, Event(f"e{ts}", "product_view", "u", "u", "", ts, item, "books",
    ...                                         0.0, 1, "", ""))
    >>> ranking = recommender.rank(bob, (), now_ts=4, exclude={"dune"})
    >>> ranking.item_ids(), ranking.candidates[0].reasons["covisit"]
    (['foundation'], 1.0)
    """

    def __init__(self, config: RecConfig, model: ItemModel | None = None) -> None:
        self.config = config
        self.model = model if model is not None else ItemModel()

    def observe(self, user: UserRecState, event: Event, segments: Iterable[str] = ()) -> Interaction | None:
        """Update the user's state and the model with one event; returns what the model learned."""
        category = "" if event.category else self.model.category_of(event.item_id)
        interaction = user.remember(event, self.config, category, tuple(segments))
        if interaction is not None:
            self.model.learn(interaction, self.config)
        return interaction

    def sources(self, user: UserRecState, segments: Iterable[str]) -> dict[str, dict[str, float]]:
        """Raw scores per source (only sources with a positive weight are computed).

        Discovery sources (all but ``recent`` and ``cart``) leave out the user's recent items: showing
        those again is the reminder sources' job, at their own weights.
        """
        config, model, recent = self.config, self.model, user.recent
        producers: dict[str, Callable[[], dict[str, float]]] = {
            "covisit": lambda: model.covisit_scores(user.query(config), config),
            "trending": lambda: model.trending_scores(segments, config),
            "affinity": lambda: model.category_scores(user.top_categories(config), config),
            "recent": lambda: _by_recency(recent, config.position_decay),
            "cart": lambda: _by_recency(user.cart, config.position_decay),
        }
        sources = {}
        for name, weight in config.weights.items():
            if weight > 0.0:
                raw = sources[name] = producers[name]()
                if name not in REMINDERS:
                    for item in recent:
                        raw.pop(item, None)
        return sources

    def rank(self, user: UserRecState, segments: Iterable[str], now_ts: int, k: int | None = None,
             exclude: Container[str] = ()) -> Ranking:
        """The user's top ``k`` (default ``config.k``) candidates at ``now_ts``, never one of ``exclude``."""
        config, model = self.config, self.model
        k = config.k if k is None else k
        if rules.in_checkout(user, now_ts, config.checkout_timeout_ms):
            return Ranking(suppressed=rules.CHECKOUT)
        excluded = rules.exclusion(user, exclude, config.exclude_purchased)
        items = model.items

        def pinnable(item: str) -> bool:  # a promoted item may be unknown to the catalogue yet
            entry = items.get(item)
            return not excluded(item) and (entry is None or entry.available)

        pins = rules.promoted(config.pinned_items, pinnable, k)

        def allowed(item: str) -> bool:
            entry = items.get(item)
            return entry is not None and entry.available and not excluded(item) and item not in pins

        sources = self.sources(user, segments)
        scores, scales = blend(sources, config.weights)
        ranked = (item for item in best_first(scores) if allowed(item))
        organic = rules.cap_per_category(ranked, model.category_of, config.max_per_category, k - len(pins))
        top = scores[organic[0]] if organic else 0.0
        candidates = [Candidate(item, round(top + len(pins) - index, 6), {PINNED: 1.0})
                      for index, item in enumerate(pins)]
        candidates += [Candidate(item, round(scores[item], 6), {
            name: round(scale * sources[name][item], 6) for name, scale in scales.items() if item in sources[name]
        }) for item in organic]
        return Ranking(candidates)


def blend(sources: Mapping[str, Mapping[str, float]],
          weights: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """``score(j) = sum over sources s of weight(s) * raw_s(j) / max raw_s``.

    Scaling each source to a maximum of 1 makes a weight mean the same whatever the source's raw
    range. Returns the scores and each source's factor ``weight / max`` (for the reasons).
    """
    scores: dict[str, float] = {}
    scales: dict[str, float] = {}
    for name, raw in sources.items():
        best = max(raw.values(), default=0.0)
        if best <= 0.0:
            continue
        scale = scales[name] = weights[name] / best
        if not scores:
            scores = {item: scale * value for item, value in raw.items()}
            continue
        for item, value in raw.items():
            scores[item] = scores.get(item, 0.0) + scale * value
    return scores, scales


def best_first(scores: Mapping[str, float]) -> list[str]:
    """Items by descending score; equal scores keep the scores' insertion order (a stable sort).

    One sort in C costs about half of ``heapq.nlargest``'s partial heap, which runs in Python, for the
    ~1,000 items a ranking blends, and gives the same order (``nlargest`` is defined as this sort cut short).
    """
    return sorted(scores, key=scores.__getitem__, reverse=True)


def _by_recency(items: dict[str, float] | dict[str, int], decay: float) -> dict[str, float]:
    """``decay ** age`` for items kept oldest first (age 0 is the newest)."""
    return {item: decay ** age for age, item in enumerate(reversed(items))}

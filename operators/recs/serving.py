"""The recommendation step of the job: learn an interaction, rank the user's list, publish only real changes.

The keyed user operator keeps each user's :class:`UserRecState` and sends a :class:`RecRequest` per
event that can change the user's list. The recommender operator owns the global :class:`ItemModel`
(one per shard, docs/recommendations.md) and the last list it published per user, which is what
:class:`RecommendationServer` needs to decide whether a new list is worth sending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from operators.jsontext import sorted_json
from operators.recs.config import RecConfig
from operators.recs.model import Interaction, ItemModel
from operators.recs.recommender import Ranking, Recommender
from operators.recs.rules import changed_meaningfully
from operators.recs.user import UserRecState

RECS_SCHEMA = "recommendations.v1"


class RecRequest(NamedTuple):
    """One user event for the recommender: what to learn, and the user's state to rank for.

    ``user`` None means the user is gone (retention or erasure): forget the published list.
    """

    user_key: str
    event_id: str
    ts: int
    interaction: Interaction | None
    user: UserRecState | None
    segments: tuple[str, ...]
    erase: bool = False
    """With ``user`` None: an erasure, so the published list is also tombstoned on Kafka."""
    seq_base: int = 0
    """Where the user's list ``seq`` starts when nothing was published (above every erased list's)."""


class Published(NamedTuple):
    """The last list published for a user: its sequence number and item ids."""

    seq: int
    items: tuple[str, ...]


@dataclass(frozen=True)
class RecList:
    """A published list. ``id`` (``<user>:<event id>``) names the event that produced it, so a
    replayed list has the same id and a consumer can drop duplicates; ``seq`` orders a user's lists."""

    user_key: str
    seq: int
    event_id: str
    ts: int
    ranking: Ranking

    @property
    def record_id(self) -> str:
        return f"{self.user_key}:{self.event_id}"

    def items(self) -> list[dict[str, Any]]:
        return [{"item": c.item_id, "score": c.score, "reasons": c.reasons} for c in self.ranking.candidates]

    def to_json(self, processing_time: int) -> bytes:
        return sorted_json({
            "id": self.record_id, "schema": RECS_SCHEMA, "user": self.user_key, "seq": self.seq,
            "event_time": self.ts, "processing_time": processing_time, "suppressed": self.ranking.suppressed,
            "items": self.items(),
        })


class RecommendationServer:
    """Learns each request's interaction into the model, then ranks for the requesting user."""

    def __init__(self, config: RecConfig, model: ItemModel | None = None) -> None:
        self.recommender = Recommender(config, model)

    @property
    def model(self) -> ItemModel:
        return self.recommender.model

    def learn(self, request: RecRequest) -> None:
        """Learn the request's interaction, if any, without ranking (a later request ranks)."""
        if request.interaction is not None:
            self.model.learn(request.interaction, self.recommender.config)

    def handle(self, request: RecRequest, published: Published | None) -> RecList | None:
        """The list to publish for this request, or None when it would not change meaningfully.

        Learning comes first: the user's own event counts for the neighbours of their next list.
        """
        config = self.recommender.config
        self.learn(request)
        if request.user is None:
            return None
        ranking = self.recommender.rank(request.user, request.segments, request.ts)
        items = ranking.item_ids()
        if published is not None and not changed_meaningfully(published.items, items, config.min_change):
            return None
        if published is None and not items:
            return None  # nothing to show and nothing shown: no record
        seq = (published.seq if published else request.seq_base) + 1
        return RecList(request.user_key, seq, request.event_id, request.ts, ranking)

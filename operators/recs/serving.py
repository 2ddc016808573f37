"""The recommendation step of the job: learn an interaction, rank the user's list, publish only real changes.

The keyed user operator keeps each user's :class:`UserRecState` and sends a :class:`RecRequest` per
event that can change the user's list. The recommender operator owns the global :class:`ItemModel`
(one per shard, docs/recommendations.md) and the last list it published per user, which is what
:class:`RecommendationServer` needs to decide whether a new list is worth sending.
:class:`RecommenderCore` is everything a recommender shard does with a list of requests, experiments
included; the Flink function, the benchmark and the tests all drive it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol, TypeVar

from operators.events import Event
from operators.experiments.attribution import Counts, Delta, ExperimentState
from operators.experiments.serving import ExperimentPolicy
from operators.jsontext import sorted_json
from operators.recs.config import RecConfig
from operators.recs.model import Interaction, ItemModel
from operators.recs.recommender import Ranking, Recommender
from operators.recs.rules import changed_meaningfully
from operators.recs.user import UserRecState

T = TypeVar("T")

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
    event: Event | None = None
    """The event itself, when experiments run: it may expose (a view) or convert (docs/experiments.md)."""
    rank: bool = True
    """False: the event cannot change the list (a client's ``recommendation_view``), only count."""
    arm: tuple[str, str] | None = None
    """(experiment, arm) the user operator remembers for the user (sticky through a login)."""
    crossed: tuple[tuple[str, str], ...] = ()
    """(experiment, the user's arm) where a login merged in a visitor who had another arm: a crossover each."""


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
    experiment: str | None = None
    """The experiment that decided the list, and the user's arm in it (None: no experiment runs)."""
    arm: str | None = None

    @property
    def record_id(self) -> str:
        return f"{self.user_key}:{self.event_id}"

    def items(self) -> list[dict[str, Any]]:
        return [{"item": c.item_id, "score": c.score, "reasons": c.reasons} for c in self.ranking.candidates]

    def to_json(self, processing_time: int) -> bytes:
        document = {
            "id": self.record_id, "schema": RECS_SCHEMA, "user": self.user_key, "seq": self.seq,
            "event_time": self.ts, "processing_time": processing_time, "suppressed": self.ranking.suppressed,
            "items": self.items(),
        }
        if self.experiment is not None:
            document |= {"experiment": self.experiment, "arm": self.arm}
        return sorted_json(document)


class RecommendationServer:
    """Learns each request's interaction into the model, then ranks for the requesting user."""

    def __init__(self, config: RecConfig, model: ItemModel | None = None) -> None:
        self.recommender = Recommender(config, model)
        self.variants: dict[tuple[tuple[str, float], ...], Recommender] = {}
        """Recommenders with other source weights (experiment arms), sharing the model."""

    @property
    def model(self) -> ItemModel:
        return self.recommender.model

    def learn(self, request: RecRequest) -> None:
        """Learn the request's interaction, if any, without ranking (a later request ranks)."""
        if request.interaction is not None:
            self.model.learn(request.interaction, self.recommender.config)

    def handle(self, request: RecRequest, published: Published | None,
               weights: Mapping[str, float] | None = None) -> RecList | None:
        """The list to publish for this request, or None when it would not change meaningfully;
        ``weights``: other source weights than the configured ones (an experiment arm's).

        Learning comes first: the user's own event counts for the neighbours of their next list.
        """
        config = self.recommender.config
        self.learn(request)
        if request.user is None:
            return None
        ranking = self._ranker(weights).rank(request.user, request.segments, request.ts)
        items = ranking.item_ids()
        if published is not None and not changed_meaningfully(published.items, items, config.min_change):
            return None
        if published is None and not items:
            return None  # nothing to show and nothing shown: no record
        seq = (published.seq if published else request.seq_base) + 1
        return RecList(request.user_key, seq, request.event_id, request.ts, ranking)

    def _ranker(self, weights: Mapping[str, float] | None) -> Recommender:
        if weights is None or weights == self.recommender.config.weights:
            return self.recommender
        key = tuple(sorted(weights.items()))
        variant = self.variants.get(key)
        if variant is None:
            variant = self.variants[key] = Recommender(replace(self.recommender.config, weights=dict(weights)),
                                                       self.model)
        return variant


class UserTable(Protocol[T]):
    """A recommender shard's per-user value (a ``MapState`` in the job, a dict elsewhere)."""

    def get(self, key: str) -> T | None: ...
    def put(self, key: str, value: T) -> None: ...
    def remove(self, key: str) -> None: ...


class Forget(NamedTuple):
    """The user is gone (retention, erasure, a merge): delete their list; ``erase``: tombstone it too."""

    user_key: str
    erase: bool


@dataclass
class RecStep:
    """What a shard decided for a list of requests, for the shell to carry out."""

    outputs: list[RecList | Forget] = field(default_factory=list)
    """Lists to publish and users to forget, in request order (a tombstone follows a list in flight)."""
    deltas: list[Delta] = field(default_factory=list)
    """Experiment counters to add, by (experiment, arm)."""
    shadows: int = 0
    """Lists computed for an arm shown nothing: counted as exposures, never emitted."""
    interactions: list[Interaction] = field(default_factory=list)
    """What the shard's model learned (the shell marks the model changed)."""


class RecommenderCore:
    """A recommender shard's steps for a list of requests, in order: each interaction is learned, a user's
    list is ranked once (at their last request that may change it), and published when it changed; with
    experiments, the user's arm picks the list, and views, lists and conversions are counted per arm."""

    def __init__(self, config: RecConfig, experiments: ExperimentPolicy | None = None) -> None:
        self.config = config
        self.experiments = experiments

    def on_requests(self, model: ItemModel, requests: Sequence[RecRequest], published: UserTable[Published],
                    experiments: UserTable[ExperimentState]) -> RecStep:
        server = RecommendationServer(self.config, model)
        policy = self.experiments
        step = RecStep(interactions=[r.interaction for r in requests if r.interaction is not None])
        last = {request.user_key: index for index, request in enumerate(requests) if request.rank}
        for index, request in enumerate(requests):
            user = request.user_key
            if request.user is None:
                server.learn(request)
                published.remove(user)
                if policy is not None:
                    experiments.remove(user)
                step.outputs.append(Forget(user, request.erase))
                continue
            state = None
            if policy is not None:
                state = policy.tidy(experiments.get(user) or ExperimentState(), request.arm)
                if request.event is not None:
                    step.deltas += policy.on_event(state, request.event)
                step.deltas += [(experiment, arm, Counts(crossovers=1)) for experiment, arm in request.crossed
                                if experiment in policy.by_id]
            if last.get(user) != index:  # a later request of the user in this list ranks for both
                server.learn(request)
            else:
                self._rank(server, request, published, state, step)
            if state is not None:
                experiments.put(user, state)
        return step

    def _rank(self, server: RecommendationServer, request: RecRequest, published: UserTable[Published],
              state: ExperimentState | None, step: RecStep) -> None:
        user, policy = request.user_key, self.experiments
        choice = policy.choose(state, user) if policy is not None and state is not None else None
        stored = published.get(user)
        recs = server.handle(request, Published(*stored) if stored is not None else None,
                             choice.weights(self.config.weights) if choice is not None else None)
        if recs is None:
            return
        items = tuple(recs.ranking.item_ids())
        published.put(user, Published(recs.seq, items))
        if choice is None:
            step.outputs.append(recs)
            return
        assert policy is not None and state is not None
        step.deltas += policy.expose(state, choice, user, request.ts, items)
        if choice.shadow:
            step.shadows += 1
        else:
            step.outputs.append(replace(recs, experiment=choice.experiment.id, arm=choice.arm.id))

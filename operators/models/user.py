"""Per-user model work of the keyed operator: intent examples awaiting labels, scores, cluster membership.

The trainer never sees a user: what leaves the user is a :class:`TrainingInput` (a sampled
behaviour input with the user's sample slot, a bucket of a hash of the key, or a labelled intent
example) and, when the user leaves, a :class:`ForgetSlot`. What stays is a :class:`UserModelState`, a few
hundred bytes kept next to the user's other keyed state and erased with it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

from operators.features.operator import FeatureVector
from operators.models.config import ModelConfig
from operators.models.drift import DriftEvent
from operators.models.inputs import (
    BEHAVIOUR_FEATURES,
    BehaviourValues,
    ModelInput,
    behaviour_values,
    half_precision,
    intent_example,
    intent_values,
    model_inputs,
)
from operators.models.intent import IntentLabeler, Labelled, PendingExamples
from operators.models.membership import Membership, MembershipPolicy, update_membership
from operators.models.training import ModelScore, ModelScorer, ModelTrainer, learns_from

MODEL_FIELDS = ("intent",)
"""What the models add to the fields rules may compare (``intent``: P(purchase within the horizon))."""


NEGATIVE_SAMPLE_BUCKETS = 1 << 16
RESCORE_SLOTS = 1 << 10
"""Re-scorings of one vector that can still be written to Redis: more than an intent's pending examples."""


class TrainingInput(NamedTuple):
    """One thing for the trainer to learn: a behaviour input (``label`` None) or a labelled intent example."""

    ts: int
    x: ModelInput
    label: bool | None = None
    top_category: str = ""
    slot: int | None = None
    """A behaviour input's sample slot: the clusterer keeps each slot's newest input."""
    weight: float = 1.0
    """How many examples an intent example stands for: ``1 / intent_negative_share`` for a negative (the
    sender's share, so the trainer follows what the user operators do, whatever config it was restored with)."""

    def learn(self, trainer: ModelTrainer) -> DriftEvent | None:
        """Apply to ``trainer``; returns its drift event, if any."""
        if self.label is None:
            return trainer.learn_behaviour(self.x, self.top_category, self.ts, self.slot)
        return trainer.learn_intent(self.x, self.label, self.ts, self.weight)


class ForgetSlot(NamedTuple):
    """The user of a sample slot left (erasure, retention, a merge into another key): their input leaves the
    trainer's sample. Another user hashed into the same slot loses theirs until their next input."""

    slot: int

    def learn(self, trainer: ModelTrainer) -> None:
        trainer.forget_slot(self.slot)


def sample_slot(user_key: str, slots: int) -> int:
    """The user's slot in the trainer's sample: stable across processes and restarts (CRC-32, not ``hash``)."""
    return zlib.crc32(user_key.encode("utf-8")) % slots


@dataclass
class UserModelState:
    pending: PendingExamples = field(default_factory=PendingExamples)
    membership: Membership = field(default_factory=Membership)
    intent: float | None = None
    """The latest intent score (what rules compare as ``intent``); None before the first snapshot."""
    version: int = 0
    """Model version of the latest score."""
    behaviour: BehaviourValues | None = None
    """The behaviour input of the latest scored vector (half precision): what a newer snapshot re-scores."""
    vector_version: int = 0
    """The feature vector version of the latest scored vector."""
    rescores: int = 0
    """Re-scorings of that vector with newer snapshots."""

    @property
    def scores_version(self) -> int:
        """What the user's model-scores hash is guarded by: the scored vector's version, then its re-scorings
        (capped, so a vector's re-scores never reach the next vector's version)."""
        return self.vector_version * RESCORE_SLOTS + min(self.rescores, RESCORE_SLOTS - 1)


@dataclass(frozen=True)
class Rescored:
    """A scoring that moved the user's cluster membership (either side None: no cluster)."""

    left: str | None
    entered: str | None
    score: ModelScore
    cause: str
    """``model``, or ``drift`` when the snapshot in use was published because of a drift."""


class UserModels:
    """Pure per-user model steps; the keyed operator calls them and keeps :class:`UserModelState`."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.labeler = IntentLabeler(config.intent_horizon_ms, config.intent_max_pending)
        self.policy = MembershipPolicy(config.hysteresis_margin, config.hysteresis_patience)
        self._last_inputs: tuple[FeatureVector, tuple[ModelInput | None, ModelInput]] | None = None
        self.last_score: ModelScore | None = None
        """The latest :meth:`score`'s score, membership change or not (the offline evaluation reads it)."""

    def _inputs(self, vector: FeatureVector) -> tuple[ModelInput | None, ModelInput]:
        """The vector's model inputs, computed once for learning (:meth:`vector`) and scoring (:meth:`score`).

        Neither changes its inputs, so both may share them."""
        last = self._last_inputs
        if last is not None and last[0] is vector:
            return last[1]
        inputs = model_inputs(vector.values)
        self._last_inputs = (vector, inputs)
        return inputs

    def vector(self, state: UserModelState, vector: FeatureVector, by_purchase: bool) -> list[TrainingInput]:
        """A newly emitted vector: the trainer's sample of it, and an intent example waiting for its label.

        A vector emitted by a purchase is no example: the order's next item would label it positive
        milliseconds later (docs/models.md).
        """
        values = vector.values
        behaviour, intent = self._inputs(vector)
        learned = []
        if behaviour is not None and learns_from(vector, self.config):
            learned.append(TrainingInput(vector.ts, behaviour, None, values["top_category"] or "",
                                         sample_slot(vector.user_key, self.config.sample_users)))
        if not by_purchase:
            self.labeler.add(state.pending, vector.ts, half_precision(intent_values(intent)))
        return learned

    def purchase(self, state: UserModelState, ts: int) -> list[TrainingInput]:
        """Positive examples: those a purchase at ``ts`` falls within the horizon of."""
        return self._settled(self.labeler.purchase(state.pending, ts), ts)

    def expire(self, state: UserModelState, now: int) -> list[TrainingInput]:
        """Negative examples: those whose horizon passed by ``now`` without a purchase."""
        return self._settled(self.labeler.expire(state.pending, now), now)

    def leave(self, user_key: str) -> ForgetSlot:
        """What the trainer must forget of a user who leaves."""
        return ForgetSlot(sample_slot(user_key, self.config.sample_users))

    def deadline(self, state: UserModelState) -> int | None:
        return self.labeler.next_deadline(state.pending)

    def _settled(self, settled: list[Labelled], ts: int) -> list[TrainingInput]:
        """The settled examples the trainer learns: every positive and ``intent_negative_share`` of the
        negatives, picked by a hash of the example's values (a float tuple's hash is the same in every
        process and run, so a replay sends the same ones)."""
        share = self.config.intent_negative_share
        threshold = int(share * NEGATIVE_SAMPLE_BUCKETS)
        return [TrainingInput(ts, intent_example(values), label, weight=1.0 if label else 1.0 / share)
                for values, label in settled if label or hash(values) % NEGATIVE_SAMPLE_BUCKETS < threshold]

    def score(self, state: UserModelState, vector: FeatureVector, scorer: ModelScorer) -> Rescored | None:
        """Score with the loaded snapshot; a :class:`Rescored` when the cluster membership changed."""
        behaviour, intent = self._inputs(vector)
        score = self.last_score = scorer.score(vector.values, (behaviour, intent))
        if score is None:
            return None
        state.intent = score.intent
        state.behaviour = None if behaviour is None else behaviour_values(behaviour)
        state.vector_version, state.rescores = vector.version, 0
        return self._assign(state, score, scorer)

    @staticmethod
    def rescorable(state: UserModelState, scorer: ModelScorer) -> bool:
        """Whether :meth:`rescore` would score: a kept behaviour input, and a newer snapshot than its score's."""
        return state.behaviour is not None and scorer.version not in (0, state.version)

    def rescore(self, state: UserModelState, scorer: ModelScorer) -> Rescored | None:
        """The latest scored vector's cluster again, when a newer snapshot was loaded since it was scored.

        Called at the user's intent deadlines, a day after each vector: a user who went quiet would
        otherwise keep the cluster of the snapshot at their last visit however the model moved since
        (docs/models.md). The intent score stays the vector's: it describes the moment of the vector."""
        if state.behaviour is None or not self.rescorable(state, scorer):
            return None
        assignment = scorer.assign(dict(zip(BEHAVIOUR_FEATURES, state.behaviour, strict=True)))
        score = self.last_score = ModelScore(scorer.version, assignment, state.intent or 0.0)
        state.rescores += 1
        return self._assign(state, score, scorer)

    def _assign(self, state: UserModelState, score: ModelScore, scorer: ModelScorer) -> Rescored | None:
        state.version = score.version
        before = state.membership.segment
        state.membership = update_membership(self.policy, state.membership, score.assignment)
        after = state.membership.segment
        return None if after == before else Rescored(before, after, score, scorer.cause or "model")

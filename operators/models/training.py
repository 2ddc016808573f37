"""One logical model: a single trainer publishes versioned snapshots that every scorer loads.

In the job the :class:`ModelTrainer` is a parallelism-1 operator fed with (a sample of) the
emitted feature vectors and with the labelled intent examples the keyed operator settles; its
state is the pickled trainer (keyed state: a checkpoint restores models, metrics, detectors and the
version counter together, and nothing but the job writes it). Every :class:`ModelSnapshot` carries a
:class:`~operators.models.scoring.ScoringModel`, plain numbers, and is broadcast; the parallel keyed
operators keep the newest in broadcast state and score with a :class:`ModelScorer`, so all subtasks
use the same model version and a restore brings back the snapshot they were using.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from river import metrics

from operators.features.operator import FeatureVector
from operators.models.clustering import (
    Assignment,
    BehaviourClusterer,
    ClusterDescription,
    ClusterStats,
    describe_clusters,
)
from operators.models.config import ModelConfig
from operators.models.drift import DriftEvent, DriftMonitor
from operators.models.inputs import ModelInput, behaviour_input, has_behaviour, model_inputs
from operators.models.intent import IntentClassifier
from operators.models.scoring import ScoringModel

AUC_BINS = 1000
"""Probability bins of :class:`BinnedAUC`: scores closer than 0.001 count as tied."""
PROBABILITY_FLOOR = 1e-15


class BinnedAUC:
    """Progressive ROC AUC from two histograms of predicted probabilities (positives, negatives).

    River's ``ROCAUC`` updates one confusion matrix per threshold on every example (50 of them cost a
    third of an intent example's time) and is still approximate. Here an update is one increment, and
    :meth:`get` counts every (positive, negative) pair exactly, a pair in one bin as half: the AUC of
    the scores rounded down to ``1 / bins``.

    >>> auc = BinnedAUC()
    >>> for label, p in [(True, 0.9), (False, 0.2), (True, 0.4), (False, 0.6)]:
    ...     auc.update(label, p)
    >>> auc.get()
    0.75
    """

    def __init__(self, bins: int = AUC_BINS) -> None:
        self.positives = [0] * bins
        self.negatives = [0] * bins

    def update(self, label: bool, p_true: float) -> None:
        """Count one example. A probability above 1 counts in the last bin, one below 0 or NaN in the first,
        instead of failing the trainer."""
        counts = self.positives if label else self.negatives
        bins = len(counts)
        index = int(p_true * bins) if 0.0 <= p_true < 1.0 else (bins - 1 if p_true >= 1.0 else 0)
        counts[index] += 1

    def get(self) -> float:
        """P(a positive scores above a negative), ties half; 0.0 until both classes were seen."""
        pairs = sum(self.positives) * sum(self.negatives)
        if not pairs:
            return 0.0
        below = 0
        wins = 0.0
        for positives, negatives in zip(self.positives, self.negatives, strict=True):
            wins += positives * (below + negatives / 2)
            below += negatives
        return wins / pairs


def in_training_sample(vector_id: str, share: float) -> bool:
    """Whether the trainer learns from this vector: a hash of its id, so a replay picks the same ones."""
    return share >= 1.0 or zlib.crc32(vector_id.encode("utf-8")) < share * 2**32


def learns_from(vector: FeatureVector, config: ModelConfig) -> bool:
    """Whether the trainer learns the clusters from ``vector``: ``train_sample_share`` of all vectors, and of
    a busy user's at most about ``train_vectors_per_user`` per 30 days.

    A user emits a vector per session and per cart change (docs/features.md), so ``sessions_30d +
    add_to_cart_30d`` approximates their vectors in 30 days, read from the vector itself: no per-user
    state. Without the cap a persona that visits daily pulls the centers to itself, and the clusters
    describe vectors rather than users (docs/models.md).
    """
    share = config.train_sample_share
    if config.train_vectors_per_user:
        values = vector.values
        emitted = values["sessions_30d"] + values["add_to_cart_30d"]
        share *= min(1.0, config.train_vectors_per_user / max(emitted, 1))
    return in_training_sample(vector.vector_id, share)


@dataclass
class SegmentModels:
    """What a snapshot carries: everything a scorer needs, nothing it does not."""

    clusterer: BehaviourClusterer
    intent: IntentClassifier


@dataclass(frozen=True)
class ModelSnapshot:
    version: int
    ts: int
    """Event time of the newest example learned before the snapshot."""
    cause: str
    """``model`` (regular refresh) or ``drift`` (published early because a drift was detected)."""
    model: ScoringModel
    """What scorers need, as data (no River object leaves the trainer)."""
    clusters: tuple[ClusterDescription, ...]
    lineage: str = ""
    """The trainer that made it: versions are comparable within one lineage only."""

    @property
    def snapshot_id(self) -> str:
        return f"{self.lineage}:v{self.version}"

    def summary(self) -> dict[str, Any]:
        """The snapshot without its model: what Redis and the logs show."""
        return {"version": self.version, "lineage": self.lineage, "ts": self.ts, "cause": self.cause,
                "clusters": [description.to_dict() for description in self.clusters]}


def log_loss(p_true: float, label: bool) -> float:
    p = min(max(p_true, PROBABILITY_FLOOR), 1 - PROBABILITY_FLOOR)
    return -math.log(p if label else 1 - p)


class ModelTrainer:
    """Learns both models, tracks progressive validation and drift, and decides when to publish.

    Progressive validation: each labelled example is predicted before it is learned, so ROC AUC
    and log loss measure the model on data it has not seen.
    """

    def __init__(self, config: ModelConfig, lineage: str = "") -> None:
        self.config = config
        self.lineage = lineage
        """Names this trainer's snapshots apart from another trainer's (a job started without state)."""
        self.models = SegmentModels(BehaviourClusterer(config.clusterer, config.n_clusters, config.seed,
                                                       config.refit_every, config.sample_users),
                                    IntentClassifier(config.intent_learning_rate,
                                                     negative_share=config.intent_negative_share))
        self.stats = ClusterStats()
        self.intent_auc = BinnedAUC()
        self.intent_log_loss = metrics.LogLoss()
        self.loss_drift = DriftMonitor("intent", "log_loss", config.drift_detector, config.drift_warmup)
        self.distance_drift = DriftMonitor("clusters", "distance", config.drift_detector, config.drift_warmup)
        self.version = 0
        self.now_ts = 0
        """Newest event time learned from: the trainer's clock (never the wall clock)."""
        self.snapshot_ts = 0
        self.since_snapshot = 0
        self.drifted = False
        self.vectors_learned = 0
        self.intent_examples = 0

    def learn_vector(self, values: Mapping[str, Any], ts: int) -> DriftEvent | None:
        """Learn the clusters from one emitted feature vector (assigned first, for sizes and drift)."""
        if not has_behaviour(values):
            return None
        return self.learn_behaviour(behaviour_input(values), values["top_category"] or "", ts)

    def learn_behaviour(self, x: ModelInput, top_category: str, ts: int, slot: int | None = None) -> DriftEvent | None:
        """Learn the clusters from one behaviour input (what the job's keyed operator sends), the newest of
        its user's sample ``slot``."""
        clusterer = self.models.clusterer
        assignment = clusterer.assign(x)
        clusterer.learn_one(x, slot)
        self.vectors_learned += 1
        self._learned(ts)
        if assignment is None:
            return None
        self.stats.add(assignment.cluster, top_category)
        return self._drift(self.distance_drift.update(assignment.distance, ts, self.version))

    def forget_slot(self, slot: int) -> None:
        """The user of sample ``slot`` left (erasure, retention, a merge): their input leaves the sample."""
        self.models.clusterer.forget(slot)

    def learn_intent(self, example: ModelInput, label: bool, ts: int, weight: float = 1.0) -> DriftEvent | None:
        """Learn one settled intent example; ``ts`` is when its label became known, ``weight`` how many it
        stands for (a sampled negative: ``1 / share``, which the classifier then corrects its odds for: a
        trainer restored from before sampling, or with another configured share, follows its senders)."""
        intent = self.models.intent
        if not label:
            intent.negative_share = 1.0 / weight
        p_true = intent.predict_proba_one(example).get(True, 0.0)
        self.intent_auc.update(label, p_true)  # a random share of the negatives: the AUC's estimate is unbiased
        self.intent_log_loss.update(label, p_true, weight)
        self.intent_examples += 1
        intent.learn_one(example, label)
        self._learned(ts)
        return self._drift(self.loss_drift.update(log_loss(p_true, label), ts, self.version))

    def _learned(self, ts: int) -> None:
        self.now_ts = max(self.now_ts, ts)
        self.since_snapshot += 1

    def _drift(self, event: DriftEvent | None) -> DriftEvent | None:
        self.drifted |= event is not None
        return event

    def maybe_snapshot(self, final: bool = False) -> ModelSnapshot | None:
        """A new snapshot when due: after ``snapshot_every`` learned examples (always so for the
        first), or after ``snapshot_interval_ms`` of event time once a tenth of that was learned, or
        after a drift once anything was learned.

        The tenth: where event time runs far ahead of the wall clock (a backfill, a replay, the bench:
        20,000 generated events span 30 days) the interval alone published a snapshot every few
        examples, each one a record every scoring instance decodes and loads and a write of the whole
        trainer state.

        ``final`` (the end of a bounded input) publishes whatever was learned since the last one, so
        a finished run's newest model and its quality are never left unpublished."""
        config = self.config
        if not self.since_snapshot:
            return None
        if not final and self.since_snapshot < config.snapshot_every and not (self.version and (
                self.drifted or (self.now_ts - self.snapshot_ts >= config.snapshot_interval_ms
                                 and self.since_snapshot >= config.snapshot_every // 10))):
            return None
        cause = "drift" if self.drifted else "model"
        self.version += 1
        self.snapshot_ts, self.since_snapshot, self.drifted = self.now_ts, 0, False
        models = self.models
        return ModelSnapshot(self.version, self.now_ts, cause, ScoringModel.of(models.clusterer, models.intent),
                             describe_clusters(models.clusterer, self.stats), self.lineage)

    def quality(self) -> dict[str, float]:
        """Progressive validation so far: intent ROC AUC and log loss, and how many examples they cover."""
        return {"intent_auc": round(float(self.intent_auc.get()), 4),
                "intent_log_loss": round(float(self.intent_log_loss.get()), 4),
                "examples": self.intent_examples}


@dataclass(frozen=True)
class ModelScore:
    version: int
    assignment: Assignment | None
    """None for a user without behaviour in the window (or before the clusters have centers)."""
    intent: float
    """P(purchase within the horizon)."""


class ModelScorer:
    """Scores feature vectors with the newest snapshot loaded; one per parallel scoring instance."""

    def __init__(self) -> None:
        self.version = 0
        self.lineage = ""
        self.cause = ""
        """Why the loaded snapshot was published: ``model`` or ``drift``."""
        self._model: ScoringModel | None = None

    def load(self, snapshot: ModelSnapshot) -> bool:
        """Use ``snapshot`` if it is newer than the current one (broadcasts may repeat after a restore).

        A snapshot of another lineage always replaces the current one: snapshots are read in the
        order they were published, so another lineage is a newer trainer (a job started afresh).
        """
        if snapshot.lineage == self.lineage and snapshot.version <= self.version:
            return False
        self._model = snapshot.model
        self.version, self.lineage, self.cause = snapshot.version, snapshot.lineage, snapshot.cause
        return True

    def assign(self, behaviour: ModelInput) -> Assignment | None:
        """The cluster of a behaviour input; None before the first snapshot."""
        return None if self._model is None else self._model.assign(behaviour)

    def score(self, values: Mapping[str, Any],
              inputs: tuple[ModelInput | None, ModelInput] | None = None) -> ModelScore | None:
        """Cluster, distances and intent of a feature vector; None before the first snapshot.

        ``inputs`` are the vector's :func:`~operators.models.inputs.model_inputs` when the caller has them."""
        model = self._model
        if model is None:
            return None
        behaviour, intent = model_inputs(values) if inputs is None else inputs
        assignment = model.assign(behaviour) if behaviour is not None else None
        return ModelScore(self.version, assignment, model.intent(intent))

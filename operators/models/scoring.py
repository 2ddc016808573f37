"""What a scorer needs of the trained models, as plain numbers: no River object crosses a topic.

The trainer learns with River (its estimators live in its keyed state, which a checkpoint restores and
nothing else writes). What it publishes is a :class:`ScoringModel`: the standard scalers' means and
deviations, the cluster centers and the logistic regression's weights, in the fixed feature order of
:mod:`operators.models.inputs`. Scoring with it reproduces River's ``StandardScaler`` (a feature with
no variance scales to 0), nearest-center assignment and ``LogisticRegression.predict_proba_one``, and
costs a few microseconds instead of River's dict pipelines. :meth:`ScoringModel.from_data` accepts
only well-formed data (finite numbers, the expected sizes), so a published model is data to check,
never code to run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from operators.models.clustering import Assignment, BehaviourClusterer
from operators.models.inputs import BEHAVIOUR_FEATURES, INTENT_FEATURES, ModelInput
from operators.models.intent import IntentClassifier
from operators.models.scaler import Scaler, ScoringModelError, finite_numbers

#: More centers than any configuration asks for (``models.n_clusters`` is at most 50) is malformed data.
MAX_CENTERS = 256
LOGIT_CLAMP = 30.0
"""River's sigmoid returns exactly 0 or 1 beyond +-30."""


@dataclass(frozen=True)
class ScoringModel:
    """Cluster centers and the intent model, ready to score a feature vector's model inputs."""

    cluster_scaler: Scaler
    centers: Mapping[int, tuple[float, ...]]
    """Cluster id -> center in the scaled space, in ``BEHAVIOUR_FEATURES`` order; empty before any learning."""
    intent_scaler: Scaler
    intent_weights: tuple[float, ...]
    """In ``INTENT_FEATURES`` order."""
    intent_intercept: float

    def assign(self, x: ModelInput) -> Assignment | None:
        """The nearest center of the behaviour input ``x`` and the distances to all; None without centers."""
        if not self.centers:
            return None
        point = self.cluster_scaler.scale(x, BEHAVIOUR_FEATURES)
        distances = {cluster: math.sqrt(sum((p - c) * (p - c) for p, c in zip(point, center, strict=True)))
                     for cluster, center in self.centers.items()}
        chosen = min(distances, key=distances.__getitem__)
        return Assignment(chosen, distances[chosen], distances)

    def intent(self, x: ModelInput) -> float:
        """P(purchase within the horizon) of the intent input ``x``."""
        scaled = self.intent_scaler.scale(x, INTENT_FEATURES)
        logit = sum(w * v for w, v in zip(self.intent_weights, scaled, strict=True)) + self.intent_intercept
        if logit < -LOGIT_CLAMP:
            return 0.0
        if logit > LOGIT_CLAMP:
            return 1.0
        return 1.0 / (1.0 + math.exp(-logit))

    def to_data(self) -> dict[str, Any]:
        return {
            "clusters": {"scaler": self.cluster_scaler.to_data(),
                         "centers": {str(cluster): list(center) for cluster, center in sorted(self.centers.items())}},
            "intent": {"scaler": self.intent_scaler.to_data(), "weights": list(self.intent_weights),
                       "intercept": self.intent_intercept},
        }

    @classmethod
    def from_data(cls, data: Any) -> ScoringModel:
        """A model from :meth:`to_data`'s shape; :class:`ScoringModelError` on anything else."""
        if not isinstance(data, Mapping) or not isinstance(data.get("clusters"), Mapping) \
                or not isinstance(data.get("intent"), Mapping):
            raise ScoringModelError("model: expected an object with clusters and intent")
        clusters, intent = data["clusters"], data["intent"]
        raw_centers = clusters.get("centers")
        if not isinstance(raw_centers, Mapping) or len(raw_centers) > MAX_CENTERS:
            raise ScoringModelError(f"model.clusters.centers: expected an object of at most {MAX_CENTERS} centers")
        centers = {}
        for key, center in raw_centers.items():
            if not (isinstance(key, str) and key.isdigit() and len(key) <= 4):
                raise ScoringModelError("model.clusters.centers: cluster ids are small non-negative integers")
            centers[int(key)] = finite_numbers(center, len(BEHAVIOUR_FEATURES), f"model.clusters.centers.{key}")
        intercept = intent.get("intercept")
        if isinstance(intercept, bool) or not isinstance(intercept, int | float) or not math.isfinite(intercept):
            raise ScoringModelError("model.intent.intercept: expected a finite number")
        return cls(Scaler.from_data(clusters.get("scaler"), len(BEHAVIOUR_FEATURES), "model.clusters.scaler"),
                   centers, Scaler.from_data(intent.get("scaler"), len(INTENT_FEATURES), "model.intent.scaler"),
                   finite_numbers(intent.get("weights"), len(INTENT_FEATURES), "model.intent.weights"),
                   float(intercept))

    @classmethod
    def of(cls, clusterer: BehaviourClusterer, intent: IntentClassifier) -> ScoringModel:
        """What the trainer's River models would predict, as data."""
        cluster_scaler = clusterer.scaler_state()
        intent_scaler, weights, intercept = intent.linear_state()
        return cls(
            Scaler.of(*cluster_scaler, BEHAVIOUR_FEATURES),
            {cluster: tuple(float(center.get(i, 0.0)) for i in range(len(BEHAVIOUR_FEATURES)))
             for cluster, center in clusterer.fitted_centers().items()},
            Scaler.of(*intent_scaler, INTENT_FEATURES),
            tuple(float(weights.get(name, 0.0)) for name in INTENT_FEATURES), float(intercept))

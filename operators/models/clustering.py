"""Behavioural clusters: standard scaling and a River streaming clusterer behind one estimator.

Centroids live in the scaled space, so a centroid coordinate *is* the cluster's z-score against
the population of learned vectors; :func:`describe` turns the largest ones into words.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from river import base, cluster, preprocessing

from operators.models.inputs import BEHAVIOUR_FEATURES

CLUSTERERS = ("kmeans", "streamkmeans", "dbstream", "clustream")
NOTABLE_Z = 0.5
"""A centroid coordinate at least this far from the population mean (in standard deviations) is a trait."""
MAX_TRAITS = 3
DOMINANT_CATEGORY_SHARE = 0.4
CATEGORY_LIFT = 1.5
"""A cluster is named after a category when at least 40% of its recent vectors have it as top category,
and 1.5 times the share it has over all clusters: popular categories alone do not characterize a cluster."""
NEAREST_CENTER = frozenset({"kmeans", "streamkmeans", "dbstream"})
"""Clusterers that predict the nearest center: the assignment takes it from distances computed anyway."""
DESCRIPTORS: dict[str, tuple[str, str]] = {
    "sessions": ("occasional", "frequent"),
    "cart_rate": ("rarely carts", "carts often"),
    "checkout_rate": ("rarely checks out", "checks out often"),
    "purchase_rate": ("few completed orders", "completes orders"),
    "search_share": ("rarely searches", "searches a lot"),
    "email_click_rate": ("ignores email", "clicks email"),
    "email_open_rate": ("rarely opens email", "opens email"),
    "order_value": ("low spend", "high spend"),
    "session_depth": ("short visits", "long visits"),
}
"""Per clustering feature: the word below the population and the word above it."""


class CenterClusterer(Protocol):
    """What the wrapper needs of a River clusterer: all four candidates expose their centers."""

    @property
    def centers(self) -> Mapping[int, Mapping[Hashable, float]]: ...
    def learn_one(self, x: dict[Hashable, Any]) -> None: ...
    def predict_one(self, x: dict[Hashable, Any]) -> int: ...


def make_clusterer(name: str, n_clusters: int, seed: int) -> CenterClusterer:
    """The tuned configuration of each candidate; docs/models.md compares them.

    KMeans moves the closest center 1% of the way to each point (River's default of 50% lets the
    latest few users drag a center around) and starts its centers near the mean (``sigma=0.3``), so
    none starts so far out that it never wins a point.
    """
    if name == "kmeans":
        return cluster.KMeans(n_clusters=n_clusters, halflife=0.01, sigma=0.3, seed=seed)
    if name == "streamkmeans":
        return cluster.STREAMKMeans(chunk_size=100, n_clusters=n_clusters, halflife=0.05, sigma=0.3, seed=seed)
    if name == "dbstream":
        return cluster.DBSTREAM(clustering_threshold=2.0)
    if name == "clustream":
        return cluster.CluStream(n_macro_clusters=n_clusters, max_micro_clusters=30, time_gap=500, seed=seed,
                                 halflife=0.5, sigma=0.3)
    raise ValueError(f"unknown clusterer {name!r}; known: {', '.join(CLUSTERERS)}")


@dataclass(frozen=True)
class Assignment:
    cluster: int
    distance: float
    """Euclidean distance to the cluster's center in the scaled space."""
    distances: dict[int, float]
    """Distance to every current center: what hysteresis compares."""


def _distance(point: Mapping[Hashable, float], center: Mapping[Hashable, float]) -> float:
    return math.sqrt(sum((value - center.get(i, 0.0)) ** 2 for i, value in point.items()))


class BehaviourClusterer(base.Clusterer):
    """``StandardScaler`` then a River clusterer over :func:`~operators.models.inputs.behaviour_input` dicts.

    The clusterer sees features by position (0..n-1), not by name: River's KMeans draws initial
    center coordinates lazily in the iteration order of a *set* of feature keys, which for strings
    changes with ``PYTHONHASHSEED``. Integer keys make one seed give one model in every process.

    >>> model = BehaviourClusterer(n_clusters=2, seed=1)
    >>> for carts in (0, 0, 0, 5, 5, 5) * 50:
    ...     model.learn_one({name: float(carts) for name in BEHAVIOUR_FEATURES})
    >>> model.predict_one({name: 0.0 for name in BEHAVIOUR_FEATURES}) != model.predict_one(
    ...     {name: 5.0 for name in BEHAVIOUR_FEATURES})
    True
    """

    def __init__(self, clusterer: str = "kmeans", n_clusters: int = 5, seed: int = 42) -> None:
        self.clusterer = clusterer
        self.n_clusters = n_clusters
        self.seed = seed
        self._scaler = preprocessing.StandardScaler()
        self._model = make_clusterer(clusterer, n_clusters, seed)
        self._learned = 0

    def _positional(self, x: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        scaled = self._scaler.transform_one(dict(x))
        return {i: scaled[name] for i, name in enumerate(BEHAVIOUR_FEATURES)}

    def learn_one(self, x: dict[Hashable, Any]) -> None:
        self._scaler.learn_one(x)
        self._model.learn_one(self._positional(x))
        self._learned += 1

    def assign(self, x: Mapping[Hashable, Any]) -> Assignment | None:
        """The cluster of ``x`` and its distances to every center; None until there are centers.

        An unfitted KMeans has random centers whose coordinates are drawn when first read: reading
        them before learning would both mislead and mutate the model.
        """
        centers = self._model.centers if self._learned else {}
        if not centers:
            return None
        point = self._positional(x)
        distances = {c: _distance(point, center) for c, center in centers.items()}
        if self.clusterer in NEAREST_CENTER:
            chosen = min(distances, key=distances.__getitem__)
        else:
            chosen = self._model.predict_one(point)
        return Assignment(chosen, distances[chosen], distances)

    def predict_one(self, x: dict[Hashable, Any]) -> int:
        assignment = self.assign(x)
        return 0 if assignment is None else assignment.cluster

    def scaler_state(self) -> tuple[Mapping[Hashable, float], Mapping[Hashable, float]]:
        """The scaler's means and variances by feature name (what a published model carries)."""
        return self._scaler.means, self._scaler.vars

    def fitted_centers(self) -> Mapping[int, Mapping[Hashable, float]]:
        """Centers by position in the scaled space; empty until something was learned (see :meth:`assign`)."""
        return self._model.centers if self._learned else {}

    def centroids(self) -> dict[int, dict[str, float]]:
        """Each cluster's center as z-scores per feature (0 = the population mean)."""
        centers = self._model.centers if self._learned else {}
        return {c: {name: center.get(i, 0.0) for i, name in enumerate(BEHAVIOUR_FEATURES)}
                for c, center in centers.items()}


@dataclass
class ClusterStats:
    """Exponentially decayed counts of recent assignments: cluster sizes and their top categories."""

    decay: float = 0.9998
    """Per learned vector: a half-life of about 3,500 vectors."""
    sizes: dict[int, float] = field(default_factory=dict)
    categories: dict[int, dict[str, float]] = field(default_factory=dict)

    def add(self, cluster_id: int, category: str) -> None:
        for c in self.sizes:
            self.sizes[c] *= self.decay
        self.sizes[cluster_id] = self.sizes.get(cluster_id, 0.0) + 1.0
        if category:
            counts = self.categories.setdefault(cluster_id, {})
            for name in counts:
                counts[name] *= self.decay
            counts[category] = counts.get(category, 0.0) + 1.0

    def share(self, cluster_id: int) -> float:
        total = sum(self.sizes.values())
        return self.sizes.get(cluster_id, 0.0) / total if total else 0.0

    def dominant_category(self, cluster_id: int) -> str:
        counts = self.categories.get(cluster_id, {})
        if not counts:
            return ""
        top = max(sorted(counts), key=counts.__getitem__)
        share = counts[top] / sum(counts.values())
        everywhere = sum(c.get(top, 0.0) for c in self.categories.values())
        overall = everywhere / sum(sum(c.values()) for c in self.categories.values())
        return top if share >= DOMINANT_CATEGORY_SHARE and share >= CATEGORY_LIFT * overall else ""


@dataclass(frozen=True)
class ClusterDescription:
    cluster: int
    text: str
    share: float
    """Share of recently learned vectors assigned to the cluster."""
    centroid: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "text": self.text, "share": round(self.share, 4),
                "centroid": {name: round(z, 3) for name, z in self.centroid.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterDescription:
        return cls(data["cluster"], data["text"], data["share"], dict(data["centroid"]))


def describe(centroid: Mapping[str, float], category: str = "") -> str:
    """Words for the centroid's largest deviations from the population, e.g. "frequent, low spend, books".

    >>> describe({"sessions": 1.2, "order_value": -0.8, "cart_rate": 0.1}, "books")
    'frequent, low spend, books'
    """
    traits = sorted((name for name, z in centroid.items() if abs(z) >= NOTABLE_Z),
                    key=lambda name: -abs(centroid[name]))[:MAX_TRAITS]
    words = [DESCRIPTORS[name][centroid[name] > 0] for name in traits] or ["average"]
    return ", ".join([*words, category] if category else words)


def describe_clusters(model: BehaviourClusterer, stats: ClusterStats) -> tuple[ClusterDescription, ...]:
    return tuple(
        ClusterDescription(c, describe(centroid, stats.dominant_category(c)), stats.share(c), centroid)
        for c, centroid in sorted(model.centroids().items())
    )

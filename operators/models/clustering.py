"""Behavioural clusters: standard scaling and a clusterer behind one estimator.

The default, ``sampled_kmeans``, re-fits k-means++ over the newest input of a sample of users
(:class:`SampledKMeans`); the others are River's streaming clusterers, kept for comparison.
Centroids live in the scaled space, so a centroid coordinate *is* the cluster's z-score against
the population of learned vectors; :func:`describe` turns the largest ones into words.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from river import base, cluster, preprocessing
from scipy.optimize import linear_sum_assignment

from operators.models.inputs import BEHAVIOUR_FEATURES
from operators.models.scaler import Scaler

SAMPLED = "sampled_kmeans"
CLUSTERERS = (SAMPLED, "kmeans", "streamkmeans", "dbstream", "clustream")
RESTARTS = 10
"""k-means++ starts per re-fit; the fit with the least within-cluster squared distance wins."""
LLOYD_ITERATIONS = 30
NOTABLE_Z = 0.5
"""A centroid coordinate at least this far from the population mean (in standard deviations) is a trait."""
MAX_TRAITS = 3
DOMINANT_CATEGORY_SHARE = 0.4
CATEGORY_LIFT = 1.5
"""A cluster is named after a category when at least 40% of its recent vectors have it as top category,
and 1.5 times the share it has over all clusters: popular categories alone do not characterize a cluster."""
NEAREST_CENTER = frozenset({SAMPLED, "kmeans", "streamkmeans", "dbstream"})
"""Clusterers that predict the nearest center: the assignment takes it from distances computed anyway."""
DESCRIPTORS: dict[str, tuple[str, str]] = {
    "sessions": ("occasional", "frequent"),
    "cart_rate": ("rarely carts", "carts often"),
    "remove_rate": ("keeps what it carts", "takes items out of the cart"),
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


def _squared_distances(points: np.ndarray, norms: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Point x center squared distances, as ``|p|^2 - 2 p.c + |c|^2`` (one matrix product)."""
    return np.maximum(norms[:, None] - 2.0 * points @ centers.T + (centers * centers).sum(axis=1)[None], 0.0)


def _kmeans(points: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from ``centers``: (centers, within-cluster squared distance)."""
    norms = (points * points).sum(axis=1)
    identity = np.eye(len(centers))
    labels = None
    for _ in range(LLOYD_ITERATIONS):
        moved = _squared_distances(points, norms, centers).argmin(axis=1)
        if labels is not None and np.array_equal(moved, labels):
            break
        labels = moved
        members = identity[labels]  # one row per point, a 1 in its cluster's column
        counts = members.sum(axis=0)
        centers = np.where(counts[:, None] > 0, (members.T @ points) / np.maximum(counts, 1)[:, None], centers)
    return centers, float(_squared_distances(points, norms, centers).min(axis=1).sum())


def _kmeans_plus_plus_start(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next center drawn with probability proportional to its squared distance."""
    n = len(points)
    centers = np.empty((k, points.shape[1]))
    centers[0] = points[rng.integers(n)]
    closest = ((points - centers[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = float(closest.sum())
        centers[j] = points[rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)]
        closest = np.minimum(closest, ((points - centers[j]) ** 2).sum(axis=1))
    return centers


class SampledKMeans:
    """k-means++ re-fitted now and then over the newest behaviour input of a sample of users.

    Why not an online KMeans: it learns vectors, so busy users pull its centers, and it stays in the
    local optimum its first points lead it to (docs/models.md measures both). Here each sample slot (a
    hash bucket of the user key, chosen by the user operator) holds its user's newest input, so every
    sampled user counts once and with their current habits. Every ``refit_every`` stored inputs (sooner
    while the sample is smaller than that) the centers are fitted afresh: the best of :data:`RESTARTS`
    k-means++ starts and the previous centers (so a re-fit never trades the current partition for a
    worse one), matched to the previous ids (least total squared distance), so a re-fit does not
    rename clusters under scored users. Cost: a store per input, and a re-fit of at most
    ``slots x n_clusters x RESTARTS x LLOYD_ITERATIONS`` distances (numpy) per ``refit_every`` inputs.
    """

    def __init__(self, n_clusters: int, seed: int, refit_every: int, slots: int) -> None:
        self.n_clusters = n_clusters
        self.refit_every = refit_every
        self.rng = np.random.default_rng(seed)
        self._empty(slots)

    def _empty(self, slots: int) -> None:
        """No input and no centers (a new sample, or one restored from another input space)."""
        self.inputs = np.zeros((slots, len(BEHAVIOUR_FEATURES)), dtype=np.float32)
        """Row ``slot``: the slot's newest input, raw, in ``BEHAVIOUR_FEATURES`` order. One array, not a
        dict of tuples: the trainer's state is pickled at every snapshot, and an array pickles as one copy."""
        self.filled = np.zeros(slots, dtype=bool)
        self.size = 0
        """Slots holding an input."""
        self.stored_since_fit = 0
        self.centers: dict[int, dict[Hashable, float]] = {}
        """Cluster id -> center by position, in the space of :attr:`scaler`; empty before the first fit."""
        self.scaler: tuple[dict[Hashable, float], dict[Hashable, float]] = ({}, {})
        """The means and variances by feature name the centers were fitted in (what scoring must use)."""
        self.fitted_scale = Scaler((), ())
        """The same scale in ``BEHAVIOUR_FEATURES`` order, as :meth:`scale` and the published model use it."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a checkpointed sample. One pickled before the scale was a :class:`Scaler` (2026-12-07)
        holds its means and deviations as two tuples. One checkpointed with other clustering features (an
        older version) restores empty: its rows and centers are in a space the scorers no longer use, and
        a re-fit follows within ``n_clusters`` new inputs."""
        if "means" in state:
            state["fitted_scale"] = Scaler(state.pop("means"), state.pop("stds"))
        self.__dict__.update(state)
        if self.inputs.shape[1] != len(BEHAVIOUR_FEATURES):
            self._empty(len(self.filled))

    def store(self, slot: int, x: Mapping[Hashable, float]) -> bool:
        """Keep ``x`` as the slot's newest input; True when a re-fit is due."""
        slot %= len(self.filled)  # a restored sample keeps its size if models.sample_users changed
        self.inputs[slot] = [x[name] for name in BEHAVIOUR_FEATURES]
        if not self.filled[slot]:
            self.filled[slot] = True
            self.size += 1
        self.stored_since_fit += 1
        return self.size >= self.n_clusters and self.stored_since_fit >= min(self.refit_every, self.size)

    def forget(self, slot: int) -> None:
        slot %= len(self.filled)
        if self.filled[slot]:
            self.filled[slot] = False
            self.size -= 1

    def scale(self, x: Mapping[Hashable, Any]) -> dict[Hashable, float]:
        """``x`` by position in the space the centers were fitted in (a feature without variance scales to 0)."""
        return dict(enumerate(self.fitted_scale.scale(x, BEHAVIOUR_FEATURES)))

    def fit(self, means: Mapping[Hashable, float], variances: Mapping[Hashable, float]) -> None:
        """Fit the sample in a scale halfway between ``means`` and ``variances`` (every learned input's) and
        the sample's own (each sampled user's newest input once); a feature without variance scales to 0.

        Why both: the sample's own scale counts users as the clusters do, but moves at every re-fit, and
        each move shifts the boundaries under users scored before; the scale of every learned input moves
        slowly but weighs busy users more. Either alone did worse over eleven generated streams
        (docs/models.md, "Scaling for the re-fit")."""
        self.stored_since_fit = 0
        raw = self.inputs[self.filled].astype(np.float64)
        learned_mean = np.array([means.get(name, 0.0) for name in BEHAVIOUR_FEATURES])
        learned_variance = np.array([variances.get(name, 0.0) for name in BEHAVIOUR_FEATURES])
        mean = (learned_mean + raw.mean(axis=0)) / 2
        variance = (learned_variance + raw.var(axis=0)) / 2
        std = np.sqrt(variance)
        self.fitted_scale = Scaler(tuple(float(m) for m in mean), tuple(float(s) for s in std))
        points = np.where(std > 0, (raw - mean) / np.where(std > 0, std, 1.0), 0.0)
        starts = [_kmeans_plus_plus_start(points, self.n_clusters, self.rng) for _ in range(RESTARTS)]
        previous = np.array([[self.centers[c][i] for i in range(len(BEHAVIOUR_FEATURES))]
                             for c in range(self.n_clusters)]) if self.centers else None
        if previous is not None:
            starts.append(previous)
        fitted = min((_kmeans(points, start) for start in starts), key=lambda fit: fit[1])[0]
        if previous is not None:
            _, order = linear_sum_assignment(((previous[:, None, :] - fitted[None]) ** 2).sum(axis=2))
            fitted = fitted[order]
        self.centers = {c: {i: float(v) for i, v in enumerate(center)} for c, center in enumerate(fitted)}
        self.scaler = (dict(zip(BEHAVIOUR_FEATURES, self.fitted_scale.means, strict=True)),
                       dict(zip(BEHAVIOUR_FEATURES, (float(v) for v in variance), strict=True)))


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
    """``StandardScaler`` then a clusterer over :func:`~operators.models.inputs.behaviour_input` dicts.

    The clusterer sees features by position (0..n-1), not by name: River's KMeans draws initial
    center coordinates lazily in the iteration order of a *set* of feature keys, which for strings
    changes with ``PYTHONHASHSEED``. Integer keys make one seed give one model in every process.

    >>> model = BehaviourClusterer(n_clusters=2, seed=1)
    >>> for user, carts in enumerate((0, 0, 0, 5, 5, 5) * 50):
    ...     model.learn_one({name: float(carts) for name in BEHAVIOUR_FEATURES}, slot=user % 60)
    >>> model.predict_one({name: 0.0 for name in BEHAVIOUR_FEATURES}) != model.predict_one(
    ...     {name: 5.0 for name in BEHAVIOUR_FEATURES})
    True
    """

    def __init__(self, clusterer: str = SAMPLED, n_clusters: int = 5, seed: int = 42, refit_every: int = 1000,
                 sample_users: int = 2048) -> None:
        self.clusterer = clusterer
        self.n_clusters = n_clusters
        self.seed = seed
        self.refit_every = refit_every
        self.sample_users = sample_users
        self._scaler = preprocessing.StandardScaler()
        self._sample = SampledKMeans(n_clusters, seed, refit_every, sample_users) if clusterer == SAMPLED else None
        self._model = make_clusterer(clusterer, n_clusters, seed) if self._sample is None else None
        self._learned = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A trainer checkpointed before ``sampled_kmeans`` existed restores as the River clusterer it was."""
        self.__dict__.update({"refit_every": 1000, "sample_users": 2048, "_sample": None, **state})

    def _positional(self, x: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self._sample is not None:
            return self._sample.scale(x)
        scaled = self._scaler.transform_one(dict(x))
        return {i: scaled[name] for i, name in enumerate(BEHAVIOUR_FEATURES)}

    def learn_one(self, x: dict[Hashable, Any], slot: int | None = None) -> None:
        """Learn ``x``; for ``sampled_kmeans`` as the newest input of sample ``slot`` (without one, the
        newest ``sample_users`` inputs are the sample)."""
        self._scaler.learn_one(x)
        if self._sample is not None:
            if self._sample.store(self._learned % self.sample_users if slot is None else slot, x):
                self._sample.fit(self._scaler.means, self._scaler.vars)
        else:
            assert self._model is not None
            self._model.learn_one(self._positional(x))
        self._learned += 1

    def forget(self, slot: int) -> None:
        """Drop the slot's input (its user left: erasure, retention, a merge); the next re-fit goes without it."""
        if self._sample is not None:
            self._sample.forget(slot)

    def fitted_centers(self) -> Mapping[int, Mapping[Hashable, float]]:
        """Centers by position in the scaled space; empty until something was learned (see :meth:`assign`).

        An unfitted River KMeans has random centers whose coordinates are drawn when first read: reading
        them before learning would both mislead and mutate the model."""
        if self._sample is not None:
            return self._sample.centers
        assert self._model is not None
        return self._model.centers if self._learned else {}

    def assign(self, x: Mapping[Hashable, Any]) -> Assignment | None:
        """The cluster of ``x`` and its distances to every center; None until there are centers."""
        centers = self.fitted_centers()
        if not centers:
            return None
        point = self._positional(x)
        distances = {c: _distance(point, center) for c, center in centers.items()}
        if self.clusterer in NEAREST_CENTER:
            chosen = min(distances, key=distances.__getitem__)
        else:
            assert self._model is not None
            chosen = self._model.predict_one(point)
        return Assignment(chosen, distances[chosen], distances)

    def predict_one(self, x: dict[Hashable, Any]) -> int:
        assignment = self.assign(x)
        return 0 if assignment is None else assignment.cluster

    def scaler_state(self) -> tuple[Mapping[Hashable, float], Mapping[Hashable, float]]:
        """The means and variances by feature name that scoring must scale with (what a published model carries)."""
        if self._sample is not None:
            return self._sample.scaler
        return self._scaler.means, self._scaler.vars

    def centroids(self) -> dict[int, dict[str, float]]:
        """Each cluster's center as z-scores per feature (0 = the population mean)."""
        return {c: {name: center.get(i, 0.0) for i, name in enumerate(BEHAVIOUR_FEATURES)}
                for c, center in self.fitted_centers().items()}


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

"""Model parameters, built from the ``models`` section of the settings (same field names)."""

from __future__ import annotations

from dataclasses import dataclass

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class ModelConfig:
    clusterer: str = "sampled_kmeans"
    """A name of ``clustering.CLUSTERERS``."""
    n_clusters: int = 5
    seed: int = 42
    sample_users: int = 2048
    """``sampled_kmeans``: sample slots (users hashed into them) whose newest input the re-fits cluster."""
    refit_every: int = 1000
    """``sampled_kmeans``: re-fit after this many stored inputs (sooner while the sample is smaller)."""
    train_sample_share: float = 1.0
    """Share of emitted feature vectors the trainer learns from (chosen by a hash of the vector id)."""
    train_vectors_per_user: int = 20
    """At most about this many of one user's vectors per 30 days are learned (0: no cap), see
    :func:`~operators.models.training.learns_from`."""
    intent_horizon_ms: int = 24 * HOUR_MS
    """An example is positive when the user purchases within this much event time after it."""
    intent_max_pending: int = 16
    """Examples awaiting their label per user; the oldest goes when a new one does not fit."""
    intent_learning_rate: float = 0.05
    intent_negative_share: float = 0.5
    """Share of negative intent examples the trainer learns (positives: all); see :class:`IntentClassifier`."""
    snapshot_every: int = 1000
    """Publish a snapshot after this many learned examples..."""
    snapshot_interval_ms: int = 600_000
    """...or when this much event time has passed since the last one and something was learned."""
    drift_detector: str = "adwin"
    """``adwin`` or ``page_hinkley``."""
    drift_warmup: int = 1000
    """Values a drift detector sees before it may report: the models converge first."""
    hysteresis_margin: float = 0.2
    """Switch cluster at once only when the new one is this much (relatively) closer..."""
    hysteresis_patience: int = 3
    """...or has been the closest for this many consecutive scorings."""

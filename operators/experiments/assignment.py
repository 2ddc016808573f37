"""Deterministic arm assignment and the rule for merging two users' assignments.

An arm is a pure function of the job's secret, the experiment id and the user key: no state, clock or
parallelism enters it, so the same user lands in the same arm after a restart, a rescale or a replay.
The hash is keyed (HMAC-SHA256) so nobody without the secret can predict arms or pick user ids for one.
The per-user state remembers the arm anyway, because identity stitching changes the user key
(docs/experiments.md): the remembered arm, not a new hash, is what the merged user keeps.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from operators.experiments.config import Experiment

_SCALE = 2.0 ** -64


def unit_draw(secret: bytes, experiment_id: str, user_key: str) -> float:
    """A uniform number in [0, 1) fixed by the secret, the experiment and the user."""
    message = f"experiment\x1f{experiment_id}\x1f{user_key}".encode()
    return int.from_bytes(hmac.new(secret, message, hashlib.sha256).digest()[:8], "big") * _SCALE


def assign(secret: bytes, experiment: Experiment, user_key: str) -> str:
    """The arm of ``user_key``: arms cover [0, 1) in definition order, each as wide as its share of the weight."""
    point = unit_draw(secret, experiment.id, user_key) * sum(arm.weight for arm in experiment.arms)
    for arm in experiment.arms[:-1]:
        point -= arm.weight
        if point < 0:
            return arm.id
    return experiment.arms[-1].id


@dataclass(frozen=True)
class Assignment:
    """A user's arm in one experiment and what the per-arm counters already counted of them."""

    arm: str
    first_exposure_ms: int = -1
    """Event time of the user's first exposure in this arm; -1: assigned but never exposed."""
    converted: bool = False
    """Already counted as a converted user of the arm."""
    revenue: float = 0.0
    """Attributed revenue so far: the arm's sum of squares grows by ``(r + x)**2 - r**2``."""

    @property
    def exposed(self) -> bool:
        return self.first_exposure_ms >= 0


def merge_assignments(known: Mapping[str, Assignment], anonymous: Mapping[str, Assignment]
                      ) -> tuple[dict[str, Assignment], tuple[str, ...]]:
    """The merged user's assignments when an identify joins an anonymous visitor to a known user, and the
    experiments in which the visitor had been exposed in another arm than the known user's (crossovers).

    Rule: the known user's arm wins where the known user has one, since the known id is the unit that stays
    the same across devices and future sessions; the visitor's arm is kept where the known user has none, so
    a visitor who signs up keeps the arm they were shown. Counts already made stay where they were made
    (event-time counts are never moved); the merged user continues the accumulators of the known user, or
    the visitor's when only the visitor was exposed in that same arm.
    """
    merged = dict(anonymous) | dict(known)
    crossed = []
    for experiment_id, mine in known.items():
        other = anonymous.get(experiment_id)
        if other is None:
            continue
        if other.arm != mine.arm:
            crossed += [experiment_id] if other.exposed else []
        elif other.exposed and not mine.exposed:
            merged[experiment_id] = other
    return merged, tuple(sorted(crossed))

"""Cluster membership as a segment, with hysteresis so users near a boundary do not flap.

A user moves to a new cluster only when it is clearly closer (by ``margin``, relative to the
distance to the current one) or has been the closest for ``patience`` consecutive scorings. The
state is three small fields per user, kept next to the user's other keyed state.
"""

from __future__ import annotations

from dataclasses import dataclass

from operators.models.clustering import Assignment
from operators.rules.engine import MODEL_SEGMENT_PREFIX


def segment_name(cluster: int) -> str:
    return f"{MODEL_SEGMENT_PREFIX}{cluster}"


@dataclass(frozen=True)
class MembershipPolicy:
    margin: float = 0.2
    patience: int = 3


@dataclass(frozen=True)
class Membership:
    cluster: int | None = None
    candidate: int | None = None
    """The closest cluster when it is not ``cluster``, and for how many scorings in a row it was."""
    streak: int = 0

    @property
    def segment(self) -> str | None:
        return None if self.cluster is None else segment_name(self.cluster)


def update_membership(policy: MembershipPolicy, membership: Membership, assignment: Assignment | None) -> Membership:
    """The membership after one scoring. No assignment (no behaviour) leaves the cluster.

    >>> policy = MembershipPolicy(margin=0.2, patience=2)
    >>> m = update_membership(policy, Membership(), Assignment(1, 1.0, {1: 1.0, 2: 1.5}))
    >>> m = update_membership(policy, m, Assignment(2, 0.9, {1: 1.0, 2: 0.9}))  # closer, not by 20%
    >>> m.segment, m.candidate, m.streak
    ('cluster:1', 2, 1)
    >>> update_membership(policy, m, Assignment(2, 0.9, {1: 1.0, 2: 0.9})).segment  # twice in a row
    'cluster:2'
    """
    if assignment is None:
        return Membership()
    best, current = assignment.cluster, membership.cluster
    if current is None or current not in assignment.distances or best == current:
        return Membership(best)
    if assignment.distance <= (1 - policy.margin) * assignment.distances[current]:
        return Membership(best)
    streak = membership.streak + 1 if membership.candidate == best else 1
    if streak >= policy.patience:
        return Membership(best)
    return Membership(current, best, streak)

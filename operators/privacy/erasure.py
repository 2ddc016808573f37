"""Erasure plans: everything that must happen when a user withdraws consent or asks to be erased.

A plan is data, not action: the keyed operator clears the named states, hands the Redis work to
its sink, emits the tombstones, the cascade commands and the confirmation. Keeping it pure makes
the list testable and the same for consent withdrawals, erasure requests and cascades.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

from operators.privacy.identity import ErasureCommand
from operators.privacy.pii import PiiHasher

ERASURE_SCHEMA = "privacy.erasure.v1"


class Tombstone(NamedTuple):
    """A null value under the user's key: compacted topics drop everything older for the key."""

    topic: str
    key: bytes


@dataclass(frozen=True)
class ErasureSettings:
    erased_states: tuple[str, ...]
    """The user operator's keyed states an erasure clears (``state/slots.py``)."""
    kept_states: tuple[str, ...]
    """Kept on purpose: the consent record (updated to "withdrawn"), or the user is profiled again."""
    recs_states: tuple[str, ...]
    """The recommender's states of the user (list, experiments), cleared by its forget request."""
    redis_user_keys: int
    """How many Redis keys per user the sink deletes (``connectors/redis_keys.py``), for the confirmation."""
    tombstone_topics: tuple[str, ...]
    """User-keyed output topics the user operator writes (profiles, features, segments)."""
    confirmation_topic: str
    audit: PiiHasher
    """Salts the subject hash of confirmations: verifiable by whoever holds the secret, unreadable otherwise."""


@dataclass(frozen=True)
class Held:
    """What the operator holds of the user beyond its keyed states."""

    segments: tuple[str, ...] = ()
    """Current segment memberships (``RuleState.members``): the Redis member sets to leave."""
    related: tuple[str, ...] = ()
    """Keys with the same person's data (``IdentityState.related_keys()``): the erasure cascades there."""
    recs: bool = False
    """The user had recommendation state: the recommender must forget the published list."""


@dataclass(frozen=True)
class ErasureConfirmation:
    """The auditable record of one erasure; no personal data, only a salted hash of the user key."""

    subject: str
    reason: str
    ts: int
    generation: int
    cleared_states: tuple[str, ...]
    redis_keys: int
    tombstone_topics: tuple[str, ...]
    cascaded: int

    @property
    def record_id(self) -> str:
        """Deterministic (subject hash and event time): a replay or a repeated request yields the same id."""
        return f"erasure:{self.subject}:{self.ts}"

    def key(self) -> bytes:
        return self.subject.encode("utf-8")

    def to_json(self) -> bytes:
        return json.dumps({
            "id": self.record_id, "schema": ERASURE_SCHEMA, "subject": self.subject, "reason": self.reason,
            "event_time": self.ts, "generation": self.generation, "cleared_states": list(self.cleared_states),
            "redis_keys": self.redis_keys, "tombstones": list(self.tombstone_topics), "cascaded": self.cascaded,
        }, separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass(frozen=True)
class ErasurePlan:
    user_key: str
    reason: str
    ts: int
    clear_states: tuple[str, ...]
    keep_states: tuple[str, ...]
    """Kept on purpose: the consent record (updated to "withdrawn"), or the user is profiled again."""
    leave_segments: tuple[str, ...]
    """Segments the user exits (their exits remove the user from the Redis member sets and counts);
    the sink deletes the user's keys and stream entries (``stage_erase``)."""
    tombstones: tuple[Tombstone, ...]
    forget_recs: bool
    """Send the recommender a forget request: it clears its map entry and Redis list and writes the
    recommendations tombstone itself (after any list still in flight)."""
    cascade: tuple[ErasureCommand, ...]
    confirmation: ErasureConfirmation


def plan_erasure(user_key: str, reason: str, ts: int, generation: int, held: Held, settings: ErasureSettings,
                 source: str = "") -> ErasurePlan:
    """The plan for erasing ``user_key`` at event time ``ts``; ``source`` is the key whose erasure
    cascaded here (not cascaded back, so a cascade ends after one hop)."""
    leave = tuple(sorted(held.segments))
    key = user_key.encode("utf-8")
    tombstones = tuple(Tombstone(topic, key) for topic in settings.tombstone_topics)
    cascade = tuple(ErasureCommand(user_key, target, reason, ts) for target in held.related if target != source)
    clear = settings.erased_states + (settings.recs_states if held.recs else ())
    confirmation = ErasureConfirmation(
        subject=settings.audit.hash("erasure_subject", user_key), reason=reason, ts=ts, generation=generation,
        cleared_states=clear, redis_keys=settings.redis_user_keys + len(leave),
        tombstone_topics=settings.tombstone_topics, cascaded=len(cascade))
    return ErasurePlan(user_key=user_key, reason=reason, ts=ts, clear_states=clear, keep_states=settings.kept_states,
                       leave_segments=leave, tombstones=tombstones, forget_recs=held.recs, cascade=cascade,
                       confirmation=confirmation)

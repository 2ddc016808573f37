"""The per-user profile: deduplicated event counts per type and first/last seen (event time)."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.dedup import RecentIds
from operators.events import Event
from operators.jsontext import sorted_json


@dataclass
class UserProfile:
    """Keyed state of one user. ``seq`` counts accepted events and versions every output."""

    counts: dict[str, int] = field(default_factory=dict)
    first_seen: int = 0
    last_seen: int = 0
    seq: int = 0
    recent: RecentIds = field(default_factory=RecentIds.empty)


@dataclass(frozen=True)
class ProfileUpdate:
    """What changed for a user after one accepted event; ``seq`` orders updates of a user."""

    user_key: str
    seq: int
    counts: dict[str, int]
    first_seen: int
    last_seen: int
    event_id: str
    event_type: str
    event_ts: int

    @property
    def update_id(self) -> str:
        """Deterministic id: a replay after restore yields the same id for the same update."""
        return f"{self.user_key}:{self.seq}"

    def to_json(self) -> bytes:
        return sorted_json({
            "id": self.update_id, "user": self.user_key, "seq": self.seq, "counts": self.counts,
            "first_seen": self.first_seen, "last_seen": self.last_seen,
            "event": {"id": self.event_id, "type": self.event_type, "ts": self.event_ts},
        })


@dataclass(frozen=True)
class ProfileOperator:
    """Apply events to a :class:`UserProfile`, dropping duplicates of recently seen event ids."""

    dedup_window_ms: int = 21_600_000
    dedup_max_ids: int = 128

    def process(self, profile: UserProfile | None, event: Event) -> tuple[UserProfile, ProfileUpdate | None]:
        """Return the new profile and its update, or the unchanged profile and None for a duplicate."""
        if profile is None:
            profile = UserProfile(first_seen=event.ts, last_seen=event.ts)
        if profile.recent.check_and_add(event.event_id, event.ts, profile.last_seen,
                                        self.dedup_window_ms, self.dedup_max_ids):
            return profile, None
        profile.counts[event.type] = profile.counts.get(event.type, 0) + 1
        profile.first_seen = min(profile.first_seen, event.ts)
        profile.last_seen = max(profile.last_seen, event.ts)
        profile.seq += 1
        update = ProfileUpdate(
            user_key=event.user_key, seq=profile.seq, counts=dict(profile.counts),
            first_seen=profile.first_seen, last_seen=profile.last_seen,
            event_id=event.event_id, event_type=event.type, event_ts=event.ts,
        )
        return profile, update

"""Redis key layout (docs/redis.md). Pure functions so every writer and reader agrees."""

from __future__ import annotations


def user_profile_key(prefix: str, user_key: str) -> str:
    return f"{prefix}user:{user_key}:profile"


def users_hll_key(prefix: str) -> str:
    return f"{prefix}stats:users"


def user_profile_pattern(prefix: str) -> str:
    return f"{prefix}user:*:profile"


def user_features_key(prefix: str, user_key: str) -> str:
    return f"{prefix}user:{user_key}:features"


def user_features_pattern(prefix: str) -> str:
    return f"{prefix}user:*:features"


def user_segments_key(prefix: str, user_key: str) -> str:
    """Hash: segment id -> entry time (ms), plus ``_seq``, the last applied change of the user."""
    return f"{prefix}user:{user_key}:segments"


def segment_members_key(prefix: str, segment: str) -> str:
    """Sorted set of user keys, scored by entry time."""
    return f"{prefix}segment:{segment}:members"


def segment_counts_key(prefix: str) -> str:
    """Hash: segment id -> current member count."""
    return f"{prefix}segments:counts"


def segment_changes_key(prefix: str) -> str:
    """Capped stream of recent segment changes (for dashboards)."""
    return f"{prefix}segments:changes"


def rules_key(prefix: str) -> str:
    """Hash: rule id -> the rule's current definition, version and status (JSON)."""
    return f"{prefix}rules"


def rule_instances_key(prefix: str) -> str:
    """Hash: parallel instance index -> fingerprint of the rule set it runs (all equal once a command applied)."""
    return f"{prefix}rules:instances"

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

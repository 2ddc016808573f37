"""The Redis key layout (docs/redis.md) is one set of pure functions, and a cleanup deletes exactly it."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
import redis

from connectors import redis_keys
from personalize.demo import clear_redis
from personalize.settings import Settings
from tests.conftest import isolated


def every_key(prefix: str) -> list[str]:
    """One key of every family the layout defines (each key function with a sample argument)."""
    keys = []
    for name, function in inspect.getmembers(redis_keys, inspect.isfunction):
        if name.endswith("_key"):
            arguments = len(inspect.signature(function).parameters)
            keys.append(function(prefix, *["x:1"] * (arguments - 1)))
    return keys


def test_every_key_of_the_layout_matches_a_cleanup_pattern() -> None:
    from fnmatch import fnmatchcase

    patterns = redis_keys.layout_patterns("p13n:")
    keys = every_key("p13n:")
    assert len(keys) >= 17
    assert [key for key in keys if not any(fnmatchcase(key, pattern) for pattern in patterns)] == []


@pytest.mark.integration
def test_a_cleanup_deletes_only_the_layout_under_its_prefix(stack_settings: Settings) -> None:
    """The demo's cleanup once deleted every key of the database when the prefix was empty or a glob."""
    settings = isolated(stack_settings)
    prefix = settings.redis.key_prefix
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    ours = every_key(prefix)
    others = [f"{prefix}not-the-jobs", f"other-app:{prefix}user:x:profile", "session:42", f"x{prefix}rules"]
    for key in [*ours, *others]:
        client.set(key, "1")
    try:
        assert clear_redis(settings) == len(ours)
        assert [key for key in [*ours, *others] if client.exists(key)] == others
        assert clear_redis(replace(settings, redis=replace(settings.redis, key_prefix="absent:"))) == 0
    finally:
        client.delete(*others)
        client.close()

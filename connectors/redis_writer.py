"""Batched, replay-safe writes of per-user results to Redis.

Redis is a serving view and Kafka is the record: after a failure Flink replays events since the
last checkpoint, so every hash write is guarded by a version (the profile's ``seq``, the feature
vector's ``version``) and only ever moves a hash forward. Writes are buffered, coalesced per key
(only the newest version of a hash in a batch is sent) and pipelined.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from connectors.redis_keys import user_features_key, user_profile_key, users_hll_key
from operators.features.operator import FeatureVector
from operators.profile import ProfileUpdate
from personalize.settings import RedisSettings

# ARGV: ttl, version, field, value, ... Writes the hash only if the stored version is lower;
# refreshes the TTL either way.
GUARDED_HSET = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
if tonumber(ARGV[2]) > stored then
  redis.call('HSET', KEYS[1], 'version', ARGV[2], unpack(ARGV, 3))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return stored
"""


class UserStateSink(Protocol):
    """What the keyed operator needs from a Redis writer (tests may pass their own)."""

    def stage_profile(self, update: ProfileUpdate) -> None: ...
    def stage_features(self, vector: FeatureVector) -> None: ...
    def stage_forget(self, user_key: str) -> None: ...
    def due(self) -> bool: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def profile_fields(update: ProfileUpdate) -> list[Any]:
    fields: list[Any] = ["seq", update.seq, "first_seen", update.first_seen, "last_seen", update.last_seen,
                         "total", sum(update.counts.values())]
    for event_type, count in sorted(update.counts.items()):
        fields += [f"n:{event_type}", count]
    return fields


def feature_fields(vector: FeatureVector) -> list[Any]:
    """Scalars as they are, lists as JSON; ``None`` as an empty string (absent)."""
    fields: list[Any] = ["ts", vector.ts]
    for name, value in sorted(vector.values.items()):
        if isinstance(value, bool):
            value = int(value)
        elif isinstance(value, list | dict):
            value = json.dumps(value, separators=(",", ":"))
        elif value is None:
            value = ""
        fields += [name, value]
    return fields


class RedisStateWriter:
    """Buffers per-user hashes and writes them in guarded, pipelined batches."""

    def __init__(self, settings: RedisSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.client = redis.Redis.from_url(settings.url)
        self.guarded_hset = self.client.register_script(GUARDED_HSET)
        self.pending: dict[str, tuple[int, list[Any]]] = {}
        self.forgotten: set[str] = set()
        self.new_users: set[str] = set()
        self.last_flush = clock()

    def _stage(self, key: str, version: int, fields: Callable[[], list[Any]]) -> None:
        current = self.pending.get(key)
        if current is None or version > current[0]:
            self.pending[key] = (version, fields())
        self.forgotten.discard(key)

    def stage_profile(self, update: ProfileUpdate) -> None:
        self._stage(user_profile_key(self.settings.key_prefix, update.user_key), update.seq,
                    lambda: profile_fields(update))
        if update.seq == 1:
            self.new_users.add(update.user_key)

    def stage_features(self, vector: FeatureVector) -> None:
        self._stage(user_features_key(self.settings.key_prefix, vector.user_key), vector.version,
                    lambda: feature_fields(vector))

    def stage_forget(self, user_key: str) -> None:
        """Delete the user's hashes (retention passed); pending writes of the user are dropped."""
        keys = [user_profile_key(self.settings.key_prefix, user_key),
                user_features_key(self.settings.key_prefix, user_key)]
        for key in keys:
            self.pending.pop(key, None)
        self.forgotten.update(keys)

    def due(self) -> bool:
        """Whether the buffer should be written now (size or age limit reached)."""
        if not self.pending and not self.forgotten:
            return False
        age_ms = (self.clock() - self.last_flush) * 1000
        return len(self.pending) >= self.settings.flush_max_ops or age_ms >= self.settings.flush_interval_ms

    def flush(self) -> None:
        self.last_flush = self.clock()
        if not self.pending and not self.forgotten:
            return
        pipe = self.client.pipeline(transaction=False)
        if self.forgotten:
            pipe.unlink(*self.forgotten)
        for key, (version, fields) in self.pending.items():
            self.guarded_hset(keys=[key], args=[self.settings.user_ttl_s, version, *fields], client=pipe)
        if self.new_users:
            pipe.pfadd(users_hll_key(self.settings.key_prefix), *self.new_users)
        pipe.execute()
        self.pending.clear()
        self.forgotten.clear()
        self.new_users.clear()

    def close(self) -> None:
        self.flush()
        self.client.close()


@dataclass(frozen=True)
class RedisStateWriterFactory:
    """Picklable factory: each parallel operator instance opens its own connection in ``open()``."""

    settings: RedisSettings

    def __call__(self) -> UserStateSink:
        return RedisStateWriter(self.settings)

"""Batched, replay-safe writes of per-user results to Redis.

Redis is a serving view and Kafka is the record: after a failure Flink replays events since the
last checkpoint, so every write is guarded by the update's ``seq`` and only ever moves a
user's hash forward. Writes are buffered, coalesced per user (only the newest update of a user
in a batch is sent) and pipelined.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from connectors.redis_keys import user_profile_key, users_hll_key
from operators.profile import ProfileUpdate
from personalize.settings import RedisSettings

# ARGV: ttl, seq, field, value, ... Writes the hash only if the stored seq is lower; refreshes the TTL.
GUARDED_HSET = """
local stored = tonumber(redis.call('HGET', KEYS[1], 'seq') or '-1')
if tonumber(ARGV[2]) > stored then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3))
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return stored
"""


class ProfileSink(Protocol):
    """What the keyed operator needs from a profile writer (tests may pass their own)."""

    def stage(self, update: ProfileUpdate) -> None: ...
    def due(self) -> bool: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def profile_fields(update: ProfileUpdate) -> list[str | int]:
    fields: list[str | int] = ["seq", update.seq, "first_seen", update.first_seen, "last_seen", update.last_seen,
                               "total", sum(update.counts.values())]
    for event_type, count in sorted(update.counts.items()):
        fields += [f"n:{event_type}", count]
    return fields


class RedisProfileWriter:
    """Buffers profile updates and writes them in guarded, pipelined batches."""

    def __init__(self, settings: RedisSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.client = redis.Redis.from_url(settings.url)
        self.guarded_hset = self.client.register_script(GUARDED_HSET)
        self.pending: dict[str, ProfileUpdate] = {}
        self.last_flush = clock()

    def stage(self, update: ProfileUpdate) -> None:
        current = self.pending.get(update.user_key)
        if current is None or update.seq > current.seq:
            self.pending[update.user_key] = update

    def due(self) -> bool:
        """Whether the buffer should be written now (size or age limit reached)."""
        if not self.pending:
            return False
        age_ms = (self.clock() - self.last_flush) * 1000
        return len(self.pending) >= self.settings.flush_max_ops or age_ms >= self.settings.flush_interval_ms

    def flush(self) -> None:
        self.last_flush = self.clock()
        if not self.pending:
            return
        prefix, ttl = self.settings.key_prefix, self.settings.user_ttl_s
        pipe = self.client.pipeline(transaction=False)
        for update in self.pending.values():
            key = user_profile_key(prefix, update.user_key)
            self.guarded_hset(keys=[key], args=[ttl, update.seq, *profile_fields(update)], client=pipe)
        pipe.pfadd(users_hll_key(prefix), *self.pending)
        pipe.execute()
        self.pending.clear()

    def close(self) -> None:
        self.flush()
        self.client.close()


@dataclass(frozen=True)
class RedisProfileWriterFactory:
    """Picklable factory: each parallel operator instance opens its own connection in ``open()``."""

    settings: RedisSettings

    def __call__(self) -> ProfileSink:
        return RedisProfileWriter(self.settings)

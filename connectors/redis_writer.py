"""Batched, replay-safe writes of per-user results to Redis.

Redis is a serving view and Kafka is the record: after a failure Flink replays events since the
last checkpoint, so every hash write is guarded by a version (the profile's ``seq``, the feature
vector's ``version``) and only ever moves a hash forward. Writes are buffered, coalesced per key
(only the newest version of a hash in a batch is sent) and pipelined. Segment changes are not
coalesced: each is applied in order, guarded by the user's change ``seq``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from connectors.redis_keys import (
    rule_instances_key,
    rules_key,
    segment_changes_key,
    segment_counts_key,
    segment_members_key,
    user_features_key,
    user_profile_key,
    user_segments_key,
    users_hll_key,
)
from operators.features.operator import FeatureVector
from operators.profile import ProfileUpdate
from operators.rules.catalog import RuleEntry
from operators.rules.engine import SegmentChange
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


# KEYS: user segments hash, segment members zset, counts hash, changes stream.
# ARGV: seq, action, segment, event time, ttl, change JSON, stream cap, user. Applies a change once:
# a replayed change (seq not above the user's stored _seq) changes nothing, not even the stream.
APPLY_SEGMENT_CHANGE = """
local stored = tonumber(redis.call('HGET', KEYS[1], '_seq') or '-1')
if tonumber(ARGV[1]) <= stored then
  return 0
end
redis.call('HSET', KEYS[1], '_seq', ARGV[1])
if ARGV[2] == 'enter' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[8])
else
  redis.call('HDEL', KEYS[1], ARGV[3])
  redis.call('ZREM', KEYS[2], ARGV[8])
end
redis.call('HSET', KEYS[3], ARGV[3], redis.call('ZCARD', KEYS[2]))
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'change', ARGV[6])
return 1
"""


class UserStateSink(Protocol):
    """What the keyed operator needs from a Redis writer (tests may pass their own)."""

    def stage_profile(self, update: ProfileUpdate) -> None: ...
    def stage_features(self, vector: FeatureVector) -> None: ...
    def stage_forget(self, user_key: str) -> None: ...
    def stage_segment_change(self, change: SegmentChange, record: bytes) -> None: ...
    def write_rules(self, instance: int, fingerprint: int, entries: Iterable[RuleEntry]) -> None: ...
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
        self.apply_segment_change = self.client.register_script(APPLY_SEGMENT_CHANGE)
        self.pending: dict[str, tuple[int, list[Any]]] = {}
        self.segment_changes: list[tuple[SegmentChange, bytes]] = []
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

    def stage_segment_change(self, change: SegmentChange, record: bytes) -> None:
        """Apply an enter/exit (``record`` is its JSON, for the stream) in order at the next flush."""
        self.segment_changes.append((change, record))
        self.forgotten.discard(user_segments_key(self.settings.key_prefix, change.user_key))

    def write_rules(self, instance: int, fingerprint: int, entries: Iterable[RuleEntry]) -> None:
        """Publish rule definitions, versions and statuses, and which rule set this instance runs.

        Rare (at start and per rule command), so written at once. Every instance writes the same
        definitions; the per-instance fingerprints show when all of them run the same rules.
        """
        prefix = self.settings.key_prefix
        pipe = self.client.pipeline(transaction=False)
        mapping = {entry.id: entry.to_json() for entry in entries}
        if mapping:
            pipe.hset(rules_key(prefix), mapping=mapping)  # type: ignore[arg-type]
        pipe.hset(rule_instances_key(prefix), str(instance), str(fingerprint))
        pipe.execute()

    def stage_forget(self, user_key: str) -> None:
        """Delete the user's hashes (retention passed); pending writes of the user are dropped.

        Staged segment changes still apply first: the exits remove the user from the member sets.
        """
        prefix = self.settings.key_prefix
        keys = [user_profile_key(prefix, user_key), user_features_key(prefix, user_key),
                user_segments_key(prefix, user_key)]
        for key in keys:
            self.pending.pop(key, None)
        self.forgotten.update(keys)

    def due(self) -> bool:
        """Whether the buffer should be written now (size or age limit reached)."""
        if not self.pending and not self.forgotten and not self.segment_changes:
            return False
        age_ms = (self.clock() - self.last_flush) * 1000
        size = len(self.pending) + len(self.segment_changes)
        return size >= self.settings.flush_max_ops or age_ms >= self.settings.flush_interval_ms

    def flush(self) -> None:
        self.last_flush = self.clock()
        if not self.pending and not self.forgotten and not self.segment_changes:
            return
        pipe = self.client.pipeline(transaction=False)
        self._segment_changes(pipe)
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
        self.segment_changes.clear()

    def _segment_changes(self, pipe: Any) -> None:
        prefix, settings = self.settings.key_prefix, self.settings
        for change, record in self.segment_changes:
            keys = [user_segments_key(prefix, change.user_key), segment_members_key(prefix, change.segment),
                    segment_counts_key(prefix), segment_changes_key(prefix)]
            self.apply_segment_change(keys=keys, args=[
                change.seq, change.action, change.segment, change.event_time, settings.user_ttl_s, record,
                settings.changes_stream_maxlen, change.user_key], client=pipe)

    def close(self) -> None:
        self.flush()
        self.client.close()


@dataclass(frozen=True)
class RedisStateWriterFactory:
    """Picklable factory: each parallel operator instance opens its own connection in ``open()``."""

    settings: RedisSettings

    def __call__(self) -> UserStateSink:
        return RedisStateWriter(self.settings)

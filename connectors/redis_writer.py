"""Batched, replay-safe writes of per-user results to Redis.

Redis is a serving view and Kafka is the record: after a failure Flink replays events since the
last checkpoint, so every hash write is guarded by a version (the profile's ``seq``, the feature
vector's ``version``) and only ever moves a hash forward. Writes are buffered, coalesced per key
(only the newest version of a hash in a batch is sent) and pipelined. Segment changes are not
coalesced: each is applied in order, guarded by the user's change ``seq``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis
from redis.commands.core import Script
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
)

from connectors.redis_client import connect
from connectors.redis_keys import (
    deadletter_counts_key,
    experiment_metrics_key,
    models_clusters_key,
    models_current_key,
    models_drift_key,
    models_instances_key,
    rule_instances_key,
    rules_key,
    segment_changes_key,
    segment_counts_key,
    segment_members_key,
    user_features_key,
    user_model_key,
    user_profile_key,
    user_recs_info_key,
    user_recs_key,
    user_segments_key,
    users_hll_key,
)
from operators.features.operator import FeatureVector
from operators.models.drift import DriftEvent
from operators.models.training import ModelSnapshot
from operators.profile import ProfileUpdate
from operators.recs.serving import RecList
from operators.rules.catalog import RuleEntry
from operators.rules.engine import SegmentChange
from personalize.settings import RedisSettings

#: Errors a flush waits out: Redis is down, restarting (a restarted server has lost the loaded Lua
#: scripts, or is still loading its data), not answering in time, full (``maxmemory`` with the
#: ``noeviction`` policy: ``OOM command not allowed``), a replica that cannot take writes yet, or a
#: Redis Cluster failing over (``CLUSTERDOWN``, ``TRYAGAIN``).
TRANSIENT_ERRORS = (redis.ConnectionError, redis.TimeoutError, NoScriptError, BusyLoadingError, OutOfMemoryError,
                    ReadOnlyError, ClusterDownError, TryAgainError)
#: The same errors raised inside a Lua script or a pipeline arrive as a plain ``ResponseError`` whose
#: message carries the server's error code.
TRANSIENT_CODES = ("OOM command not allowed", "-LOADING", "-READONLY", "NOSCRIPT", "CLUSTERDOWN", "TRYAGAIN")


def refusal(exc: redis.RedisError) -> str:
    """Why Redis refused, in one short line: the server's own message for a coded error (``OOM command not
    allowed ...``), else the error's type and message."""
    text = " ".join(str(exc).split())
    for code in TRANSIENT_CODES:
        start = text.find(code.lstrip("-"))
        if start >= 0:
            return text[start:start + 200]
    return f"{type(exc).__name__}: {text[:200]}"


def is_transient(exc: redis.RedisError) -> bool:
    """Whether a flush should wait ``exc`` out (an outage, a full or restarting Redis), not fail at once."""
    return isinstance(exc, TRANSIENT_ERRORS) or (
        isinstance(exc, redis.ResponseError) and any(code in str(exc) for code in TRANSIENT_CODES))


class RedisUnavailable(RuntimeError):
    """Redis refused writes for longer than the retry deadline: the task fails, and this one line is what
    the CLI shows of it (docs/operations.md)."""
#: How long a flush retries before the error fails the task; checkpoints wait meanwhile (their
#: timeout, 10 min by default, must be longer).
FLUSH_RETRY_DEADLINE_S = 60.0
RETRY_FIRST_DELAY_S = 0.1
RETRY_MAX_DELAY_S = 2.0
#: A hung server must not hang the task forever: its commands time out and are retried.
SOCKET_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)

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


# Segment changes. ARGV of every script below: seq, action, segment, event time, ttl, change JSON, stream
# cap, user, epoch. The user's part (KEYS[1]: the user's segments hash) applies a change once per
# writer: a change re-sent by the same writer (seq not above the user's stored _seq) changes nothing. A
# writer of a later epoch (a task restarted from a checkpoint) applies its changes even at a seq
# already stored: they replace what an aborted attempt wrote, whose change numbering may differ
# (model-driven changes depend on when snapshots arrived).
_USER_SEGMENT_PART = """
local stored = tonumber(redis.call('HGET', KEYS[1], '_seq') or '-1')
local stored_epoch = tonumber(redis.call('HGET', KEYS[1], '_epoch') or '0')
local epoch = tonumber(ARGV[9])
if epoch < stored_epoch then
  return 0
end
if epoch == stored_epoch and tonumber(ARGV[1]) <= stored then
  return RESENT
end
redis.call('HSET', KEYS[1], '_seq', ARGV[1], '_epoch', ARGV[9])
if ARGV[2] == 'enter' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
"""
# The segment-wide part (the {segments} slot: members sorted set, counts hash, changes stream at KEYS
# offset FIRST): idempotent but for the stream entry, so it runs only after the user's part applied.
_SEGMENT_WIDE_PART = """
if ARGV[2] == 'enter' then
  redis.call('ZADD', KEYS[FIRST], ARGV[4], ARGV[8])
else
  redis.call('ZREM', KEYS[FIRST], ARGV[8])
end
redis.call('HSET', KEYS[FIRST + 1], ARGV[3], redis.call('ZCARD', KEYS[FIRST]))
redis.call('XADD', KEYS[FIRST + 2], 'MAXLEN', '~', ARGV[7], '*', 'change', ARGV[6])
return 1
"""
#: One server: both parts in one atomic script (KEYS: user hash, members, counts, stream); a re-sent
#: change adds nothing, not even a stream entry.
APPLY_SEGMENT_CHANGE = (_USER_SEGMENT_PART.replace("RESENT", "0")
                        + _SEGMENT_WIDE_PART.replace("FIRST", "2"))
#: Redis Cluster: the user's hash and the segment-wide keys live in different slots, so the parts run as
#: two scripts. The user's part answers 1 (applied), 2 (re-sent by this writer: a flush retried after
#: a failure that may have stopped between the parts) or 0 (outranked); the segment-wide part follows
#: for 1 and 2, so a retry completes a change half applied (the stream may then hold it twice).
APPLY_USER_SEGMENT_CHANGE = _USER_SEGMENT_PART.replace("RESENT", "2") + "return 1\n"
APPLY_SEGMENT_WIDE_CHANGE = _SEGMENT_WIDE_PART.replace("FIRST", "1")

# KEYS: the newest model summary hash and the cluster descriptions hash (one {models} slot). ARGV: the
# number n of summary arguments, n summary field/value arguments, then cluster id/description pairs.
# Replaces the descriptions and updates the summary in one step, so a reader never sees one snapshot's
# summary with another's clusters.
REPLACE_MODEL = """
local n = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2, n + 1))
redis.call('DEL', KEYS[2])
if #ARGV > n + 1 then
  redis.call('HSET', KEYS[2], unpack(ARGV, n + 2))
end
return 1
"""


# KEYS: the segment-change stream. ARGV: user keys. Deletes the stream entries whose change record names
# one of the users (erasures: the dashboard feed must not keep them); one scan of at most
# ``changes_stream_maxlen`` entries for all the users erased since the last flush.
SCRUB_USER_CHANGES = """
local erased = {}
for _, user in ipairs(ARGV) do erased[user] = true end
local removed = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'change' then
      local ok, record = pcall(cjson.decode, fields[i + 1])
      if ok and type(record) == 'table' and erased[record['user']] then
        redis.call('XDEL', KEYS[1], entry[1])
        removed = removed + 1
      end
    end
  end
end
return removed
"""

# KEYS: the user's recommendation sorted set and info hash. ARGV: seq, ttl, event time, suppressed,
# items JSON, then score, item, ... Replaces the list only when seq is above the stored version.
APPLY_RECS = """
local stored = tonumber(redis.call('HGET', KEYS[2], 'version') or '-1')
if tonumber(ARGV[1]) <= stored then
  return 0
end
redis.call('DEL', KEYS[1])
if #ARGV > 5 then
  redis.call('ZADD', KEYS[1], unpack(ARGV, 6))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
redis.call('HSET', KEYS[2], 'version', ARGV[1], 'ts', ARGV[3], 'suppressed', ARGV[4], 'items', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""


def redis_address(url: str) -> str:
    """``host:port/db`` of a Redis URL, never its password (messages and logs show it)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


@dataclass
class WriteStats:
    """What a writer did, for the job's metrics (``jobs/metrics.py``): flushes that wrote something,
    transient errors retried, errors that failed the task, and how long the latest and the slowest
    successful flush took (one attempt, without the waits between retries)."""

    flushes: int = 0
    retries: int = 0
    failures: int = 0
    last_flush_ms: int = 0
    max_flush_ms: int = 0

    def flushed(self, started: float) -> None:
        elapsed_ms = int((time.monotonic() - started) * 1000)
        self.flushes += 1
        self.last_flush_ms = elapsed_ms
        self.max_flush_ms = max(self.max_flush_ms, elapsed_ms)


class UserStateSink(Protocol):
    """What the keyed operator needs from a Redis writer (tests may pass their own)."""

    stats: WriteStats

    def stage_profile(self, update: ProfileUpdate) -> None: ...
    def stage_features(self, vector: FeatureVector) -> None: ...
    def stage_forget(self, user_key: str) -> None: ...
    def stage_erase(self, user_key: str) -> None: ...
    def stage_segment_change(self, change: SegmentChange, record: bytes) -> None: ...
    def write_rules(self, instance: int, fingerprint: int, entries: Iterable[RuleEntry]) -> None: ...
    def stage_model_scores(self, user_key: str, version: int, fields: list[Any]) -> None: ...
    def stage_recs(self, recs: RecList, ttl_s: int) -> None: ...
    def stage_forget_recs(self, user_key: str) -> None: ...
    def write_model(self, snapshot: ModelSnapshot, quality: dict[str, float]) -> None: ...
    def write_model_instance(self, instance: int, snapshot: ModelSnapshot) -> None: ...
    def write_drift(self, drift: DriftEvent) -> None: ...
    def write_experiment_metrics(self, experiment_id: str, record: bytes) -> None: ...
    def empty(self) -> bool: ...
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


def run_script(pipe: Any, script: Script, keys: list[str], args: list[Any]) -> None:
    """Queue ``EVALSHA`` of a script Redis already holds (the writer loads them on every node before its
    first flush). Sent as a raw command: redis-py's cluster pipeline blocks its ``evalsha`` method, but
    routes the command itself by its keys' slot."""
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)


class RedisStateWriter:
    """Buffers per-user hashes and writes them in guarded, pipelined batches."""

    def __init__(self, settings: RedisSettings, clock: Callable[[], float] = time.monotonic,
                 retry_deadline_s: float = FLUSH_RETRY_DEADLINE_S) -> None:
        self.settings = settings
        self.clock = clock
        self.retry_deadline_s = retry_deadline_s
        self.epoch = time.time_ns() // 1000
        """When this writer started (µs): a task attempt's writer outranks the attempts before it."""
        self.client = connect(settings, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)
        self.guarded_hset = self.client.register_script(GUARDED_HSET)
        self.apply_segment_change = self.client.register_script(APPLY_SEGMENT_CHANGE)
        self.apply_user_segment_change = self.client.register_script(APPLY_USER_SEGMENT_CHANGE)
        self.apply_segment_wide_change = self.client.register_script(APPLY_SEGMENT_WIDE_CHANGE)
        self.apply_recs = self.client.register_script(APPLY_RECS)
        self.scrub_user_changes = self.client.register_script(SCRUB_USER_CHANGES)
        self.replace_model = self.client.register_script(REPLACE_MODEL)
        self.scripts_loaded = False
        """Whether Redis holds the scripts: a flush then calls them by digest alone, with no ``SCRIPT
        EXISTS`` round trip first (what redis-py's pipelines do on every execute)."""
        self.pending: dict[str, tuple[int, list[Any]]] = {}
        self.rec_lists: dict[str, tuple[RecList, int]] = {}
        self.segment_changes: list[tuple[SegmentChange, bytes]] = []
        self.forgotten: set[str] = set()
        self.erased: set[str] = set()
        """Users whose entries leave the segment-change stream at the next flush (after their exits)."""
        self.new_users: set[str] = set()
        self.last_flush = clock()
        self.stats = WriteStats()

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
        mapping = {entry.id: entry.to_json() for entry in entries}

        def write() -> None:  # a fresh pipeline per attempt: a failed execute() empties it
            pipe = self.client.pipeline(transaction=False)
            if mapping:
                pipe.hset(rules_key(prefix), mapping=mapping)  # type: ignore[arg-type]
            pipe.hset(rule_instances_key(prefix), str(instance), str(fingerprint))
            pipe.execute()
        self._retrying(write)

    def stage_model_scores(self, user_key: str, version: int, fields: list[Any]) -> None:
        """The user's latest model scores, guarded by ``version`` (the scored feature vector's)."""
        self._stage(user_model_key(self.settings.key_prefix, user_key), version, lambda: fields)

    def stage_recs(self, recs: RecList, ttl_s: int) -> None:
        """Replace the user's recommendation list at the next flush (the newest ``seq`` of the batch)."""
        current = self.rec_lists.get(recs.user_key)
        if current is None or recs.seq > current[0].seq:
            self.rec_lists[recs.user_key] = (recs, ttl_s)
        prefix = self.settings.key_prefix
        self.forgotten.difference_update({user_recs_key(prefix, recs.user_key),
                                          user_recs_info_key(prefix, recs.user_key)})

    def stage_forget(self, user_key: str) -> None:
        """Delete the user's hashes (retention passed); pending writes of the user are dropped.

        Staged segment changes still apply first: the exits remove the user from the member sets.
        """
        prefix = self.settings.key_prefix
        self._forget([user_profile_key(prefix, user_key), user_features_key(prefix, user_key),
                      user_segments_key(prefix, user_key), user_model_key(prefix, user_key)])

    def stage_erase(self, user_key: str) -> None:
        """Forget the user as :meth:`stage_forget` does, and remove their entries from the change stream."""
        self.stage_forget(user_key)
        self.erased.add(user_key)
        self.new_users.discard(user_key)

    def stage_forget_recs(self, user_key: str) -> None:
        """Delete the user's recommendation list (written by the recommender, so forgotten there)."""
        self.rec_lists.pop(user_key, None)
        prefix = self.settings.key_prefix
        self._forget([user_recs_key(prefix, user_key), user_recs_info_key(prefix, user_key)])

    def _forget(self, keys: list[str]) -> None:
        for key in keys:
            self.pending.pop(key, None)
        self.forgotten.update(keys)

    def write_model(self, snapshot: ModelSnapshot, quality: dict[str, float]) -> None:
        """Publish a new model snapshot's summary and cluster descriptions (rare: written at once)."""
        prefix = self.settings.key_prefix
        summary: list[Any] = []
        for field, value in {"version": snapshot.version, "lineage": snapshot.lineage, "ts": snapshot.ts,
                             "cause": snapshot.cause, **quality}.items():
            summary += [field, value]
        clusters: list[Any] = []
        for description in snapshot.clusters:
            clusters += [str(description.cluster),
                         json.dumps({"description": description.text, "share": round(description.share, 4)})]
        self._retrying(lambda: self.replace_model(keys=[models_current_key(prefix), models_clusters_key(prefix)],
                                                  args=[len(summary), *summary, *clusters]))

    def write_model_instance(self, instance: int, snapshot: ModelSnapshot) -> None:
        """Which snapshot this scoring instance uses (all equal once a snapshot reached every instance)."""
        self._retrying(lambda: self.client.hset(models_instances_key(self.settings.key_prefix), str(instance),
                                                f"{snapshot.lineage}:{snapshot.version}"))

    def write_drift(self, drift: DriftEvent) -> None:
        self._retrying(lambda: self.client.xadd(models_drift_key(self.settings.key_prefix), {"drift": drift.to_json()},
                                                maxlen=self.settings.changes_stream_maxlen, approximate=True))

    def write_experiment_metrics(self, experiment_id: str, record: bytes) -> None:
        """Replace the experiment's latest metrics record (what the dashboard and the report read)."""
        self._retrying(lambda: self.client.set(experiment_metrics_key(self.settings.key_prefix, experiment_id),
                                               record))

    def empty(self) -> bool:
        """Whether nothing waits for the next flush."""
        return not (self.pending or self.forgotten or self.segment_changes or self.rec_lists or self.erased)

    def due(self) -> bool:
        """Whether the buffer should be written now (size or age limit reached)."""
        if self.empty():
            return False
        age_ms = (self.clock() - self.last_flush) * 1000
        size = len(self.pending) + len(self.segment_changes) + len(self.rec_lists)
        return size >= self.settings.flush_max_ops or age_ms >= self.settings.flush_interval_ms

    def flush(self) -> None:
        """Write the buffer, waiting out a Redis outage for up to ``retry_deadline_s``.

        While Redis is down the task blocks here: Flink backpressures the sources and nothing is
        replayed or duplicated. A longer outage fails the task and Flink's restart strategy takes
        over (restore from the last checkpoint). Re-sending a half-applied batch is safe: every
        write is version-guarded or idempotent.
        """
        self._retrying(self._flush_once)

    def _retrying(self, write: Callable[[], Any]) -> None:
        """Run ``write`` until it succeeds, backing off through a Redis outage of up to ``retry_deadline_s``."""
        delay, deadline = RETRY_FIRST_DELAY_S, time.monotonic() + self.retry_deadline_s
        while True:
            try:
                write()
                return
            except redis.RedisError as exc:
                transient = is_transient(exc)
                out_of_time = time.monotonic() + delay > deadline
                if not transient or out_of_time:
                    self.stats.failures += 1
                if not transient:
                    raise
                if out_of_time:
                    raise RedisUnavailable(f"Redis at {redis_address(self.settings.url)} refused writes for "
                                           f"{self.retry_deadline_s:g} s: {refusal(exc)}") from exc
                log.warning("Redis write failed (%r); retrying in %.1f s", exc, delay)
                self.stats.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY_S)

    def _flush_once(self) -> None:
        self.last_flush = self.clock()
        if self.empty():
            return
        started = time.monotonic()
        if not self.scripts_loaded:
            for script in (self.guarded_hset, self.apply_segment_change, self.apply_user_segment_change,
                           self.apply_segment_wide_change, self.apply_recs, self.scrub_user_changes):
                self.client.script_load(script.script)
            self.scripts_loaded = True
        try:
            self._write_buffer()
        except redis.RedisError:  # Redis may have restarted or flushed its scripts: load them before a retry
            self.scripts_loaded = False
            raise
        self.stats.flushed(started)
        self.pending.clear()
        self.forgotten.clear()
        self.erased.clear()
        self.new_users.clear()
        self.segment_changes.clear()
        self.rec_lists.clear()

    def _write_buffer(self) -> None:
        """One pipeline of everything buffered; in a cluster, the segment-wide part of the changes the
        first pipeline applied follows in a second one."""
        pipe = self.client.pipeline(transaction=False)
        self._segment_changes(pipe)
        if not self.settings.cluster:
            self._scrub_erased(pipe)
        for key in self.forgotten:  # one key per command: a cluster routes each to its own slot
            pipe.unlink(key)
        ttl_s = self.settings.user_ttl_s
        for key, (version, fields) in self.pending.items():
            run_script(pipe, self.guarded_hset, [key], [ttl_s, version, *fields])
        self._rec_lists(pipe)
        if self.new_users:
            pipe.pfadd(users_hll_key(self.settings.key_prefix), *self.new_users)
        replies = pipe.execute()
        if self.settings.cluster:
            pipe = self.client.pipeline(transaction=False)
            for (change, record), reply in zip(self.segment_changes, replies, strict=False):
                if reply:
                    run_script(pipe, self.apply_segment_wide_change, self._segment_wide_keys(change),
                               self._segment_change_args(change, record))
            self._scrub_erased(pipe)  # after the erased users' exits reached the stream
            pipe.execute()

    def _scrub_erased(self, pipe: Any) -> None:
        if self.erased:
            run_script(pipe, self.scrub_user_changes, [segment_changes_key(self.settings.key_prefix)],
                       sorted(self.erased))

    def _rec_lists(self, pipe: Any) -> None:
        prefix = self.settings.key_prefix
        for user, (recs, ttl_s) in self.rec_lists.items():
            members: list[Any] = []
            for candidate in recs.ranking.candidates:
                members += [candidate.score, candidate.item_id]
            items = json.dumps(recs.items(), separators=(",", ":"))
            run_script(pipe, self.apply_recs, [user_recs_key(prefix, user), user_recs_info_key(prefix, user)],
                       [recs.seq, ttl_s, recs.ts, recs.ranking.suppressed, items, *members])

    def _segment_changes(self, pipe: Any) -> None:
        """Queue the staged changes first, in order (their replies lead the pipeline's)."""
        for change, record in self.segment_changes:
            user_keys = [user_segments_key(self.settings.key_prefix, change.user_key)]
            if self.settings.cluster:
                run_script(pipe, self.apply_user_segment_change, user_keys, self._segment_change_args(change, record))
            else:
                run_script(pipe, self.apply_segment_change, user_keys + self._segment_wide_keys(change),
                           self._segment_change_args(change, record))

    def _segment_wide_keys(self, change: SegmentChange) -> list[str]:
        prefix = self.settings.key_prefix
        return [segment_members_key(prefix, change.segment), segment_counts_key(prefix), segment_changes_key(prefix)]

    def _segment_change_args(self, change: SegmentChange, record: bytes) -> list[Any]:
        settings = self.settings
        return [change.seq, change.action, change.segment, change.event_time, settings.user_ttl_s, record,
                settings.changes_stream_maxlen, change.user_key, self.epoch]

    def close(self) -> None:
        self.flush()
        self.client.close()


@dataclass(frozen=True)
class RedisStateWriterFactory:
    """Picklable factory: each parallel operator instance opens its own connection in ``open()``."""

    settings: RedisSettings

    def __call__(self) -> UserStateSink:
        return RedisStateWriter(self.settings)


class DeadLetterCounter:
    """Counts dead letters per reason for the dashboard (``deadletters:counts``), added to Redis with
    ``HINCRBY`` at most every ``redis.flush_interval_ms``.

    At least once: a replay after a failure counts its dead letters again (the topic is the exact
    record). Redis errors never fail the job for a summary: the counts wait for the next flush.
    """

    def __init__(self, settings: RedisSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.client = connect(settings, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)
        self.counts: dict[str, int] = {}
        self.last_flush = clock()

    def count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if (self.clock() - self.last_flush) * 1000 >= self.settings.flush_interval_ms:
            self.flush()

    def flush(self) -> None:
        self.last_flush = self.clock()
        if not self.counts:
            return
        pipe = self.client.pipeline(transaction=False)
        key = deadletter_counts_key(self.settings.key_prefix)
        for reason, count in self.counts.items():
            pipe.hincrby(key, reason, count)
        try:
            pipe.execute()
        except redis.RedisError as exc:  # a summary: whatever Redis says, the job goes on
            log.warning("dead-letter counts not written (%r); kept for the next flush", exc)
            return
        self.counts = {}

    def close(self) -> None:
        self.flush()
        self.client.close()


@dataclass(frozen=True)
class DeadLetterCounterFactory:
    """Picklable factory of a :class:`DeadLetterCounter` per parse instance."""

    settings: RedisSettings

    def __call__(self) -> DeadLetterCounter:
        return DeadLetterCounter(self.settings)

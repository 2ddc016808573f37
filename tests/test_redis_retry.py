"""A Redis outage is waited out: the writer's flush retries with backoff up to a deadline, the shared
R/F/M population skips a sync. The end-to-end outage (redis-server stopped for 20 s under a running
job) is in tests/test_faults.py."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
import redis

from connectors import redis_writer
from connectors.population import SharedPopulation
from connectors.redis_keys import rule_instances_key, user_segments_key
from connectors.redis_writer import RETRY_MAX_DELAY_S, RedisStateWriter
from operators.features.rfm import RFM_METRICS
from operators.rules.engine import SegmentChange
from personalize.settings import RedisSettings, Settings
from tests.conftest import free_ports


def unreachable() -> RedisSettings:
    """Settings pointing at a port nothing listens on: every command fails at once."""
    return RedisSettings(url=f"redis://127.0.0.1:{free_ports(1)[0]}/0", key_prefix="t:", user_ttl_s=60,
                         flush_max_ops=10, flush_interval_ms=100, changes_stream_maxlen=100)


def test_a_flush_retries_transient_errors_with_growing_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RedisStateWriter(unreachable())
    failures = [redis.ConnectionError("down"), redis.TimeoutError("slow"), redis.exceptions.NoScriptError("gone"),
                *[redis.ConnectionError("down")] * 5]
    calls: list[int] = []

    def flush_once() -> None:
        calls.append(1)
        if failures:
            raise failures.pop(0)

    delays: list[float] = []
    monkeypatch.setattr(writer, "_flush_once", flush_once)
    monkeypatch.setattr(redis_writer.time, "sleep", delays.append)
    writer.flush()
    assert len(calls) == 9
    assert delays == sorted(delays) and delays[0] == redis_writer.RETRY_FIRST_DELAY_S
    assert max(delays) == RETRY_MAX_DELAY_S


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RedisStateWriter(unreachable())

    def flush_once() -> None:
        raise redis.ResponseError("WRONGTYPE")  # a bug, not an outage: fail the task at once

    monkeypatch.setattr(writer, "_flush_once", flush_once)
    with pytest.raises(redis.ResponseError):
        writer.flush()


def test_an_outage_longer_than_the_deadline_fails_the_flush() -> None:
    writer = RedisStateWriter(unreachable(), retry_deadline_s=1.0)
    writer.pending["t:user:u1:profile"] = (1, ["total", 1])
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        writer.flush()
    assert 0.5 < time.monotonic() - started < 2.0
    assert writer.pending  # nothing is dropped: a restart restores the state and replays


def test_immediate_writes_retry_with_a_fresh_pipeline_each_attempt(stack_settings: Settings,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Rules, model summaries and drift events are written at once, through the same retry loop; a
    failed pipeline execute() empties the pipeline, so each attempt must build its commands anew."""
    writer = RedisStateWriter(replace(stack_settings.redis, key_prefix=f"t{uuid.uuid4().hex[:8]}:"))
    real_pipeline, attempts = writer.client.pipeline, []

    def failing_once(transaction: bool = True) -> Any:
        pipe = real_pipeline(transaction=transaction)
        if not attempts:
            monkeypatch.setattr(pipe, "execute", lambda: (_ for _ in ()).throw(redis.ConnectionError("down")))
        attempts.append(1)
        return pipe

    monkeypatch.setattr(writer.client, "pipeline", failing_once)
    monkeypatch.setattr(redis_writer.time, "sleep", lambda _: None)
    writer.write_rules(3, 42, [])
    assert len(attempts) == 2
    assert writer.client.hget(rule_instances_key(writer.settings.key_prefix), "3") == b"42"


def test_a_population_sync_is_skipped_while_redis_is_unreachable() -> None:
    settings = unreachable()
    population = SharedPopulation(redis.Redis.from_url(settings.url), settings.key_prefix, RFM_METRICS, 0, 1000)
    population.sync()  # no exception: scoring goes on against the last view


def test_a_restarted_writer_replaces_what_an_aborted_attempt_wrote(stack_settings: Settings) -> None:
    """After a restore the replay may number a user's changes differently from the aborted attempt
    (model-driven changes depend on when snapshots arrived): the later writer's changes apply even at a
    seq already stored, and the aborted attempt's writer can no longer overwrite them."""
    settings = replace(stack_settings.redis, key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    aborted, replay = RedisStateWriter(settings), RedisStateWriter(settings)
    replay.epoch = aborted.epoch + 1

    def change(writer: RedisStateWriter, seq: int, segment: str, action: str) -> None:
        writer.stage_segment_change(SegmentChange("u1", seq, segment, action, {}, (), (), 1_767_225_600_000 + seq),
                                    b"{}")
        writer.flush()

    change(aborted, 1, "cluster:4", "enter")
    change(aborted, 2, "new_visitor", "enter")
    change(replay, 1, "new_visitor", "enter")  # the replay never entered cluster:4
    change(replay, 2, "new_visitor", "exit")
    change(aborted, 3, "dormant", "enter")  # a late flush of the aborted attempt changes nothing
    stored = replay.client.hgetall(user_segments_key(settings.key_prefix, "u1"))
    assert stored[b"_seq"] == b"2" and b"new_visitor" not in stored and b"dormant" not in stored

"""A Redis outage is waited out: the writer's flush retries with backoff up to a deadline, the shared
R/F/M population skips a sync. The end-to-end outage (redis-server stopped for 20 s under a running
job) is in tests/test_faults.py."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors import redis_writer
from connectors.population import SharedPopulation
from connectors.redis_keys import rule_instances_key, user_segments_key
from connectors.redis_writer import (
    RETRY_MAX_DELAY_S,
    DeadLetterCounter,
    RedisStateWriter,
    RedisUnavailable,
    redis_address,
)
from operators.features.rfm import RFM_METRICS
from operators.rules.engine import SegmentChange
from personalize import bootstrap
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
    assert len(calls) == 9 and writer.stats.retries == 8 and writer.stats.failures == 0
    assert delays == sorted(delays) and delays[0] == redis_writer.RETRY_FIRST_DELAY_S
    assert max(delays) == RETRY_MAX_DELAY_S


def test_other_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    writer = RedisStateWriter(unreachable())

    def flush_once() -> None:
        raise redis.ResponseError("WRONGTYPE")  # a bug, not an outage: fail the task at once

    monkeypatch.setattr(writer, "_flush_once", flush_once)
    with pytest.raises(redis.ResponseError):
        writer.flush()
    assert (writer.stats.retries, writer.stats.failures) == (0, 1)


def test_an_outage_longer_than_the_deadline_fails_the_flush() -> None:
    settings = unreachable()
    settings = replace(settings, url=settings.url.replace("redis://", "redis://:hunter2@"))
    writer = RedisStateWriter(settings, retry_deadline_s=1.0)
    writer.pending["t:user:u1:profile"] = (1, ["total", 1])
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as failed:
        writer.flush()
    assert 0.5 < time.monotonic() - started < 2.0
    assert writer.pending  # nothing is dropped: a restart restores the state and replays
    message = str(failed.value)  # what the CLI shows when the job fails (one line, no password)
    assert message.startswith(f"Redis at {redis_address(settings.url)} refused writes for 1 s: ConnectionError")
    assert "hunter2" not in message and "\n" not in message


@pytest.fixture
def full_redis(tmp_path: Path) -> Iterator[redis.Redis]:
    """A redis-server of our own (memory limits are server-wide), already over its ``maxmemory`` with
    the ``noeviction`` policy: every write is refused with ``OOM command not allowed``."""
    port = free_ports(1)[0]
    server = subprocess.Popen([str(bootstrap.ensure_all().redis_server), "--bind", "127.0.0.1", "--port", str(port),
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        client.set("ballast", b"x" * 2_000_000)
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", "1mb")
        yield client
    finally:
        client.close()
        server.terminate()
        server.wait()


def test_a_full_redis_is_waited_out_like_an_outage(full_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """``OOM command not allowed`` once failed the task at once; now the flush waits, and goes on when
    the operator makes room."""
    port = full_redis.connection_pool.connection_kwargs["port"]
    writer = RedisStateWriter(replace(unreachable(), url=f"redis://127.0.0.1:{port}/0"))
    writer.pending["t:user:u1:profile"] = (1, ["total", 1])
    waits: list[float] = []

    def operator_makes_room(delay: float) -> None:
        waits.append(delay)
        if len(waits) == 2:
            full_redis.config_set("maxmemory", "0")

    monkeypatch.setattr(redis_writer.time, "sleep", operator_makes_room)
    writer.flush()
    assert len(waits) == 2 and full_redis.hget("t:user:u1:profile", "total") == b"1"


def test_a_full_redis_fails_the_flush_after_the_deadline_in_one_line(full_redis: redis.Redis) -> None:
    port = full_redis.connection_pool.connection_kwargs["port"]
    writer = RedisStateWriter(replace(unreachable(), url=f"redis://127.0.0.1:{port}/0"), retry_deadline_s=0.5)
    writer.pending["t:user:u1:profile"] = (1, ["total", 1])
    with pytest.raises(RedisUnavailable, match=rf"^Redis at 127.0.0.1:{port}/0 refused writes for 0.5 s: "
                                               r"OOM command not allowed when used memory > 'maxmemory'.$"):
        writer.flush()


def test_dead_letter_counts_never_fail_the_job_whatever_redis_answers(full_redis: redis.Redis) -> None:
    """The counter's HINCRBY once failed the validation operator on a full Redis."""
    port = full_redis.connection_pool.connection_kwargs["port"]
    counter = DeadLetterCounter(replace(unreachable(), url=f"redis://127.0.0.1:{port}/0"))
    counter.count("invalid_json")
    counter.flush()
    assert counter.counts == {"invalid_json": 1}  # kept for the next flush
    full_redis.config_set("maxmemory", "0")
    counter.flush()
    assert counter.counts == {} and full_redis.hget("t:deadletters:counts", "invalid_json") == b"1"


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


def test_a_flush_after_redis_dropped_its_scripts_loads_them_again(stack_settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer calls its scripts by digest without asking Redis first; a Redis that lost them (a
    restart, ``SCRIPT FLUSH``) answers NOSCRIPT, and the retry loads them again and writes."""
    settings = replace(stack_settings.redis, key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    writer = RedisStateWriter(settings)
    monkeypatch.setattr(redis_writer.time, "sleep", lambda _: None)
    change = SegmentChange("u1", 1, "new_visitor", "enter", {}, (), (), 1_767_225_600_000)
    writer.stage_segment_change(change, b"{}")
    writer.flush()
    writer.client.script_flush()
    writer.stage_segment_change(replace(change, seq=2, segment="dormant"), b"{}")
    writer.flush()
    assert (writer.stats.flushes, writer.stats.retries) == (2, 1)
    stored = writer.client.hgetall(user_segments_key(settings.key_prefix, "u1"))
    assert stored[b"_seq"] == b"2" and b"new_visitor" in stored and b"dormant" in stored

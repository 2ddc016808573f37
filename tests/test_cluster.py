"""The job on a real standalone Flink cluster: submit, savepoint, rescale on resume, same results."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from kafka import KafkaProducer

from personalize import cluster, stack
from personalize.generator import EventGenerator
from personalize.publish import publish
from personalize.settings import Settings
from tests.conftest import free_ports, isolated

pytestmark = pytest.mark.integration

#: Redis keys whose values depend on processing time or on the instance layout, not on the input.
UNSTABLE = (":population:", ":rules:instances", ":segments:changes")


@pytest.fixture(scope="module")
def cluster_settings(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    rest_port, rpc_port = free_ports(2)
    run_dir = tmp_path_factory.mktemp("cluster")
    settings = replace(stack_settings, cluster=replace(stack_settings.cluster, run_dir=str(run_dir),
                                                       rest_port=rest_port, rpc_port=rpc_port))
    cluster.up(settings.cluster)
    yield settings
    cluster.down(settings.cluster)


def job_config(settings: Settings, path: Path) -> Path:
    """The job reads its settings itself: write this test's (isolated) ones as an override file."""
    topics = settings.kafka.topics
    overrides = {
        "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers, "group_id": settings.kafka.group_id,
                  "transactional_id_prefix": settings.kafka.transactional_id_prefix,
                  "topics": {name: {"name": getattr(topics, name).name, "partitions": getattr(topics, name).partitions}
                             for name in topics.__dataclass_fields__}},
        "redis": {"url": settings.redis.url, "key_prefix": settings.redis.key_prefix},
        "job": {"parallelism": settings.job.parallelism},
    }
    path.write_text(yaml.safe_dump(overrides))
    return path


def redis_state(settings: Settings) -> dict[str, Any]:
    """Every key of the run's prefix with its value (hashes, sorted sets), minus the unstable ones."""
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    prefix = settings.redis.key_prefix
    state: dict[str, Any] = {}
    for key in client.scan_iter(f"{prefix}*", count=1000):
        if any(part in key for part in UNSTABLE):
            continue
        kind = client.type(key)
        name = key.removeprefix(prefix)
        if kind == "hash":
            state[name] = client.hgetall(key)
        elif kind == "zset":
            state[name] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "string":  # the HyperLogLog of users
            state[name] = client.pfcount(key)
    return state


def seeded_run(settings: Settings, events: int) -> tuple[Settings, dict[str, dict[int, int]]]:
    run = isolated(settings)
    stack.up(run)
    generator = EventGenerator(replace(run.generator, events=events, users=150))
    return run, publish(generator.records(), run.kafka, total=events).end_offsets


def run_bounded(settings: Settings, ends: dict[str, dict[int, int]], tmp_path: Path, name: str,
                parallelism: int) -> str:
    ends_file = tmp_path / f"{name}-ends.json"
    ends_file.write_text(json.dumps(ends))
    config = job_config(replace(settings, job=replace(settings.job, parallelism=parallelism)),
                        tmp_path / f"{name}.yaml")
    return cluster.submit(settings, ["--config", str(config), "--start", "earliest", "--end-offsets", str(ends_file)])


def test_a_bounded_run_finishes_and_shows_in_the_rest_api(cluster_settings: Settings, tmp_path: Path) -> None:
    run, ends = seeded_run(cluster_settings, 3000)
    job_id = run_bounded(run, ends, tmp_path, "bounded", parallelism=2)
    assert cluster.wait_for_state(run.cluster, job_id, cluster.TERMINAL_STATES) == "FINISHED"
    jobs = cluster.status(run.cluster)["jobs"]
    assert {"id": job_id, "name": run.job.name, "state": "FINISHED"} in jobs
    state = redis_state(run)
    profiles = [value for key, value in state.items() if key.endswith(":profile")]
    assert len(profiles) > 100 and sum(int(p["total"]) for p in profiles) > 2500


def send_sentinels(settings: Settings, ts: int) -> None:
    """One far-future event on every input partition: every partition's watermark then passes all the
    real events' timers, so runs that end at different moments still end at the same event time."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    for topic in settings.kafka.topics.inputs():
        for partition in range(topic.partitions):
            event = {"event_id": f"sentinel-{topic.name}-{partition}", "user_id": f"sentinel-{partition}",
                     "type": "page_view", "ts": ts}
            producer.send(topic.name, value=json.dumps(event).encode(), partition=partition, timestamp_ms=ts)
    producer.flush()
    producer.close()


def start_unbounded(settings: Settings, tmp_path: Path, name: str, parallelism: int,
                    savepoint: str | None = None) -> str:
    config = job_config(replace(settings, job=replace(settings.job, parallelism=parallelism)),
                        tmp_path / f"{name}.yaml")
    job_id = cluster.submit(settings, ["--config", str(config), "--start", "earliest"], savepoint=savepoint)
    cluster.wait_for_state(settings.cluster, job_id, {"RUNNING"})
    return job_id


def settle(settings: Settings, sentinels: bool, timeout_s: float = 240, quiet_s: float = 20) -> None:
    """Until the sentinels (if sent) were counted and Redis then stops changing for ``quiet_s``
    (longer than the idleness timeout, so the last watermarks and their timers have passed too)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    quiet_since = time.monotonic()
    sentinel_keys = {f"user:sentinel-{p}:profile" for p in range(settings.kafka.topics.behavior.partitions)}
    while time.monotonic() < deadline:
        state = redis_state(settings)
        started = any(key.endswith(":profile") for key in state)
        if state != last or not started or (sentinels and not sentinel_keys <= state.keys()):
            last, quiet_since = state, time.monotonic()
        elif time.monotonic() - quiet_since > quiet_s:
            return
        time.sleep(2)
    raise AssertionError("Redis did not settle")


def test_stop_with_savepoint_and_resume_at_higher_parallelism_gives_the_same_results(
        cluster_settings: Settings, tmp_path: Path) -> None:
    events = 4000
    generator = EventGenerator(replace(cluster_settings.generator, events=events, users=150))
    records = list(generator.records())
    sentinel_ts = max(record.ts for record in records) + 30 * 86_400_000

    reference = isolated(cluster_settings)
    stack.up(reference)
    publish(iter(records), reference.kafka, total=events)
    send_sentinels(reference, sentinel_ts)
    job_id = start_unbounded(reference, tmp_path, "reference", parallelism=2)
    settle(reference, sentinels=True)
    cluster.cancel(reference.cluster, job_id)
    expected = redis_state(reference)

    rescaled = isolated(cluster_settings)
    stack.up(rescaled)
    publish(iter(records[: events // 2]), rescaled.kafka, total=events // 2)
    job_id = start_unbounded(rescaled, tmp_path, "parallelism-1", parallelism=1)
    settle(rescaled, sentinels=False)
    savepoint = cluster.savepoint(rescaled.cluster, job_id, stop=True)
    assert Path(savepoint.removeprefix("file:")).exists()
    publish(iter(records[events // 2:]), rescaled.kafka, total=events - events // 2)
    send_sentinels(rescaled, sentinel_ts)
    job_id = start_unbounded(rescaled, tmp_path, "parallelism-2", parallelism=2, savepoint=savepoint)
    settle(rescaled, sentinels=True)
    cluster.cancel(rescaled.cluster, job_id)
    actual = redis_state(rescaled)
    assert sorted(set(actual) ^ set(expected)) == []
    compared = [key for key in expected if comparable(key)]
    assert len(compared) > 300
    assert sorted(key for key in compared if strip(actual[key]) != strip(expected[key])) == []


def comparable(key: str) -> bool:
    """Keys whose values depend on the input alone. Feature hashes are not compared yet: R/F/M scores
    are relative to a population shared between instances with a delay, and a session timer can be
    lost across stop-with-savepoint (issue 8's note)."""
    return not key.endswith(":features") and key not in ("segment:high_value:members", "segments:counts")


def strip(value: Any) -> Any:
    """A user's segments without ``high_value`` (it reads R/F/M scores) nor the change counter."""
    if isinstance(value, dict) and "_seq" in value:
        return {k: v for k, v in value.items() if k not in ("_seq", "high_value")}
    return value

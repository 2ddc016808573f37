"""Shared fixtures: one local stack (real broker and Redis) per test session, Flink clusters per module;
all on free ports."""

from __future__ import annotations

import io
import random
import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from personalize import cluster, stack
from personalize import settings as settings_module
from personalize.demo import run_demo
from personalize.settings import Settings, Topics


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports (a cluster's Prometheus endpoints take a range)."""
    for _ in range(100):
        first = random.randrange(20_000, 60_000)
        sockets = [socket.socket() for _ in range(count)]
        try:
            for offset, sock in enumerate(sockets):
                sock.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports found")


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a stack started for this session (stopped at the end)."""
    kafka_port, controller_port, redis_port = free_ports(3)
    loaded = settings_module.load(environ={
        "PERSONALIZE__STACK__RUN_DIR": str(tmp_path_factory.mktemp("stack")),
        "PERSONALIZE__STACK__KAFKA_PORT": str(kafka_port),
        "PERSONALIZE__STACK__KAFKA_CONTROLLER_PORT": str(controller_port),
        "PERSONALIZE__STACK__REDIS_PORT": str(redis_port),
    })
    info = stack.up(loaded)
    yield stack.settings_for(loaded, info)
    stack.down(loaded)


def isolated(settings: Settings) -> Settings:
    """Settings with run-unique topic names and Redis prefix, so tests sharing a stack never mix data."""
    suffix = uuid.uuid4().hex[:8]
    topics = settings.kafka.topics
    renamed = Topics(**{
        field: replace(getattr(topics, field), name=f"{getattr(topics, field).name}.{suffix}")
        for field in topics.__dataclass_fields__
    })
    return replace(
        settings,
        kafka=replace(settings.kafka, topics=renamed, group_id=f"test-{suffix}",
                      transactional_id_prefix=f"test-{suffix}"),
        redis=replace(settings.redis, key_prefix=f"t{suffix}:"),
    )


@pytest.fixture
def fresh_settings(stack_settings: Settings) -> Settings:
    """Per-test topics (created on the session's stack) and Redis namespace."""
    settings = isolated(stack_settings)
    stack.up(settings)
    return settings


@pytest.fixture(scope="module")
def cluster_settings(stack_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A standalone Flink cluster (JobManager + 2 TaskManagers) on free ports, one per test module:
    modules that break it on purpose (tests/test_faults.py) leave nothing behind for the others."""
    rest_port, rpc_port = free_ports(2)
    run_dir = tmp_path_factory.mktemp("cluster")
    settings = replace(stack_settings, cluster=replace(stack_settings.cluster, run_dir=str(run_dir),
                                                       rest_port=rest_port, rpc_port=rpc_port,
                                                       metrics_port=free_port_range(cluster.METRICS_PORTS)))
    cluster.up(settings.cluster)
    yield settings
    cluster.down(settings.cluster)


@pytest.fixture(scope="session")
def demo_settings(stack_settings: Settings) -> Settings:
    """The demo pipeline on a small input, once per session on the session's stack (its own topics and
    Redis prefix): what a user sees after ``make demo``, for the tests that read its outputs."""
    settings = isolated(stack_settings)
    # Few events, so a model snapshot early enough for the model panel to have one.
    settings = replace(settings, generator=replace(settings.generator, events=2000, users=100, seed=11),
                       models=replace(settings.models, snapshot_every=200))
    run_demo(settings, out=io.StringIO())
    return settings

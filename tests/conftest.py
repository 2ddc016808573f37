"""Shared fixtures: one local stack (real broker and Redis) per test session, Flink clusters per module;
all on free ports."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest

from personalize import cluster, stack
from personalize import settings as settings_module
from personalize.settings import Settings, Topic, Topics


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings pointing at a stack started for this session (stopped at the end)."""
    kafka_port, redis_port = free_ports(2)
    loaded = settings_module.load(environ={
        "PERSONALIZE__STACK__RUN_DIR": str(tmp_path_factory.mktemp("stack")),
        "PERSONALIZE__STACK__KAFKA_PORT": str(kafka_port),
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
        field: Topic(name=f"{getattr(topics, field).name}.{suffix}", partitions=getattr(topics, field).partitions)
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
                                                       rest_port=rest_port, rpc_port=rpc_port))
    cluster.up(settings.cluster)
    yield settings
    cluster.down(settings.cluster)

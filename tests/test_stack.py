"""The local stack really starts, is reused, refuses ports it does not own, stops only its own processes."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError

from personalize import bootstrap, settings, stack
from personalize.kafka_tools import read_topic
from personalize.settings import Settings
from tests.conftest import free_ports

pytestmark = pytest.mark.integration


def _environ(run_dir: Path, kafka_port: int, redis_port: int, controller_port: int, *,
             urls: bool = True) -> dict[str, str]:
    environ = {
        "PERSONALIZE__STACK__RUN_DIR": str(run_dir),
        "PERSONALIZE__STACK__KAFKA_PORT": str(kafka_port),
        "PERSONALIZE__STACK__KAFKA_CONTROLLER_PORT": str(controller_port),
        "PERSONALIZE__STACK__REDIS_PORT": str(redis_port),
        "PERSONALIZE__STACK__START_TIMEOUT_S": "60",
    }
    if urls:
        environ["PERSONALIZE__KAFKA__BOOTSTRAP_SERVERS"] = f"127.0.0.1:{kafka_port}"
        environ["PERSONALIZE__REDIS__URL"] = f"redis://127.0.0.1:{redis_port}/0"
    return environ


@pytest.fixture
def stack_settings(tmp_path: Path) -> Iterator[Settings]:
    kafka_port, redis_port, controller_port = free_ports(3)
    loaded = settings.load(environ=_environ(tmp_path / "stack", kafka_port, redis_port, controller_port))
    yield loaded
    stack.down(loaded)


def _state(run_dir: Path) -> dict[str, dict[str, object]]:
    components: dict[str, dict[str, object]] = json.loads((run_dir / "state.json").read_text())["components"]
    return components


def test_up_creates_topics_and_a_second_up_reuses_the_stack(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)

    assert info.started == ["kafka", "redis"]
    assert stack.settings_for(stack_settings, info) == stack_settings
    admin = KafkaAdminClient(bootstrap_servers=info.bootstrap_servers)
    try:
        described = admin.describe_topics([topic.name for topic in stack_settings.kafka.topics.all()])
    finally:
        admin.close()
    assert {t["name"]: len(t["partitions"]) for t in described} == {
        topic.name: topic.partitions for topic in stack_settings.kafka.topics.all()
    }
    assert redis.Redis.from_url(info.redis_url).ping()

    pids = {name: record["pid"] for name, record in _state(info.run_dir).items()}
    # Same stack ports but settings that never mention the URLs: reused, and the URLs follow the ports.
    only_ports = settings.load(environ=_environ(info.run_dir, stack_settings.stack.kafka_port,
                                                stack_settings.stack.redis_port,
                                                stack_settings.stack.kafka_controller_port, urls=False))
    again = stack.up(only_ports)
    assert again.started == []
    assert (again.bootstrap_servers, again.redis_url) == (info.bootstrap_servers, info.redis_url)
    assert {name: record["pid"] for name, record in _state(info.run_dir).items()} == pids
    status = stack.status(stack_settings)
    assert status["kafka"]["status"] == status["redis"]["status"] == "up"
    assert status["kafka"]["topics"]["control.rules"] == 1
    assert set(info.logs) == {"kafka", "redis"} and Path(info.logs["kafka"]).exists()


def test_topics_are_created_with_their_configs_and_the_local_overrides(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)
    admin = KafkaAdminClient(bootstrap_servers=info.bootstrap_servers)
    try:
        profiles, rules = stack_settings.kafka.topics.profiles.name, stack_settings.kafka.topics.rules.name
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)
                                            for name in (profiles, rules)])["topic"]
    finally:
        admin.close()
    configs = {name: {key: entry["value"] for key, entry in entries.items()} for name, entries in described.items()}
    assert configs[profiles]["cleanup.policy"] == "compact,delete"  # a latest-per-user view (docs/privacy.md)
    assert configs[profiles]["retention.ms"] == configs[rules]["retention.ms"] == "-1"  # history replays
    assert configs[rules]["segment.ms"] == stack_settings.stack.topic_config["segment.ms"]


@pytest.mark.parametrize("role", ["behavior", "rules", "models", "handover"])
def test_input_topics_refuse_a_far_future_record_timestamp(stack_settings: Settings, role: str) -> None:
    """A forged Kafka timestamp would move event time for everyone (docs/security.md): the topic refuses it."""
    info = stack.up(stack_settings)
    producer = KafkaProducer(bootstrap_servers=info.bootstrap_servers, acks="all", retries=0)
    try:
        with pytest.raises(KafkaError, match="InvalidTimestamp"):
            producer.send(getattr(stack_settings.kafka.topics, role).name, b"{}",
                          timestamp_ms=4_102_444_800_000).get(timeout=30)  # 2100-01-01
    finally:
        producer.close()


def test_the_broker_keeps_its_data_across_a_restart(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)
    topic = stack_settings.kafka.topics.rules.name
    producer = KafkaProducer(bootstrap_servers=info.bootstrap_servers, acks="all")
    producer.send(topic, b"kept").get(timeout=30)
    producer.close()
    stack.down(stack_settings)

    stack.up(stack_settings)

    assert [record.value for record in read_topic(info.bootstrap_servers, topic, 1, idle_timeout_s=1)] == [b"kept"]
    stack.down(stack_settings, wipe=True)
    stack.up(stack_settings)
    assert list(read_topic(info.bootstrap_servers, topic, 1, idle_timeout_s=1)) == []


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """One CI run failed to format the broker's storage: a random id starting with "-" (1 in 64) was
    taken by the storage tool for an option ("--cluster-id: expected one argument")."""
    ids = [stack.kafka_cluster_id() for _ in range(5000)]
    assert not any(cluster_id.startswith("-") for cluster_id in ids)
    assert all(len(cluster_id) == 22 and base64.urlsafe_b64decode(cluster_id + "==") for cluster_id in ids)


def test_a_corrupt_storage_dir_is_refused_in_one_line(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)
    stack.down(stack_settings)
    meta = info.run_dir / "kafka" / "data" / "meta.properties"
    meta.write_text("garbage\n")

    with pytest.raises(stack.StackError) as caught:
        stack.up(stack_settings)

    message = str(caught.value)
    assert "\n" not in message and "storage is corrupt" in message and "stack down --wipe" in message
    assert stack.status(stack_settings)["redis"]["status"] == "down"  # nothing was half-started


def test_missing_java_is_refused_in_one_line(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap.ensure_all()  # the jars are there: only java is missing
    monkeypatch.setenv("PATH", "/nonexistent")

    with pytest.raises(stack.StackError) as caught:
        stack.up(stack_settings)

    assert "Java 17+ is required" in str(caught.value) and "\n" not in str(caught.value)


def test_a_crashed_component_is_restarted_alone(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)
    kafka_pid = int(str(_state(info.run_dir)["kafka"]["pid"]))
    os.kill(kafka_pid, signal.SIGKILL)
    os.waitpid(kafka_pid, 0)  # our child: reap it, as its parent would

    again = stack.up(stack_settings)

    assert again.started == ["kafka"]
    assert stack.status(stack_settings)["kafka"]["topics"]["events.behavior"] == 4


@pytest.mark.parametrize("setting", ["kafka_port", "kafka_controller_port"])
def test_port_taken_by_another_process_is_refused_clearly(stack_settings: Settings, setting: str) -> None:
    port = getattr(stack_settings.stack, setting)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(stack.StackError) as caught:
            stack.up(stack_settings)

    message = str(caught.value)
    assert f"port {port}" in message
    assert f"stack.{setting}" in message
    assert f"PERSONALIZE__STACK__{setting.upper()}" in message
    run_dir = Path(stack_settings.stack.run_dir)
    assert not (run_dir / "state.json").exists()
    assert stack.status(stack_settings)["redis"]["status"] == "down"  # nothing was half-started


def test_down_stops_the_stack_and_status_reports_down(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)

    assert stack.down(stack_settings) == ["kafka", "redis"]

    assert not (info.run_dir / "state.json").exists()
    status = stack.status(stack_settings)
    assert (status["kafka"]["status"], status["redis"]["status"]) == ("down", "down")
    assert stack.down(stack_settings) == []


def test_down_never_signals_a_process_it_did_not_start(stack_settings: Settings) -> None:
    info = stack.up(stack_settings)
    state = json.loads((info.run_dir / "state.json").read_text())
    redis_pid = state["components"]["redis"]["pid"]
    impostor = subprocess.Popen(["sleep", "30"])
    state["components"]["redis"]["pid"] = impostor.pid  # as if the pid had been recycled
    (info.run_dir / "state.json").write_text(json.dumps(state))
    try:
        assert stack.down(stack_settings) == ["kafka"]
        assert impostor.poll() is None
        # The real Redis is no longer recorded, so it now counts as somebody else's.
        assert stack.status(stack_settings)["redis"]["status"] == "port in use by another process"
    finally:
        impostor.kill()
        impostor.wait()
        os.kill(redis_pid, signal.SIGTERM)
        os.waitpid(redis_pid, 0)


def test_a_failed_format_is_reported_by_its_error_line_not_its_last_line() -> None:
    """CI once showed only the JVM's last line, an INFO about an MBean, for a format that failed."""
    output = ("[2026-12-05 05:41:44,741] INFO Registered `kafka:type=kafka.Log4jController` MBean\n"
              "Exception in thread \"main\" java.lang.OutOfMemoryError: Java heap space\n\tat x.y(Z.java:1)\n"
              "[2026-12-05 05:41:44,900] INFO shutting down\n")
    assert stack._first_error_in(output) == 'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space'
    assert stack._first_error_in("INFO one\nINFO two\n") == "INFO two"
    assert stack._first_error_in("") == "no output"

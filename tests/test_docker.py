"""The Docker deployment cannot run here (no Docker engine): check its structure and that it stays
consistent with the project (pinned versions, the local cluster's configuration, the submit command)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pyflink
import pytest
import yaml
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from jobs.metrics import JOB_METRICS
from operators.privacy.pii import MIN_SECRET_BYTES
from personalize import bootstrap, cluster, paths
from personalize import settings as settings_module
from personalize.settings import Settings
from personalize.topics import main as topics_main

DOCKER = paths.ROOT / "docker"
DEFAULTS = settings_module.load(environ={})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def dockerfile_args() -> dict[str, str]:
    """``ARG NAME=value`` defaults of the Dockerfile."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (DOCKER / "Dockerfile").read_text(), flags=re.MULTILINE))


def flink_properties(service: dict[str, Any]) -> dict[str, str]:
    lines = service["environment"]["FLINK_PROPERTIES"].strip().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def flattened(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_compose_has_kraft_kafka_flink_redis_topic_init_submission_and_monitoring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "topic-init", "jobmanager", "taskmanager", "submit", "dashboard",
                             "prometheus", "grafana"}
    kafka = services["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft: no ZooKeeper
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert int(kafka["KAFKA_TRANSACTION_MAX_TIMEOUT_MS"]) >= DEFAULTS.kafka.transaction_timeout_ms
    submit = services["submit"]["depends_on"]
    assert submit["topic-init"] == {"condition": "service_completed_successfully"}
    assert submit["jobmanager"] == {"condition": "service_healthy"}
    assert services["topic-init"]["command"] == ["python", "-m", "personalize.topics"]  # topics from the settings
    for name in ("topic-init", "jobmanager", "taskmanager", "submit", "dashboard"):
        assert services[name]["image"] == "personalize-flink:latest"
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"


def test_flink_configuration_matches_the_local_cluster(compose: dict[str, Any], tmp_path: Path) -> None:
    services = compose["services"]
    local = flattened(cluster.cluster_config(DEFAULTS.cluster, cluster.ClusterPaths.of(DEFAULTS.cluster)))
    for name in ("jobmanager", "taskmanager"):
        properties = flink_properties(services[name])
        for key in ("jobmanager.memory.process.size", "taskmanager.memory.process.size",
                    "taskmanager.numberOfTaskSlots", "state.backend.type", "execution.checkpointing.incremental",
                    "execution.checkpointing.num-retained", "heartbeat.interval", "heartbeat.timeout",
                    "heartbeat.rpc-failure-threshold", "slot.request.timeout"):
            assert yaml.safe_load(properties[key]) == local[key], (name, key)
        assert properties["execution.checkpointing.dir"].startswith("file:///flink-data/")
        # The job overrides the directory with job.checkpoint_dir (jobs/pipeline.py): the same one.
        job_dir = compose["x-job-environment"]["PERSONALIZE__JOB__CHECKPOINT_DIR"]
        assert Path(job_dir).as_uri() == properties["execution.checkpointing.dir"]
        assert properties["python.executable"] == properties["python.client.executable"] == "/opt/python/bin/python3.11"
    assert services["taskmanager"]["deploy"]["replicas"] == DEFAULTS.cluster.taskmanagers
    for name in ("jobmanager", "taskmanager"):
        assert "flink-data:/flink-data" in " ".join(services[name]["volumes"])  # checkpoints shared by all


def test_kafka_keeps_its_log_on_the_volume(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    mounts = dict(volume.split(":", 1) for volume in kafka["volumes"])
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == mounts["kafka-data"]  # not the image's /tmp default


def test_topic_init_applies_what_docs_privacy_requires() -> None:
    """topic-init creates the topics the job's settings list, with their configs; the settings carry the
    cleanup policy and bounded retention docs/privacy.md asks of each topic it names."""
    privacy = (paths.ROOT / "docs" / "privacy.md").read_text()
    paragraph = re.search(r"Topic settings for real Kafka: (.+?)\n\n", privacy, flags=re.DOTALL)
    assert paragraph is not None
    compacted, bounded = paragraph.group(1).split(";", 1)
    by_name = {topic.name: topic for topic in DEFAULTS.kafka.topics.all()}
    compact_names = [name for name in re.findall(r"`([a-z.]+)`", compacted) if name in by_name]
    assert len(compact_names) == 3
    for name in compact_names:
        assert by_name[name].config["cleanup.policy"] == "compact,delete", name
    named = [name for name in re.findall(r"`([a-z.]+)`", bounded) if name != "retention.ms"]
    assert "every input topic" in bounded and len(named) == 4 and set(named) <= by_name.keys()
    bounded_names = named + [topic.name for topic in DEFAULTS.kafka.topics.inputs()]
    for name in bounded_names:
        assert 0 < int(by_name[name].config["retention.ms"]) <= 30 * 86_400_000, name


def test_compose_commands_work_without_the_secret_and_submission_refuses_it(compose: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    """No `${VAR:?}` (which fails even `docker compose down`); the submit step checks the PII secret."""
    assert ":?" not in (DOCKER / "docker-compose.yml").read_text()
    assert compose["x-job-environment"]["PERSONALIZE_PII_SECRET"] == "${PERSONALIZE_PII_SECRET:-}"
    script = (DOCKER / "submit.sh").read_text()
    assert f"(( ${{#secret}} < {MIN_SECRET_BYTES} ))" in script
    env = {"PATH": "/usr/bin:/bin", "PERSONALIZE_PII_SECRET": "x" * (MIN_SECRET_BYTES - 1)}
    refused = subprocess.run(["bash", str(DOCKER / "submit.sh")], env=env, capture_output=True, text=True,
                             cwd=tmp_path, timeout=30)
    assert refused.returncode == 2 and "PERSONALIZE_PII_SECRET" in refused.stderr


def test_the_dashboard_is_a_service_behind_basic_auth_on_loopback(compose: dict[str, Any]) -> None:
    service = compose["services"]["dashboard"]
    command = service["command"]
    assert command[:2] == ["personalize", "dashboard"]
    port = command[command.index("--port") + 1]
    assert service["ports"] == [f"127.0.0.1:{port}:{port}"]
    assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
    environment = {k: str(v) for k, v in service["environment"].items()}
    loaded = settings_module.load(environ=environment)
    assert loaded.dashboard.auth == "basic" and loaded.redis.url == "redis://redis:6379/0"
    assert set(loaded.dashboard.allowed_hosts) == {"localhost", "127.0.0.1"}
    assert environment[loaded.dashboard.secret_env] == f"${{{loaded.dashboard.secret_env}:-}}"


def test_job_environment_names_real_settings(compose: dict[str, Any]) -> None:
    environment = {k: str(v) for k, v in compose["services"]["submit"]["environment"].items()
                   if k.startswith("PERSONALIZE__")}
    loaded = settings_module.load(environ=environment)
    assert loaded.kafka.bootstrap_servers == "kafka:9092"
    assert loaded.redis.url == "redis://redis:6379/0"


def test_image_pins_match_the_project(dockerfile_args: dict[str, str]) -> None:
    pyproject = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())
    pins = dict(dep.split("==", 1) for dep in pyproject["project"]["dependencies"] if "==" in dep)
    assert dockerfile_args["PYFLINK_VERSION"] == pins["apache-flink"]
    image = re.fullmatch(r"flink:(\d+\.\d+\.\d+)-scala_2\.12-java17", dockerfile_args["FLINK_IMAGE"])
    assert image is not None and image.group(1) == pins["apache-flink"]  # the cluster runs the client's Flink
    python = dockerfile_args["PYTHON_VERSION"].split(".")
    assert (int(python[0]), int(python[1])) == sys.version_info[:2] == (3, 11)


def test_the_image_fetches_the_connector_jars_by_the_projects_pom_and_pins() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    pom = bootstrap.KAFKA_CONNECTOR.pom.parent.relative_to(paths.ROOT)
    assert f"COPY {pom} /maven\n" in dockerfile
    assert "sha256sum -c /maven/sha256sums" in dockerfile
    assert "COPY --from=jars /jars .cache/jars/" in dockerfile


def test_kafka_image_matches_the_local_broker(compose: dict[str, Any]) -> None:
    """Compose runs the Kafka version the local stack runs (personalize/maven/kafka-broker/pom.xml)."""
    pom = ElementTree.parse(bootstrap.KAFKA_BROKER.pom).getroot()
    version = pom.findtext("{http://maven.apache.org/POM/4.0.0}properties/{http://maven.apache.org/POM/4.0.0}"
                           "kafka.version")
    assert version is not None and version.startswith("4.")
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{version}"
    assert f"kafka_2.13-{version}.jar" in bootstrap.KAFKA_BROKER.pins()


def test_the_image_holds_what_submission_ships() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1/$", dockerfile, flags=re.MULTILINE))
    assert set(cluster.PROJECT_PACKAGES) <= copied
    assert not re.search(r"^FROM \S+:latest", dockerfile, flags=re.MULTILINE)
    assert all("--no-install-recommends" in line for line in dockerfile.splitlines() if "apt-get install" in line)
    script = (DOCKER / "submit.sh").read_text()
    packages = re.search(r"^packages=(\S+)$", script, flags=re.MULTILINE)
    assert packages is not None and tuple(packages.group(1).split(",")) == cluster.PROJECT_PACKAGES
    assert f"$PROJECT/{cluster.JOB_FILE}" in script
    subprocess.run(["bash", "-n", str(DOCKER / "submit.sh")], check=True)


@pytest.mark.integration
def test_topic_init_creates_the_configured_topics_with_their_configs(stack_settings: Settings,
                                                                      tmp_path: Path) -> None:
    """Against the local broker: what the compose topic-init step runs (create, then verify), twice."""
    suffix = uuid.uuid4().hex[:8]
    topics = {role: {**asdict(topic), "name": f"{topic.name}.{suffix}"}
              for role, topic in ((role, getattr(stack_settings.kafka.topics, role))
                                  for role in stack_settings.kafka.topics.__dataclass_fields__)}
    override = tmp_path / "topics.yaml"
    override.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": stack_settings.kafka.bootstrap_servers,
                                                  "topics": topics}}))
    assert topics_main(["--config", str(override), "--timeout-s", "60"]) == 0
    assert topics_main(["--config", str(override), "--timeout-s", "60"]) == 0  # idempotent
    admin = KafkaAdminClient(bootstrap_servers=stack_settings.kafka.bootstrap_servers)
    try:
        names = [topic["name"] for topic in topics.values()]
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)}
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name) for name in names])["topic"]
    finally:
        admin.close()
    assert described == {topic["name"]: topic["partitions"] for topic in topics.values()}
    for topic in topics.values():
        assert {key: configs[topic["name"]][key]["value"] for key in topic["config"]} == topic["config"]
    assert topics["profiles"]["config"]["cleanup.policy"] == "compact,delete"  # tombstones erase (docs/privacy.md)


def test_flink_reports_to_prometheus_as_the_local_cluster_does(compose: dict[str, Any]) -> None:
    local = flattened(cluster.cluster_config(DEFAULTS.cluster, cluster.ClusterPaths.of(DEFAULTS.cluster)))
    bundled = sorted(p.name for p in (Path(pyflink.__file__).parent / "plugins" / "metrics-prometheus").glob("*.jar"))
    for name in ("jobmanager", "taskmanager"):
        service = compose["services"][name]
        properties = flink_properties(service)
        assert properties["metrics.reporter.prom.factory.class"] == local["metrics.reporter.prom.factory.class"]
        assert properties["metrics.reporter.prom.port"] == str(DEFAULTS.cluster.metrics_port)
        assert [service["environment"]["ENABLE_BUILT_IN_PLUGINS"]] == bundled


def test_prometheus_scrapes_every_flink_process_and_grafana_charts_every_job_metric(compose: dict[str, Any]) -> None:
    services = compose["services"]
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    port = DEFAULTS.cluster.metrics_port
    assert {"jobmanager:" + str(port)} == set(scrape[0]["static_configs"][0]["targets"])
    assert scrape[1]["dns_sd_configs"][0] == {"names": ["taskmanager"], "type": "A", "port": port}
    mounted = {volume.split(":")[1] for volume in services["prometheus"]["volumes"]}
    assert "/etc/prometheus/prometheus.yml" in mounted
    grafana = services["grafana"]
    assert all(port_map.startswith("127.0.0.1:") for port_map in grafana["ports"] + services["prometheus"]["ports"])
    source = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "personalize.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{dashboards_dir}:ro" in grafana["volumes"]
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "personalize.json").read_text())
    queries = " ".join(target["expr"] for panel in dashboard["panels"] for target in panel["targets"])
    assert {name for name in JOB_METRICS if f'.*{name}"' in queries} == set(JOB_METRICS)
    labelled = {name: label for name, label in JOB_METRICS.items() if label}
    assert all(f"by ({label})" in queries for label in labelled.values())

"""deploy/kubernetes/ cannot be applied here (no cluster): validate the FlinkDeployment against the Flink
Kubernetes Operator's published CRD schema (its API jar from Maven, pinned in personalize/maven/) and keep
it consistent with the image and the compose deployment."""

from __future__ import annotations

import copy
import re
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from personalize import bootstrap, cluster, paths
from personalize import settings as settings_module

DEPLOY = paths.ROOT / "deploy" / "kubernetes"
DOCKER = paths.ROOT / "docker"
CRD = "META-INF/fabric8/flinkdeployments.flink.apache.org-v1.yml"


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused: the API server drops them silently (pruning), so a typo
    such as ``upgradeMod`` would apply as a default instead of failing."""
    if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for value in schema.values():
        children = value.values() if isinstance(value, dict) and value is schema.get("properties") else [value]
        for child in children:
            if isinstance(child, dict):
                strict(child)
            elif isinstance(child, list):
                for item in child:
                    if isinstance(item, dict):
                        strict(item)
    return schema


@pytest.fixture(scope="module")
def crd_schema() -> dict[str, Any]:
    with zipfile.ZipFile(bootstrap.ensure_operator_api()) as jar:
        crd = yaml.safe_load(jar.read(CRD))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1" and v["served"])
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # The newest operator release the project's Maven repository serves (1.10.0) predates Flink 2.0; the
    # operator that runs this (1.11 or later) adds v2_0 to this enum and nothing else this file uses.
    versions = schema["properties"]["spec"]["properties"]["flinkVersion"]["enum"]
    assert "v2_0" not in versions, "the pinned CRD knows Flink 2.0 now: drop this patch"
    versions.append("v2_0")
    strict(schema["properties"]["spec"])  # the root also takes apiVersion, kind and metadata (not listed)
    return schema


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "flinkdeployment.yaml").read_text())
    assert isinstance(document, dict)
    return document


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["podTemplate"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "flink-main-container")


def test_the_deployment_is_valid_against_the_operators_crd(crd_schema: dict[str, Any],
                                                          deployment: dict[str, Any]) -> None:
    assert deployment["apiVersion"] == "flink.apache.org/v1beta1" and deployment["kind"] == "FlinkDeployment"
    jsonschema.Draft7Validator(crd_schema).validate(deployment)


def test_the_strict_schema_refuses_a_typo_and_a_non_string_setting(crd_schema: dict[str, Any],
                                                                  deployment: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(crd_schema)
    typo = copy.deepcopy(deployment)
    typo["spec"]["job"]["upgradeMod"] = typo["spec"]["job"].pop("upgradeMode")
    assert not validator.is_valid(typo)
    nested = copy.deepcopy(deployment)
    container(nested)["volumeMount"] = container(nested).pop("volumeMounts")  # inside the Pod template
    assert not validator.is_valid(nested)
    number = copy.deepcopy(deployment)
    number["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"] = 1  # values must be strings
    assert not validator.is_valid(number)


def test_application_mode_with_savepoint_upgrades_from_the_compose_image(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert spec["image"] == compose["services"]["jobmanager"]["image"]
    job = spec["job"]
    assert job["upgradeMode"] == "savepoint" and job["state"] == "running"
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"  # application mode: a job spec
    flink = re.search(r"^ARG PYFLINK_VERSION=(\S+)$", (DOCKER / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert flink is not None and job["jarURI"] == f"local:///opt/flink/opt/flink-python-{flink.group(1)}.jar"
    assert spec["flinkVersion"] == "v" + "_".join(flink.group(1).split(".")[:2])
    args = dict(zip(job["args"][::2], job["args"][1::2], strict=True))
    assert args["-py"] == f"/opt/personalize/{cluster.JOB_FILE}"
    assert args["-pyfs"].split(",") == [f"/opt/personalize/{p}" for p in cluster.PROJECT_PACKAGES]


def test_checkpoints_savepoints_and_ha_live_on_the_shared_volume(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    config = spec["flinkConfiguration"]
    mounts = {m["name"]: m["mountPath"] for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["podTemplate"]["spec"]["volumes"]}
    claim = volumes["flink-data"]["persistentVolumeClaim"]["claimName"]
    pvc = yaml.safe_load((DEPLOY / "pvc.yaml").read_text())
    assert pvc["metadata"]["name"] == claim and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert Path(config[key].removeprefix("file://")).is_relative_to(mounts["flink-data"]), key
    env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
    # The job sets its own checkpoint directory (jobs/pipeline.py): it must be the cluster's.
    assert Path(env["PERSONALIZE__JOB__CHECKPOINT_DIR"]).as_uri() == config["execution.checkpointing.dir"]


def test_the_flink_configuration_matches_the_compose_cluster(deployment: dict[str, Any]) -> None:
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    lines = compose["services"]["jobmanager"]["environment"]["FLINK_PROPERTIES"].strip().splitlines()
    compose_config = dict(line.split(": ", 1) for line in lines)
    config = deployment["spec"]["flinkConfiguration"]
    shared = set(compose_config) - {"jobmanager.rpc.address", "jobmanager.memory.process.size",
                                    "taskmanager.memory.process.size"}  # the operator sets these from spec
    assert {key: yaml.safe_load(config[key]) for key in shared} == \
        {key: yaml.safe_load(compose_config[key]) for key in shared}
    assert deployment["spec"]["jobManager"]["resource"]["memory"] == compose_config["jobmanager.memory.process.size"]
    assert deployment["spec"]["taskManager"]["resource"]["memory"] == compose_config["taskmanager.memory.process.size"]


def test_prometheus_scrapes_the_reporters_port(deployment: dict[str, Any]) -> None:
    config = deployment["spec"]["flinkConfiguration"]
    annotations = deployment["spec"]["podTemplate"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == config["metrics.reporter.prom.port"]
    assert config["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
    env = {e["name"]: e.get("value") for e in container(deployment)["env"]}
    flink = re.search(r"^ARG PYFLINK_VERSION=(\S+)$", (DOCKER / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert flink is not None and env["ENABLE_BUILT_IN_PLUGINS"] == f"flink-metrics-prometheus-{flink.group(1)}.jar"


def test_the_job_environment_names_real_settings_and_takes_the_secret_from_a_secret(
        deployment: dict[str, Any]) -> None:
    env = container(deployment)["env"]
    plain = {e["name"]: e["value"] for e in env if e["name"].startswith("PERSONALIZE__")}
    loaded = settings_module.load(environ=plain)
    assert loaded.kafka.bootstrap_servers == "kafka:9092" and loaded.redis.url == "redis://redis:6379/0"
    secret = next(e for e in env if e["name"] == loaded.privacy.secret_env)
    assert "value" not in secret and secret["valueFrom"]["secretKeyRef"]["name"]

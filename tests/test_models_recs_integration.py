"""Online models and recommendations in the job, on the MiniCluster with the real broker and Redis.

Recommendations: candidates reach Kafka and Redis with their reasons, under an experiment whose control arm
is shown nothing; its metrics reach Kafka and Redis. Models: the trainer's snapshots
come back through their topic, every parallel instance scores with the same version, cluster and
intent scores reach Redis and the segment output, and a restore keeps the model.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.redis_keys import (
    experiment_metrics_key,
    models_clusters_key,
    models_current_key,
    models_instances_key,
    user_model_key,
    user_recs_info_key,
    user_recs_key,
)
from jobs.personalize_job import run_job, source_spec, start_job, stop_with_savepoint
from personalize import experiments_report, stack
from personalize.demo import distinct_records
from personalize.generator import EventGenerator
from personalize.kafka_tools import read_topic
from personalize.publish import publish
from personalize.settings import Settings
from tests.conftest import isolated
from tests.test_segments_integration import publish as publish_payloads
from tests.test_segments_integration import wait_for

pytestmark = pytest.mark.integration
DAY_MS = 86_400_000
EXPERIMENT = {"id": "recs-v1", "version": 1, "control": "control", "conversion_window": "7d",
              "arms": [{"id": "control", "weight": 1, "treatment": "none"},
                       {"id": "recs", "weight": 3, "treatment": "personalized"}]}


def generated(settings: Settings, events: int, users: int, seed: int, days_later: int = 0) -> dict[str, dict[int, int]]:
    """Publish a seeded stream; ``days_later`` shifts its event time past earlier batches (no late events)."""
    start_ms = settings.generator.start_ms + days_later * DAY_MS
    generator = EventGenerator(replace(settings.generator, events=events, users=users, seed=seed, start_ms=start_ms))
    return publish(generator.records(), settings.kafka, progress=False, total=events).end_offsets


@pytest.fixture(scope="module")
def recs_run(stack_settings: Settings) -> dict[str, Any]:
    # Called per record: with micro-batches a user's requests in one list rank once, so how many lists
    # come out depends on where the lists were cut, which depends on the machine's speed (one CI run
    # under load saw 59). tests/test_micro_batch_integration.py compares the two modes.
    settings = isolated(stack_settings)
    settings = replace(settings, job=replace(settings.job, micro_batch_ms=0),
                       experiments=replace(settings.experiments, definitions=(EXPERIMENT,)))
    stack.up(settings)
    end_offsets = generated(settings, 3000, 40, seed=11)
    # At run time, on the control topic: a new version of the experiment, and a command that does not parse.
    update = {"command": "experiment.update", "experiment": {**EXPERIMENT, "version": 2, "name": "lists or none"}}
    rules = settings.kafka.topics.rules.name
    rules_end = publish_payloads(settings, rules, [json.dumps(update).encode(),
                                                   b'{"command": "experiment.add", "experiment": {"id": "Bad"}}'])
    run_job(settings, source_spec(settings, "earliest", {**end_offsets, rules: {0: rules_end}}))
    lists = distinct_records(settings, settings.kafka.topics.recommendations)
    return {"settings": settings, "lists": lists}


def test_candidates_reach_kafka_with_reasons(recs_run: dict[str, Any]) -> None:
    lists = list(recs_run["lists"].values())
    assert len(lists) > 100
    for record in lists:
        assert record["schema"] == "recommendations.v1" and record["id"].startswith(record["user"] + ":")
        assert len(record["items"]) <= 10
        for item in record["items"]:
            assert item["reasons"] and sum(item["reasons"].values()) == pytest.approx(item["score"], abs=1e-4)
    sources = {source for record in lists for item in record["items"] for source in item["reasons"]}
    assert {"covisit", "trending"} <= sources
    suppressed = [record for record in lists if record["suppressed"]]
    assert suppressed and all(record["suppressed"] == "checkout" and not record["items"] for record in suppressed)


def test_only_the_treated_arm_is_shown_lists_and_the_metrics_count_both(recs_run: dict[str, Any]) -> None:
    settings: Settings = recs_run["settings"]
    lists = list(recs_run["lists"].values())
    assert {(record["experiment"], record["arm"]) for record in lists} == {("recs-v1", "recs")}
    topic = settings.kafka.topics.experiments
    metrics = [json.loads(record.value) for record in read_topic(settings.kafka.bootstrap_servers, topic.name,
                                                                    topic.partitions, idle_timeout_s=1.0)]
    assert metrics and all(m["experiment_id"] == "recs-v1" and m["schema_version"] == 1 for m in metrics)
    final = metrics[-1]  # one partition: the end of the input published last
    arms = {arm["arm"]: arm for arm in final["arms"]}
    shown = {record["user"] for record in lists if record["items"]}
    # An erased user who comes back is a new user to the experiment too (nothing of them was kept).
    erased = len(distinct_records(settings, settings.kafka.topics.erasures, idle_timeout_s=1.0))
    assert len(shown) <= arms["recs"]["exposed_users"] <= len(shown) + erased
    assert arms["control"]["exposed_users"] > 0 and arms["control"]["exposures"] > 0  # shadow lists count
    assert arms["recs"]["clicks"] > 0 and arms["recs"]["versus_control"] is not None
    assert final["experiment_version"] == 2  # the command applied while the job ran
    # Segment changes say the arm too: the same one the user's lists carry.
    changes = distinct_records(settings, settings.kafka.topics.segments, idle_timeout_s=1.0).values()
    arm_of = {record["user"]: record["arm"] for record in lists}
    tagged = [change for change in changes if "arm" in change]
    assert tagged and all(change["experiment"] == "recs-v1" for change in tagged)
    assert all(arm_of[change["user"]] == change["arm"] for change in tagged if change["user"] in arm_of)
    assert {change["arm"] for change in tagged} == {"control", "recs"}
    dead = distinct_records(settings, settings.kafka.topics.deadletter, idle_timeout_s=1.0).values()
    refused = [letter for letter in dead if letter["reason"] == "invalid_experiment"]
    assert len(refused) == 1 and refused[0]["detail"].startswith("command.experiment")
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    assert json.loads(client.get(experiment_metrics_key(settings.redis.key_prefix, "recs-v1"))) == final


def test_the_report_shows_what_the_job_published(recs_run: dict[str, Any],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings: Settings = recs_run["settings"]
    parser = argparse.ArgumentParser()
    experiments_report.add_arguments(parser)
    assert experiments_report.run(parser.parse_args(["--live"]), settings) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("experiment recs-v1 v2 (control: control)")
    record = json.loads(redis.Redis.from_url(settings.redis.url).get(
        experiment_metrics_key(settings.redis.key_prefix, "recs-v1")))  # type: ignore[arg-type]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert {arm: (row[1], int(row[2].replace(",", ""))) for arm, row in rows.items()} == {
        arm["arm"]: ({"control": "none", "recs": "personalized"}[arm["arm"]], arm["exposed_users"])
        for arm in record["arms"]}


def test_redis_holds_each_users_latest_list_with_a_ttl(recs_run: dict[str, Any]) -> None:
    settings: Settings = recs_run["settings"]
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    prefix = settings.redis.key_prefix
    latest: dict[str, dict[str, Any]] = {}
    for record in recs_run["lists"].values():
        if record["user"] not in latest or record["seq"] > latest[record["user"]]["seq"]:
            latest[record["user"]] = record
    for user, record in latest.items():
        info = client.hgetall(user_recs_info_key(prefix, user))
        assert int(info["version"]) == record["seq"] and json.loads(info["items"]) == record["items"]
        ranked = dict(client.zrange(user_recs_key(prefix, user), 0, -1, withscores=True))
        assert ranked == {c["item"]: pytest.approx(c["score"]) for c in record["items"]}
        assert 0 < client.ttl(user_recs_info_key(prefix, user)) <= settings.recommendations.redis_ttl_s


def test_the_trainer_publishes_snapshots_and_cluster_descriptions(recs_run: dict[str, Any]) -> None:
    settings: Settings = recs_run["settings"]
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    prefix = settings.redis.key_prefix
    current = client.hgetall(models_current_key(prefix))
    # The end of the input published a last snapshot: its quality covers every settled example.
    assert int(current["version"]) >= 1 and int(current["examples"]) > 0 and float(current["intent_auc"]) > 0.5
    clusters = {cluster: json.loads(text) for cluster, text in client.hgetall(models_clusters_key(prefix)).items()}
    assert clusters and all(c["description"] for c in clusters.values())
    snapshots = distinct_records(settings, settings.kafka.topics.models).values()
    assert max(s["version"] for s in snapshots) == int(current["version"])


def test_every_instance_scores_with_the_same_model_and_a_restore_keeps_it(stack_settings: Settings,
                                                                          tmp_path: Path) -> None:
    # Models only: identity stitching (on in unbounded runs) has its own test (test_privacy_integration).
    settings = isolated(stack_settings)
    settings = replace(settings, privacy=replace(settings.privacy, stitch_identities=False))
    stack.up(settings)
    prefix = settings.redis.key_prefix
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    spec = source_spec(settings, "earliest", None)

    def one_model_on_both() -> str:
        """Both instances report the same snapshot (whichever it is)."""
        using = set(client.hgetall(models_instances_key(prefix)).values())
        return using.pop() if len(client.hgetall(models_instances_key(prefix))) == 2 and len(using) == 1 else ""

    job = start_job(settings, spec)
    try:
        generated(settings, 4000, 50, seed=5)
        # The same snapshot on both instances, of the trainer's lineage (not necessarily its newest: the
        # trainer may publish again while the instances load one).
        model = wait_for("one model version on both instances", one_model_on_both, timeout_s=180)
        assert model.split(":")[0] == client.hget(models_current_key(prefix), "lineage")
        generated(settings, 300, 50, seed=8, days_later=60)  # users score at their next changed vector

        def scored() -> bool:
            users = [client.hgetall(key) for key in client.scan_iter(user_model_key(prefix, "*"))]
            return any(u.get("intent") not in (None, "") and u.get("cluster") != "" for u in users)
        wait_for("users scored by the model", scored)

        def cluster_changes() -> list[dict[str, Any]]:
            """Committed ``cluster:`` changes: Redis shows a score at once, Kafka only after a checkpoint."""
            changes = distinct_records(settings, settings.kafka.topics.segments, idle_timeout_s=2).values()
            return [c for c in changes if c["segment"].startswith("cluster:")]
        clusters = wait_for("cluster changes committed to Kafka", cluster_changes)
        assert all(c["cause"]["kind"] in ("model", "drift") and c["cause"]["model_version"] >= 1
                                for c in clusters)
        used = min(int(v.split(":")[1]) for v in client.hgetall(models_instances_key(prefix)).values())
        savepoint = stop_with_savepoint(job, (tmp_path / "savepoints").as_uri())
        saved = client.hgetall(models_current_key(prefix))
    except BaseException:
        job.cancel().result()
        raise
    client.delete(models_instances_key(prefix))
    restored = start_job(settings, spec, savepoint=savepoint)
    try:
        generated(settings, 300, 50, seed=6, days_later=120)  # users on both instances load the restored model
        # Both come back with the snapshot they used (or a newer one of the same lineage). The local
        # broker can also leave a transaction of the stopped job open, which holds back read_committed
        # readers of the snapshot topic (docs/operations.md).
        lineage, restored_version = wait_for("both instances on the restored model", one_model_on_both).split(":")
        assert lineage == saved["lineage"] == model.split(":")[0]
        assert int(restored_version) >= used
        generated(settings, 3000, 50, seed=7, days_later=180)
        wait_for("a newer snapshot", lambda: int(client.hget(models_current_key(prefix), "version") or 0)
                 > int(saved["version"]))
        assert client.hget(models_current_key(prefix), "lineage") == lineage  # the restored trainer goes on
        snapshots = distinct_records(settings, settings.kafka.topics.models, idle_timeout_s=2).values()
        assert {snapshot["lineage"] for snapshot in snapshots} == {lineage}
    finally:
        restored.cancel().result()

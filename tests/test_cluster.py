"""The job on a real standalone Flink cluster: submit, run bounded and unbounded; the helpers the fault tests
(tests/test_faults.py: crash, outage, rescale through a savepoint) compare runs with."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from kafka import KafkaProducer

from connectors.redis_keys import user_features_key, user_profile_key
from jobs.metrics import JOB_METRICS
from operators.models.user import MODEL_FIELDS
from operators.rules.engine import is_model_segment
from personalize import cluster, stack
from personalize.generator import EventGenerator, GeneratedRecord
from personalize.paths import ROOT
from personalize.publish import publish
from personalize.segment_format import TRACKING_ROLE, segment_message, segment_spec
from personalize.settings import Settings
from tests.conftest import isolated

pytestmark = pytest.mark.integration

#: Redis keys whose values depend on processing time or on the instance layout, not on the input.
UNSTABLE = (":population:", ":rules:instances", ":{segments}:changes")


#: Idleness timeout of runs compared record by record: longer than any of them lasts.
COMPARISON_IDLENESS_MS = 3_600_000


def for_comparison(settings: Settings) -> Settings:
    """For runs compared record by record: no consent gating or identity stitching, whose outcome
    depends on the read order of different topics (docs/privacy.md), not on failures or parallelism.

    And no partition goes idle during a run: a reader that delivers nothing for longer than
    ``job.idleness_ms`` (processing time; a stalled TaskManager on a loaded machine) would count as
    idle, the watermark would follow the others, and its next events would be late in one run and not
    in another (docs/operations.md, "Determinism"); ``cluster.job_config`` carries it to cluster runs.
    Every input partition ends with a sentinel (``send_sentinels``), so the last watermark needs no
    idleness either."""
    return replace(settings, privacy=replace(settings.privacy, enabled=False),
                   job=replace(settings.job, idleness_ms=COMPARISON_IDLENESS_MS))


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


def one_topic(records: Iterable[GeneratedRecord]) -> list[GeneratedRecord]:
    """Every record on the behavior topic, keyed by its user as before, so that a user's events reach
    the job in one partition's order. The job applies a user's events from different topics in
    arrival order, and for events close in event time (a consent change 1 ms before the page view
    that follows it) that order differs from run to run (docs/operations.md, "Determinism"): runs
    compared record by record must not depend on it. The job reads every input topic alike."""
    return [replace(record, topic_role="behavior") for record in records]


def seeded_run(settings: Settings, events: int) -> tuple[Settings, dict[str, dict[int, int]]]:
    run = isolated(settings)
    stack.up(run)
    generator = EventGenerator(replace(run.generator, events=events, users=150))
    return run, publish(generator.records(), run.kafka, total=events).end_offsets


def run_bounded(settings: Settings, ends: dict[str, dict[int, int]], tmp_path: Path, name: str,
                parallelism: int) -> str:
    ends_file = tmp_path / f"{name}-ends.json"
    ends_file.write_text(json.dumps(ends))
    config = cluster.job_config(replace(settings, job=replace(settings.job, parallelism=parallelism)),
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


def sentinel_users(settings: Settings) -> dict[str, tuple[str, int]]:
    """One sentinel user per input partition (named by topic role, not by the run's topic name, so
    runs produce the same records), with its topic and partition."""
    topics = settings.kafka.topics
    return {f"sentinel-{role}-{partition}": (getattr(topics, role).name, partition)
            for role in ("behavior", "profile", "consent", TRACKING_ROLE)
            for partition in range(getattr(topics, role).partitions)}


def send_sentinels(settings: Settings, ts: int) -> None:
    """One far-future event on every input partition: every partition's watermark then passes all the
    real events' timers, so runs that end at different moments still end at the same event time (none
    waits for its partition's idleness timeout). The tracking topic's are Segment messages."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    tracking, spec = settings.kafka.topics.tracking.name, segment_spec(settings)
    for user, (topic, partition) in sentinel_users(settings).items():
        event = {"event_id": f"sentinel-event-{user}", "user_id": user, "type": "page_view", "ts": ts}
        payload = segment_message(event, spec) if topic == tracking else event
        producer.send(topic, value=json.dumps(payload).encode(), partition=partition, timestamp_ms=ts)
    producer.flush()
    producer.close()


def start_unbounded(settings: Settings, tmp_path: Path, name: str, parallelism: int,
                    savepoint: str | None = None) -> str:
    config = cluster.job_config(replace(settings, job=replace(settings.job, parallelism=parallelism)),
                                tmp_path / f"{name}.yaml")
    job_id = cluster.submit(settings, ["--config", str(config), "--start", "earliest"], savepoint=savepoint)
    cluster.wait_for_state(settings.cluster, job_id, {"RUNNING"})
    return job_id


def settle(settings: Settings, sentinels: bool, timeout_s: float = 360, quiet_s: float = 20,
           job_id: str | None = None, sentinel_ts: int | None = None) -> None:
    """Until the sentinels (if sent) were counted and Redis then stops changing for ``quiet_s``
    (longer than the idleness timeout, so the last watermarks and their timers have passed too).

    Given the job and the sentinels' event time, also until the user operator's watermark has
    reached the sentinels (its timers up to there have fired), when the job reports one: a loaded
    machine can pause a job for longer than ``quiet_s``.
    """
    deadline = time.monotonic() + timeout_s
    last: tuple[dict[str, Any], int | None] = ({}, None)
    quiet_since = time.monotonic()
    reason, watermark_behind = "not polled", False
    sentinel_keys = {user_profile_key("", user) for user in sentinel_users(settings)}
    final_watermark = None if sentinel_ts is None else sentinel_ts - settings.job.max_out_of_orderness_ms - 1
    while time.monotonic() < deadline:
        state = redis_state(settings)
        started = any(key.endswith(":profile") for key in state)
        watermark = None if job_id is None else cluster.output_watermark(settings.cluster, job_id, "user-state")
        watermark_behind = watermark is not None and final_watermark is not None and watermark < final_watermark
        # A replay after a restore rewrites what Redis already holds (guarded writes change nothing):
        # only the user operator's record counters show that it is still working.
        through = None if job_id is None else cluster.records_through(settings.cluster, job_id, "user-state")
        now = (state, through)
        unsettled = unsettled_reason(last, now, started, sentinel_keys - state.keys() if sentinels else set(),
                                     watermark if watermark_behind else None, final_watermark)
        if unsettled:
            last, quiet_since, reason = now, time.monotonic(), unsettled
        elif time.monotonic() - quiet_since > quiet_s:
            return
        time.sleep(2)
    if job_id is not None and watermark_behind:
        reason += f"; watermark metrics: {json.dumps(cluster.watermark_metrics(settings.cluster, job_id))}"
    raise AssertionError(f"Redis did not settle within {timeout_s} s: {reason}")


def unsettled_reason(last: tuple[dict[str, Any], int | None], now: tuple[dict[str, Any], int | None],
                     started: bool, missing_sentinels: set[str], watermark_behind: int | None,
                     final_watermark: int | None) -> str:
    """Why a settling run is not quiet yet (empty when it is): said in the failure, so that a run that
    never settles shows what kept it going."""
    if not started:
        return "no profile in Redis yet"
    if missing_sentinels:
        return f"{len(missing_sentinels)} sentinel profiles missing, such as {sorted(missing_sentinels)[0]}"
    if watermark_behind is not None:
        return f"the user operator's watermark {watermark_behind} is behind {final_watermark}"
    if now[1] != last[1]:
        return f"the user operator's record count still moves ({last[1]} -> {now[1]})"
    if now[0] != last[0]:
        changed = sorted(key for key in now[0].keys() | last[0].keys() if now[0].get(key) != last[0].get(key))
        return f"{len(changed)} Redis keys still change, such as {changed[0]}"
    return ""


#: Feature fields scored against the R/F/M population that instances share through Redis with a
#: delay (connectors/population.py): they depend on when the instances synced, not on the input alone.
POPULATION_FIELDS = ("r_score", "f_score", "m_score")


def _referenced_features(tree: Any) -> set[str]:
    if isinstance(tree, dict):
        found = {str(tree["feature"]["name"])} if isinstance(tree.get("feature"), dict) else set()
        return found.union(*(_referenced_features(value) for value in tree.values()))
    if isinstance(tree, list):
        return set().union(*(_referenced_features(value) for value in tree))
    return set()


def timing_dependent_segments(rules_file: Path = ROOT / "config" / "rules.yaml") -> frozenset[str]:
    """Rule segments that read R/F/M scores or model outputs (``intent``: which model snapshot scored
    an event depends on when the snapshot arrived from the trainer), and the other segments of their
    exclusive groups (the group's winner depends on them). Model segments (``cluster:*``) too."""
    rules = yaml.safe_load(rules_file.read_text())["segments"]
    unstable_fields = set(POPULATION_FIELDS) | set(MODEL_FIELDS)
    unstable = {rule["id"] for rule in rules if _referenced_features(rule) & unstable_fields}
    groups = {rule["group"] for rule in rules if rule["id"] in unstable and rule.get("group")}
    return frozenset(unstable | {rule["id"] for rule in rules if rule.get("group") in groups})


TIMING_DEPENDENT_SEGMENTS = timing_dependent_segments()


def stable_segment(name: str) -> bool:
    """Whether a segment's membership depends on the input alone."""
    return not is_model_segment(name) and name not in TIMING_DEPENDENT_SEGMENTS


def comparable(key: str) -> bool:
    """Keys whose values depend on the input alone: not the model scores, recommendation lists and
    model summaries (which snapshot scored an event, and the recommender's item model, depend on the
    interleaving of the parallel instances' records), nor the members and counts of segments that
    read them."""
    if key.endswith((":model", ":recs", ":recs:info")) or key.startswith("{models}:") or key == "{segments}:counts":
        return False
    if key == "deadletters:counts":  # HINCRBY per dead letter: counts a replayed one again (reported)
        return False
    if key.startswith("{segments}:members:"):
        return stable_segment(key.removeprefix("{segments}:members:"))
    return True


def strip(key: str, value: Any) -> Any:
    """The value without what depends on timing: a user's timing-dependent segments and change
    counter (``_seq`` counts model segment changes too) and writer epoch, a feature hash's population scores."""
    if key.endswith(":segments") and isinstance(value, dict):
        return {k: v for k, v in value.items() if not k.startswith("_") and stable_segment(k)}
    if key.endswith(":features") and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in POPULATION_FIELDS}
    return value


def differing_keys(expected: dict[str, Any], actual: dict[str, Any],
                   population_affected: set[str] | None = None) -> list[str]:
    """Comparable keys present in only one state, or whose stripped values differ.

    A feature hash is the user's last emitted vector, and a change of an R/F/M score alone emits one:
    feature hashes are compared only when the users whose scores differed between the runs are known
    (``population_affected``), and then for every other user."""
    keys = {key for key in expected.keys() | actual.keys() if comparable(key)}
    if population_affected is None:
        keys = {key for key in keys if not key.endswith(":features")}
    else:
        keys -= {user_features_key("", user) for user in population_affected}
    return sorted(key for key in keys
                  if key not in expected or key not in actual or strip(key, actual[key]) != strip(key, expected[key]))


#: A label value the seeded run shows for each labelled metric (segment exits may not happen in it).
SEEN_LABELS = {"event_type": 'event_type="page_view"', "reason": 'reason="invalid_json"', "segment": 'segment="'}


def scraped(settings: Settings) -> list[str]:
    """Every sample line the cluster's Prometheus endpoints serve now."""
    lines = []
    for url in cluster.scrape_urls(settings.cluster):
        with urllib.request.urlopen(url, timeout=5) as response:
            lines += [line for line in response.read().decode().splitlines() if not line.startswith("#")]
    return lines


def test_the_prometheus_endpoints_serve_the_jobs_own_metrics(cluster_settings: Settings, tmp_path: Path) -> None:
    """The reporter is on in the local cluster, and the Python operators' metrics reach it with labels."""
    run, _ = seeded_run(cluster_settings, 2000)
    producer = KafkaProducer(bootstrap_servers=run.kafka.bootstrap_servers)
    producer.send(run.kafka.topics.behavior.name, b"{not json")
    producer.flush()
    producer.close()
    assert len(cluster.scrape_urls(run.cluster)) == 1 + run.cluster.taskmanagers
    job_id = start_unbounded(run, tmp_path, "metrics", parallelism=2)
    try:
        deadline = time.monotonic() + 180
        while True:
            lines = scraped(run)
            missing = [name for name, label in JOB_METRICS.items() if name != "segment_exits"
                       and not any(f"_{name}" in line and SEEN_LABELS.get(label, "") in line for line in lines)]
            if not missing:
                break
            assert time.monotonic() < deadline, f"not served within 180 s: {missing}"
            time.sleep(2)
    finally:
        cluster.cancel(run.cluster, job_id)
    views = [line for line in lines if "_events_in" in line and 'event_type="page_view"' in line]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in views) > 0


def test_the_supervisor_replaces_a_taskmanager_that_exits(cluster_settings: Settings) -> None:
    """Last in the module: it changes the TaskManagers the other tests ran on."""
    settings = cluster_settings.cluster
    assert cluster.status(settings)["supervisor"]["pid"] is not None
    started_before = cluster.supervisor_status(settings)["taskmanagers_started"]
    victim = cluster.taskmanager_pids(settings)[-1]
    cluster.kill_taskmanager(settings, victim)
    deadline = time.monotonic() + 60

    def replaced() -> bool:
        # The supervisor records the start just after the new TaskManager's pid appears: wait for both.
        return (len(cluster.taskmanager_pids(settings)) == settings.taskmanagers
                and cluster.supervisor_status(settings)["taskmanagers_started"] > started_before)

    while not replaced() and time.monotonic() < deadline:
        time.sleep(0.2)
    pids = cluster.taskmanager_pids(settings)
    assert len(pids) == settings.taskmanagers and victim not in pids
    assert all(cluster.process_running(pid, cluster.TASKMANAGER_MARK) for pid in pids)
    assert cluster.supervisor_status(settings)["taskmanagers_started"] == started_before + 1
    cluster.wait_for_taskmanagers(settings, settings.taskmanagers)


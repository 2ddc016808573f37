"""Fault tolerance and exactly-once on a real standalone cluster (2 TaskManagers, RocksDB, checkpoints
every 2 s) and a real Apache Kafka broker.

A TaskManager killed with SIGKILL mid-stream, Redis stopped for 20 s mid-stream, and a stop with a
savepoint at parallelism 1 resumed at parallelism 2 are each compared with a failure-free run of the
same seeded input. Every output topic is read as downstream consumers read it (``read_committed``):
no record is duplicated, and everything that depends on the input alone is the same: the output
records by id and content, and the Redis state (what does not, and why, is in docs/operations.md,
"Determinism"). 10,000 fuzzed poison records go to the dead-letter topic without a single restart.
Measurements (recovery time, checkpoint duration and size) are printed and written to
``.run/faults-report.json``, each run's outputs and Redis state to ``.run/faults/<run>.json``;
docs/operations.md quotes them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.redis_keys import segment_changes_key
from operators.validation import INVALID_RULE, INVALID_SNAPSHOT, REASONS, Limits, Rejection, parse_event
from personalize import cluster, paths, stack
from personalize.generator import EventGenerator, GeneratedRecord
from personalize.kafka_tools import read_topic
from personalize.publish import publish
from personalize.settings import Settings
from tests.conftest import isolated
from tests.poison import poison
from tests.test_cluster import (
    POPULATION_FIELDS,
    comparable,
    differing_keys,
    for_comparison,
    one_topic,
    redis_state,
    run_bounded,
    send_sentinels,
    sentinel_users,
    settle,
    stable_segment,
    start_unbounded,
)
from tests.test_snapshots import refusals as snapshot_refusals

pytestmark = pytest.mark.integration

EVENTS, USERS = 8000, 200
OUTAGE_S = 20.0
POISON = 10_000
REPORT = paths.ROOT / ".run" / "faults-report.json"
DUMPS = paths.ROOT / ".run" / "faults"
#: Output topics whose records are deterministic (by id), each with what to leave out of a record
#: before comparing: processing time, and feature scores relative to the shared R/F/M population.
DETERMINISTIC = ("profiles", "features", "late", "deadletter")
#: Output topics whose records depend on timing as well as on the input: segment changes (model
#: segments and segments reading R/F/M or intent scores share each user's change ``seq`` with the
#: others, so ids shift), recommendation lists (the recommender's item model learns the two user
#: instances' requests in arrival order), model snapshots and drift events (the trainer learns in
#: arrival order too). Segment changes are compared by content, the others by counts.
TIMING_DEPENDENT = ("segments", "recommendations", "models", "drift")

Fault = Callable[[Settings, str], dict[str, Any]]


@dataclass(frozen=True)
class Inputs:
    records: list[GeneratedRecord]
    sentinel_ts: int

    @property
    def valid(self) -> int:
        return sum(record.kind == "valid" for record in self.records)


@dataclass
class Outcome:
    settings: Settings
    redis: dict[str, Any]
    outputs: dict[str, list[dict[str, Any]]]
    """Output topic -> every committed record (read_committed), duplicates included."""
    measured: dict[str, Any] = field(default_factory=dict)

    def distinct(self, topic: str) -> dict[str, dict[str, Any]]:
        return {record["id"]: record for record in self.outputs[topic]}

    def duplicates(self) -> dict[str, int]:
        return {topic: len(records) - len(self.distinct(topic)) for topic, records in self.outputs.items()}


@pytest.fixture(scope="module")
def inputs(cluster_settings: Settings) -> Inputs:
    generator = EventGenerator(replace(cluster_settings.generator, events=EVENTS, users=USERS))
    records = one_topic(generator.records())
    return Inputs(records, max(record.ts for record in records) + 30 * 86_400_000)


@pytest.fixture(scope="module")
def report() -> Iterator[dict[str, Any]]:
    """Measurements of this module's runs, written out at its end for docs/operations.md."""
    measured: dict[str, Any] = {}
    yield measured
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    print(f"\nfault-test measurements ({REPORT}):\n{json.dumps(measured, indent=2, sort_keys=True)}")


def read_outputs(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every committed output record, as a read_committed consumer downstream sees them."""
    outputs = {}
    for name in (*DETERMINISTIC, *TIMING_DEPENDENT):
        topic = getattr(settings.kafka.topics, name)
        records = read_topic(settings.kafka.bootstrap_servers, topic.name, topic.partitions,
                             idle_timeout_s=2.0)
        outputs[name] = [json.loads(record.value) for record in records]
    return outputs


def progress(settings: Settings) -> int:
    """Events counted in the serving view: the sum of the users' profile totals in Redis."""
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    try:
        keys = list(client.scan_iter(f"{settings.redis.key_prefix}user:*:profile", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "total")
        return sum(int(total or 0) for total in pipe.execute())
    finally:
        client.close()


def wait_mid_stream(settings: Settings, job_id: str, events: int, timeout_s: float = 180) -> None:
    """Until ``events`` are in Redis and at least one checkpoint completed (recovery starts from it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        completed = cluster.checkpoint_stats(settings.cluster, job_id)["counts"]["completed"]
        if completed >= 1 and progress(settings) >= events:
            return
        time.sleep(0.2)
    raise AssertionError(f"the job did not reach {events} events and a checkpoint in {timeout_s} s")


def run(cluster_settings: Settings, inputs: Inputs, tmp_path: Path, name: str, fault: Fault | None = None) -> Outcome:
    """The seeded input, an unbounded job at parallelism 2, the fault, then the sentinels and settle."""
    settings = for_comparison(isolated(cluster_settings))
    stack.up(settings)
    publish(iter(inputs.records), settings.kafka, progress=False)
    job_id = start_unbounded(settings, tmp_path, name, parallelism=2)
    try:
        measured = fault(settings, job_id) if fault else {}
        end_of_input(settings, inputs)
        # After a restore the trainer republishes snapshots for a while (the users' event time no longer
        # waits for them: jobs/pipeline.py without_event_time): quiet for long enough, on a loaded machine.
        quiet_s = 20.0 if fault is None else 60.0
        settle(settings, sentinels=True, job_id=job_id, sentinel_ts=inputs.sentinel_ts, quiet_s=quiet_s)
    except BaseException:
        with contextlib.suppress(cluster.ClusterError):  # a failed run must not hold the next tests' slots
            cluster.cancel(settings.cluster, job_id)
        raise
    return collect(settings, job_id, name, measured)


def end_of_input(settings: Settings, inputs: Inputs, timeout_s: float = 360) -> None:
    """Once every valid event is in Redis, the sentinels: their far-future event time then passes every
    timer. Sent earlier, they would be read while the events before them wait: while the Python operator
    backpressures the sources, a stalled topic counts as idle after ``job.idleness_ms``, and the
    watermark follows a topic that held only sentinels (docs/operations.md, "Determinism")."""
    deadline = time.monotonic() + timeout_s
    while progress(settings) < inputs.valid:
        assert time.monotonic() < deadline, f"the job did not count {inputs.valid} events within {timeout_s} s"
        time.sleep(0.5)
    send_sentinels(settings, inputs.sentinel_ts)


def collect(settings: Settings, job_id: str, name: str, measured: dict[str, Any]) -> Outcome:
    """A settled run's outcome: job measurements, Redis as served, every committed output record."""
    measured["final_state"] = cluster.job_state(settings.cluster, job_id)
    measured["restarts"] = cluster.restarts(settings.cluster, job_id)
    measured["checkpoints"] = checkpoint_summary(cluster.checkpoint_stats(settings.cluster, job_id))
    # Redis as the running job serves it: a cancelled task's last flush could race with the reading.
    served = redis_state(settings)
    cluster.cancel(settings.cluster, job_id)
    outcome = Outcome(settings, served, read_outputs(settings), measured)
    # Kept for a look after a failure: every record delivered, the Redis state, the segment changes
    # Redis applied (its change stream, in the order applied), the measurements.
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    applied = [[entry_id, fields["change"]]
               for entry_id, fields in client.xrange(segment_changes_key(settings.redis.key_prefix))]
    client.close()
    DUMPS.mkdir(parents=True, exist_ok=True)
    (DUMPS / f"{name}.json").write_text(json.dumps({"outputs": outcome.outputs, "redis": outcome.redis,
                                                   "changes_applied": applied, "measured": measured}))
    return outcome


def checkpoint_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """Counts, end-to-end duration (ms) and size (bytes: full state, and incremental upload) percentiles."""
    summary = stats["summary"]
    restored = (stats.get("latest") or {}).get("restored")
    return {
        "counts": stats["counts"],
        "duration_ms": {k: summary["end_to_end_duration"][k] for k in ("min", "avg", "p50", "p99", "max")},
        "state_size_bytes": {k: summary["state_size"][k] for k in ("min", "avg", "max")},
        "checkpointed_size_bytes": {k: summary["checkpointed_size"][k] for k in ("min", "avg", "max")},
        "restored_from": None if restored is None else {"id": restored["id"],
                                                        "savepoint": restored["is_savepoint"]},
    }


@pytest.fixture(scope="module")
def reference(cluster_settings: Settings, inputs: Inputs, tmp_path_factory: pytest.TempPathFactory,
              report: dict[str, Any]) -> Outcome:
    outcome = run(cluster_settings, inputs, tmp_path_factory.mktemp("reference"), "reference")
    # The generator's disorder (4 s) is within the watermark's (5 s): a late event means a reader's
    # backlog fell behind the watermark, so the comparisons would be against a wrong reference.
    late = outcome.outputs["late"]
    assert not late, (f"the reference run put {len(late)} events of {len({r['user'] for r in late})} users on the "
                      "late topic: a reader counted idle? (docs/operations.md, \"Determinism\")")
    report["reference"] = {**outcome.measured, "duplicates": outcome.duplicates(),
                           "records": {topic: len(outcome.distinct(topic)) for topic in outcome.outputs}}
    return outcome


# --- comparing a faulted run with the reference ------------------------------------------------------

def normalised(topic: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record without what depends on timing: processing time, population-relative scores."""
    if topic == "features":
        return {**record, "features": {k: v for k, v in record["features"].items() if k not in POPULATION_FIELDS}}
    return {k: v for k, v in record.items() if k != "processing_time"}


def by_role(outcome: Outcome, topic: str) -> list[dict[str, Any]]:
    """The topic's records with the run's topic names (``events.behavior.<run>``) replaced by their
    roles: a dead letter's id and source name the topic it came from."""
    if topic != "deadletter" or outcome.settings is None:
        return outcome.outputs[topic]
    topics = outcome.settings.kafka.topics
    roles = {getattr(topics, role).name: role for role in ("behavior", "profile", "consent", *CONTROL_REASONS)}
    renamed = []
    for record in outcome.outputs[topic]:
        name = record["source"]["topic"]
        renamed.append({**record, "id": roles[name] + record["id"].removeprefix(name),
                        "source": {**record["source"], "topic": roles[name]}})
    return renamed


def population_affected(reference: Outcome, actual: Outcome) -> set[str]:
    """Users with a feature vector at the same event time in both runs but other R/F/M scores, or with a
    vector in one run only: their vectors' emission (a score change alone emits one) and so their
    vector ids depend on timing."""
    def scores(outcome: Outcome) -> dict[tuple[str, int], tuple[Any, ...]]:
        return {(v["user"], v["ts"]): tuple(v["features"][k] for k in POPULATION_FIELDS)
                for v in outcome.outputs["features"]}
    expected, got = scores(reference), scores(actual)
    differing = {user for user, ts in expected.keys() & got.keys() if expected[user, ts] != got[user, ts]}
    # A vector one run emitted and the other did not: a score change alone emitted it (seen when an
    # outage delayed the population sync).
    return differing | {user for user, _ in expected.keys() ^ got.keys()}


def stable_change(change: dict[str, Any]) -> str | None:
    """A segment change as far as it depends on the input alone: None for a change of a timing-dependent
    segment; else the change without its id and ``seq`` (which count every change of the user) and
    with only the stable segments in its before/after lists."""
    if not stable_segment(change["segment"]):
        return None
    kept = {k: v for k, v in change.items() if k not in ("id", "seq", "processing_time")}
    for name in ("previous", "segments"):
        kept[name] = [segment for segment in change[name] if stable_segment(segment)]
    return json.dumps(kept, sort_keys=True)


def compare(reference: Outcome, actual: Outcome) -> dict[str, Any]:
    """Per deterministic topic: distinct ids in each run, ids missing or extra, ids whose records differ
    from the reference's, ids delivered with conflicting records (an aborted attempt and its replay
    must agree). Feature vectors: so for the users whose R/F/M scores did not differ; for the others,
    every vector whose content (without id, version and scores) is in one run only is counted.
    Segment changes: the stable changes (:func:`stable_change`) of each run as sets. The other
    timing-dependent topics: distinct ids and users in each run (reported, not compared)."""
    affected = population_affected(reference, actual)
    result: dict[str, Any] = {}
    for topic in DETERMINISTIC:
        skipped = affected if topic == "features" else set()
        expected = {r["id"]: r for r in by_role(reference, topic) if r.get("user") not in skipped}
        delivered = [r for r in by_role(actual, topic) if r.get("user") not in skipped]
        got = {r["id"]: r for r in delivered}
        versions: dict[str, set[str]] = {}
        for record in delivered:
            versions.setdefault(record["id"], set()).add(json.dumps(normalised(topic, record), sort_keys=True))
        common = expected.keys() & got.keys()
        result[topic] = {
            "ids": len(expected), "duplicates": len(actual.outputs[topic]) - len(actual.distinct(topic)),
            "missing": sorted(expected.keys() - got.keys())[:5], "extra": sorted(got.keys() - expected.keys())[:5],
            "differing": sorted(k for k in common if normalised(topic, expected[k]) != normalised(topic, got[k]))[:5],
            "conflicting": sorted(k for k, seen in versions.items() if len(seen) > 1)[:5],
        }

    def contents(outcome: Outcome) -> set[str]:
        return {json.dumps({k: v for k, v in normalised("features", r).items() if k not in ("id", "version")},
                           sort_keys=True) for r in outcome.outputs["features"]}
    only = contents(reference) ^ contents(actual)
    result["features"].update({
        "population_affected_users": len(affected), "vectors_in_one_run_only": len(only),
        "of_unaffected_users": sorted(c for c in only if json.loads(c)["user"] not in affected)[:3]})
    reference_changes = [stable_change(change) for change in reference.distinct("segments").values()]
    expected_changes = {change for change in reference_changes if change is not None}
    got_changes = {change for change in map(stable_change, actual.outputs["segments"]) if change is not None}
    result["segments"] = {
        "ids": len(reference.distinct("segments")), "stable_changes": len(expected_changes),
        "stable_changes_repeated_in_reference": sum(c is not None for c in reference_changes) - len(expected_changes),
        "duplicates": len(actual.outputs["segments"]) - len(actual.distinct("segments")),
        "missing": sorted(expected_changes - got_changes)[:3], "extra": sorted(got_changes - expected_changes)[:3],
    }
    for topic in TIMING_DEPENDENT[1:]:
        result[topic] = {run: {"ids": len(outcome.distinct(topic)),
                               "users": len({record.get("user") for record in outcome.outputs[topic]})}
                         for run, outcome in (("reference", reference), ("actual", actual))}
    return result


def assert_same_results(reference: Outcome, actual: Outcome, inputs: Inputs) -> dict[str, Any]:
    """Exactly once: no committed record twice, in either run, on any output topic; then the comparison."""
    assert reference.duplicates() == actual.duplicates() == {topic: 0 for topic in actual.outputs}, \
        (reference.duplicates(), actual.duplicates())
    comparison = compare(reference, actual)
    for topic in DETERMINISTIC:
        diff = comparison[topic]
        assert (diff["missing"], diff["extra"], diff["differing"], diff["conflicting"]) == ([], [], [], []), \
            (topic, diff)
    features = comparison["features"]
    assert features["of_unaffected_users"] == [], features
    assert features["population_affected_users"] < USERS // 3, features  # most users are compared by id
    segments = comparison["segments"]
    assert (segments["missing"], segments["extra"]) == ([], []), segments
    assert segments["stable_changes_repeated_in_reference"] == 0 and segments["stable_changes"] > 100, segments
    sentinels = len(sentinel_users(actual.settings))
    assert comparison["profiles"]["ids"] == inputs.valid + sentinels  # one per distinct valid event
    for topic in TIMING_DEPENDENT[1:3]:  # recommendations and model snapshots are still produced
        assert comparison[topic]["actual"]["ids"] > 0, (topic, comparison[topic])
    assert len([key for key in reference.redis if comparable(key)]) > 300
    assert differing_keys(reference.redis, actual.redis, population_affected(reference, actual)) == []
    return comparison


# --- TaskManager crash ---------------------------------------------------------------------------

def kill_a_taskmanager(settings: Settings, job_id: str, mid_stream: int, total: int,
                       survivor_after_s: float | None = None) -> dict[str, Any]:
    """SIGKILL one TaskManager mid-stream (the cluster's supervisor starts a replacement); time the
    recovery: until the job's tasks all run again, and until new events show up in Redis (unless all
    ``total`` were there before the kill: a slow first checkpoint on a busy machine can delay the
    kill that long, and then only the first time is measured). ``survivor_after_s``: kill the other
    TaskManager too that much later, during the recovery, as the Flink 2.0.2 cleanup bug can."""
    wait_mid_stream(settings, job_id, mid_stream)
    *survivors, victim = cluster.taskmanager_pids(settings.cluster)
    checkpoints_before = cluster.checkpoint_stats(settings.cluster, job_id)["counts"]["completed"]
    started_before = cluster.supervisor_status(settings.cluster)["taskmanagers_started"]
    at_kill = progress(settings)
    killed, killed_epoch_ms = time.monotonic(), time.time() * 1000
    cluster.kill_taskmanager(settings.cluster, victim)
    if survivor_after_s is not None:
        time.sleep(survivor_after_s)
        cluster.kill_taskmanager(settings.cluster, survivors[0])
    seen_max = at_kill
    running = resumed = None
    while resumed is None and time.monotonic() - killed < 300:
        now, current = time.monotonic(), progress(settings)
        state = cluster.job_state(settings.cluster, job_id)
        assert state not in cluster.TERMINAL_STATES, f"the job ended {state} instead of recovering"
        if running is None:
            seen_max = max(seen_max, current)
            if cluster.restarts(settings.cluster, job_id) >= 1 and cluster.tasks_running(settings.cluster, job_id):
                running = now
        elif current > seen_max or seen_max >= total:
            resumed = now
        time.sleep(0.1)
    assert running is not None and resumed is not None, "the job did not recover within 300 s"
    output_s = None if seen_max >= total else round(resumed - killed, 1)
    # The JobManager's view: when it noticed the failure (RESTARTING) and when the job ran again.
    timestamps = cluster.rest(settings.cluster, f"/jobs/{job_id}")["timestamps"]
    return {"killed_pid": victim, "events_in_redis_at_kill": at_kill, "checkpoints_before_kill": checkpoints_before,
            "failure_noticed_s": round((timestamps["RESTARTING"] - killed_epoch_ms) / 1000, 1),
            "job_running_again_s": round((timestamps["RUNNING"] - killed_epoch_ms) / 1000, 1),
            "recovery_to_running_s": round(running - killed, 1), "recovery_to_output_s": output_s,
            # More than 1: another TaskManager exited too (the Flink 2.0.2 cleanup bug, docs/operations.md).
            "taskmanagers_replaced": cluster.supervisor_status(settings.cluster)["taskmanagers_started"]
            - started_before}


def test_a_killed_taskmanager_loses_nothing(cluster_settings: Settings, inputs: Inputs, reference: Outcome,
                                            tmp_path: Path, report: dict[str, Any]) -> None:
    crashed = run(cluster_settings, inputs, tmp_path, "taskmanager-kill",
                  lambda settings, job_id: kill_a_taskmanager(settings, job_id, inputs.valid * 3 // 10,
                                                              inputs.valid))
    report["taskmanager_kill"] = {**crashed.measured, "duplicates": crashed.duplicates()}
    # The attempt that was killed wrote records in open transactions: aborted, so nobody reads them.
    assert crashed.measured["final_state"] == "RUNNING" and crashed.measured["restarts"] >= 1
    assert crashed.measured["checkpoints"]["restored_from"] is not None
    report["taskmanager_kill"]["compared"] = assert_same_results(reference, crashed, inputs)
    # The TaskManager that was killed leaves the cluster (heartbeat timeout): wait, so later runs
    # are not scheduled onto it.
    cluster.wait_for_taskmanagers(cluster_settings.cluster, cluster_settings.cluster.taskmanagers)


@pytest.mark.fault_extra
def test_losing_the_other_taskmanager_during_recovery_loses_nothing(
        cluster_settings: Settings, inputs: Inputs, reference: Outcome, tmp_path: Path,
        report: dict[str, Any]) -> None:
    """What the Flink 2.0.2 cleanup bug does (docs/operations.md), forced: the surviving TaskManager
    dies 2 s into the recovery. The supervisor replaces both; the restarts wait for them."""
    crashed = run(cluster_settings, inputs, tmp_path, "both-taskmanagers-killed",
                  lambda settings, job_id: kill_a_taskmanager(settings, job_id, inputs.valid * 3 // 10,
                                                              inputs.valid, survivor_after_s=2.0))
    report["both_taskmanagers_killed"] = {**crashed.measured, "duplicates": crashed.duplicates()}
    assert crashed.measured["final_state"] == "RUNNING" and crashed.measured["taskmanagers_replaced"] == 2
    report["both_taskmanagers_killed"]["compared"] = assert_same_results(reference, crashed, inputs)
    cluster.wait_for_taskmanagers(cluster_settings.cluster, cluster_settings.cluster.taskmanagers)


# --- Redis outage ---------------------------------------------------------------------------------

def stop_redis(settings: Settings, job_id: str, mid_stream: int) -> dict[str, Any]:
    """Shut redis-server down mid-stream (saving its data, as a persistent Redis keeps it), restart it
    ``OUTAGE_S`` later, and record what the job did meanwhile."""
    wait_mid_stream(settings, job_id, mid_stream)
    client = redis.Redis.from_url(settings.redis.url)
    client.shutdown(save=True)
    client.close()
    stopped = time.monotonic()
    states = Counter[str]()
    while time.monotonic() - stopped < OUTAGE_S:
        states[cluster.job_state(settings.cluster, job_id)] += 1
        time.sleep(0.5)
    stack.up(settings)  # restarts only what is not running: Redis
    back = time.monotonic()
    at_restart = progress(settings)
    while progress(settings) <= at_restart and time.monotonic() - back < 120:
        time.sleep(0.1)
    return {"job_states_during_outage": dict(states), "events_in_redis_at_restart": at_restart,
            "restarts_during_outage": cluster.restarts(settings.cluster, job_id),
            "redis_back_to_new_writes_s": round(time.monotonic() - back, 1)}


def test_a_redis_outage_is_waited_out(cluster_settings: Settings, inputs: Inputs, reference: Outcome,
                                      tmp_path: Path, report: dict[str, Any]) -> None:
    outage = run(cluster_settings, inputs, tmp_path, "redis-outage",
                 lambda settings, job_id: stop_redis(settings, job_id, inputs.valid * 3 // 10))
    report["redis_outage"] = {**outage.measured, "duplicates": outage.duplicates()}
    assert outage.measured["final_state"] == "RUNNING"
    assert set(outage.measured["job_states_during_outage"]) <= {"RUNNING", "RESTARTING"}
    report["redis_outage"]["compared"] = assert_same_results(reference, outage, inputs)


# --- rescale through a savepoint ------------------------------------------------------------------

def test_a_rescale_through_a_savepoint_loses_and_repeats_nothing(
        cluster_settings: Settings, inputs: Inputs, reference: Outcome, tmp_path: Path,
        report: dict[str, Any]) -> None:
    """The first half of the input at parallelism 1, stop with a savepoint (its transactions commit),
    the second half resumed from it at parallelism 2: the same results as the reference run."""
    settings = for_comparison(isolated(cluster_settings))
    stack.up(settings)
    half = len(inputs.records) // 2
    publish(iter(inputs.records[:half]), settings.kafka, progress=False)
    job_id = start_unbounded(settings, tmp_path, "parallelism-1", parallelism=1)
    settle(settings, sentinels=False)
    savepoint = cluster.savepoint(settings.cluster, job_id, stop=True)
    assert Path(savepoint.removeprefix("file:")).exists()
    publish(iter(inputs.records[half:]), settings.kafka, progress=False)
    job_id = start_unbounded(settings, tmp_path, "parallelism-2", parallelism=2, savepoint=savepoint)
    end_of_input(settings, inputs)
    settle(settings, sentinels=True, job_id=job_id, sentinel_ts=inputs.sentinel_ts)
    rescaled = collect(settings, job_id, "rescale", {"savepoint": savepoint})
    report["rescale"] = {**rescaled.measured, "duplicates": rescaled.duplicates()}
    report["rescale"]["compared"] = assert_same_results(reference, rescaled, inputs)


# --- poison input ---------------------------------------------------------------------------------

def letter_identity(letter: dict[str, Any], roles: dict[str, str]) -> tuple[str, int]:
    """What identifies a redacted dead letter's record: its topic and size (its payload is redacted or
    dropped: docs/privacy.md)."""
    assert "payload_base64" not in letter and ("payload" in letter or "payload_dropped" in letter)
    return roles[letter["source"]["topic"]], letter["payload_bytes"]


def reason(record: GeneratedRecord, limits: Limits) -> str:
    if record.topic_role in CONTROL_REASONS:
        return CONTROL_REASONS[record.topic_role]
    rejection = parse_event(record.value, record.ts, limits)
    assert isinstance(rejection, Rejection)
    return rejection.reason


#: The control topics' poison and the reason each record of it must be dead-lettered with.
CONTROL_REASONS = {"rules": INVALID_RULE, "models": INVALID_SNAPSHOT}


def control_poison(ts: int) -> list[GeneratedRecord]:
    """Rule commands that cannot apply and snapshots this job did not sign (forged, pickled, cut...)."""
    deep = b"[" * 20_000 + b"]" * 20_000  # within the size limit: the parser must cope
    commands = [b"", b"null", b"{", deep, b'{"command": "add", "segment": ' + deep + b"}", b"\x80\x81",
                b'{"command": "add", "segment": {"id": "x", "version": 1, "when": {"no_such_condition": 1}}}',
                b'{"command": "delete"}', b'{"command": "add", "segment": {"id": "' + b"y" * 70_000 + b'"}}']
    snapshots = [value for case, value in snapshot_refusals().items() if case != "oversized"]  # oversized: its
    # limit there is this job's too, and trailing spaces are valid JSON
    return [GeneratedRecord(role, None, value, ts, "malformed")
            for role, values in (("rules", commands), ("models", snapshots)) for value in values]


def test_poison_input_goes_to_the_dead_letter_topic_without_a_restart(
        cluster_settings: Settings, tmp_path: Path, report: dict[str, Any]) -> None:
    settings = for_comparison(isolated(cluster_settings))  # every valid event counted: no consent gating
    stack.up(settings)
    limits = Limits(settings.validation.max_payload_bytes, settings.validation.min_event_time_ms,
                    settings.validation.max_future_skew_ms)
    generator = EventGenerator(replace(settings.generator, events=3000, users=150, malformed_share=0,
                                       duplicate_share=0))
    valid = list(generator.records())
    bad = [*poison(valid, POISON, settings.generator.seed, limits), *control_poison(valid[len(valid) // 2].ts)]
    mixed = [*valid, *bad]
    order = sorted(range(len(mixed)), key=lambda i: (mixed[i].ts, sha256(str(i).encode()).digest()))
    published = publish((mixed[i] for i in order), settings.kafka, progress=False)
    started = time.monotonic()
    job_id = run_bounded(settings, published.end_offsets, tmp_path, "poison", parallelism=2)
    assert cluster.wait_for_state(settings.cluster, job_id, cluster.TERMINAL_STATES) == "FINISHED"
    history = cluster.rest(settings.cluster, f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    assert history == [], history[0]["exceptionName"] if history else None

    topics = settings.kafka.topics
    letters = {letter["id"]: letter for letter in (json.loads(record.value) for record in read_topic(
        settings.kafka.bootstrap_servers, topics.deadletter.name, topics.deadletter.partitions,
        expected=len(bad)))}
    roles = {getattr(topics, role).name: role for role in ("behavior", "profile", "consent", *CONTROL_REASONS)}
    got = Counter(letter_identity(letter, roles) for letter in letters.values())
    assert got == Counter((record.topic_role, len(record.value)) for record in bad)
    reasons = Counter(letter["reason"] for letter in letters.values())
    assert reasons == Counter(reason(record, limits) for record in bad)
    assert set(reasons) <= {*REASONS, *CONTROL_REASONS.values()}
    assert progress(settings) == len(valid)
    report["poison"] = {"valid": len(valid), "poison": len(bad), "dead_letters": len(letters),
                        "reasons": dict(reasons), "restarts": len(history),
                        "job_seconds": round(time.monotonic() - started, 1)}

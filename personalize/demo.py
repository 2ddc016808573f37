"""``make demo``: stack up, publish generated events, run the job over them, summarise the results."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import IO, Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from connectors.redis_client import connect
from connectors.redis_keys import (
    experiment_metrics_key,
    layout_patterns,
    models_current_key,
    models_instances_key,
    segment_counts_key,
    user_features_pattern,
    user_profile_pattern,
    user_recs_info_key,
)
from jobs.personalize_job import source_spec, start_job, stop_with_savepoint
from jobs.pipeline import flink_log_dir
from personalize import stack
from personalize.generator import EventGenerator
from personalize.kafka_tools import read_topic
from personalize.paths import resolve
from personalize.publish import Progress, publish, write_personas
from personalize.settings import Settings, Topic


@dataclass
class Summary:
    published: int = 0
    publish_seconds: float = 0.0
    job_seconds: float = 0.0
    users: int = 0
    events_in_profiles: int = 0
    profile_records: int = 0
    users_with_features: int = 0
    feature_vectors: int = 0
    late_events: int = 0
    segment_changes: int = 0
    segment_members: dict[str, int] = field(default_factory=dict)
    dead_letters: Counter[str] = field(default_factory=Counter)
    recommendation_lists: int = 0
    users_with_recommendations: int = 0
    model_snapshots: int = 0
    model: dict[str, str] = field(default_factory=dict)
    """The newest snapshot's summary in Redis (version, intent AUC, ...); empty with models off."""
    drift_events: int = 0
    erasures: Counter[str] = field(default_factory=Counter)
    """Erasure confirmations by reason (consent withdrawals, erasure requests)."""
    experiments: list[dict[str, Any]] = field(default_factory=list)
    """The latest ``experiments.metrics`` record of each experiment (Redis)."""

    @property
    def events_per_second(self) -> float:
        return self.published / self.job_seconds if self.job_seconds else 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "published": self.published, "publish_seconds": round(self.publish_seconds, 2),
            "job_seconds": round(self.job_seconds, 2), "events_per_second": round(self.events_per_second),
            "users": self.users, "events_in_profiles": self.events_in_profiles,
            "profile_records": self.profile_records, "users_with_features": self.users_with_features,
            "feature_vectors": self.feature_vectors, "late_events": self.late_events,
            "segment_changes": self.segment_changes, "segment_members": self.segment_members,
            "dead_letters": dict(self.dead_letters), "recommendation_lists": self.recommendation_lists,
            "users_with_recommendations": self.users_with_recommendations,
            "model_snapshots": self.model_snapshots, "model": self.model, "drift_events": self.drift_events,
            "erasures": dict(self.erasures), "experiments": self.experiments,
        }


def clear_redis(settings: Settings) -> int:
    """Delete this deployment's keys so a fresh run starts from nothing: only keys of the layout in
    docs/redis.md under ``redis.key_prefix``, never anything else in the database."""
    client = connect(settings.redis)
    deleted = 0
    for pattern in layout_patterns(settings.redis.key_prefix):
        batch = []
        for key in client.scan_iter(pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(client.unlink(*batch))  # type: ignore[arg-type]
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))  # type: ignore[arg-type]
    return deleted


def distinct_records(settings: Settings, topic: Topic, **read_options: Any) -> dict[str, dict[str, Any]]:
    """Committed records of ``topic`` by their deterministic ``id``."""
    records = read_topic(settings.kafka.bootstrap_servers, topic.name, topic.partitions,
                         **read_options)
    return {value["id"]: value for value in (json.loads(record.value) for record in records)}


def read_back(settings: Settings, summary: Summary) -> None:
    client = connect(settings.redis, decode_responses=True)
    prefix, topics = settings.redis.key_prefix, settings.kafka.topics
    pipe = client.pipeline(transaction=False)
    keys = list(client.scan_iter(user_profile_pattern(prefix), count=1000))
    for key in keys:
        pipe.hget(key, "total")
    summary.users = len(keys)
    summary.events_in_profiles = sum(int(total or 0) for total in pipe.execute())
    summary.users_with_features = sum(1 for _ in client.scan_iter(user_features_pattern(prefix), count=1000))
    summary.profile_records = len(distinct_records(settings, topics.profiles, expected=summary.events_in_profiles))
    summary.feature_vectors = len(distinct_records(settings, topics.features))
    summary.late_events = len(distinct_records(settings, topics.late, idle_timeout_s=1.0))
    summary.segment_changes = len(distinct_records(settings, topics.segments))
    counts: dict[str, str] = client.hgetall(segment_counts_key(prefix))  # type: ignore[assignment]
    summary.segment_members = {segment: int(count) for segment, count in sorted(counts.items())}
    letters = distinct_records(settings, topics.deadletter)
    summary.dead_letters = Counter(letter["reason"] for letter in letters.values())
    summary.recommendation_lists = len(distinct_records(settings, topics.recommendations, idle_timeout_s=1.0))
    summary.users_with_recommendations = sum(
        1 for _ in client.scan_iter(user_recs_info_key(prefix, "*"), count=1000))
    summary.model_snapshots = len(distinct_records(settings, topics.models, idle_timeout_s=1.0))
    summary.model = client.hgetall(models_current_key(prefix))  # type: ignore[assignment]
    summary.drift_events = len(distinct_records(settings, topics.drift, idle_timeout_s=1.0))
    erasures = distinct_records(settings, topics.erasures, idle_timeout_s=1.0)
    summary.erasures = Counter(confirmation["reason"] for confirmation in erasures.values())
    for key in sorted(client.scan_iter(experiment_metrics_key(prefix, "*"), count=100)):
        summary.experiments.append(json.loads(client.get(key)))  # type: ignore[arg-type]


#: Printed under the summary so a second run's slightly different numbers do not read as a bug.
VARIANCE_NOTE = (
    "note: the counts vary a little from run to run (same seed): a user's consent and identity events\n"
    "arrive on other topics than their behaviour and are applied in arrival order, and the R/F/M scores\n"
    "depend on when the instances last shared their population through Redis (docs/operations.md,\n"
    "\"Determinism\"; docs/privacy.md).")


def arm_summary(arm: dict[str, Any]) -> str:
    """One arm of an ``experiments.metrics`` record in words: users, conversion rate, lift against control."""
    rate = arm["conversion_rate"]
    text = f"{arm['exposed_users']:,}, {'-' if rate is None else f'{rate:.1%}'}"
    versus = arm["versus_control"]
    if versus and versus["relative_lift"] is not None and versus["relative_lift_ci"]:
        low, high = versus["relative_lift_ci"]
        text += f", {versus['relative_lift']:+.1%} [{low:+.1%}, {high:+.1%}]"
    if versus and versus["p_value"] is not None:
        text += f", p {versus['p_value']:.3f}"
    return text


def print_summary(summary: Summary, out: IO[str]) -> None:
    rows = [
        ("events published", f"{summary.published:,} in {summary.publish_seconds:.1f} s"),
        ("job run (MiniCluster start included)", f"{summary.job_seconds:.1f} s, "
                                                 f"{summary.events_per_second:,.0f} events/s"),
        ("users with a profile (Redis)", f"{summary.users:,}"),
        ("events counted in profiles (Redis)", f"{summary.events_in_profiles:,}"),
        ("distinct profile updates (Kafka)", f"{summary.profile_records:,}"),
        ("users with features (Redis)", f"{summary.users_with_features:,}"),
        ("distinct feature vectors (Kafka)", f"{summary.feature_vectors:,}"),
        ("late events (Kafka)", f"{summary.late_events:,}"),
        ("distinct segment changes (Kafka)", f"{summary.segment_changes:,}"),
        ("segment memberships now (Redis)", f"{sum(summary.segment_members.values()):,}"),
    ]
    rows += [(f"  {segment}", f"{count:,}") for segment, count in summary.segment_members.items()]
    rows += [
        ("dead letters (Kafka)", f"{sum(summary.dead_letters.values()):,}"),
    ]
    rows += [(f"  {reason}", f"{count:,}") for reason, count in summary.dead_letters.most_common()]
    rows += [
        ("recommendation lists (Kafka)", f"{summary.recommendation_lists:,}"),
        ("users with a list (Redis)", f"{summary.users_with_recommendations:,}"),
        ("model snapshots (Kafka)", f"{summary.model_snapshots:,}"),
    ]
    if summary.model:
        model = summary.model
        rows.append(("newest model (Redis)", f"v{model.get('version')}, intent AUC "
                     f"{float(model.get('intent_auc', 0)):.3f}, log loss {float(model.get('intent_log_loss', 0)):.3f}"))
    rows.append(("drift events (Kafka)", f"{summary.drift_events:,}"))
    rows.append(("erasures confirmed (Kafka)", f"{sum(summary.erasures.values()):,}"))
    rows += [(f"  {reason}", f"{count:,}") for reason, count in summary.erasures.most_common()]
    for experiment in summary.experiments:
        rows.append((f"experiment {experiment['experiment_id']} (Redis)", "exposed users, conversion rate, lift"))
        rows += [(f"  {arm['arm']}", arm_summary(arm)) for arm in experiment["arms"]]
    width = max(len(label) for label, _ in rows)
    print("\n== personalize demo summary ==", file=out)
    for label, value in rows:
        print(f"{label:<{width}}  {value}", file=out)
    print(VARIANCE_NOTE, file=out)


class JobProgress:
    """A progress bar of the events a running job has read: its Kafka source's committed group offsets
    against the published end offsets. The source commits at each checkpoint, so the bar moves every
    ``job.checkpoint_interval_ms``; a broker that does not answer only leaves it where it was."""

    def __init__(self, settings: Settings, end_offsets: dict[str, dict[int, int]], stream: IO[str] | None = None,
                 interval_s: float = 1.0) -> None:
        self.kafka = settings.kafka
        self.end_offsets = end_offsets
        self.total = sum(sum(partitions.values()) for partitions in end_offsets.values())
        self.bar = Progress(self.total, "job", stream)
        self.interval_s = interval_s
        self.done = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="job-progress", daemon=True)

    def read(self, admin: KafkaAdminClient) -> int:
        """Events up to the committed offsets, within the published ones."""
        done = 0
        group = self.kafka.group_id
        for partition, committed in admin.list_group_offsets(group).get(group, {}).items():
            end = self.end_offsets.get(partition.topic, {}).get(partition.partition)
            if end is not None and committed.offset > 0:
                done += min(committed.offset, end)
        return done

    def _follow(self) -> None:
        admin: KafkaAdminClient | None = None
        while not self.stopped.wait(self.interval_s):
            try:
                admin = admin or KafkaAdminClient(bootstrap_servers=self.kafka.bootstrap_servers)
                self.done = self.read(admin)
            except KafkaError:
                continue
            self.bar.update(self.done)
        if admin is not None:
            admin.close()

    def extend(self, end_offsets: dict[str, dict[int, int]]) -> None:
        """More events were published: wait for these end offsets too."""
        for topic, partitions in end_offsets.items():
            known = self.end_offsets.setdefault(topic, {})
            for partition, end in partitions.items():
                known[partition] = max(known.get(partition, 0), end)
        self.total = self.bar.total = sum(sum(partitions.values()) for partitions in self.end_offsets.values())

    def wait_all_read(self, job: Any, timeout_s: float) -> None:
        """Until the job has committed the offsets of every published event (checked once a second);
        a job that ended or failed first, or the timeout, raises."""
        deadline = time.monotonic() + timeout_s
        while self.done < self.total:
            status = job.get_job_status().result().name
            if status not in ("CREATED", "INITIALIZING", "RUNNING", "RESTARTING"):
                raise RuntimeError(f"the demo job stopped ({status}) before reading its input (its log is named above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo job read {self.done:,} of {self.total:,} events in {timeout_s:.0f} s")
            time.sleep(self.interval_s)

    def __enter__(self) -> JobProgress:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stopped.set()
        self.thread.join()
        self.bar.close(self.total if error is None else self.done)  # a bounded run that ended read them all


#: The longest the demo waits for its job to read what it published.
DEMO_TIMEOUT_S = 1800.0
#: The share of the demo's events published only once the user operator scores with a model snapshot,
#: so model segments have members however fast the machine ran the rest.
DEMO_SCORED_TAIL = 0.1
#: The longest the demo waits for the first model snapshot to reach the user operator.
MODEL_WAIT_S = 180.0
#: Run by the demo when the settings define no experiment: popularity lists against personalized ones.
DEMO_EXPERIMENT = {"id": "demo-recs", "version": 1, "name": "Personalized lists vs popularity", "control": "control",
                   "conversion_window": "24h",
                   "arms": [{"id": "control", "weight": 1, "treatment": "popularity"},
                            {"id": "personalized", "weight": 1, "treatment": "personalized"}]}


def wait_for_scoring_model(settings: Settings) -> int | None:
    """The model version an instance of the user operator loaded (Redis ``{models}:instances``), once
    one has; None when none did within :data:`MODEL_WAIT_S` (too little was learned for a snapshot)."""
    client = connect(settings.redis, decode_responses=True)
    deadline = time.monotonic() + MODEL_WAIT_S
    try:
        while time.monotonic() < deadline:
            loaded: dict[str, str] = client.hgetall(models_instances_key(settings.redis.key_prefix))  # type: ignore[assignment]
            if loaded:
                return max(int(value.split(":")[1]) for value in loaded.values())
            time.sleep(0.5)
        return None
    finally:
        client.close()


def run_demo(settings: Settings, out: IO[str] = sys.stdout) -> Summary:
    stack.require_java()
    if not settings.experiments.definitions and settings.recommendations.enabled:
        settings = replace(settings, experiments=replace(settings.experiments, definitions=(DEMO_EXPERIMENT,)))
        print(f"experiment {DEMO_EXPERIMENT['id']}: popularity lists (control) against personalized ones, half the "
              f"users each (define experiments.definitions to run your own)", file=out)
    info = stack.up(settings)
    settings = stack.settings_for(settings, info)
    print(f"stack: broker {info.bootstrap_servers}, redis {info.redis_url} (run dir {info.run_dir})", file=out)
    stack.reset_topics(settings)
    clear_redis(settings)
    generator = EventGenerator(settings.generator)
    personas_path = resolve(settings.stack.run_dir) / "personas.json"
    write_personas(generator.personas(), personas_path)
    print(f"planted personas of {settings.generator.users:,} users: {personas_path}", file=out)
    records = list(generator.records())
    tail = int(len(records) * DEMO_SCORED_TAIL) if settings.models.enabled else 0
    published = publish(records[:len(records) - tail], settings.kafka, total=len(records) - tail)
    summary = Summary(published=published.count, publish_seconds=published.seconds)
    print(f"running the job on a local MiniCluster (parallelism {settings.job.parallelism}); its log: "
          f"{flink_log_dir(settings)}", file=out)
    # Unbounded, then drained: a bounded source would leave the model snapshot topic unread, and no user
    # would be scored. Drained, the run ends as a bounded one does (docs/models.md, "Bounded runs").
    started = time.monotonic()
    with JobProgress(settings, published.end_offsets) as progress:
        job = start_job(settings, replace(source_spec(settings, "earliest", None), read_back=False))
        try:
            progress.wait_all_read(job, DEMO_TIMEOUT_S)
            if tail:
                version = wait_for_scoring_model(settings)
                print(f"\nthe user operator scores with model v{version or '?'}: publishing the last "
                      f"{tail:,} events", file=out)
                rest = publish(records[len(records) - tail:], settings.kafka, total=tail)
                summary.published += rest.count
                summary.publish_seconds += rest.seconds
                progress.extend(rest.end_offsets)
                progress.wait_all_read(job, DEMO_TIMEOUT_S)
            stop_with_savepoint(job, (resolve(settings.stack.run_dir) / "savepoints" / "demo").as_uri(), drain=True)
        except BaseException:
            job.cancel().result()
            raise
    summary.job_seconds = time.monotonic() - started
    read_back(settings, summary)
    print_summary(summary, out)
    return summary

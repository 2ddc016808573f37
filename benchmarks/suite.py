"""Throughput, latency and state size of the job, measured in one run on one machine.

Stages, all over the same generated events (``--events N``):

  1. pure    the project's operators (validation, dedup + profile, features, online models with
             their trainer, segment rules, recommendations, with their state codecs) in a plain
             Python loop: the ceiling without Flink (benchmarks/pure.py);
  2. trivial a pass-through PyFlink job (Kafka -> keyed counter -> Kafka) with the job's connectors,
             at parallelism 1 and 2;
  3. full    the personalization job, at parallelism 1 and 2;
  4. latency event publish -> segment change visible in Redis, p50/p95/p99, with the full job
             running unbounded and events offered at half the full job's measured rate;
  5. state   keyed state bytes per active user (the codecs' bytes) and Redis bytes per user;
  6. cluster the job submitted to the bundled standalone cluster with 1, then 2 TaskManagers of one
             slot each (parallelism 1, then 2): each TaskManager runs its own Python interpreter,
             which the MiniCluster's subtasks share, so this is where scale-out shows; with the
             cores the machine and each local process role used while the job ran (benchmarks/cpu.py).

Jobs run on a local MiniCluster against the local stack (started if needed). The stack's topics are
emptied before each job, as ``personalize demo`` does: do not point it at a stack another job uses
(set ``PERSONALIZE__STACK__RUN_DIR`` and the ports for a separate one). Redis keys go under
``bench-<time>-<stage>-p<N>:`` prefixes and are deleted afterwards. Each job's rate is given twice:
over its running time (from the job reaching RUNNING to its end: the rate the targets use) and over
the wall time including the MiniCluster start. Writes JSON (``--json``) and a PNG plot next to it;
docs/performance.md holds the results measured here.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import redis

from benchmarks.common import RESULTS, machine
from benchmarks.cpu import cpu_used, read_cpu
from benchmarks.probe import BrokerProbe, stamp_at_append
from connectors.redis_keys import segment_changes_key
from personalize import stack
from personalize.generator import EventGenerator, GeneratedRecord
from personalize.paths import ROOT
from personalize.publish import PublishResult, publish
from personalize.settings import Settings

STAGES = ("pure", "trivial", "full", "per_record", "latency", "state", "cluster")
PARALLELISMS = (1, 2)
#: The latency stage's first seconds of offered load, reported apart from the steady state: the job's
#: Python workers set up on their first records (rules compiled, the population restored, the first
#: model snapshot loaded), and the events offered meanwhile queue behind that (p99 near 1 s, measured).
WARMUP_S = 10.0
TARGETS = {"full_vs_trivial_min": 1.0, "full_p1_min": 5000, "pure_min": 10_000, "latency_p99_ms_max": 500,
           "state_bytes_per_user_max": 2048, "cluster_2_vs_1_min": 1.7}
USER_KEY_KINDS = ("recs:info", "profile", "features", "segments", "model", "recs")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=20_000, help="generated events per stage (default 20000)")
    parser.add_argument("--json", default=str(RESULTS / "suite.json"), help="result file (default %(default)s)")
    parser.add_argument("--plot", help="PNG plot (default: the --json path with .png)")
    parser.add_argument("--only", action="append", choices=STAGES,
                        help="run only this stage (repeatable); latency needs full's rate or --rate")
    parser.add_argument("--rate", type=float, help="offered rate for the latency stage (default: half of full's)")
    parser.add_argument("--latency-seconds", type=float, default=60.0,
                        help="how long to offer events in the latency stage (default 60; the first "
                             f"{WARMUP_S:.0f} s warm up and are reported apart)")
    parser.add_argument("--latency-event-time", choices=("live", "generated"), default="live",
                        help="live (default): the latency stage's events happen as they are offered, as in "
                             "production; generated: the generator's 30 days pass within the run (a replay "
                             "at ~40,000x, with a month of timers and model snapshots in a minute)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    stages = tuple(args.only or STAGES)
    if "latency" in stages and "full" not in stages and not args.rate:
        print("personalize bench: the latency stage needs the full job's rate: add --only full or --rate R",
              file=sys.stderr)
        return 2
    result = Suite(settings, args.events, stages, args.rate, args.latency_seconds,
                   live_event_time=args.latency_event_time == "live").run()
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot_path = Path(args.plot) if args.plot else out.with_suffix(".png")
    plotted = plot(result, plot_path)
    print(summary(result))
    print(f"wrote {out}" + (f" and {plot_path}" if plotted else " (no plot: matplotlib is not installed)"))
    return 0


def clear_redis(settings: Settings) -> None:
    from personalize.demo import clear_redis as clear  # imports the job (PyFlink): not for `--help`

    clear(settings)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def spread(values: Sequence[float]) -> dict[str, int]:
    return {name: round(percentile(values, share)) for name, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


def counted(values: Sequence[float]) -> dict[str, int]:
    """How many, and their spread when there are any."""
    return {"samples": len(values), **(spread(values) if values else {})}


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+uncommitted changes" if dirty else "")


def timed_job(submit: Callable[[], Any]) -> dict[str, float]:
    """Run a job to its end; seconds of wall time (MiniCluster start included) and of running time."""
    from pyflink.common.job_status import JobStatus

    started = time.monotonic()
    client = submit()
    result = client.get_job_execution_result()
    running_at = None
    while not result.done():
        if running_at is None and client.get_job_status().result() == JobStatus.RUNNING:
            running_at = time.monotonic()
        time.sleep(0.05)
    result.result()  # raises if the job failed
    ended = time.monotonic()
    return {"wall_s": ended - started, "running_s": ended - (running_at or started)}


class Suite:
    def __init__(self, settings: Settings, events: int, stages: Sequence[str], rate: float | None,
                 latency_seconds: float, live_event_time: bool = True) -> None:
        self.base = settings
        self.live_event_time = live_event_time
        self.events = events
        self.stages = stages
        self.rate = rate
        self.latency_seconds = latency_seconds
        self.run_id = dt.datetime.now(dt.UTC).strftime("%H%M%S")
        self.records: list[GeneratedRecord] = []
        self.step = 0
        chosen = set(stages)
        self.total_steps = (2 * bool(chosen & {"pure", "state"}) + 2 * ("trivial" in chosen)
                            + 3 * bool(chosen & {"full", "state"}) + ("per_record" in chosen) + ("latency" in chosen)
                            + 2 * ("cluster" in chosen))

    def stage(self, title: str) -> None:
        self.step += 1
        say(f"[{self.step}/{self.total_steps}] {title}")

    def run(self) -> dict[str, Any]:
        settings = self.base
        generator = replace(settings.generator, events=self.events)
        self.records = list(EventGenerator(generator).records())
        result: dict[str, Any] = {
            "benchmark": "suite", "date": dt.date.today().isoformat(), "commit": git_commit(),
            "events": self.events, "users": generator.users,
            "machine": {**machine(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
            "settings": {"execution_mode": settings.job.execution_mode, "micro_batch_ms": settings.job.micro_batch_ms,
                         "checkpoint_interval_ms": settings.job.checkpoint_interval_ms,
                         "redis_flush_interval_ms": settings.redis.flush_interval_ms,
                         "features": settings.features.enabled, "rules": settings.rules.enabled,
                         "models": settings.models.enabled, "recommendations": settings.recommendations.enabled},
        }
        if "pure" in self.stages or "state" in self.stages:
            from benchmarks.pure import replay

            self.stage("pure logic in a Python loop")
            pure = replay(self.records, settings)
            say(f"      {pure['events_per_s']:,} events/s")
            self.stage("pure logic in a Python loop, values decoded and encoded per call (no cache)")
            uncached = replay(self.records, settings, cached=False)
            say(f"      {uncached['events_per_s']:,} events/s")
            result["pure"] = {key: value for key, value in pure.items() if key != "state_bytes"}
            result["pure"]["uncached"] = {key: uncached[key] for key in ("events_per_s", "us_per_event")}
            result["state"] = {"keyed_bytes_per_user": pure["state_bytes"]}
        if {"trivial", "full", "latency", "state", "cluster"} & set(self.stages):
            stack.require_java()
            self.base = stack.settings_for(settings, stack.up(settings))
        if "trivial" in self.stages:
            result["trivial"] = {f"p{p}": self.trivial(p) for p in PARALLELISMS}
        if "full" in self.stages or "state" in self.stages:
            result["full"] = {f"p{p}": self.full(p, keep_redis=p == PARALLELISMS[-1]) for p in PARALLELISMS}
            result.setdefault("state", {})["redis_bytes_per_user"] = self.redis_bytes(self.prefix("full", 2))
        if "per_record" in self.stages:  # the same job called once per event, next to the micro-batched one
            result["per_record"] = {"p1": self.full(1, keep_redis=False, micro_batch_ms=0)}
        if "cluster" in self.stages:
            result["cluster"] = {f"tm{count}": self.standalone(count) for count in (1, 2)}
        if "latency" in self.stages:
            rate = self.rate or 0.5 * result["full"][f"p{self.base.job.parallelism}"]["events_per_s"]
            result["latency"] = self.latency(rate)
        result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        result["targets"] = targets(result)
        return result

    def prefix(self, stage: str, parallelism: int) -> str:
        return f"bench-{self.run_id}-{stage}-p{parallelism}"

    def fresh_input(self) -> PublishResult:
        """Empty topics holding exactly the benchmark's events (every job stage reads the same input)."""
        stack.reset_topics(self.base)
        return publish(self.records, self.base.kafka, total=len(self.records))

    def trivial(self, parallelism: int) -> dict[str, Any]:
        from benchmarks.trivial_job import start
        from jobs.personalize_job import source_spec

        self.stage(f"trivial job (Kafka -> keyed counter -> Kafka), parallelism {parallelism}")
        settings = replace(self.base, job=replace(self.base.job, parallelism=parallelism))
        spec = source_spec(settings, "earliest", self.fresh_input().end_offsets)
        return self.report(timed_job(lambda: start(settings, spec, self.prefix("trivial", parallelism))))

    def full(self, parallelism: int, keep_redis: bool, micro_batch_ms: int | None = None) -> dict[str, Any]:
        """The personalization job; ``micro_batch_ms``: instead of the configured ``job.micro_batch_ms``."""
        from jobs.personalize_job import source_spec, start_job

        batch_ms = self.base.job.micro_batch_ms if micro_batch_ms is None else micro_batch_ms
        per_record = batch_ms == 0
        calls = "per record" if per_record else f"micro-batches of {batch_ms} ms"
        self.stage(f"full job, parallelism {parallelism}, {calls}")
        name = self.prefix("per-record" if per_record else "full", parallelism)
        settings = replace(self.base, job=replace(self.base.job, parallelism=parallelism, micro_batch_ms=batch_ms),
                           kafka=replace(self.base.kafka, transactional_id_prefix=name),
                           redis=replace(self.base.redis, key_prefix=f"{name}:"))
        clear_redis(settings)
        spec = source_spec(settings, "earliest", self.fresh_input().end_offsets)
        try:
            return self.report(timed_job(lambda: start_job(settings, spec)))
        finally:
            if not keep_redis:
                clear_redis(settings)

    def standalone(self, taskmanagers: int) -> dict[str, Any]:
        """The job on the bundled standalone cluster, ``taskmanagers`` TaskManagers of one slot each, at
        parallelism ``taskmanagers``; the cluster is started for the run and stopped after it."""
        from personalize import cluster

        self.stage(f"standalone cluster, {taskmanagers} TaskManager(s), parallelism {taskmanagers}")
        name = self.prefix("cluster", taskmanagers)
        run_dir = Path(self.base.stack.run_dir) / "bench-cluster"
        settings = replace(self.base, job=replace(self.base.job, parallelism=taskmanagers),
                           kafka=replace(self.base.kafka, transactional_id_prefix=name),
                           redis=replace(self.base.redis, key_prefix=f"{name}:"),
                           cluster=replace(self.base.cluster, run_dir=str(run_dir), taskmanagers=taskmanagers,
                                           slots_per_taskmanager=1, supervise=False))
        if cluster.status(settings.cluster)["running"]:
            raise cluster.ClusterError(f"a cluster already answers at {cluster.status(settings.cluster)['rest']}: "
                                       "stop it first (personalize cluster down)")
        clear_redis(settings)
        ends = run_dir / f"{name}-ends.json"
        run_dir.mkdir(parents=True, exist_ok=True)
        ends.write_text(json.dumps(self.fresh_input().end_offsets))
        config = cluster.job_config(settings, run_dir / f"{name}.yaml")
        cluster.up(settings.cluster)
        try:
            started = time.monotonic()
            job_id = cluster.submit(settings, ["--config", str(config), "--start", "earliest", "--end-offsets",
                                               str(ends)])
            timeout_s = 600 + self.events / 20
            cluster.wait_for_state(settings.cluster, job_id, {"RUNNING", *cluster.TERMINAL_STATES}, timeout_s=timeout_s)
            running = read_cpu()
            state = cluster.wait_for_state(settings.cluster, job_id, cluster.TERMINAL_STATES, timeout_s=timeout_s)
            cores = cpu_used(running, read_cpu())
            wall_s = time.monotonic() - started
            if state != "FINISHED":
                raise cluster.ClusterError(f"the benchmark job ended {state}; see the logs in {run_dir / 'log'}")
            stamps = cluster.rest(settings.cluster, f"/jobs/{job_id}")["timestamps"]
            result = self.report({"running_s": (stamps["FINISHED"] - stamps["RUNNING"]) / 1000, "wall_s": wall_s})
            if cores:
                say(f"      CPU while running: {cores['busy']} of {os.cpu_count()} cores busy; "
                    + ", ".join(f"{role} {used}" for role, used in cores.items() if role != "busy"))
            return {**result, "cpu_cores": cores}
        finally:
            cluster.down(settings.cluster)
            clear_redis(settings)

    def report(self, timing: dict[str, float]) -> dict[str, Any]:
        rates = {"events_per_s": round(self.events / timing["running_s"]),
                 "events_per_s_wall": round(self.events / timing["wall_s"])}
        say(f"      {rates['events_per_s']:,} events/s running, {rates['events_per_s_wall']:,} with start-up "
            f"({timing['wall_s']:.1f} s)")
        return {**{key: round(value, 2) for key, value in timing.items()}, **rates}

    def redis_bytes(self, name: str) -> dict[str, Any]:
        """``MEMORY USAGE`` of every key the full job wrote, per user (all keys / users with a profile)."""
        self.stage("Redis bytes per user")
        settings = replace(self.base, redis=replace(self.base.redis, key_prefix=f"{name}:"))
        client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
        prefix = settings.redis.key_prefix
        keys = list(client.scan_iter(f"{prefix}*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        by_kind: dict[str, int] = defaultdict(int)
        users = 0
        for key, size in zip(keys, pipe.execute(), strict=True):
            kind = key_kind(key[len(prefix):])
            by_kind[kind] += int(size or 0)
            users += kind == "user:{k}:profile"
        clear_redis(settings)
        total = sum(by_kind.values())
        per_user = {kind: round(size / max(users, 1)) for kind, size in sorted(by_kind.items())}
        say(f"      {total / max(users, 1):,.0f} bytes per user over {users:,} users")
        return {"users": users, "keys": len(keys), "total_bytes": total,
                "bytes_per_user": round(total / max(users, 1)), "by_key": per_user}

    def latency(self, rate: float) -> dict[str, Any]:
        """Offer events at ``rate`` to the running job; per segment change caused by an event, the
        time from handing the event to Kafka to the change's entry in the Redis stream (its id is the
        Redis server's clock, on this machine)."""
        from pyflink.common.job_status import JobStatus

        from jobs.personalize_job import source_spec, start_job

        parallelism = self.base.job.parallelism
        self.stage(f"latency at {rate:,.0f} events/s for {self.latency_seconds:.0f} s, parallelism {parallelism}")
        name = self.prefix("latency", parallelism)
        settings = replace(self.base, kafka=replace(self.base.kafka, transactional_id_prefix=name),
                           redis=replace(self.base.redis, key_prefix=f"{name}:", changes_stream_maxlen=10_000_000))
        clear_redis(settings)
        stack.reset_topics(settings)
        stamp_at_append(settings.kafka)
        count = int(rate * self.latency_seconds)
        generator = replace(settings.generator, events=count, seed=settings.generator.seed + 1)
        sent: dict[str, float] = {}
        looped = StitchingLoop()

        def on_send(record: GeneratedRecord, at: float) -> None:
            if record.kind == "valid":
                event = json.loads(record.value)
                sent[event["event_id"]] = at
                looped.observe(event)

        client = start_job(settings, source_spec(settings, "earliest", None))
        probe = BrokerProbe(settings.kafka)
        try:
            while client.get_job_status().result() != JobStatus.RUNNING:
                time.sleep(0.1)
            time.sleep(5)  # Python workers and connectors finish starting
            probe.start()
            started = time.time()
            records: Iterable[GeneratedRecord] = EventGenerator(generator).records()
            if self.live_event_time:
                records = live(list(records), int(started * 1000), self.latency_seconds)
            publish(records, settings.kafka, total=count, rate=rate, on_send=on_send)
            offered_s = time.time() - started
            changes = drained(redis.Redis.from_url(settings.redis.url, decode_responses=True),
                              segment_changes_key(settings.redis.key_prefix))
        finally:
            probe.stop()
            client.cancel().result()
            clear_redis(settings)
        warmup_end = started + min(WARMUP_S, self.latency_seconds / 3)
        # Per change: publish -> Redis, split at the moment the job emitted it (its processing time):
        # publish -> job (Kafka, source, the operators) and job -> Redis (the writer's batching).
        measured = [Measured(stream_ms - 1000 * sent[event_id], emitted_ms - 1000 * sent[event_id],
                             stream_ms - emitted_ms, sent[event_id] - started, event_id in looped.event_ids, change)
                    for stream_ms, emitted_ms, event_id, change in changes if event_id in sent]
        # Per event offered: publish -> readable by a plain consumer (the broker's and the machine's share).
        readable = sorted((at - started, 1000 * (probe.seen[event_id] - at))
                          for event_id, at in sent.items() if event_id in probe.seen)
        steady_from = warmup_end - started
        kept = [change for change in measured if change.at >= steady_from]
        # The same split at the broker's append time: the load generator's share, and the rest.
        appended = probe.appended
        to_append = [1000 * (appended[event_id] - sent[event_id]) for event_id in sent
                     if event_id in appended and sent[event_id] - started >= steady_from]
        append_to_redis = [stream_ms - 1000 * appended[event_id] for stream_ms, _, event_id, _ in changes
                           if event_id in appended and event_id in sent and sent[event_id] - started >= steady_from]
        warmup = [change.total for change in measured if change.at < steady_from]
        if not kept:
            return {"offered_rate": round(rate), "samples": 0}
        millis = [change.total for change in kept]
        direct = [change.total for change in kept if not change.looped]
        through_loop = [change.total for change in kept if change.looped]
        report = {
            "event_time": "live" if self.live_event_time else "generated",
            "offered_rate": round(rate), "achieved_rate": round(count / offered_s), "seconds": self.latency_seconds,
            "parallelism": parallelism, "samples": len(millis),
            "p50_ms": round(percentile(millis, 0.50)), "p95_ms": round(percentile(millis, 0.95)),
            "p99_ms": round(percentile(millis, 0.99)), "max_ms": round(max(millis)),
            "mean_ms": round(statistics.mean(millis)),
            # Changes of events that take the identity-stitching loop (an identify, and a stitched
            # visitor's later anonymous events) cross the broker twice, and with an exactly-once
            # loop wait for a checkpoint there (docs/privacy.md): also apart.
            "handover_delivery": self.base.privacy.handover_delivery,
            "not_through_identity_loop": counted(direct),
            "through_identity_loop": counted(through_loop),
            "to_job_ms": spread([change.to_job for change in kept]),
            "job_to_redis_ms": spread([change.to_redis for change in kept]),
            "to_broker_probe_ms": spread([ms for at, ms in readable if at >= steady_from]) if readable else {},
            "publish_to_broker_append_ms": spread(to_append) if to_append else {},
            "broker_append_to_redis_ms": spread(append_to_redis) if append_to_redis else {},
            "warmup": {"seconds": round(warmup_end - started, 1), "samples": len(warmup),
                       **({"p50_ms": round(percentile(warmup, 0.50)), "p99_ms": round(percentile(warmup, 0.99)),
                           "max_ms": round(max(warmup))} if warmup else {})},
            "latencies_ms": [round(m) for m in millis],
            # (seconds since the first event was offered, ms) per change, warm-up included: when the tail happens.
            "timeline": sorted([round(change.at, 2), round(change.total)] for change in measured),
            # (seconds since the first event was offered, ms) per event: publish -> readable by the probe.
            "broker_probe_timeline": [[round(at, 2), round(ms)] for at, ms in readable],
            "slowest": slowest(measured),
        }
        say(f"      p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms, p99 {report['p99_ms']} ms "
            f"({len(millis):,} segment changes)")
        return report


def live(records: Sequence[GeneratedRecord], start_ms: int, seconds: float) -> list[GeneratedRecord]:
    """The records with their event times moved into ``seconds`` from ``start_ms``: offered at a
    fixed rate, events then happen when they are sent, as in a live stream. The generator spreads
    them over 30 days, which offered within a minute is a replay at ~40,000x: every session gap,
    dormancy period, rule window and model snapshot interval of a month would pass in the measured
    minute. The new time is the share of the events that happened up to the old one (so order,
    disorder and exact duplicates survive); the payload's event time changes with the record's."""
    times = sorted(record.ts for record in records if record.kind != "malformed")

    def moved(record: GeneratedRecord) -> GeneratedRecord:
        ts = start_ms + round(1000 * seconds * bisect.bisect_right(times, record.ts) / len(times))
        if record.kind == "malformed":
            return replace(record, ts=ts)
        document = json.loads(record.value)
        document["ts"] = ts
        return replace(record, ts=ts, value=json.dumps(document, separators=(",", ":")).encode())

    return [moved(record) for record in records]


class StitchingLoop:
    """Which offered events go through the identity-stitching loop (the internal topic, read back
    after the checkpoint commits it): an ``identify`` naming an anonymous id, and every later event
    carrying only that anonymous id (forwarded to the known user)."""

    def __init__(self) -> None:
        self.identified: set[str] = set()
        self.event_ids: set[str] = set()

    def observe(self, event: dict[str, Any]) -> None:
        anonymous = event.get("anonymous_id")
        if event.get("type") == "identify" and anonymous:
            self.identified.add(anonymous)
            self.event_ids.add(event["event_id"])
        elif anonymous in self.identified and not event.get("user_id"):
            self.event_ids.add(event["event_id"])


@dataclass(frozen=True)
class Measured:
    """One segment change caused by an offered event; milliseconds, ``at`` in seconds since the first offer."""

    total: float
    """publish -> the change's entry in Redis"""
    to_job: float
    """publish -> the job emitted it"""
    to_redis: float
    """the job emitted it -> its entry in Redis"""
    at: float
    """when its event was offered"""
    looped: bool
    """its event took the identity-stitching loop"""
    change: dict[str, Any]


def slowest(measured: Sequence[Measured], count: int = 20) -> list[dict[str, Any]]:
    """The slowest changes with what they were: which segment, which event, when it was offered."""
    return [{"ms": round(entry.total), "sent_s": round(entry.at, 2), "segment": entry.change.get("segment"),
             "action": entry.change.get("action"), "event_type": entry.change["cause"]["event"].get("type"),
             "identity_loop": entry.looped, "to_job_ms": round(entry.to_job)}
            for entry in sorted(measured, key=lambda entry: entry.total, reverse=True)[:count]]


def drained(client: redis.Redis, stream: str, quiet_s: float = 3.0,
            limit_s: float = 120.0) -> list[tuple[int, int, str, dict[str, Any]]]:
    """Once the stream stopped growing: per change caused by an event, (Redis ms of its stream entry,
    the job's wall clock ms when it emitted the change, id of the event, the change)."""
    deadline = time.monotonic() + limit_s
    length, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_length = int(client.xlen(stream))  # type: ignore[arg-type]
        if now_length != length:
            length, stable_since = now_length, time.monotonic()
        elif time.monotonic() - stable_since >= quiet_s:
            break
        time.sleep(0.25)
    out = []
    for entry_id, fields in client.xrange(stream):  # type: ignore[union-attr]
        change = json.loads(fields["change"])
        cause = change.get("cause") or {}
        if cause.get("kind") == "event":
            out.append((int(entry_id.split("-")[0]), int(change.get("processing_time") or 0), cause["event"]["id"],
                        change))
    return out


def key_kind(key: str) -> str:
    """``user:{alice}:recs:info`` -> ``user:{k}:recs:info``, ``{segments}:members:x`` -> ``{segments}:members:{s}``."""
    if key.startswith("user:"):
        for kind in USER_KEY_KINDS:
            if key.endswith(f":{kind}"):
                return f"user:{{k}}:{kind}"
    if key.startswith("{segments}:members:"):
        return "{segments}:members:{s}"
    return key


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 24's targets, measured: the full job at >= 5,000 events/s at p1 and at least the trivial
    job's rate, the pure core >= 10,000 events/s, 2 TaskManagers >= 1.7x one, p99 < 500 ms, < 2 KB
    state per user."""
    checks: dict[str, Any] = {}
    pure = result.get("pure")
    if pure:
        checks["pure_core"] = {"events_per_s": pure["events_per_s"], "met": pure["events_per_s"] >= TARGETS["pure_min"]}
    full_p1 = result.get("full", {}).get("p1")
    if full_p1:
        checks["full_p1"] = {"events_per_s": full_p1["events_per_s"],
                             "met": full_p1["events_per_s"] >= TARGETS["full_p1_min"]}
    for p in PARALLELISMS:
        trivial, full = result.get("trivial", {}).get(f"p{p}"), result.get("full", {}).get(f"p{p}")
        if trivial and full:
            ratio = full["events_per_s"] / trivial["events_per_s"]
            checks[f"full_vs_trivial_p{p}"] = {"ratio": round(ratio, 3), "met": ratio >= TARGETS["full_vs_trivial_min"]}
    standalone = result.get("cluster", {})
    if {"tm1", "tm2"} <= set(standalone):
        ratio = standalone["tm2"]["events_per_s"] / standalone["tm1"]["events_per_s"]
        checks["cluster_2_vs_1"] = {"ratio": round(ratio, 3), "met": ratio >= TARGETS["cluster_2_vs_1_min"]}
    latency = result.get("latency", {})
    if latency.get("samples"):
        checks["latency_p99"] = {"ms": latency["p99_ms"], "met": latency["p99_ms"] < TARGETS["latency_p99_ms_max"]}
    keyed = result.get("state", {}).get("keyed_bytes_per_user")
    if keyed:
        checks["state_per_user"] = {"bytes": keyed["mean"], "met": keyed["mean"] < TARGETS["state_bytes_per_user_max"]}
    return checks


def summary(result: dict[str, Any]) -> str:
    lines = [f"== personalize bench: {result['events']:,} events, {result['date']}, {result['commit']} =="]
    if "pure" in result:
        lines.append(f"pure logic (Python loop)        {result['pure']['events_per_s']:>8,} events/s")
        if "uncached" in result["pure"]:
            lines.append(f"  without the value cache       {result['pure']['uncached']['events_per_s']:>8,} events/s")
    for label in ("trivial", "full", "per_record", "cluster"):
        for p, run_ in result.get(label, {}).items():
            lines.append(f"{label + ' job ' + p:<31} {run_['events_per_s']:>8,} events/s "
                         f"({run_['events_per_s_wall']:,} with start-up)")
    latency = result.get("latency")
    if latency and latency.get("samples"):
        lines.append(f"latency at {latency['offered_rate']:,} events/s     p50 {latency['p50_ms']} ms, "
                     f"p95 {latency['p95_ms']} ms, p99 {latency['p99_ms']} ms ({latency['samples']:,} changes)")
        if "to_job_ms" in latency:
            lines.append(f"  publish -> job emits change   p50 {latency['to_job_ms']['p50']} ms, "
                         f"p99 {latency['to_job_ms']['p99']} ms")
            lines.append(f"  job -> Redis                  p50 {latency['job_to_redis_ms']['p50']} ms, "
                         f"p99 {latency['job_to_redis_ms']['p99']} ms")
        for part, label in (("not_through_identity_loop", "not through the identity loop"),
                            ("through_identity_loop", "through the identity loop")):
            if latency.get(part, {}).get("samples"):
                lines.append(f"  {label:<29} p50 {latency[part]['p50']} ms, p99 {latency[part]['p99']} ms "
                             f"({latency[part]['samples']:,} changes)")
        for part, label in (("to_broker_probe_ms", "publish -> readable (probe)"),
                            ("publish_to_broker_append_ms", "publish -> broker append"),
                            ("broker_append_to_redis_ms", "broker append -> Redis")):
            if latency.get(part):
                lines.append(f"  {label:<29} p50 {latency[part]['p50']} ms, p99 {latency[part]['p99']} ms")
    state = result.get("state", {})
    if "keyed_bytes_per_user" in state:
        lines.append(f"keyed state per user            {state['keyed_bytes_per_user']['mean']:>8,} bytes (mean)")
    if "redis_bytes_per_user" in state:
        lines.append(f"Redis per user                  {state['redis_bytes_per_user']['bytes_per_user']:>8,} bytes")
    for name, check in result.get("targets", {}).items():
        lines.append(f"target {name:<24} {'met' if check['met'] else 'MISSED'} "
                     f"({', '.join(f'{k} {v}' for k, v in check.items() if k != 'met')})")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    """Throughput bars and the latency distribution in one PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right, over_time) = plt.subplots(1, 3, figsize=(18, 4.5))
    bars = []
    if "pure" in result:
        bars.append(("pure\nloop", result["pure"]["events_per_s"], None))
    for label in ("trivial", "full", "per_record", "cluster"):
        for p, run_ in result.get(label, {}).items():
            bars.append((f"{label}\n{p}", run_["events_per_s"], run_["events_per_s_wall"]))
    names = [name for name, _, _ in bars]
    left.bar(names, [rate for _, rate, _ in bars], color="#5b8def", label="running")
    left.bar(names, [wall or 0 for _, _, wall in bars], color="#a9c1f5", width=0.4, label="with start-up")
    left.set_yscale("log")
    left.set_ylabel("events/s (log)")
    left.set_title(f"throughput, {result['events']:,} events")
    left.legend()
    latency = result.get("latency", {})
    if latency.get("samples"):
        right.hist(latency["latencies_ms"], bins=50, color="#e8684a")
        for share, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
            right.axvline(latency[share], color="black", linestyle=style, label=f"{share[:3]} {latency[share]} ms")
        right.set_xlabel("publish -> segment change in Redis (ms)")
        right.set_title(f"latency at {latency['offered_rate']:,} events/s")
        right.legend()
        seconds, millis = zip(*latency["timeline"], strict=True)
        over_time.scatter(seconds, millis, s=2, color="#e8684a", label="publish -> Redis")
        if latency.get("broker_probe_timeline"):
            seconds, millis = zip(*latency["broker_probe_timeline"], strict=True)
            over_time.scatter(seconds, millis, s=1, color="#5b8def", label="publish -> readable (probe)")
        over_time.axvline(latency["warmup"]["seconds"], color="black", linestyle="--", label="end of warm-up")
        over_time.set_xlabel("seconds since the first event was offered")
        over_time.set_ylabel("publish -> Redis (ms)")
        over_time.set_title("latency over time")
        over_time.legend()
    else:
        right.set_axis_off()
        over_time.set_axis_off()
    figure.suptitle(f"personalize bench {result['date']} ({result['commit']}), {result['machine']['cpus']} cpus")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True

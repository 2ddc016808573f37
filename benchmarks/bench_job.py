"""End-to-end job throughput with features off (the foundation job) and on, over the same events.

Run: ``.venv/bin/python -m benchmarks.bench_job [--events N] [--parallelism P] [--json OUT]``.
Starts (or reuses) the local stack, publishes the events once, runs the job bounded by their end
offsets twice on a local MiniCluster, and reports events/s of each run (MiniCluster start included,
as a user of ``personalize run`` sees it).
"""

from __future__ import annotations

from dataclasses import replace

from benchmarks.common import run_cli
from jobs.personalize_job import run_job, source_spec
from personalize import settings as settings_module
from personalize import stack
from personalize.demo import clear_redis
from personalize.generator import EventGenerator
from personalize.publish import publish


def run(events: int, parallelism: int) -> dict[str, object]:
    settings = settings_module.load()
    settings = stack.settings_for(settings, stack.up(settings))
    stack.reset_topics(settings)
    settings = replace(settings, job=replace(settings.job, parallelism=parallelism),
                       generator=replace(settings.generator, events=events))
    published = publish(EventGenerator(settings.generator).records(), settings.kafka, total=events)
    spec = source_spec(settings, "earliest", published.end_offsets)
    runs = {}
    for label, enabled in (("features_off", False), ("features_on", True)):
        variant = replace(settings, features=replace(settings.features, enabled=enabled),
                          redis=replace(settings.redis, key_prefix=f"bench-{label}:"))
        clear_redis(variant)
        seconds = run_job(variant, spec, transactional_id_prefix=f"bench-{label}").seconds
        runs[label] = {"seconds": round(seconds, 1), "events_per_second": round(events / seconds)}
    return {
        "benchmark": "job-features-on-off", "events": events, "parallelism": parallelism, "runs": runs,
        "features_relative_throughput": round(runs["features_on"]["events_per_second"]
                                              / runs["features_off"]["events_per_second"], 2),
    }


def main() -> None:
    run_cli(__doc__, 100_000, "job.json", lambda args: run(args.events, args.parallelism),
            extra=lambda parser: parser.add_argument("--parallelism", type=int, default=2))


if __name__ == "__main__":
    main()

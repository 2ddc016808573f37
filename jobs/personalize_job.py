"""Entry point of the personalization job: ``personalize run`` locally, or ``flink run --python``.

Usage (also ``python -m jobs.personalize_job --help``)::

    personalize run                                  # unbounded, from committed group offsets
    personalize run --start earliest --end-offsets ends.json   # bounded replay (tests, demo)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyflink.common import JobClient
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway

from connectors.kafka import SourceSpec
from jobs.pipeline import build_pipeline, create_environment, kafka_io
from personalize import bootstrap
from personalize import settings as settings_module
from personalize.settings import Settings


@dataclass(frozen=True)
class JobRun:
    seconds: float
    job_name: str


def source_spec(settings: Settings, start: str, end_offsets: Mapping[str, Mapping[int, int]] | None) -> SourceSpec:
    inputs = settings.kafka.topics.inputs()
    return SourceSpec(
        topics=[topic.name for topic in inputs],
        start=start,
        end_offsets=end_offsets,
        partitions={topic.name: topic.partitions for topic in inputs},
    )


def connector_jars() -> list[Path]:
    return bootstrap.ensure_connector_jars()


def job_environment(settings: Settings, spec: SourceSpec, jars: Sequence[Path] | None,
                    transactional_id_prefix: str | None, savepoint: str | None = None) -> StreamExecutionEnvironment:
    env, t_env = create_environment(settings, list(jars) if jars is not None else connector_jars(), savepoint,
                                    bounded=spec.bounded)
    build_pipeline(env, t_env, settings, kafka_io(settings, spec, transactional_id_prefix))
    return env


def run_job(settings: Settings, spec: SourceSpec, jars: Sequence[Path] | None = None,
            transactional_id_prefix: str | None = None) -> JobRun:
    """Build and execute the job on the local MiniCluster (or the cluster ``flink run`` targets).

    Blocks until a bounded job has consumed its input; an unbounded job runs until cancelled.
    """
    env = job_environment(settings, spec, jars, transactional_id_prefix)
    started = time.monotonic()
    env.execute(settings.job.name)
    return JobRun(seconds=time.monotonic() - started, job_name=settings.job.name)


def start_job(settings: Settings, spec: SourceSpec, jars: Sequence[Path] | None = None,
              savepoint: str | None = None) -> JobClient:
    """Submit the job without waiting (an unbounded run to cancel later, e.g. in tests), optionally
    restoring the state of ``savepoint``."""
    return job_environment(settings, spec, jars, None, savepoint).execute_async(settings.job.name)


def stop_with_savepoint(job: JobClient, directory: str, drain: bool = False) -> str:
    """Stop ``job`` with a canonical savepoint in ``directory`` (a URI); returns the savepoint's path.
    ``drain``: first end event time, as a bounded input's end does (its outputs are then complete).

    PyFlink 2.0.2's ``JobClient.stop_with_savepoint`` calls a Java overload Flink 2.0 removed, so
    this calls the three-argument one (with the savepoint format) itself.
    """
    format_type = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType.CANONICAL
    return str(job._j_job_client.stopWithSavepoint(drain, directory, format_type).get())


def parse_end_offsets(path: str) -> dict[str, dict[int, int]]:
    """``{"topic": {"partition": end_offset}}`` JSON, as ``personalize produce --offsets-out`` writes."""
    raw = json.loads(Path(path).read_text())
    return {topic: {int(p): int(o) for p, o in parts.items()} for topic, parts in raw.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="personalize-job", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file overriding config/defaults.yaml")
    parser.add_argument("--start", choices=["group", "earliest"], default="group",
                        help="where to start reading: committed group offsets (default) or the earliest offsets")
    parser.add_argument("--end-offsets", help="JSON file of exclusive end offsets per topic/partition: bounded run")
    args = parser.parse_args(argv)
    settings = settings_module.load(args.config)
    end_offsets = parse_end_offsets(args.end_offsets) if args.end_offsets else None
    result = run_job(settings, source_spec(settings, args.start, end_offsets))
    print(f"job {result.job_name} finished in {result.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

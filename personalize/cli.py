"""The ``personalize`` command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

Heavy modules (PyFlink, River, SciPy, the Kafka and Redis clients) are imported only by the commands
that use them, so ``--help`` and ``--version`` answer at once (tests/test_cli.py checks the imports).

Every expected failure (a service down, a missing file, a job that failed) ends with one
``personalize: ...`` line on stderr and exit code 1, so scripts can rely on the code and people get
a message instead of a traceback; only a bug prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from personalize import settings as settings_module
from personalize.settings import Settings, SettingsError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130


class CliError(RuntimeError):
    """A runtime failure the command explains itself (exit code 1)."""


def _write_offsets(path: str | None, end_offsets: dict[str, dict[int, int]]) -> None:
    if path:
        Path(path).write_text(json.dumps(end_offsets, indent=2, sort_keys=True) + "\n")


def cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import stack

    if args.action == "up":
        info = stack.up(settings)
        started = ", ".join(info.started) or "nothing (reused the running stack)"
        print(f"broker {info.bootstrap_servers}  redis {info.redis_url}  run dir {info.run_dir}  started: {started}")
        print("logs: " + "  ".join(f"{name} {log}" for name, log in info.logs.items()))
    elif args.action == "down":
        stopped = stack.down(settings, wipe=args.wipe)
        print("stopped: " + (", ".join(stopped) or "nothing (no stack started by us was running)"))
    else:
        print(json.dumps(stack.status(settings), indent=2, default=str))
    return EXIT_OK


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from personalize.generator import EventGenerator
    from personalize.publish import publish, write_jsonl, write_personas
    from personalize.segment_format import segment_records, segment_spec

    generator_settings = replace(settings.generator, **{
        name: value for name, value in (("events", args.events), ("users", args.users), ("seed", args.seed))
        if value is not None
    })
    generator = EventGenerator(generator_settings)
    if args.personas:
        write_personas(generator.personas(), args.personas)
    records = generator.records()
    if args.format == "segment":
        records = segment_records(records, segment_spec(settings))
    if args.jsonl:
        count = write_jsonl(records, args.jsonl)
        print(f"wrote {count:,} records to {args.jsonl}")
        return EXIT_OK
    result = publish(records, settings.kafka, total=generator_settings.events)
    _write_offsets(args.offsets_out, result.end_offsets)
    print(f"published {result.count:,} records in {result.seconds:.1f} s")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from personalize.publish import ReplayFileError, publish, read_jsonl

    try:
        total = sum(1 for _ in read_jsonl(args.file))  # reads the whole file first: a bad line publishes nothing
    except ReplayFileError as exc:
        raise SettingsError(str(exc)) from None
    result = publish(read_jsonl(args.file), settings.kafka, total=total)
    _write_offsets(args.offsets_out, result.end_offsets)
    print(f"replayed {result.count:,} records from {args.file} in {result.seconds:.1f} s")
    return EXIT_OK


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from jobs.personalize_job import parse_end_offsets, run_job, source_spec
    from jobs.pipeline import flink_log_dir
    from personalize import stack

    stack.require_java()
    print(f"Flink log (this run): {flink_log_dir(settings)}")
    end_offsets = parse_end_offsets(args.end_offsets) if args.end_offsets else None
    result = run_job(settings, source_spec(settings, args.start, end_offsets))
    print(f"job {result.job_name} finished in {result.seconds:.1f} s")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from personalize.demo import run_demo

    if args.events:
        settings = replace(settings, generator=replace(settings.generator, events=args.events))
    summary = run_demo(settings)
    if args.json:
        Path(args.json).write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import cluster

    if args.action == "up":
        overview = cluster.up(settings.cluster)
        print(f"Flink {overview['flink-version']}: {overview['taskmanagers']} TaskManagers, "
              f"{overview['slots-total']} slots; web UI http://localhost:{settings.cluster.rest_port}")
        print("Prometheus: " + (" ".join(cluster.scrape_urls(settings.cluster)) or "no endpoint answers yet"))
    elif args.action == "down":
        cluster.down(settings.cluster)
        print("stopped the cluster's TaskManagers and JobManager")
    else:
        print(json.dumps(cluster.status(settings.cluster), indent=2))
    return EXIT_OK


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import cluster

    job_args = ["--start", args.start]
    if args.config:
        job_args += ["--config", str(Path(args.config).resolve())]
    if args.end_offsets:
        job_args += ["--end-offsets", str(Path(args.end_offsets).resolve())]
    job_id = cluster.submit(settings, job_args, savepoint=args.from_savepoint, parallelism=args.parallelism)
    print(job_id)
    return EXIT_OK


def cmd_package(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import package

    print(package.build(Path(args.out).resolve()))
    return EXIT_OK


def cmd_savepoint(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import cluster

    print(cluster.savepoint(settings.cluster, args.job_id, stop=args.stop))
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import cluster

    cluster.cancel(settings.cluster, args.job_id)
    print(f"cancelled {args.job_id}")
    return EXIT_OK


def cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from personalize.dashboard.app import AccessError, access_warning, make_server
    from personalize.dashboard.data import public_url

    try:
        server = make_server(settings, args.host, args.port, refresh_ms=args.refresh_ms, debug=args.debug)
    except AccessError as exc:
        raise CliError(str(exc)) from None
    except (OSError, SystemExit) as exc:  # werkzeug (--debug) exits by itself when the port is taken
        raise CliError(f"cannot listen on {args.host}:{args.port} (in use, or not an address of this machine)") \
            from exc
    warning = access_warning(settings.dashboard, args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    served_by = "werkzeug's development server (--debug)" if args.debug else "waitress"
    print(f"dashboard on http://{args.host}:{server.port}/ ({served_by}, auth {settings.dashboard.auth}) over Redis "
          f"{public_url(settings.redis.url)} (prefix {settings.redis.key_prefix!r}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()  # waitress returns on Ctrl-C by itself; werkzeug raises
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("dashboard stopped")
    return EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from personalize import status

    report = status.report(settings)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        status.print_report(report, sys.stdout)
    return EXIT_OK if report["ok"] else EXIT_FAILURE


def cmd_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Offline evaluations run the job's pure operators without Flink; each module owns its options."""
    return int(args.evaluate(args, settings))


class _CommandParser(argparse.ArgumentParser):
    """A subcommand parser whose options may come from a heavy module: ``define`` adds them when the
    subcommand is parsed (or its help printed), so other commands never import that module."""

    def __init__(self, *args: Any, define: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._define = define

    def _defined(self) -> None:
        define, self._define = self._define, None
        if define is not None:
            define(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._defined()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._defined()
        return super().format_help()


def _define_evaluate(evaluate: argparse.ArgumentParser) -> None:
    from personalize import evaluate_recs, evaluate_segments

    targets = evaluate.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, module in (("recs", evaluate_recs), ("segments", evaluate_segments)):
        target = targets.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(target)
        target.set_defaults(handler=cmd_evaluate, evaluate=module.run)


def _define_experiments(experiments: argparse.ArgumentParser) -> None:
    from personalize import experiments_report

    actions = experiments.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser("report", help=experiments_report.HELP, description=experiments_report.__doc__)
    experiments_report.add_arguments(report)
    report.set_defaults(handler=lambda args, settings: experiments_report.run(args, settings))


def _define_bench(bench: argparse.ArgumentParser) -> None:
    from benchmarks import suite

    bench.description = suite.__doc__
    bench.formatter_class = argparse.RawDescriptionHelpFormatter
    suite.add_arguments(bench)
    bench.set_defaults(handler=lambda args, settings: suite.run(args, settings))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("personalize")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="personalize",
        description="Real-time personalization on Apache Flink: local stack, event tools and the job.",
        epilog="Configuration: config/defaults.yaml, then --config FILE, then PERSONALIZE__SECTION__KEY env vars.",
    )
    parser.add_argument("--config", help="YAML file overriding config/defaults.yaml (or set PERSONALIZE_CONFIG)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)

    stack_parser = commands.add_parser("stack", help="start, stop or inspect the local broker and Redis")
    stack_parser.add_argument("action", choices=["up", "down", "status"])
    stack_parser.add_argument("--wipe", action="store_true",
                              help="with down: also delete the broker's and Redis' data (the next up starts empty)")
    stack_parser.set_defaults(handler=cmd_stack)

    produce = commands.add_parser("produce", help="generate seeded events and publish them (or write JSONL)")
    produce.add_argument("--events", type=int, help="number of records (default: generator.events)")
    produce.add_argument("--users", type=int, help="number of users (default: generator.users)")
    produce.add_argument("--seed", type=int, help="random seed (default: generator.seed)")
    produce.add_argument("--jsonl", help="write records to this JSONL file instead of Kafka")
    produce.add_argument("--personas", help="write the planted persona of every user to this JSON file")
    produce.add_argument("--offsets-out", help="write end offsets per topic/partition here (for a bounded run)")
    produce.add_argument("--format", choices=["contract", "segment"], default="contract",
                         help="contract (default): event contract v1 on each type's topic; segment: the same events "
                              "in the Segment spec on kafka.topics.tracking (docs/events.md)")
    produce.set_defaults(handler=cmd_produce)

    replay = commands.add_parser("replay", help="publish a JSONL file written by `produce --jsonl`")
    replay.add_argument("file")
    replay.add_argument("--offsets-out", help="write end offsets per topic/partition here (for a bounded run)")
    replay.set_defaults(handler=cmd_replay)

    run = commands.add_parser("run", help="run the job on a local MiniCluster")
    run.add_argument("--start", choices=["group", "earliest"], default="group",
                     help="committed group offsets (default) or the earliest offsets")
    run.add_argument("--end-offsets", help="JSON end offsets (from --offsets-out): stop there (bounded run)")
    run.set_defaults(handler=cmd_run)

    demo = commands.add_parser("demo", help="stack up, publish generated events, run the job, print a summary")
    demo.add_argument("--events", type=int, help="number of records (default: generator.events)")
    demo.add_argument("--json", help="also write the summary as JSON to this file")
    demo.set_defaults(handler=cmd_demo)

    cluster_parser = commands.add_parser("cluster", help="start, stop or inspect the local standalone Flink cluster")
    cluster_parser.add_argument("action", choices=["up", "down", "status"])
    cluster_parser.set_defaults(handler=cmd_cluster)

    submit = commands.add_parser("submit", help="submit the job to the cluster with flink run; prints the job id")
    submit.add_argument("--start", choices=["group", "earliest"], default="group",
                        help="committed group offsets (default) or the earliest offsets")
    submit.add_argument("--end-offsets", help="JSON end offsets (from --offsets-out): a bounded run")
    submit.add_argument("--from-savepoint", help="resume from this savepoint (path printed by `savepoint`)")
    submit.add_argument("--parallelism", type=int, help="job parallelism (default: job.parallelism)")
    submit.set_defaults(handler=cmd_submit)

    package_parser = commands.add_parser(
        "package", help="build a job archive (code, config, requirements, jars, submit.sh) for any Flink cluster")
    package_parser.add_argument("--out", default="dist", help="directory for the archive (default: dist)")
    package_parser.set_defaults(handler=cmd_package)

    savepoint = commands.add_parser("savepoint", help="take a savepoint of a running job; prints its path")
    savepoint.add_argument("job_id")
    savepoint.add_argument("--stop", action="store_true", help="stop the job gracefully after the savepoint")
    savepoint.set_defaults(handler=cmd_savepoint)

    cancel = commands.add_parser("cancel", help="cancel a running job (no savepoint)")
    cancel.add_argument("job_id")
    cancel.set_defaults(handler=cmd_cancel)

    commands.add_parser("evaluate", help="offline quality evaluations of the job's pure logic", define=_define_evaluate)
    commands.add_parser("experiments", help="experiments: a per-arm report of the offline check with a planted lift "
                        "(docs/experiments.md)", define=_define_experiments)
    commands.add_parser("bench", help="throughput, latency and state-size benchmarks of the job (JSON + PNG; see "
                        "docs/performance.md)", define=_define_bench)

    dashboard = commands.add_parser(
        "dashboard", help="web dashboard over the job's Redis state (segments, changes, users, rules, models)",
        description="Serve a dashboard that reads only Redis (redis.url, redis.key_prefix): segment sizes now and "
                    "over time, recent segment changes with causes, user lookup, rules, model versions, drift "
                    "alerts and dead-letter counts. It keeps running when Redis is down and says so on the page.")
    dashboard.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dashboard.add_argument("--port", type=int, default=8050, help="port (default 8050; 0 picks a free one)")
    dashboard.add_argument("--refresh-ms", type=int, default=2000, help="how often the page polls (default 2000)")
    dashboard.add_argument("--debug", action="store_true",
                           help="serve with werkzeug's development server and Flask debug mode (not for users)")
    dashboard.set_defaults(handler=cmd_dashboard)

    status_parser = commands.add_parser(
        "status", help="are the broker, Redis and the cluster up, and what Redis holds (exit 1: broker/Redis down)")
    status_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    status_parser.set_defaults(handler=cmd_status)
    return parser


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Failures of the outside world (not bugs): reported in one line with exit code 1."""
    import redis
    from kafka.errors import KafkaError

    from personalize.bootstrap import BootstrapError
    from personalize.cluster import ClusterError
    from personalize.publish import PublishError
    from personalize.stack import StackError

    errors: tuple[type[BaseException], ...] = (CliError, StackError, ClusterError, BootstrapError,
                                                PublishError, redis.RedisError, KafkaError, OSError)
    try:
        from py4j.protocol import Py4JError
    except ImportError:
        return errors
    return (*errors, Py4JError)


#: How a Python operator's exception appears in a failed Flink job's Java trace (PyFlink's thread mode).
PYTHON_CAUSE = re.compile(r"PythonException: <class '(?:[\w.]*\.)?(\w+)'>: (.+)")


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``. A failed Flink job's Java trace is reduced to the Python exception that
    caused it (``RedisUnavailable``'s message says which Redis refused writes and why), with where the
    full log is; a trace without one is cut to its first lines."""
    text = str(exc).strip() or type(exc).__name__
    causes = PYTHON_CAUSE.findall(text)
    if causes:
        name, message = causes[-1]
        log = os.environ.get("FLINK_LOG_DIR")
        cause = message.strip() if name == "RedisUnavailable" else f"{name}: {message.strip()}"
        return cause + (f" (Flink log: {log})" if log else "")
    lines = text.splitlines()
    return text if len(lines) <= 6 else "\n".join([*lines[:6], f"... ({len(lines) - 6} more lines)"])


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_module.load(args.config)
    except SettingsError as exc:
        print(f"personalize: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.handler(args, settings))
    except KeyboardInterrupt:
        print("personalize: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SettingsError as exc:
        print(f"personalize: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _runtime_errors() as exc:
        print(f"personalize: {args.command} failed: {_one_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())

"""The command line's contract with scripts: exit codes 0/1/2 and one-line messages instead of tracebacks."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from personalize import cli
from personalize.settings import Settings
from tests.conftest import free_ports

SUBCOMMANDS = ["stack", "produce", "replay", "run", "demo", "cluster", "submit", "savepoint", "cancel",
               "evaluate", "experiments", "bench", "dashboard", "status"]


def dead_services(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the broker, Redis and the cluster's REST API at ports where nothing listens."""
    kafka, redis_, rest = free_ports(3)
    monkeypatch.setenv("PERSONALIZE__KAFKA__BOOTSTRAP_SERVERS", f"127.0.0.1:{kafka}")
    monkeypatch.setenv("PERSONALIZE__REDIS__URL", f"redis://127.0.0.1:{redis_}/0")
    monkeypatch.setenv("PERSONALIZE__CLUSTER__REST_PORT", str(rest))


@pytest.mark.parametrize("command", [[], *([name] for name in SUBCOMMANDS)])
def test_help_explains_every_command_and_exits_0(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == cli.EXIT_OK
    assert "usage: personalize" in capsys.readouterr().out


#: Imported only by the commands that need them: ``--help`` and ``--version`` must not pay for them.
HEAVY_MODULES = ("river", "pyflink", "scipy", "numpy", "matplotlib", "redis", "kafka")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["stack", "--help"], ["produce", "--help"]])
def test_help_and_version_import_no_heavy_module(argv: list[str]) -> None:
    """Structural, not timed: which top-level packages a fresh interpreter imported to answer."""
    probe = ("import sys\nfrom personalize import cli\ntry:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(sorted({name.partition('.')[0] for name in sys.modules}))")
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True,
                            timeout=60)
    imported = set(json.loads(result.stdout.splitlines()[-1].replace("'", '"')))
    assert not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


def test_subcommands_are_all_there() -> None:
    parser = cli.build_parser()
    choices = next(action.choices for action in parser._subparsers._group_actions)  # type: ignore[union-attr]
    assert set(SUBCOMMANDS) <= set(choices)


@pytest.mark.parametrize("argv", [["no-such-command"], ["stack"], ["stack", "sideways"], ["produce", "--events", "x"]])
def test_usage_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == cli.EXIT_USAGE


def test_invalid_configuration_exits_2_naming_every_field(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERSONALIZE__JOB__PARALLELISM", "zero")
    monkeypatch.setenv("PERSONALIZE__REDIS__NO_SUCH_KEY", "1")
    assert cli.main(["status"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "job.parallelism" in err and "no_such_key" in err and "Traceback" not in err


def test_a_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--config", "/no/such/config.yaml", "status"]) == cli.EXIT_USAGE
    assert "cannot read config file" in capsys.readouterr().err


def test_status_exits_1_when_broker_and_redis_are_down(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    dead_services(monkeypatch)
    assert cli.main(["status"]) == cli.EXIT_FAILURE
    out = capsys.readouterr().out
    assert "broker   DOWN" in out and "redis    DOWN" in out and "personalize stack up" in out


@pytest.mark.integration
def test_status_exits_0_when_the_stack_is_up(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    dead_services(monkeypatch)
    monkeypatch.setenv("PERSONALIZE__KAFKA__BOOTSTRAP_SERVERS", stack_settings.kafka.bootstrap_servers)
    monkeypatch.setenv("PERSONALIZE__REDIS__URL", stack_settings.redis.url)
    monkeypatch.setenv("PERSONALIZE__REDIS__KEY_PREFIX", '"statusempty:"')
    assert cli.main(["status"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert "broker   up" in out and "no data under prefix" in out


def test_runtime_failures_exit_1_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dead_services(monkeypatch)
    assert cli.main(["replay", "/no/such/file.jsonl"]) == cli.EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("personalize: replay failed:") and "Traceback" not in err


@pytest.mark.parametrize(("content", "message"), [
    (b'{"topic_role": "behavior", "key": null, "value": "{}", "ts": 1, "kind": "valid"}\n{oops\n', "line 2: not a"),
    (b'{"topic_role": "models", "key": null, "value": "{}", "ts": 1, "kind": "valid"}\n', "topic_role 'models'"),
    (b'{"topic_role": "identity.handover"}\n', "line 1"),
    (b'[1, 2]\n', "line 1"), (b'{"topic_role": "behavior", "key": 5, "value": "", "ts": 1}\n', "line 1"),
    (b"\xff\xfe\n", "not UTF-8"),
], ids=["not-json", "internal-topic", "missing-fields", "not-an-object", "bad-key", "not-utf8"])
def test_a_malformed_replay_file_exits_2_with_one_line_and_publishes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], content: bytes,
        message: str) -> None:
    dead_services(monkeypatch)  # nothing may be sent: the file is read to its end before publishing
    path = tmp_path / "events.jsonl"
    path.write_bytes(content)
    assert cli.main(["replay", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_configuration_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("job: {name: caf\xe9}\n".encode("latin-1"))
    assert cli.main(["--config", str(latin), "stack", "status"]) == cli.EXIT_USAGE
    monkeypatch.setenv("PERSONALIZE__JOB__NAME", "[unclosed")
    assert cli.main(["stack", "status"]) == cli.EXIT_USAGE
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and "not UTF-8" in errors[0] and "PERSONALIZE__JOB__NAME: not a YAML value" in errors[1]


def test_a_failed_job_is_reported_by_the_python_exception_behind_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a Flink job failed by Redis refusing writes looks like: 100 lines of Java; the user sees one."""
    trace = "\n".join(["An error occurred while calling o0.execute.", *(f"\tat org.apache.Frame{i}" for i in range(60)),
                       "Caused by: pemja.core.PythonException: <class 'connectors.redis_writer.RedisUnavailable'>: "
                       "Redis at 127.0.0.1:6379/0 refused writes for 60 s: OutOfMemoryError: OOM command not "
                       "allowed when used memory > 'maxmemory'.", *(f"\tat org.apache.Frame{i}" for i in range(40))])
    monkeypatch.setenv("FLINK_LOG_DIR", "/run/logs/1")
    assert cli._one_line(RuntimeError(trace)) == (
        "Redis at 127.0.0.1:6379/0 refused writes for 60 s: OutOfMemoryError: OOM command not allowed when used "
        "memory > 'maxmemory'. (Flink log: /run/logs/1)")
    other = "x\nCaused by: pemja.core.PythonException: <class 'KeyError'>: 'price'\n"
    assert cli._one_line(RuntimeError(other)) == "KeyError: 'price' (Flink log: /run/logs/1)"


def test_dashboard_on_a_busy_port_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert cli.main(["dashboard", "--port", str(busy.getsockname()[1])]) == cli.EXIT_FAILURE
    assert "cannot listen on" in capsys.readouterr().err


def test_dashboard_with_auth_and_no_secret_exits_1(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERSONALIZE__DASHBOARD__AUTH", "basic")
    monkeypatch.delenv("PERSONALIZE_DASHBOARD_SECRET", raising=False)
    assert cli.main(["dashboard", "--port", "0"]) == cli.EXIT_FAILURE
    assert "PERSONALIZE_DASHBOARD_SECRET" in capsys.readouterr().err


def test_bench_latency_alone_needs_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--only", "latency"]) == cli.EXIT_USAGE
    assert "--rate" in capsys.readouterr().err


def test_bench_pure_stage_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A smoke test of the suite's pure part (the Flink stages run on demand, not in the suite)."""
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--only", "pure", "--events", "400", "--json", str(out)]) == cli.EXIT_OK
    result = json.loads(out.read_text())
    assert result["pure"]["events"] == 400 and result["pure"]["events_per_s"] > 0
    assert set(result["pure"]["us_per_event"]) == {"parse", "user", "trainer", "recommender"}
    assert result["state"]["keyed_bytes_per_user"]["mean"] > 0
    assert {"state_per_user", "pure_core"} <= set(result["targets"])
    assert out.with_suffix(".png").stat().st_size > 0
    assert "pure logic (Python loop)" in capsys.readouterr().out


def test_the_plot_shows_the_latency_distribution_and_timeline(tmp_path: Path) -> None:
    """The latency panels from a result as the latency stage writes it (the stage itself runs on demand)."""
    from benchmarks.suite import plot

    timeline = [[second / 10, 80 + (1500 if 400 <= second < 420 else 0)] for second in range(600)]
    latency = {"offered_rate": 250, "samples": 500, "p50_ms": 80, "p95_ms": 1580, "p99_ms": 1580,
               "latencies_ms": [ms for at, ms in timeline if at >= 10], "timeline": timeline,
               "broker_probe_timeline": [[at, 20] for at, _ in timeline], "warmup": {"seconds": 10.0}}
    result = {"events": 0, "date": "2026-11-24", "commit": "test", "machine": {"cpus": 2}, "latency": latency}
    path = tmp_path / "plot.png"
    assert plot(result, path)
    assert path.stat().st_size > 10_000


def test_the_cluster_stage_is_checked_against_the_scale_out_target() -> None:
    """Two TaskManagers must reach 1.7x one (the stage itself needs the standalone cluster and runs on demand)."""
    from benchmarks.suite import summary, targets

    runs = {"tm1": {"events_per_s": 400, "events_per_s_wall": 300},
            "tm2": {"events_per_s": 700, "events_per_s_wall": 500}}
    result = {"events": 1000, "date": "2026-12-05", "commit": "test", "cluster": runs}
    result["targets"] = targets(result)
    assert result["targets"] == {"cluster_2_vs_1": {"ratio": 1.75, "met": True}}
    assert "cluster job tm2                      700 events/s" in summary(result)
    runs["tm2"]["events_per_s"] = 600
    assert not targets(result)["cluster_2_vs_1"]["met"]


def test_live_event_time_follows_the_offer_and_keeps_order_and_duplicates() -> None:
    from benchmarks.suite import live
    from personalize.generator import EventGenerator
    from personalize.settings import load

    settings = load()
    records = list(EventGenerator(replace(settings.generator, events=3000, users=200)).records())
    moved = live(records, 1_000_000, 60.0)
    assert len(moved) == len(records)
    # Every event happens within 1 s of its share of the minute, in the generator's order.
    for index, (before, after) in enumerate(zip(records, moved, strict=True)):
        assert abs(after.ts - (1_000_000 + 60_000 * index / len(records))) < 1000
        if before.kind != "malformed":
            assert json.loads(after.value)["ts"] == after.ts
            assert json.loads(after.value)["event_id"] == json.loads(before.value)["event_id"]
    pairs = list(zip(records, moved, strict=True))
    assert all((a.ts < b.ts) <= (x.ts <= y.ts) for (a, x), (b, y) in itertools.pairwise(pairs))
    originals = {json.loads(after.value)["event_id"]: after.value for before, after in pairs if before.kind == "valid"}
    duplicates = [after for before, after in pairs if before.kind == "duplicate"]
    assert duplicates and all(originals[json.loads(dup.value)["event_id"]] == dup.value for dup in duplicates)

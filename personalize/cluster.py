"""A local standalone Flink cluster from the distribution bundled in ``apache-flink``, and job control.

``personalize cluster up|down|status`` runs a JobManager and ``cluster.taskmanagers`` TaskManagers
with Flink's own scripts. Everything lives in one run directory (``cluster.run_dir``): a generated
``conf/config.yaml``, a ``lib/`` of links to the bundled jars plus the flink-python jar (shipped in
``opt/``, needed on the classpath of a cluster running Python jobs), logs, pids, checkpoints and
savepoints. ``submit``, ``savepoint`` and ``cancel`` drive jobs with ``bin/flink``; the REST API
(``http://localhost:<cluster.rest_port>``) and web UI show them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyflink
import yaml

from personalize import paths
from personalize.package import JOB_FILE, JOB_PACKAGES
from personalize.settings import ClusterSettings, Settings

#: Project packages shipped with the job (``-pyfs``; an installed wheel has config/ inside personalize/).
#: The workers run this venv's interpreter; ``personalize package`` makes an archive that also carries
#: the dependencies, for a cluster that holds nothing of ours.
PROJECT_PACKAGES = (*JOB_PACKAGES, "config") if paths.SOURCE_CHECKOUT else JOB_PACKAGES
TERMINAL_STATES = frozenset({"FINISHED", "FAILED", "CANCELED"})
#: Heartbeats between the JobManager and the TaskManagers (Flink's defaults: 10 s and 50 s).
PROMETHEUS_REPORTER = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"
#: The Prometheus ports of a local cluster: ``cluster.metrics_port`` and the ones after it.
METRICS_PORTS = 16
HEARTBEAT_INTERVAL = "1 s"
HEARTBEAT_TIMEOUT = "20 s"
SLOT_REQUEST_TIMEOUT = "60 s"
#: What Flink reports as the watermark of a task that has none yet.
LONG_MIN = -(2**63)
#: Files of the TaskManager supervisor (personalize/supervisor.py) in the run directory.
SUPERVISOR_SETTINGS = "supervisor.json"
SUPERVISOR_STATUS = "supervisor-status.json"
SUPERVISOR_PID = "pids/personalize-supervisor.pid"
#: On the command lines of the cluster's daemons (a recycled pid is not one of ours), lower case: in the
#: main class's name once Java runs, and in the arguments of Flink's daemon script between the fork
#: and the exec of Java (the pid is in the pid file by then).
TASKMANAGER_MARK = "taskexecutor"
JOBMANAGER_MARK = "standalonesession"
SUPERVISOR_MARK = "personalize.supervisor"


class ClusterError(RuntimeError):
    """The cluster or a job command failed; the message says why (with the tool's output)."""


@dataclass(frozen=True)
class ClusterPaths:
    run_dir: Path
    conf: Path
    lib: Path
    log: Path
    checkpoints: Path
    savepoints: Path

    @staticmethod
    def of(cluster: ClusterSettings) -> ClusterPaths:
        run_dir = paths.resolve(cluster.run_dir)
        checkpoints = paths.resolve(cluster.checkpoint_dir) if cluster.checkpoint_dir else run_dir / "checkpoints"
        savepoints = paths.resolve(cluster.savepoint_dir) if cluster.savepoint_dir else run_dir / "savepoints"
        return ClusterPaths(run_dir, run_dir / "conf", run_dir / "lib", run_dir / "log", checkpoints, savepoints)


def flink_home() -> Path:
    return Path(pyflink.__file__).parent


def _java_opts() -> str:
    """The JVM module flags the bundled configuration carries (Flink needs them on Java 17)."""
    bundled = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text())
    return str(bundled["env"]["java"]["opts"]["all"])


def cluster_config(cluster: ClusterSettings, where: ClusterPaths) -> dict[str, Any]:
    """``config.yaml`` of the cluster: memory for a small machine, RocksDB, checkpoint and savepoint dirs."""
    return {
        "env": {"java": {"opts": {"all": _java_opts()}}, "log": {"dir": str(where.log)},
                "pid": {"dir": str(where.run_dir / "pids")}},
        "jobmanager": {"bind-host": "localhost", "rpc": {"address": "localhost", "port": cluster.rpc_port},
                       "memory": {"process": {"size": cluster.jobmanager_memory}}},
        "taskmanager": {"bind-host": "localhost", "host": "localhost",
                        "numberOfTaskSlots": cluster.slots_per_taskmanager,
                        "memory": {"process": {"size": cluster.taskmanager_memory}}},
        "rest": {"address": "localhost", "bind-address": "localhost", "port": cluster.rest_port},
        # Prometheus: each Flink process takes the next free port of the range (docs/operations.md, "Metrics").
        "metrics": {"reporter": {"prom": {"factory": {"class": PROMETHEUS_REPORTER}, "port": metrics_ports(cluster)}}},
        # A crashed TaskManager must be noticed quickly: until it is, restarts are deployed to its slots,
        # fail at once and use up the job's restart attempts. Two failed heartbeat RPCs 1 s apart mark
        # it lost; the timeout covers a live but hung process.
        "heartbeat": {"interval": HEARTBEAT_INTERVAL, "timeout": HEARTBEAT_TIMEOUT, "rpc-failure-threshold": 2},
        # A restart whose slot request stays unmatched (seen on Flink 2.0.2 after a TaskManager kill, although the
        # replacement had registered) fails after this and is retried by the restart strategy, instead of
        # waiting Flink's default 5 minutes.
        "slot": {"request": {"timeout": SLOT_REQUEST_TIMEOUT}},
        "state": {"backend": {"type": cluster.state_backend}},
        "execution": {"checkpointing": {"incremental": cluster.incremental_checkpoints,
                                        "dir": where.checkpoints.resolve().as_uri(),
                                        "savepoint-dir": where.savepoints.resolve().as_uri(),
                                        "num-retained": 3}},
        # Python workers run this project's interpreter (its venv has the project and PyFlink).
        "python": {"executable": sys.executable, "client": {"executable": sys.executable}},
    }


def prepare(cluster: ClusterSettings) -> ClusterPaths:
    """Write the run directory: configuration, logging files, and the jar directory."""
    where = ClusterPaths.of(cluster)
    home = flink_home()
    for directory in (where.conf, where.lib, where.log, where.checkpoints, where.savepoints):
        directory.mkdir(parents=True, exist_ok=True)
    (where.conf / "config.yaml").write_text(yaml.safe_dump(cluster_config(cluster, where), sort_keys=False))
    for name in os.listdir(home / "conf"):
        if name.startswith(("log4j", "logback")):
            (where.conf / name).write_bytes((home / "conf" / name).read_bytes())
    jars = [*sorted((home / "lib").glob("*.jar")), *sorted((home / "opt").glob("flink-python-*.jar"))]
    for jar in jars:
        link = where.lib / jar.name
        if not link.exists():
            link.symlink_to(jar)
    return where


def environment(cluster: ClusterSettings) -> dict[str, str]:
    """Flink's scripts read FLINK_CONF_DIR/FLINK_LIB_DIR; thread-mode workers run the ``python`` on PATH."""
    where = ClusterPaths.of(cluster)
    env = dict(os.environ)
    env.update(FLINK_CONF_DIR=str(where.conf), FLINK_LIB_DIR=str(where.lib),
               PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""))
    return env


def _script(cluster: ClusterSettings, name: str, *args: str, timeout_s: float = 120,
            extra_env: dict[str, str] | None = None) -> str:
    command = ["bash", str(flink_home() / "bin" / name), *args]
    result = subprocess.run(command, env={**environment(cluster), **(extra_env or {})}, capture_output=True,
                            text=True, timeout=timeout_s, cwd=paths.ROOT, check=False)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise ClusterError(f"{name} {' '.join(args)} failed (exit {result.returncode}):\n{output[-3000:]}")
    return output


def rest(cluster: ClusterSettings, path: str, timeout_s: float = 5) -> Any:
    """GET a REST API path (``/overview``, ``/jobs/<id>``...); ClusterError when unreachable."""
    url = f"http://localhost:{cluster.rest_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError) as exc:
        raise ClusterError(f"Flink REST API at {url} does not answer ({exc})") from None


def _overview(cluster: ClusterSettings) -> dict[str, Any] | None:
    try:
        return dict(rest(cluster, "/overview", timeout_s=2))
    except ClusterError:
        return None


def up(cluster: ClusterSettings) -> dict[str, Any]:
    """Start the JobManager and TaskManagers unless a cluster already answers on the REST port, and
    the supervisor that replaces TaskManagers that exit (``cluster.supervise``)."""
    overview = _overview(cluster)
    if overview is None or overview["taskmanagers"] < cluster.taskmanagers:
        prepare(cluster)
        if overview is None:
            _script(cluster, "jobmanager.sh", "start")
        running = overview["taskmanagers"] if overview else 0
        for _ in range(cluster.taskmanagers - running):
            _script(cluster, "taskmanager.sh", "start")
        overview = wait_for_taskmanagers(cluster, cluster.taskmanagers)
    if cluster.supervise and supervisor_pid(cluster) is None:
        _start_supervisor(cluster)
    return overview


def metrics_ports(cluster: ClusterSettings) -> str:
    """The port range of the cluster's Prometheus endpoints, as Flink's reporter takes it."""
    return f"{cluster.metrics_port}-{cluster.metrics_port + METRICS_PORTS - 1}"


def scrape_urls(cluster: ClusterSettings, timeout_s: float = 0.5) -> list[str]:
    """The Prometheus endpoints of the cluster's processes that answer now (the JobManager's and each
    TaskManager's, in port order)."""
    urls = []
    for port in range(cluster.metrics_port, cluster.metrics_port + METRICS_PORTS):
        url = f"http://localhost:{port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                if response.status == 200:
                    urls.append(url)
        except OSError:
            continue
    return urls


def wait_for_taskmanagers(cluster: ClusterSettings, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + cluster.start_timeout_s
    while time.monotonic() < deadline:
        overview = _overview(cluster)
        if overview is not None and overview["taskmanagers"] == count:
            return overview
        time.sleep(0.5)
    log = ClusterPaths.of(cluster).log
    raise ClusterError(f"the cluster did not reach {count} TaskManagers within {cluster.start_timeout_s} s; "
                       f"see the logs in {log}")


def down(cluster: ClusterSettings) -> None:
    _stop_supervisor(cluster)  # first, or it would replace the TaskManagers being stopped
    _script(cluster, "taskmanager.sh", "stop-all")
    _script(cluster, "jobmanager.sh", "stop-all")


def status(cluster: ClusterSettings) -> dict[str, Any]:
    overview = _overview(cluster)
    if overview is None:
        return {"running": False, "rest": f"http://localhost:{cluster.rest_port}"}
    jobs = rest(cluster, "/jobs/overview")["jobs"]
    return {"running": True, "rest": f"http://localhost:{cluster.rest_port}", **overview,
            "jobs": [{"id": job["jid"], "name": job["name"], "state": job["state"]} for job in jobs],
            "supervisor": supervisor_status(cluster)}


def job_config(settings: Settings, path: Path) -> Path:
    """The job reads its settings itself (``--config``): write the ones a caller may have changed from
    the defaults (broker, topics, Redis, every ``job`` setting, privacy on or off) as an override file;
    returns ``path``. The whole ``job`` section goes: a run's watermark and idleness settings must be the
    job's, not only its parallelism (the fault tests' hour-long idleness once never reached the cluster)."""
    topics = settings.kafka.topics
    overrides = {
        "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers, "group_id": settings.kafka.group_id,
                  "transactional_id_prefix": settings.kafka.transactional_id_prefix,
                  "topics": {name: {"name": getattr(topics, name).name, "partitions": getattr(topics, name).partitions}
                             for name in topics.__dataclass_fields__}},
        "redis": {"url": settings.redis.url, "key_prefix": settings.redis.key_prefix},
        "job": dataclasses.asdict(settings.job),
        "stack": {"run_dir": str(Path(settings.stack.run_dir).resolve())},  # where the privacy secret is
        "privacy": {"enabled": settings.privacy.enabled},
    }
    path.write_text(yaml.safe_dump(overrides))
    return path


def submit(settings: Settings, job_args: Sequence[str], savepoint: str | None = None,
           parallelism: int | None = None) -> str:
    """Submit the job detached with ``flink run``; returns the job id.

    ``job_args`` go to ``jobs/personalize_job.py`` (``--config``, ``--start``, ``--end-offsets``).
    ``parallelism`` overrides ``job.parallelism`` (the job sets its parallelism itself, so ``-p`` would not).
    """
    cluster = settings.cluster
    prepare(cluster)
    command = ["run", "-d", "-m", f"localhost:{cluster.rest_port}"]
    if savepoint:
        command += ["-s", savepoint]
    # The job sets its checkpoint directory itself (jobs/pipeline.py): the cluster's, unless configured.
    extra_env = {"PERSONALIZE__JOB__CHECKPOINT_DIR": settings.job.checkpoint_dir
                 or str(ClusterPaths.of(settings.cluster).checkpoints)}
    if parallelism:
        extra_env["PERSONALIZE__JOB__PARALLELISM"] = str(parallelism)
    shipped = ",".join(str(paths.PACKAGE_ROOT / p) for p in PROJECT_PACKAGES)
    command += ["-py", str(paths.PACKAGE_ROOT / JOB_FILE), "-pyfs", shipped,
                "-pyexec", sys.executable, "-pyclientexec", sys.executable, *job_args]
    output = _script(settings.cluster, "flink", *command, timeout_s=300, extra_env=extra_env)
    match = re.search(r"JobID ([0-9a-f]{32})", output)
    if match is None:
        raise ClusterError(f"flink run did not report a job id:\n{output[-3000:]}")
    return match.group(1)


def job_state(cluster: ClusterSettings, job_id: str) -> str:
    return str(rest(cluster, f"/jobs/{job_id}")["state"])


def wait_for_state(cluster: ClusterSettings, job_id: str, states: set[str] | frozenset[str],
                   timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = job_state(cluster, job_id)
        if state in states:
            return state
        time.sleep(0.5)
    raise ClusterError(f"job {job_id} did not reach {sorted(states)} within {timeout_s} s (last: {state})")


def savepoint(cluster: ClusterSettings, job_id: str, stop: bool = False) -> str:
    """Take a savepoint (``stop``: and stop the job gracefully); returns its path."""
    target = ClusterPaths.of(cluster).savepoints.resolve().as_uri()
    args = ["stop", "--savepointPath", target, job_id] if stop else ["savepoint", job_id, target]
    output = _script(cluster, "flink", *args, "-m", f"localhost:{cluster.rest_port}", timeout_s=300)
    match = re.search(r"Savepoint (?:completed|stored in)\.? (?:Path: )?(\S+)", output)
    if match is None:
        raise ClusterError(f"no savepoint path in the output of flink {args[0]}:\n{output[-3000:]}")
    return match.group(1)


def cancel(cluster: ClusterSettings, job_id: str) -> None:
    _script(cluster, "flink", "cancel", "-m", f"localhost:{cluster.rest_port}", job_id)


def start_taskmanager(cluster: ClusterSettings) -> None:
    """One more TaskManager (the supervisor's way of replacing one that exited)."""
    prepare(cluster)
    _script(cluster, "taskmanager.sh", "start")


@contextmanager
def _pid_lock(cluster: ClusterSettings) -> Iterator[None]:
    """The lock Flink's daemon script takes (``flock`` on the pid directory) while it appends a pid:
    rewriting a pid file under it never loses a TaskManager being started."""
    pid_dir = ClusterPaths.of(cluster).run_dir / "pids"
    pid_dir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(pid_dir, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _pid_file(cluster: ClusterSettings, daemon: str) -> Path | None:
    """Flink's pid file of a daemon type (``flink-$USER-taskexecutor.pid``; $USER may be empty)."""
    return next(iter(sorted((ClusterPaths.of(cluster).run_dir / "pids").glob(f"flink-*-{daemon}.pid"))), None)


def _pids(pid_file: Path | None) -> list[int]:
    return [int(line) for line in pid_file.read_text().split()] if pid_file and pid_file.exists() else []


def taskmanager_pids(cluster: ClusterSettings) -> list[int]:
    """Pids of the TaskManagers this run directory started, in start order."""
    return _pids(_pid_file(cluster, "taskexecutor"))


def process_running(pid: int, mark: str) -> bool:
    """Whether ``pid`` runs (not a zombie) with ``mark`` in its command line (ignoring case); where
    there is no ``/proc`` (macOS), whether it exists."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists, as another user's
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z" and mark.lower().encode() in (proc / "cmdline").read_bytes().lower()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def jobmanager_running(cluster: ClusterSettings) -> bool:
    return any(process_running(pid, JOBMANAGER_MARK) for pid in _pids(_pid_file(cluster, "standalonesession")))


def _forget_taskmanagers(cluster: ClusterSettings, keep: Callable[[int], bool]) -> list[int]:
    """Rewrite the pid file with the TaskManagers ``keep`` accepts (so ``down`` never signals a pid
    once it is recycled, and Flink's next log file index stays small); returns them."""
    with _pid_lock(cluster):
        pid_file = _pid_file(cluster, "taskexecutor")
        pids = _pids(pid_file)
        kept = [pid for pid in pids if keep(pid)]
        if pid_file is not None and kept != pids:
            pid_file.write_text("".join(f"{pid}\n" for pid in kept))
        return kept


def prune_taskmanagers(cluster: ClusterSettings) -> list[int]:
    """Drop TaskManagers that exited from the pid file; returns the running ones."""
    return _forget_taskmanagers(cluster, lambda pid: process_running(pid, TASKMANAGER_MARK))


def kill_taskmanager(cluster: ClusterSettings, pid: int) -> None:
    """SIGKILL a TaskManager (a crash: no shutdown, no goodbye to the JobManager) and drop it from
    Flink's pid file."""
    pids = taskmanager_pids(cluster)
    if pid not in pids:
        raise ClusterError(f"{pid} is not a TaskManager of this cluster ({pids})")
    os.kill(pid, signal.SIGKILL)
    _forget_taskmanagers(cluster, lambda other: other != pid)


def supervisor_pid(cluster: ClusterSettings) -> int | None:
    """The running supervisor's pid, or None."""
    pid_file = ClusterPaths.of(cluster).run_dir / SUPERVISOR_PID
    pids = _pids(pid_file)
    return pids[0] if pids and process_running(pids[0], SUPERVISOR_MARK) else None


def _start_supervisor(cluster: ClusterSettings) -> None:
    where = ClusterPaths.of(cluster)
    (where.run_dir / SUPERVISOR_SETTINGS).write_text(json.dumps(dataclasses.asdict(cluster)))
    (where.run_dir / SUPERVISOR_STATUS).unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, "-m", SUPERVISOR_MARK, str(where.run_dir)],
                               env=environment(cluster), cwd=paths.ROOT, start_new_session=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (where.run_dir / SUPERVISOR_PID).write_text(f"{process.pid}\n")


def _stop_supervisor(cluster: ClusterSettings, timeout_s: float = 30) -> None:
    """SIGTERM the supervisor and wait until it exited (it finishes a TaskManager start first)."""
    pid = supervisor_pid(cluster)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while process_running(pid, SUPERVISOR_MARK):
        if time.monotonic() > deadline:
            raise ClusterError(f"the TaskManager supervisor (pid {pid}) did not stop within {timeout_s} s")
        time.sleep(0.1)
    (ClusterPaths.of(cluster).run_dir / SUPERVISOR_PID).unlink(missing_ok=True)


def supervisor_status(cluster: ClusterSettings) -> dict[str, Any]:
    """Whether the supervisor runs and how many TaskManagers it started."""
    status_file = ClusterPaths.of(cluster).run_dir / SUPERVISOR_STATUS
    counts = json.loads(status_file.read_text()) if status_file.exists() else {"taskmanagers_started": 0}
    return {"pid": supervisor_pid(cluster), **counts}


def checkpoint_stats(cluster: ClusterSettings, job_id: str) -> dict[str, Any]:
    """The REST API's checkpoint statistics: counts, duration and size summaries, the latest ones."""
    return dict(rest(cluster, f"/jobs/{job_id}/checkpoints"))


def restarts(cluster: ClusterSettings, job_id: str) -> int:
    """How often the job failed over: the entries of its exception history (one per restart, with the
    exceptions that failed at the same time grouped in it). The ``numRestarts`` metric stays 0 after
    a restart on Flink 2.0.2 here, so it is not used."""
    history = rest(cluster, f"/jobs/{job_id}/exceptions")["exceptionHistory"]
    return len(history["entries"])


def tasks_running(cluster: ClusterSettings, job_id: str) -> bool:
    """Whether the job and every one of its vertices run (a restarted job is RUNNING before its tasks are)."""
    job = rest(cluster, f"/jobs/{job_id}")
    return job["state"] == "RUNNING" and all(vertex["status"] == "RUNNING" for vertex in job["vertices"])


def records_through(cluster: ClusterSettings, job_id: str, operator: str) -> int:
    """Records into and out of the subtasks of the job vertex whose name contains ``operator``, summed:
    it keeps growing while the job replays after a restore, when guarded Redis writes change nothing."""
    job = rest(cluster, f"/jobs/{job_id}")
    total = 0
    for vertex in (vertex for vertex in job["vertices"] if operator in vertex["name"]):
        metrics = rest(cluster, f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
                                "?get=numRecordsIn,numRecordsOut&agg=sum")
        total += sum(int(float(metric.get("sum", 0))) for metric in metrics)
    return total


def watermark_metrics(cluster: ClusterSettings, job_id: str) -> dict[str, dict[str, int]]:
    """Every watermark metric of every vertex (the sources' outputs, each input of a two-input
    operator), lowest and highest over its subtasks: which input holds a watermark back."""
    job = rest(cluster, f"/jobs/{job_id}")
    report: dict[str, dict[str, int]] = {}
    for vertex in job["vertices"]:
        base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
        names = [metric["id"] for metric in rest(cluster, base) if "atermark" in metric["id"]]
        if not names:
            continue
        values = rest(cluster, f"{base}?get={','.join(names)}&agg=min,max")
        report[vertex["name"][:80]] = {f"{metric['id']}.{agg}": int(float(metric[agg]))
                                       for metric in values for agg in ("min", "max") if agg in metric}
    return report


def output_watermark(cluster: ClusterSettings, job_id: str, operator: str) -> int | None:
    """The lowest watermark (ms) the operator named ``operator`` (``user-state``) emitted over its
    subtasks, or None while one reports none: the operator's own event time, its timers up to there
    fired. Its input watermark metric is no measure of that: for a two-input operator it is the lower
    of the last watermarks each input received, idle or not, so an idle input (the model snapshots,
    after the trainer's last one) held it back for good while the operator's time had moved on."""
    job = rest(cluster, f"/jobs/{job_id}")
    vertices = [vertex for vertex in job["vertices"] if operator in vertex["name"]]
    if not vertices:
        raise ClusterError(f"job {job_id} has no vertex named like {operator!r}")
    metric = f"{operator}.currentOutputWatermark"
    values = [int(float(entry["value"])) for vertex in vertices for subtask in range(vertex["parallelism"])
              for entry in rest(cluster, f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/{subtask}/metrics"
                                         f"?get={metric}")]
    parallelism = sum(vertex["parallelism"] for vertex in vertices)
    if len(values) != parallelism or min(values) <= LONG_MIN:
        return None
    return min(values)

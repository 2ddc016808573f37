"""The local stack: an Apache Kafka broker (KRaft, combined broker and controller) and a redis-server,
both on 127.0.0.1.

Used by ``personalize stack up|down|status`` and by test fixtures. Everything the stack owns lives in
one run directory (``settings.stack.run_dir``): ``state.json`` (ports, pids, process identities),
``kafka.log``, ``redis.log``, the broker's generated ``kafka/server.properties`` and its storage
``kafka/data``, and Redis' data dir. A stack that is already up is reused; the broker's data survives a
restart. Processes are recognised by pid *and* executable *and* kernel start time, so ``down`` never
signals a recycled pid or a server somebody else started on the same port.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from connectors.pii_secret import SECRET_FILE_NAME, ensure_secret_file
from personalize import bootstrap, paths
from personalize.settings import Settings, Topic
from personalize.topics import TopicError, create_topics

KAFKA = "kafka"
REDIS = "redis"
STATE_VERSION = 1
HOST = "127.0.0.1"
STOP_GRACE_S = 5.0
POLL_S = 0.05
ADMIN_TIMEOUT_MS = 5000
KAFKA_CLUSTER_ID_FILE = "cluster.id"
#: The broker's log4j2 configuration: everything to stdout, which the stack redirects to kafka.log.
KAFKA_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""

# Popen handles of servers started by this process: stopping them from here also reaps them, and
# keeping the handle avoids "subprocess is still running" warnings when it would be collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """The stack cannot be brought up or inspected; the message says why and what to do."""


@dataclass(frozen=True)
class StackInfo:
    bootstrap_servers: str
    redis_url: str
    run_dir: Path
    started: list[str]
    logs: dict[str, str]
    """Component -> its log file."""


@dataclass(frozen=True)
class _Record:
    """One server this module started, as stored in state.json."""

    pid: int
    port: int
    exe: str
    start_ticks: int
    argv: list[str]
    log: str


@dataclass(frozen=True)
class _Spec:
    """How a component should run under the current settings."""

    name: str
    port: int
    argv: list[str]
    log: Path
    port_key: str
    url_key: str
    extra_ports: tuple[tuple[int, str], ...] = ()
    """Further ports the server binds (the broker's controller) and their settings."""


# --- processes -------------------------------------------------------------------------------------

def _identity(pid: int) -> tuple[str, int] | None:
    """(executable, start time in clock ticks) of a live process, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces and parens
    if fields[0] in ("Z", "X"):
        return None
    return exe.removesuffix(" (deleted)"), int(fields[19])  # field 22 of proc(5): starttime


def _is_ours(record: _Record) -> bool:
    return _identity(record.pid) == (record.exe, record.start_ticks)


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _signal(record: _Record, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # it may exit between the ownership check and the signal
        os.kill(record.pid, signum)


def _wait_gone(record: _Record, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(record.pid)
        if not _is_ours(record):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)


def _stop(record: _Record) -> bool:
    """SIGTERM, then SIGKILL after a grace period; returns False if it was not (or no longer) ours."""
    if not _is_ours(record):
        return False
    _signal(record, signal.SIGTERM)
    if not _wait_gone(record, STOP_GRACE_S):
        _signal(record, signal.SIGKILL)
        _wait_gone(record, STOP_GRACE_S)
    return True


def _spawn(spec: _Spec, cwd: Path) -> _Record:
    """Start a server detached from our session so it outlives the CLI that started it."""
    if spec.log.exists():  # keep the previous run's log: it may say why that run died
        spec.log.replace(spec.log.with_name(spec.log.name + ".1"))
    with spec.log.open("wb") as log:
        child = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 cwd=cwd, start_new_session=True)
    _CHILDREN[child.pid] = child
    identity = _identity(child.pid)
    if identity is None:
        raise StackError(f"{spec.name} exited right after start; see {spec.log}:\n{_tail(spec.log)}")
    return _Record(pid=child.pid, port=spec.port, exe=identity[0], start_ticks=identity[1],
                   argv=spec.argv, log=str(spec.log))


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        text = ""
    return text or "(the log is empty)"


# --- ports and health ------------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    """Whether the servers could bind the port (they set SO_REUSEADDR, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _admin(port: int) -> KafkaAdminClient:
    """An admin client of the broker on ``port``; raises KafkaError when none answers."""
    return KafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", client_id="personalize-stack",
                            request_timeout_ms=ADMIN_TIMEOUT_MS)


def _topics(port: int) -> dict[str, int]:
    """Topic name -> partition count, from the broker's metadata (internal topics left out)."""
    if not _accepts(port):  # the client would retry a refused connection for its whole timeout
        raise StackError(f"the broker on port {port} does not accept connections")
    try:
        admin = _admin(port)
    except KafkaError as exc:
        raise StackError(f"no Kafka broker answers on port {port}: {exc!r}") from exc
    try:
        names = [name for name in admin.list_topics() if not name.startswith("__")]
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names) if t["error_code"] == 0}
    except KafkaError as exc:
        raise StackError(f"cannot read topic metadata from the broker on port {port}: {exc!r}") from exc
    finally:
        admin.close()


def _redis_answers(port: int) -> bool:
    client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _answers(name: str, record: _Record) -> bool:
    if name == REDIS:
        return _redis_answers(record.port)
    try:
        _topics(record.port)
    except StackError:
        return False
    return True


def _first_error(log: Path) -> str:
    """The first ERROR or FATAL line of a server's log (Java's stack trace left out), else its last line."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    for line in lines:
        if " ERROR " in line or " FATAL " in line or line.startswith(("Exception", "Error:")):
            return re.sub(r"^\[[^]]*\] ", "", line).strip()[:400]
    return lines[-1].strip()[:400] if lines else "(the log is empty)"


def _wait_ready(name: str, record: _Record, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers(name, record):
        _reap(record.pid)
        if not _is_ours(record):
            raise StackError(f"{name} exited during start-up: {_first_error(Path(record.log))} (log: {record.log})")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} did not answer on port {record.port} within {timeout_s:g} s "
                f"(stack.start_timeout_s); see {record.log}:\n{_tail(Path(record.log))}"
            )
        time.sleep(POLL_S)


# --- topics ----------------------------------------------------------------------------------------

def topic_config(settings: Settings, topic: Topic) -> dict[str, str]:
    """The topic's configured Kafka settings with the local stack's overrides (``stack.topic_config``):
    the stack replays history whose record timestamps are months old, which time-based retention and
    segment rolling would delete at once."""
    return {**topic.config, **settings.stack.topic_config}


def _ensure_topics(settings: Settings, port: int, timeout_s: float) -> None:
    admin = _admin(port)
    try:
        create_topics(admin, [(topic, topic_config(settings, topic)) for topic in settings.kafka.topics.all()],
                      1, timeout_s)
    except TopicError as exc:
        raise StackError(str(exc)) from exc
    except KafkaError as exc:
        raise StackError(f"cannot create the topics on the broker on port {port}: {exc!r}") from exc
    finally:
        admin.close()


# --- state -----------------------------------------------------------------------------------------

def _load_state(run_dir: Path) -> dict[str, _Record]:
    """Records from state.json; an unreadable or foreign file counts as no state (nothing is ours)."""
    try:
        raw = json.loads((run_dir / "state.json").read_text())
        if raw.get("version") != STATE_VERSION:
            return {}
        return {name: _Record(**fields) for name, fields in raw["components"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def _save_state(run_dir: Path, records: dict[str, _Record]) -> None:
    path = run_dir / "state.json"
    if not records:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": STATE_VERSION,
                               "components": {name: asdict(rec) for name, rec in records.items()}}, indent=2))
    tmp.replace(path)


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Serialise up/down on one run dir (two test sessions, or a CLI next to a test run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with (run_dir / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# --- settings --------------------------------------------------------------------------------------

def _run_dir(settings: Settings) -> Path:
    return paths.resolve(settings.stack.run_dir)


def _redis_url(settings: Settings) -> str:
    """settings.redis.url's database, on the stack's Redis (no TLS, no password there)."""
    database = urlsplit(settings.redis.url).path.strip("/") or "0"
    return f"redis://{HOST}:{settings.stack.redis_port}/{database}"


def settings_for(settings: Settings, info: StackInfo) -> Settings:
    """``settings`` with Kafka and Redis addresses pointing at the stack ``info`` describes."""
    return replace(settings, kafka=replace(settings.kafka, bootstrap_servers=info.bootstrap_servers),
                   redis=replace(settings.redis, url=info.redis_url))


def _kafka_dir(run_dir: Path) -> Path:
    return run_dir / "kafka"


def _server_properties(settings: Settings, run_dir: Path) -> str:
    """A single-node KRaft broker sized for a small machine: one replica of everything, no rebalance delay."""
    stack_settings = settings.stack
    data = _kafka_dir(run_dir) / "data"
    controller = f"{HOST}:{stack_settings.kafka_controller_port}"
    properties = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{controller}",
        "listeners": f"PLAINTEXT://{HOST}:{stack_settings.kafka_port},CONTROLLER://{controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{stack_settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
    }
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def _kafka_java(artifacts: bootstrap.Artifacts, settings: Settings, run_dir: Path, main: str,
                *args: str) -> list[str]:
    """``java`` running one of the broker jars' main classes with the stack's heap and logging."""
    java = shutil.which("java") or "java"
    heap = settings.stack.kafka_heap
    return [java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={_kafka_dir(run_dir) / 'log4j2.properties'}",
            "-cp", f"{artifacts.kafka_classpath}/*", main, *args]


def _meta_problem(data: Path) -> str | None:
    """Why the broker's storage directory cannot be used (None: formatted and readable, or not yet formatted)."""
    meta = data / "meta.properties"
    if not data.exists() or not any(data.iterdir()):
        return None
    try:
        text = meta.read_text()
    except OSError as exc:
        if meta.exists():
            return f"{meta} is unreadable ({exc.strerror})"
        return f"{data} holds files but no meta.properties"
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    if not fields.get("cluster.id") or fields.get("node.id") != "1":
        return f"{meta} names no cluster or another node (node.id={fields.get('node.id')!r})"
    return None


def kafka_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in base64url, never starting with ``-`` (as Kafka's own
    ``Uuid.randomUuid`` ensures): the storage tool's argument parser would take it for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _prepare_kafka(settings: Settings, artifacts: bootstrap.Artifacts, run_dir: Path) -> None:
    """Write the broker's configuration and format its storage on first use (``kafka-storage format``)."""
    directory = _kafka_dir(run_dir)
    data = directory / "data"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "server.properties").write_text(_server_properties(settings, run_dir))
    (directory / "log4j2.properties").write_text(KAFKA_LOG4J2)
    problem = _meta_problem(data)
    if problem is not None:
        raise StackError(f"the broker's storage is corrupt: {problem}. `personalize stack down --wipe` deletes "
                         f"the stack's data ({directory}) so the next `stack up` starts empty")
    if (data / "meta.properties").exists():
        return
    cluster_id_file = directory / KAFKA_CLUSTER_ID_FILE
    if not cluster_id_file.exists() or cluster_id_file.read_text().startswith("-"):  # fixed once per stack
        cluster_id_file.write_text(kafka_cluster_id())
    command = _kafka_java(artifacts, settings, run_dir, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                          "-t", cluster_id_file.read_text().strip(), "-c", str(directory / "server.properties"))
    for _ in range(2):  # once more: a JVM that dies at start-up on a loaded machine is no storage problem
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        output = result.stderr + result.stdout
        (directory / "format.log").write_text(output)
        if result.returncode == 0:
            return
    raise StackError(f"formatting the broker's storage {data} failed (exit {result.returncode}, twice): "
                     f"{_first_error_in(output)}; its whole output: {directory / 'format.log'}")


def _first_error_in(output: str) -> str:
    """The line of a JVM's output that says what went wrong: the first error or exception, else the last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"\b(ERROR|FATAL)\b|Exception|Error:", line)]
    return (errors[0] if errors else lines[-1] if lines else "no output")[:500]


def _specs(settings: Settings, artifacts: bootstrap.Artifacts, run_dir: Path) -> list[_Spec]:
    kafka_port, redis_port = settings.stack.kafka_port, settings.stack.redis_port
    properties = _kafka_dir(run_dir) / "server.properties"
    return [
        _Spec(name=KAFKA, port=kafka_port, log=run_dir / "kafka.log",
              argv=_kafka_java(artifacts, settings, run_dir, "kafka.Kafka", str(properties)),
              port_key="stack.kafka_port", url_key="kafka.bootstrap_servers",
              extra_ports=((settings.stack.kafka_controller_port, "stack.kafka_controller_port"),)),
        _Spec(name=REDIS, port=redis_port, log=run_dir / "redis.log",
              argv=[str(artifacts.redis_server), "--bind", HOST, "--port", str(redis_port), "--save", "",
                    "--appendonly", "no", "--dir", str(run_dir / "redis"), "--daemonize", "no"],
              port_key="stack.redis_port", url_key="redis.url"),
    ]


def _env_name(key: str) -> str:
    return "PERSONALIZE__" + key.upper().replace(".", "__")


def _port_taken(spec: _Spec, port: int, port_key: str) -> StackError:
    url = f", and point {spec.url_key} ({_env_name(spec.url_key)}) at it too" if port_key == spec.port_key else ""
    return StackError(
        f"port {port} on {HOST} ({spec.name}, setting {port_key}) is in use by a process "
        f"this stack did not start (`ss -ltnp 'sport = :{port}'` shows which). Stop it, or choose "
        f"another port: set {port_key} in your config file or {_env_name(port_key)}=PORT in "
        f"the environment{url}."
    )


# --- public API ------------------------------------------------------------------------------------

def require_java() -> int:
    """The Java major version, or StackError when Flink cannot run (no java, or older than 17)."""
    try:
        return bootstrap.require_java()
    except bootstrap.BootstrapError as exc:
        raise StackError(str(exc)) from exc


def up(settings: Settings) -> StackInfo:
    """Bring the stack up (or reuse the one that is up) and make sure every topic exists."""
    run_dir = _run_dir(settings)
    with _locked(run_dir):
        try:
            artifacts = bootstrap.ensure_all()
        except bootstrap.BootstrapError as exc:
            raise StackError(str(exc)) from exc
        records = _load_state(run_dir)
        specs = _specs(settings, artifacts, run_dir)
        to_start: list[_Spec] = []
        for spec in specs:
            record = records.get(spec.name)
            if record is not None and _is_ours(record):
                if record.port == spec.port and record.argv == spec.argv and _answers(spec.name, record):
                    continue
                _stop(record)  # ours but on another port, another binary, or hung
            records.pop(spec.name, None)
            to_start.append(spec)
        for spec in to_start:  # check every port before starting anything
            for port, port_key in ((spec.port, spec.port_key), *spec.extra_ports):
                if not _port_free(port):
                    raise _port_taken(spec, port, port_key)
        if any(spec.name == KAFKA for spec in to_start):
            require_java()
            _prepare_kafka(settings, artifacts, run_dir)
        (run_dir / "redis").mkdir(exist_ok=True)
        ensure_secret_file(run_dir / SECRET_FILE_NAME)
        started: list[str] = []
        try:
            for spec in to_start:
                records[spec.name] = _spawn(spec, run_dir)
                started.append(spec.name)
                _save_state(run_dir, records)  # recorded at once, so `down` can stop it whatever happens
            for name in started:
                _wait_ready(name, records[name], settings.stack.start_timeout_s)
            _ensure_topics(settings, settings.stack.kafka_port, settings.stack.start_timeout_s)
        except Exception:
            for name in started:  # a half-started stack is worse than none
                _stop(records.pop(name))
            _save_state(run_dir, records)
            raise
    return StackInfo(bootstrap_servers=f"{HOST}:{settings.stack.kafka_port}", redis_url=_redis_url(settings),
                     run_dir=run_dir, started=started, logs={name: record.log for name, record in records.items()})


def reset_topics(settings: Settings) -> None:
    """Delete and recreate every configured topic on a running stack: an empty broker for a demo run.

    Only for the local stack; never point this at a shared cluster.
    """
    port = settings.stack.kafka_port
    if not _accepts(port):
        raise StackError(f"no broker answers on port {port}; run `personalize stack up` first")
    names = {topic.name for topic in settings.kafka.topics.all()}
    admin = _admin(port)
    try:
        existing = sorted(names & set(admin.list_topics()))
        if existing:
            admin.delete_topics(existing, timeout_ms=ADMIN_TIMEOUT_MS)
        deadline = time.monotonic() + settings.stack.start_timeout_s
        while names & set(admin.list_topics()):  # deletion completes in the background
            if time.monotonic() >= deadline:
                raise StackError(f"the broker did not delete the topics within {settings.stack.start_timeout_s} s")
            time.sleep(POLL_S)
    except KafkaError as exc:
        raise StackError(f"cannot reset the topics on the broker on port {port}: {exc!r}") from exc
    finally:
        admin.close()
    _ensure_topics(settings, port, settings.stack.start_timeout_s)


def down(settings: Settings, wipe: bool = False) -> list[str]:
    """Stop the servers state.json says this module started (if still those processes); forget them.
    ``wipe`` also deletes the broker's and Redis' data, so the next ``up`` starts empty."""
    run_dir = _run_dir(settings)
    with _locked(run_dir):
        stopped = [name for name, record in _load_state(run_dir).items() if _stop(record)]
        _save_state(run_dir, {})
        if wipe:
            for directory in (_kafka_dir(run_dir), run_dir / "redis"):
                shutil.rmtree(directory, ignore_errors=True)
    return stopped


def status(settings: Settings) -> dict[str, Any]:
    """JSON-able view of the stack: per component pid, port, up/down (and the broker's topics)."""
    run_dir = _run_dir(settings)
    records = _load_state(run_dir)
    report: dict[str, Any] = {"run_dir": str(run_dir)}
    for name, port in ((KAFKA, settings.stack.kafka_port), (REDIS, settings.stack.redis_port)):
        record = records.get(name)
        if record is not None and _is_ours(record):
            state = "up" if _answers(name, record) else "not answering"
            entry: dict[str, Any] = {"pid": record.pid, "port": record.port, "status": state,
                                     "log": record.log}
        else:
            state = "down" if _port_free(port) else "port in use by another process"
            entry = {"pid": None, "port": port, "status": state, "log": None}
        if name == KAFKA and state == "up" and record is not None:
            entry["topics"] = _topics(record.port)
        report[name] = entry
    return report

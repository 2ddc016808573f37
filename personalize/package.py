"""``personalize package``: a job archive ``flink run`` submits to a cluster that holds nothing of ours.

The archive (a directory and its ``.tar.gz``) holds:

- ``site/``: the job's packages as the wheel installs them (``personalize/config/`` included), shipped
  to the Python workers with ``-pyfs`` (Flink puts each directory's parent on their ``PYTHONPATH``);
- ``requirements.txt``: the job's third-party dependencies, pinned as this installation's metadata
  pins them, which the workers install with ``-pyreq`` (PyFlink itself is the cluster's);
- ``.cache/jars/``: the Kafka connector's jars, checked against their pins where the client looks for
  them (``PERSONALIZE_HOME`` is the archive), so submitting needs no ``mvn``;
- ``submit.sh``: the ``flink run`` command line (docs/operations.md, "Submitting to a shared cluster").

The client side of ``flink run`` (the interpreter given by ``PYTHON``) builds the job graph, so it needs
the project installed: ``pip install personalize-*.whl``.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from importlib import metadata
from pathlib import Path

from personalize import bootstrap, paths

#: The packages the job imports (not the dashboard's or the benchmarks' code paths, but their packages
#: come along inside ``personalize``).
JOB_PACKAGES = ("jobs", "operators", "state", "connectors", "personalize")
JOB_FILE = "jobs/personalize_job.py"
#: Dependencies the workers do not install: the cluster's PyFlink (and its libpython finder), and
#: what only the dashboard and the CLI's reports use.
NOT_SHIPPED = frozenset({"apache-flink", "find-libpython", "flask", "waitress", "matplotlib"})

SUBMIT_SH = """#!/usr/bin/env bash
# Submit the packaged job (personalize package). Environment:
#   JOBMANAGER  host:port of the cluster's REST endpoint (required)
#   FLINK       the flink CLI (default: flink on PATH)
#   PYTHON      the client interpreter, with PyFlink and this project installed (default: python)
#   PYEXEC      the workers' interpreter on the cluster (default: the cluster's python.executable)
# Extra arguments go to the job (--config FILE, --start earliest, --end-offsets FILE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export PERSONALIZE_HOME="${{PERSONALIZE_HOME:-$here}}"
args=(run -d -m "${{JOBMANAGER:?set JOBMANAGER=host:port}}" -py "$here/site/{job_file}"
      -pyfs "{pyfs}" -pyreq "$here/requirements.txt" -pyclientexec "${{PYTHON:-python}}")
if [[ -n "${{PYEXEC:-}}" ]]; then args+=(-pyexec "$PYEXEC"); fi
if [[ -n "${{FROM_SAVEPOINT:-}}" ]]; then args+=(-s "$FROM_SAVEPOINT"); fi
exec "${{FLINK:-flink}}" "${{args[@]}}" "$@"
"""


def requirements() -> list[str]:
    """The job's runtime requirements (``name==version`` / specifier lines), from the installed metadata."""
    lines = []
    for requirement in metadata.requires("personalize") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[<>=!~;\s\[]", requirement, maxsplit=1)[0]
        if name.lower().replace("_", "-") not in NOT_SHIPPED:
            lines.append(requirement.replace(" ", ""))
    return lines


def build(out_dir: Path) -> Path:
    """Write ``out_dir/personalize-job-<version>/`` and its ``.tar.gz``; returns the tarball."""
    name = f"personalize-job-{metadata.version('personalize')}"
    root = out_dir / name
    if root.exists():
        shutil.rmtree(root)
    site = root / "site"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in JOB_PACKAGES:
        shutil.copytree(paths.PACKAGE_ROOT / package, site / package, ignore=skip)
    # The configuration where the wheel puts it, from a checkout or an installation alike.
    shutil.copytree(paths.CONFIG_DIR, site / "personalize" / "config", ignore=skip, dirs_exist_ok=True)
    (root / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    job_jars = bootstrap.ensure_connector_jars()
    connector = bootstrap.KAFKA_CONNECTOR
    jars = root / connector.dest.relative_to(paths.ROOT)
    jars.mkdir(parents=True)
    for jar in connector.pins():
        shutil.copy2(connector.jar(jar), jars / jar)
    operators = job_jars[-1]  # compiled here: the cluster's client need not have a JDK
    shutil.copy2(operators, jars / operators.name)
    pyfs = ",".join(f"$here/site/{package}" for package in JOB_PACKAGES)
    submit = root / "submit.sh"
    submit.write_text(SUBMIT_SH.format(job_file=JOB_FILE, pyfs=pyfs))
    submit.chmod(0o755)
    tarball = out_dir / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(root, arcname=name)
    return tarball

"""The project as an artifact: the wheel carries config/ and runs installed, outside the source tree, and
``personalize package`` writes a job archive for ``flink run`` on a cluster that holds nothing of ours."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from personalize import bootstrap, package, paths
from personalize.dashboard import vendor
from personalize.settings import Settings

CONFIG_FILES = ("defaults.yaml", "settings.schema.json", "rules.yaml", "rules.schema.json", "event.schema.json")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # From a copy: setuptools builds in the source directory, and a build/ left there would leak stale files.
    source = out / "source"
    shutil.copytree(paths.PACKAGE_ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "dist", "*.egg-info", "__pycache__", "tests", "docs", "deploy", "docker"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                    "-w", str(out), str(source)], check=True, timeout=300)
    return next(out.glob("personalize-*.whl"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (its dependencies come from this venv through a ``.pth``
    line, which adds the directory without running the editable install's finder): its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--disable-pip-version-check", str(wheel)], check=True, timeout=300)
    return venv / "bin"


def outside(tmp_path: Path) -> dict[str, str]:
    """An environment that cannot see the checkout: no PYTHONPATH, and a working directory elsewhere."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "PERSONALIZE"))}
    return {**env, "PERSONALIZE_HOME": str(tmp_path)}


def test_the_wheel_carries_the_configuration_and_the_maven_pins(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"personalize/config/{name}" for name in CONFIG_FILES} <= names
    schemas = {f"personalize/config/schemas/{p.name}" for p in (paths.CONFIG_DIR / "schemas").glob("*.json")}
    assert schemas and schemas <= names
    assert {f"personalize/maven/{bootstrap.KAFKA_CONNECTOR.name}/{name}" for name in ("pom.xml", "sha256sums")} <= names
    assert not any(name.startswith(("config/", "tests/")) for name in names)


def test_the_wheel_carries_the_dashboard_and_its_charting_library(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dashboard = "personalize/dashboard"
    assert {f"{dashboard}/templates/index.html", f"{dashboard}/static/dashboard.js",
            f"{dashboard}/static/dashboard.css"} <= names
    pins = (*vendor.MEMBERS.values(), "VERSION", "sha256sums")
    vendored = {f"{dashboard}/static/vendor/uplot/{name}" for name in pins}
    assert vendored <= names  # the page works offline from an installed wheel


def test_the_installed_wheel_runs_outside_the_source_tree(installed: Path, tmp_path: Path) -> None:
    env = outside(tmp_path)
    version = subprocess.run([str(installed / "personalize"), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True, timeout=60)
    assert version.stdout.strip() == "personalize 0.1.0"
    probe = ("from personalize import paths, settings; s = settings.load(); "
             "print(paths.SOURCE_CHECKOUT, paths.CONFIG_DIR, paths.resolve(s.rules.file), paths.ROOT)")
    result = subprocess.run([str(installed / "python"), "-c", probe], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True, timeout=60)
    source, config_dir, rules, root = result.stdout.split()
    assert source == "False"
    assert Path(config_dir).is_relative_to(installed.parent) and Path(rules) == Path(config_dir) / "rules.yaml"
    assert Path(root) == tmp_path.resolve()  # writable state goes to PERSONALIZE_HOME, not site-packages


def test_the_job_archive_holds_code_config_requirements_jars_and_the_submit_command(tmp_path: Path) -> None:
    tarball = package.build(tmp_path)
    root = tmp_path / tarball.name.removesuffix(".tar.gz")
    with tarfile.open(tarball) as archive:
        assert f"{root.name}/site/personalize/config/defaults.yaml" in archive.getnames()
    site = root / "site"
    assert sorted(p.name for p in site.iterdir()) == sorted(package.JOB_PACKAGES)
    assert (site / package.JOB_FILE).is_file() and not list(site.rglob("__pycache__"))
    requirements = (root / "requirements.txt").read_text().split()
    assert "river==0.23.0" in requirements and "redis==5.3.1" in requirements
    assert not any(line.startswith(("apache-flink", "flask")) for line in requirements)
    pins = bootstrap.KAFKA_CONNECTOR.pins()
    jars = root / ".cache" / "jars"
    assert {name: bootstrap.sha256_of(jars / name) for name in pins} == pins
    script = (root / "submit.sh").read_text()
    assert all(f"$here/site/{name}" in script for name in package.JOB_PACKAGES)
    assert '-pyreq "$here/requirements.txt"' in script
    subprocess.run(["bash", "-n", str(root / "submit.sh")], check=True)
    # The shipped packages alone (a worker's PYTHONPATH) load the settings and find the pinned jars.
    probe = ("from personalize import bootstrap, paths, settings; settings.load(); "
             "print(paths.SOURCE_CHECKOUT, bootstrap.ensure_connector_jars()[0])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True,
                            env={**outside(root), "PYTHONPATH": str(site)}, timeout=60)
    source, jar = result.stdout.split()
    assert source == "False" and Path(jar).is_relative_to(root)


@pytest.mark.integration
def test_the_job_archive_submitted_from_a_fresh_venv_runs_on_the_standalone_cluster(
        installed: Path, cluster_settings: Settings, tmp_path: Path) -> None:
    """The path a platform team takes: the wheel in a fresh venv outside the checkout builds the
    archive, and the archive's submit.sh (``flink run -py … -pyfs … -pyreq …``) runs the job on the
    cluster; its workers install the requirements themselves."""
    from personalize import cluster
    from tests.test_cluster import redis_state, seeded_run

    run, ends = seeded_run(cluster_settings, 1500)
    env = outside(tmp_path)
    subprocess.run([str(installed / "personalize"), "package", "--out", str(tmp_path / "dist")], cwd=tmp_path,
                   env=env, check=True, capture_output=True, text=True, timeout=600)
    archive = next((tmp_path / "dist").glob("personalize-job-*/submit.sh")).parent
    ends_file = tmp_path / "ends.json"
    ends_file.write_text(json.dumps(ends))
    config = cluster.job_config(run, tmp_path / "job.yaml")
    flink = cluster.environment(run.cluster)  # the cluster's configuration for the flink CLI
    submit_env = {**env, "FLINK_CONF_DIR": flink["FLINK_CONF_DIR"], "FLINK_LIB_DIR": flink["FLINK_LIB_DIR"],
                  "JOBMANAGER": f"localhost:{run.cluster.rest_port}", "PYTHON": str(installed / "python"),
                  "FLINK": str(cluster.flink_home() / "bin" / "flink")}
    submitted = subprocess.run([str(archive / "submit.sh"), "--config", str(config), "--start", "earliest",
                                "--end-offsets", str(ends_file)], cwd=tmp_path, env=submit_env,
                               capture_output=True, text=True, timeout=600)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = re.search(r"JobID ([0-9a-f]{32})", submitted.stdout)
    assert job_id is not None, submitted.stdout[-3000:]
    assert cluster.wait_for_state(run.cluster, job_id.group(1), cluster.TERMINAL_STATES, timeout_s=600) == "FINISHED"
    profiles = [value for key, value in redis_state(run).items() if key.endswith(":profile")]
    assert len(profiles) > 100 and sum(int(p["total"]) for p in profiles) > 1200

"""The bootstrap fetches pinned jars with mvn, refuses what does not match its pins, and fails in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from personalize import bootstrap

REAL_MVN = shutil.which("mvn")  # the bootstrap's own prerequisite, like java


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private .cache and a private copy of the poms and pins."""
    cache_dir, maven = tmp_path / "cache", tmp_path / "maven"
    cache_dir.mkdir()
    shutil.copytree(bootstrap.MAVEN_DIR, maven)
    monkeypatch.setattr(bootstrap, "CACHE_DIR", cache_dir)
    monkeypatch.setattr(bootstrap, "MANIFEST", cache_dir / "manifest.json")
    monkeypatch.setattr(bootstrap, "LOCK", cache_dir / "bootstrap.lock")
    monkeypatch.setattr(bootstrap, "MAVEN_DIR", maven)
    return cache_dir


def connector(cache: Path) -> bootstrap.MavenSet:
    return bootstrap.MavenSet("flink-connector-kafka", cache / "jars")


def resolve(jars: bootstrap.MavenSet) -> bool:
    return bootstrap._resolve(jars, bootstrap._read_manifest())


def test_jars_are_fetched_verified_and_then_only_looked_at(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jars = connector(cache)
    assert resolve(jars)
    assert sorted(path.name for path in jars.dest.iterdir()) == ["flink-connector-kafka.jar", "kafka-clients.jar"]
    assert all(bootstrap.sha256_of(jars.dest / name) == digest for name, digest in jars.pins().items())
    monkeypatch.setenv("PATH", "/nonexistent")  # a warm run needs no mvn
    assert not resolve(jars)


def test_missing_mvn_is_one_line(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(bootstrap.BootstrapError, match=r"^`mvn` not found on PATH: .*apt-get install maven\)$"):
        resolve(connector(cache))


def test_mvn_without_repository_access_is_one_line(cache: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A real mvn in offline mode with an empty local repository: what a machine without access sees."""
    wrapper = tmp_path / "bin" / "mvn"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {REAL_MVN} -o -Dmaven.repo.local={tmp_path / "empty-repo"} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:/usr/bin:/bin")

    with pytest.raises(bootstrap.BootstrapError) as caught:
        resolve(connector(cache))

    message = str(caught.value)
    assert message.startswith("mvn could not fetch the flink-connector-kafka jars (is this machine offline")
    assert "\n" not in message
    assert not (cache / "jars").exists()  # nothing half-fetched is left where the job looks


def test_a_jar_that_does_not_match_its_pin_is_refused(cache: Path) -> None:
    jars = connector(cache)
    pins = bootstrap.MAVEN_DIR / jars.name / "sha256sums"
    pins.write_text(pins.read_text().replace(jars.pins()["kafka-clients.jar"], "0" * 64))

    with pytest.raises(bootstrap.BootstrapError, match=r"differ from .*sha256sums \(kafka-clients.jar\)"):
        resolve(jars)
    assert not jars.dest.exists()

"""The TaskManager supervisor's pacing and pid bookkeeping; the job's restart strategy, table options and
the settings file a cluster job reads (no cluster; tests/test_cluster.py has the supervisor replacing a
killed TaskManager of a real one)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from jobs.pipeline import restart_strategy, table_options
from personalize import cluster
from personalize.settings import ClusterSettings, Settings, load
from personalize.supervisor import RestartPacing


@pytest.fixture
def defaults() -> Settings:
    return load()


def test_the_first_start_is_immediate_and_a_crash_loop_backs_off() -> None:
    pacing = RestartPacing(initial_delay_s=1, max_delay_s=4, quiet_s=100)
    assert pacing.due(0)
    starts = []
    now = 0.0
    while now < 20:
        if pacing.due(now):
            pacing.started(now)
            starts.append(now)
        now += 0.5
    assert starts == [0.0, 1.0, 3.0, 7.0, 11.0, 15.0, 19.0]


def test_a_quiet_spell_resets_the_delay() -> None:
    pacing = RestartPacing(initial_delay_s=1, max_delay_s=60, quiet_s=100)
    for now in (0, 1, 3, 7):
        pacing.started(now)
    assert pacing.delay_s == 8 and not pacing.due(10)
    assert pacing.due(107)
    pacing.started(107)
    assert pacing.delay_s == 1


@pytest.fixture
def fake_taskmanager() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line names the TaskManager's main class, as a real one's does; it is
    yielded once it runs (right after the fork, the child still has pytest's command line)."""
    process = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)",
                                "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"up\n"
    yield process
    process.kill()
    process.wait()


def test_process_running_needs_the_mark_and_a_live_process(
        fake_taskmanager: subprocess.Popen[bytes]) -> None:
    assert cluster.process_running(fake_taskmanager.pid, cluster.TASKMANAGER_MARK)
    assert not cluster.process_running(fake_taskmanager.pid, cluster.JOBMANAGER_MARK)
    fake_taskmanager.kill()
    fake_taskmanager.wait()
    assert not cluster.process_running(fake_taskmanager.pid, cluster.TASKMANAGER_MARK)


def test_prune_keeps_running_taskmanagers_and_drops_the_rest(
        defaults: Settings, tmp_path: Path, fake_taskmanager: subprocess.Popen[bytes]) -> None:
    settings: ClusterSettings = replace(defaults.cluster, run_dir=str(tmp_path))
    exited = subprocess.Popen([sys.executable, "-c", "pass", cluster.TASKMANAGER_MARK])
    exited.wait()
    (tmp_path / "pids").mkdir()
    pid_file = tmp_path / "pids" / "flink-tester-taskexecutor.pid"
    pid_file.write_text(f"{exited.pid}\n{fake_taskmanager.pid}\n")
    assert cluster.prune_taskmanagers(settings) == [fake_taskmanager.pid]
    assert cluster.taskmanager_pids(settings) == [fake_taskmanager.pid]


def test_restarts_back_off_exponentially_and_stay_bounded(defaults: Settings) -> None:
    options = restart_strategy(defaults.job)
    assert options["restart-strategy.type"] == "exponential-delay"
    prefix = "restart-strategy.exponential-delay."
    assert options[prefix + "attempts-before-reset-backoff"] == str(defaults.job.restart_attempts)
    assert options[prefix + "initial-backoff"] == f"{defaults.job.restart_initial_delay_ms} ms"
    assert options[prefix + "max-backoff"] == f"{defaults.job.restart_max_delay_ms} ms"


def test_the_job_config_carries_every_job_setting_a_caller_changed(defaults: Settings, tmp_path: Path) -> None:
    """The cluster job reads its settings from this file: a changed idleness timeout must reach it too
    (the fault tests' hour-long idleness once did not, and a stalled reader's backlog went late)."""
    changed = replace(defaults, job=replace(defaults.job, parallelism=3, idleness_ms=3_600_000, micro_batch_ms=7),
                      privacy=replace(defaults.privacy, enabled=False),
                      redis=replace(defaults.redis, key_prefix="run-7:"))
    loaded = load(cluster.job_config(changed, tmp_path / "job.yaml"), environ={})
    assert loaded.job == changed.job
    assert loaded.privacy.enabled is False and loaded.redis == changed.redis and loaded.kafka == changed.kafka


def test_only_an_unbounded_input_has_an_idleness_timeout(defaults: Settings) -> None:
    """A bounded input's partitions end instead of idling: without a timeout no stalled reader's backlog
    can be declared late."""
    assert table_options(defaults.job, bounded=False)["table.exec.source.idle-timeout"] == "10000 ms"
    assert table_options(defaults.job, bounded=True) == {"table.local-time-zone": "UTC"}

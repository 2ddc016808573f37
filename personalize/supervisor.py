"""Keeps the local cluster's TaskManagers running: a new one for each that exits.

A deployment gets this from its process manager (systemd's ``Restart=always``, a Kubernetes
Deployment, compose's ``restart: unless-stopped``); the local cluster gets it from this small
process, which ``personalize cluster up`` starts and ``down`` stops. It is needed beyond the crashed
process itself: on Flink 2.0.2 the loss of one TaskManager can make another one exit (a bug in task
cleanup, docs/operations.md), and the job's restarts can only succeed once every slot is back.

Run as ``python -m personalize.supervisor RUN_DIR``; it reads the cluster settings ``up`` wrote to
``RUN_DIR/supervisor.json``, logs to ``RUN_DIR/log/supervisor.log`` and keeps its counts in
``RUN_DIR/supervisor-status.json``. It exits on SIGTERM, and by itself once the JobManager is gone.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from personalize import cluster
from personalize.settings import ClusterSettings

log = logging.getLogger("personalize.supervisor")

POLL_S = 0.5
#: How long the JobManager may be missing before the supervisor concludes the cluster was stopped.
ORPHANED_AFTER_S = 30.0


@dataclass
class RestartPacing:
    """When the next TaskManager may start: at once after a quiet spell, then ``initial_delay_s``,
    twice that, ... up to ``max_delay_s`` after the previous start while they keep exiting, so a
    TaskManager that cannot start (bad memory settings, a port in use) does not spin the machine."""

    initial_delay_s: float = 1.0
    max_delay_s: float = 60.0
    quiet_s: float = 120.0
    last_start: float | None = None
    delay_s: float = 0.0

    def _quiet(self, now: float) -> bool:
        return self.last_start is None or now - self.last_start >= self.quiet_s

    def due(self, now: float) -> bool:
        return self.last_start is None or now - self.last_start >= min(self.delay_s, self.quiet_s)

    def started(self, now: float) -> None:
        self.delay_s = self.initial_delay_s if self._quiet(now) else min(self.delay_s * 2, self.max_delay_s)
        self.last_start = now


def supervise(settings: ClusterSettings, status_file: Path, stopping: list[bool]) -> None:
    pacing = RestartPacing()
    started = 0
    jobmanager_missing_since: float | None = None
    while not stopping[0]:
        now = time.monotonic()
        if cluster.jobmanager_running(settings):
            jobmanager_missing_since = None
        elif jobmanager_missing_since is None:
            jobmanager_missing_since = now
        elif now - jobmanager_missing_since >= ORPHANED_AFTER_S:
            log.info("no JobManager for %.0f s: the cluster was stopped, exiting", ORPHANED_AFTER_S)
            return
        running = cluster.prune_taskmanagers(settings)
        # One start per round: each is paced.
        if jobmanager_missing_since is None and len(running) < settings.taskmanagers and pacing.due(now):
            log.info("%d of %d TaskManagers running (%s): starting one", len(running), settings.taskmanagers,
                     running)
            cluster.start_taskmanager(settings)
            pacing.started(now)
            started += 1
            # Written whole and renamed, so a reader never sees half a file.
            pending = status_file.with_suffix(".tmp")
            pending.write_text(json.dumps({"taskmanagers_started": started, "last_start_epoch_s": time.time()}))
            pending.replace(status_file)
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    run_dir = Path(argv[0])
    settings = ClusterSettings(**json.loads((run_dir / cluster.SUPERVISOR_SETTINGS).read_text()))
    logging.basicConfig(filename=run_dir / "log" / "supervisor.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    stopping = [False]

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("supervising %d TaskManagers of %s", settings.taskmanagers, run_dir)
    supervise(settings, run_dir / cluster.SUPERVISOR_STATUS, stopping)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

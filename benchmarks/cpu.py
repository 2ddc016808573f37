"""Where a run's CPU went: the machine's busy cores and each local process role's share, from ``/proc``.

The cluster stage reads this at the job's start and end: on a small machine the question is whether a
second TaskManager had a core to use at all (docs/performance.md). Linux only; elsewhere the reading is
empty and the report says nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

#: A process's role, by a marker in its command line (the first that matches).
ROLES = (("taskmanagers", "TaskManagerRunner"), ("jobmanager", "StandaloneSessionClusterEntrypoint"),
         ("broker", "kafka.Kafka"), ("redis", "redis-server"))


@dataclass(frozen=True)
class CpuReading:
    at: float
    """``time.monotonic()`` when read."""
    busy_ticks: int
    """Clock ticks the machine's CPUs spent working (user, nice, system, interrupts) since boot."""
    processes: dict[int, tuple[str, int]] = field(default_factory=dict)
    """pid -> (role, user + system ticks of the process since it started)."""


def read_cpu(proc: Path = Path("/proc")) -> CpuReading | None:
    """The machine's and the role processes' CPU ticks now; None without a Linux ``/proc``."""
    try:
        fields = (proc / "stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(value) for value in fields[:7])
    busy = user + nice + system + irq + softirq  # guest time is inside user and nice already
    processes = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        role = next((name for name, marker in ROLES if marker in command), None)
        if role is not None:
            after_name = stat.rsplit(")", 1)[1].split()  # the name in parentheses may hold spaces
            processes[int(entry.name)] = (role, int(after_name[11]) + int(after_name[12]))  # utime, stime
    return CpuReading(time.monotonic(), busy, processes)


def cpu_used(before: CpuReading | None, after: CpuReading | None, hz: int | None = None) -> dict[str, float]:
    """Mean cores in use between two readings: ``busy`` for the machine, then per role (processes present
    in both readings); empty when either reading is missing or no time passed."""
    if before is None or after is None or after.at <= before.at:
        return {}
    hz = hz or os.sysconf("SC_CLK_TCK")
    seconds = after.at - before.at
    used = {"busy": (after.busy_ticks - before.busy_ticks) / hz / seconds}
    for pid, (role, ticks) in after.processes.items():
        if pid in before.processes:
            used[role] = used.get(role, 0.0) + (ticks - before.processes[pid][1]) / hz / seconds
    return {name: round(cores, 2) for name, cores in used.items()}

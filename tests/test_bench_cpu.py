"""The cluster stage's CPU accounting (benchmarks/cpu.py), on a written /proc tree and on the real one."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.cpu import CpuReading, cpu_used, read_cpu


def write_proc(root: Path, busy: tuple[int, int, int, int, int, int, int],
               processes: dict[int, tuple[str, int, int]]) -> None:
    """``/proc/stat``'s first line from (user, nice, system, idle, iowait, irq, softirq), and per pid a
    command line and a ``stat`` with that utime and stime (its name holds a space and a parenthesis)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text("cpu  " + " ".join(map(str, busy)) + " 0 0 0\ncpu0 1 2 3\n")
    for pid, (command, utime, stime) in processes.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "cmdline").write_bytes(command.replace(" ", "\0").encode() + b"\0")
        fields = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 10
        (root / str(pid) / "stat").write_text(f"{pid} (java x) y) " + " ".join(fields) + "\n")
    (root / "self").mkdir(exist_ok=True)


def test_busy_cores_and_each_roles_share_between_two_readings(tmp_path: Path) -> None:
    tm = "/usr/bin/java -cp flink.jar org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
    broker = "/usr/bin/java kafka.Kafka server.properties"
    write_proc(tmp_path, (100, 0, 50, 1000, 10, 5, 5), {11: (tm, 40, 10), 12: (tm, 0, 0), 13: (broker, 20, 0),
                                                        14: ("/bin/bash", 500, 500)})
    before = read_cpu(tmp_path)
    write_proc(tmp_path, (300, 0, 150, 1100, 20, 15, 15), {11: (tm, 140, 30), 12: (tm, 60, 20),
                                                           13: (broker, 60, 0), 15: (tm, 900, 0)})
    after = read_cpu(tmp_path)
    assert before is not None and after is not None
    assert before.busy_ticks == 160 and after.busy_ticks == 480  # idle and iowait left out
    assert after.processes[11] == ("taskmanagers", 170) and 14 not in after.processes
    used = cpu_used(before, CpuReading(before.at + 2.0, after.busy_ticks, after.processes), hz=100)
    # pid 15 started after the first reading: its ticks since start are not the interval's
    assert used == {"busy": 1.6, "taskmanagers": 1.0, "broker": 0.2}


def test_no_reading_without_proc_and_no_usage_without_two(tmp_path: Path) -> None:
    assert read_cpu(tmp_path / "missing") is None
    reading = CpuReading(1.0, 10)
    assert cpu_used(None, reading) == {} and cpu_used(reading, None) == {} and cpu_used(reading, reading) == {}


def test_the_real_proc_counts_a_busy_process_under_its_role() -> None:
    """A process whose command line names the broker's main class, spinning for a second."""
    spin = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\n"
    process = subprocess.Popen([sys.executable, "-c", spin, "kafka.Kafka"])
    try:
        time.sleep(0.2)
        before = read_cpu()
        time.sleep(1.0)
        used = cpu_used(before, read_cpu())
    finally:
        process.wait()
    assert used["busy"] > 0.5 and used["broker"] > 0.5

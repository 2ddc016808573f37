"""The job's own metrics: counted in Python, pushed to Flink counters on the function's thread, bounded labels."""

from __future__ import annotations

from typing import Any

from jobs.metrics import MAX_LABEL_VALUES, OTHER, PUSH_INTERVAL_S, JobMetrics, redis_readings


class FakeCounter:
    """A Flink counter as PyFlink's embedded API shows it: ``inc(n)`` (negative to go down)."""

    def __init__(self) -> None:
        self.count = 0
        self.calls = 0

    def inc(self, n: int = 1) -> None:
        self.count += n
        self.calls += 1


class FakeGroup:
    """Flink's metric group as the Python API shows it: ``add_group(key, value)``, then ``counter(name)``.
    It has no ``gauge``: the job must never hand Flink a Python callable to read from another thread."""

    def __init__(self, path: tuple[str, ...] = (), counters: dict[tuple[str, ...], FakeCounter] | None = None) -> None:
        self.path = path
        self.counters: dict[tuple[str, ...], FakeCounter] = {} if counters is None else counters

    def add_group(self, name: str, extra: str) -> FakeGroup:
        return FakeGroup((*self.path, name, extra), self.counters)

    def counter(self, name: str) -> FakeCounter:
        assert (*self.path, name) not in self.counters, "registered twice"
        counter = self.counters[(*self.path, name)] = FakeCounter()
        return counter

    def read(self) -> dict[tuple[str, ...], int]:
        """What a report would read now (Java objects only)."""
        return {key: counter.count for key, counter in self.counters.items()}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_counts_reach_flink_at_most_once_per_interval_and_all_at_close() -> None:
    group, clock = FakeGroup(), Clock()
    metrics = JobMetrics(group, clock)
    events = metrics.labelled("events_in", "event_type")
    for _ in range(500):
        events.inc("page_view")
        metrics.tick()
    assert group.read() == {("event_type", "page_view", "events_in"): 1}  # the first tick pushed, the rest wait
    events.inc("purchase", 2)
    clock.now += PUSH_INTERVAL_S
    metrics.tick()
    assert group.read() == {("event_type", "page_view", "events_in"): 500, ("event_type", "purchase", "events_in"): 2}
    events.inc("purchase")
    metrics.push()  # what close() does
    assert group.read()[("event_type", "purchase", "events_in")] == 3
    calls = sum(counter.calls for counter in group.counters.values())
    metrics.push()  # nothing changed: no call into the JVM
    assert sum(counter.calls for counter in group.counters.values()) == calls


def test_hostile_label_values_cannot_grow_the_registry() -> None:
    group = FakeGroup()
    metrics = JobMetrics(group)
    events = metrics.labelled("events_in", "event_type")
    for index in range(10 * MAX_LABEL_VALUES):
        events.inc(f"type-{index}")
    events.inc("type-0")  # a value it already counts keeps its own count
    metrics.push()
    reported = group.read()
    assert len(reported) == MAX_LABEL_VALUES + 1
    assert reported[("event_type", OTHER, "events_in")] == 10 * MAX_LABEL_VALUES - MAX_LABEL_VALUES
    assert reported[("event_type", "type-0", "events_in")] == 2


def test_readings_follow_the_writers_stats_down_as_well_as_up() -> None:
    from connectors.redis_writer import WriteStats

    class Sink:
        stats = WriteStats()

    group = FakeGroup()
    metrics = JobMetrics(group)
    redis_readings(metrics, Sink())
    late = metrics.counter("late_events")
    Sink.stats.retries = 3
    Sink.stats.flushed(0.0)
    late.inc(2)
    metrics.push()
    reported = group.read()
    assert reported[("redis_write_retries",)] == 3 and reported[("redis_flushes",)] == 1
    assert reported[("redis_flush_ms_max",)] == reported[("redis_flush_ms_last",)] > 0
    assert reported[("late_events",)] == 2
    Sink.stats.last_flush_ms = 0
    metrics.push()
    assert group.read()[("redis_flush_ms_last",)] == 0


def test_no_function_of_the_job_registers_a_python_gauge() -> None:
    """Flink would call a Python gauge from its metric threads, which crashed TaskManagers in thread mode."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    calls: list[Any] = []
    for path in [*root.glob("jobs/*.py"), *root.glob("connectors/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "gauge":
                calls.append(f"{path.name}:{node.lineno}")
    assert calls == []

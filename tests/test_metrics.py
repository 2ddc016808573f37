"""The job's own metrics: counted in Python, read by Flink at each report, with a bounded label set."""

from __future__ import annotations

from typing import Any

from jobs.metrics import MAX_LABEL_VALUES, OTHER, LabelledCounter, redis_gauges


class FakeGroup:
    """Flink's metric group as the Python API shows it: ``add_group(key, value)``, then ``gauge(name, read)``."""

    def __init__(self, path: tuple[str, ...] = (), gauges: dict[tuple[str, ...], Any] | None = None) -> None:
        self.path = path
        self.gauges: dict[tuple[str, ...], Any] = {} if gauges is None else gauges

    def add_group(self, name: str, extra: str) -> FakeGroup:
        return FakeGroup((*self.path, name, extra), self.gauges)

    def gauge(self, name: str, read: Any) -> None:
        assert (*self.path, name) not in self.gauges, "registered twice"
        self.gauges[(*self.path, name)] = read

    def read(self) -> dict[tuple[str, ...], int]:
        """What a report would read now."""
        return {key: read() for key, read in self.gauges.items()}


def test_counts_are_read_at_each_report_and_registered_once_per_label_value() -> None:
    group = FakeGroup()
    events = LabelledCounter(group, "events_in", "event_type")
    for _ in range(500):
        events.inc("page_view")
    events.inc("purchase", 2)
    assert group.read() == {("event_type", "page_view", "events_in"): 500, ("event_type", "purchase", "events_in"): 2}
    events.inc("purchase")  # one dead letter after a quiet minute still shows at the next report
    assert group.read()[("event_type", "purchase", "events_in")] == 3


def test_hostile_label_values_cannot_grow_the_registry() -> None:
    group = FakeGroup()
    events = LabelledCounter(group, "events_in", "event_type")
    for index in range(10 * MAX_LABEL_VALUES):
        events.inc(f"type-{index}")
    events.inc("type-0")  # a value it already counts keeps its own count
    reported = group.read()
    assert len(reported) == MAX_LABEL_VALUES + 1
    assert reported[("event_type", OTHER, "events_in")] == 10 * MAX_LABEL_VALUES - MAX_LABEL_VALUES
    assert reported[("event_type", "type-0", "events_in")] == 2


def test_redis_gauges_read_the_writers_stats_when_reported() -> None:
    from connectors.redis_writer import WriteStats

    class Sink:
        stats = WriteStats()

    group = FakeGroup()
    redis_gauges(group, Sink())
    Sink.stats.retries = 3
    Sink.stats.flushed(0.0)
    reported = group.read()
    assert reported[("redis_write_retries",)] == 3 and reported[("redis_flushes",)] == 1
    assert reported[("redis_flush_ms_max",)] == reported[("redis_flush_ms_last",)] > 0

"""The job's own Flink metrics: counted in Python, pushed to Flink counters from the operator's own thread.

Flink reads a Python *gauge* by calling into the embedded interpreter from whichever thread reports
(the metric query service behind the REST API and web UI, the Prometheus reporter's HTTP thread). In
PyFlink 2.0.2's thread mode that crashed TaskManagers (SIGSEGV in ``take_gil`` on ``flink-metrics-*``,
and in ``PythonInterpreter.finalize`` as an operator closed), so the job registers no gauge. Counts
live in Python (a Flink counter's ``inc()`` is a call into the JVM), and :meth:`JobMetrics.tick`, called
by the functions on their own thread, adds what changed to plain Flink counters at most once per
:data:`PUSH_INTERVAL_S`; ``close`` pushes the rest. Flink then reads only Java objects.

Label values come from the input (event types) or from configuration (segments), so each metric takes
at most :data:`MAX_LABEL_VALUES` of them and counts the rest under ``other``: hostile input cannot grow
the metric registry. The Prometheus reporter exports ``add_group(label, value)`` as a label and every
counter as a gauge (docs/operations.md, "Metrics").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

#: The job's own metrics (docs/operations.md, "Metrics"), by the label each is split by ("" for none);
#: the Grafana dashboard in docker/ charts each of them.
JOB_METRICS = {
    "events_in": "event_type", "dead_letters": "reason", "late_events": "", "segment_entries": "segment",
    "segment_exits": "segment", "rec_lists": "", "redis_flushes": "", "redis_write_retries": "",
    "redis_write_failures": "", "redis_flush_ms_last": "", "redis_flush_ms_max": "", "model_version": "",
    "intent_auc_permille": "", "intent_log_loss_permille": "",
}
#: The most label values one metric creates; further values count as ``other``.
MAX_LABEL_VALUES = 64
OTHER = "other"
#: How often, at most, counts reach Flink while records flow (a report reads them at most this late).
PUSH_INTERVAL_S = 1.0


class Count:
    """A count kept in Python (``inc`` costs an addition, not a call into the JVM)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, count: int = 1) -> None:
        self.value += count


class LabelledCounter:
    """A count per value of one label (Prometheus: ``<name>{<label>="<value>"}``)."""

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.counts: dict[str, int] = {}

    def inc(self, value: str, count: int = 1) -> None:
        counts = self.counts
        if value not in counts:
            if len(counts) >= MAX_LABEL_VALUES:
                value = OTHER
            counts.setdefault(value, 0)
        counts[value] += count


class Pushed:
    """One Flink counter and the value it was last brought to."""

    __slots__ = ("counter", "value")

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.value = 0

    def set(self, value: int) -> None:
        """Bring the counter to ``value`` (a reading such as a flush time may also go down)."""
        if value != self.value:
            self.counter.inc(value - self.value)
            self.value = value


class JobMetrics:
    """One function's metrics (its Flink metric group), pushed by :meth:`tick` and :meth:`push`."""

    def __init__(self, group: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.group = group
        self.clock = clock
        self.readings: dict[str, Callable[[], int]] = {}
        self.labelled_counters: list[LabelledCounter] = []
        self.pushed: dict[tuple[str, ...], Pushed] = {}
        self.next_push = 0.0

    def counter(self, name: str) -> Count:
        count = Count()
        self.readings[name] = lambda: count.value
        return count

    def labelled(self, name: str, label: str) -> LabelledCounter:
        counter = LabelledCounter(name, label)
        self.labelled_counters.append(counter)
        return counter

    def reading(self, name: str, read: Callable[[], int]) -> None:
        """A value read when pushed (e.g. the latest flush time), reported as it is then."""
        self.readings[name] = read

    def tick(self) -> None:
        """Push if the last push is :data:`PUSH_INTERVAL_S` old: the functions call this per call they get."""
        now = self.clock()
        if now >= self.next_push:
            self.next_push = now + PUSH_INTERVAL_S
            self.push()

    def push(self) -> None:
        """Bring every Flink counter to its count now (one JVM call per count that changed)."""
        for name, read in self.readings.items():
            self._counter((name,)).set(int(read()))
        for labelled in self.labelled_counters:
            for value, count in labelled.counts.items():
                self._counter((labelled.label, value, labelled.name)).set(count)

    def _counter(self, path: tuple[str, ...]) -> Pushed:
        pushed = self.pushed.get(path)
        if pushed is None:
            *groups, name = path
            group = self.group.add_group(*groups) if groups else self.group
            pushed = self.pushed[path] = Pushed(group.counter(name))
        return pushed


def redis_readings(metrics: JobMetrics, sink: Any) -> None:
    """The Redis writer's flushes, retries, failures and flush time (``connectors.redis_writer.WriteStats``)."""
    stats = sink.stats
    metrics.reading("redis_flushes", lambda: stats.flushes)
    metrics.reading("redis_write_retries", lambda: stats.retries)
    metrics.reading("redis_write_failures", lambda: stats.failures)
    metrics.reading("redis_flush_ms_last", lambda: stats.last_flush_ms)
    metrics.reading("redis_flush_ms_max", lambda: stats.max_flush_ms)

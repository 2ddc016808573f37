"""The job's own Flink metrics, counted in Python and read by Flink when it reports.

A Flink counter's ``inc()`` from Python is a call into the JVM, so per-event counts live in a Python
dict, and each label value is registered once as a gauge that Flink reads at every report (Flink's
Prometheus reporter exports counters as gauges too). Label values come from the input (event types)
or from configuration (segments), so each metric takes at most :data:`MAX_LABEL_VALUES` of them and
counts the rest under ``other``: hostile input cannot grow the metric registry. The Prometheus
reporter exports ``add_group(label, value)`` as a label (docs/operations.md, "Metrics").
"""

from __future__ import annotations

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


class LabelledCounter:
    """A count per value of one label (Prometheus: ``<name>{<label>="<value>"}``)."""

    def __init__(self, group: Any, name: str, label: str) -> None:
        self.group = group
        self.name = name
        self.label = label
        self.counts: dict[str, int] = {}

    def inc(self, value: str, count: int = 1) -> None:
        counts = self.counts
        if value not in counts:
            if len(counts) >= MAX_LABEL_VALUES:
                value = OTHER
            if value not in counts:
                counts[value] = 0
                self.group.add_group(self.label, value).gauge(self.name, lambda key=value: counts[key])
        counts[value] += count


def redis_gauges(group: Any, sink: Any) -> None:
    """The Redis writer's flushes, retries, failures and flush time (``connectors.redis_writer.WriteStats``)
    as gauges, read by the reporter when it reports (nothing per event)."""
    stats = sink.stats
    group.gauge("redis_flushes", lambda: stats.flushes)
    group.gauge("redis_write_retries", lambda: stats.retries)
    group.gauge("redis_write_failures", lambda: stats.failures)
    group.gauge("redis_flush_ms_last", lambda: stats.last_flush_ms)
    group.gauge("redis_flush_ms_max", lambda: stats.max_flush_ms)

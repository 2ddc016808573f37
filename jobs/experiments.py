"""The experiment metrics operator: sums the recommender shards' per-arm counters and publishes them.

Keyed by experiment id. Every recommender shard sends what its lists, views and conversions added per arm
(``operators.experiments.serving.EXPERIMENTS_ROUTE``); the sums live in keyed state (so they are exactly
once with the checkpoints), and an ``experiments.metrics`` record with the arms' statistics goes to Kafka
and Redis at most every ``experiments.publish_interval_ms`` while they change, and at the end of a bounded
input (docs/experiments.md).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pyflink.common import Row
from pyflink.datastream.functions import KeyedProcessFunction, RuntimeContext

from connectors.redis_writer import UserStateSink
from jobs.adapters import END_OF_INPUT_WATERMARK, close_function
from operators.experiments.attribution import Counts
from operators.experiments.config import Experiment
from operators.experiments.stats import arm_metrics, metrics_record
from operators.jsontext import compact_json
from state.codecs import decode_arm_counts, encode_arm_counts
from state.descriptors import experiment_counts_state


@dataclass(frozen=True)
class ExperimentMetricsSettings:
    confidence: float
    topic: str
    redis: Callable[[], UserStateSink]
    publish_interval_ms: int


class ExperimentMetricsFunction(KeyedProcessFunction):
    """Sums per-arm counters for one experiment (the key) and publishes its metrics record."""

    def __init__(self, settings: ExperimentMetricsSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        self.counts = runtime_context.get_state(experiment_counts_state())
        self.sink = self.settings.redis()
        self.published = runtime_context.get_metrics_group().counter("experiment_metrics_published")

    def process_element(self, row: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        stored = self.counts.value()
        watermark, counts, _ = decode_arm_counts(stored) if stored is not None else (0, {}, None)
        experiment: Experiment
        deltas: list[tuple[str, Counts]]
        experiment, deltas = pickle.loads(row[1])  # the definition in use (commands may have updated it)
        for arm, delta in deltas:
            counts[arm] = counts.get(arm, Counts()) + delta
        watermark = max(watermark, ctx.timer_service().current_watermark())
        self.counts.update(encode_arm_counts(watermark, counts, experiment))
        timers = ctx.timer_service()
        interval = self.settings.publish_interval_ms
        # Rounded up to the interval: Flink keeps one timer per key and time, so this is one publish per interval.
        timers.register_processing_time_timer((timers.current_processing_time() // interval + 1) * interval)
        timers.register_event_time_timer(END_OF_INPUT_WATERMARK)
        return iter(())

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        """Publish the experiment's metrics: the interval passed, or a bounded input ended."""
        stored = self.counts.value()
        if stored is None:
            return
        watermark, counts, experiment = decode_arm_counts(stored)  # complete up to the watermark
        confidence = self.settings.confidence
        record = compact_json(metrics_record(experiment, arm_metrics(experiment, counts, confidence), watermark,
                                             confidence))
        self.sink.write_experiment_metrics(experiment.id, record)
        self.published.inc()
        yield Row(experiment.id.encode("utf-8"), record, self.settings.topic)

    def close(self) -> None:
        close_function(self)

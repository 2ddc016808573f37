"""The demo's progress bar follows the job's committed Kafka offsets (on the real broker)."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from personalize.demo import JobProgress
from personalize.generator import EventGenerator
from personalize.publish import publish
from personalize.settings import Settings

pytestmark = pytest.mark.integration


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def commit(settings: Settings, offsets: dict[tuple[str, int], int]) -> None:
    """Commit offsets for the job's group, as its Kafka source does at a checkpoint."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, group_id=settings.kafka.group_id,
                             enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition(topic, partition): OffsetAndMetadata(offset, "", -1)
                         for (topic, partition), offset in offsets.items()})
    finally:
        consumer.close()


def test_the_bar_shows_the_committed_events_within_the_published_ones(fresh_settings: Settings) -> None:
    settings = replace(fresh_settings, generator=replace(fresh_settings.generator, events=200, users=10))
    published = publish(EventGenerator(settings.generator).records(), settings.kafka, progress=False)
    (topic, partitions), *_ = sorted(published.end_offsets.items(), key=lambda item: -sum(item[1].values()))
    first, end = min(partitions.items())
    terminal = Terminal()
    progress = JobProgress(settings, published.end_offsets, terminal, interval_s=0.1)
    progress.bar.interval_s = 0
    with progress:
        commit(settings, {(topic, first): end // 2, (settings.kafka.topics.profiles.name, 0): 10_000})  # not an input
        deadline = time.monotonic() + 30
        while progress.done != end // 2:
            assert time.monotonic() < deadline, f"the bar stayed at {progress.done}"
            time.sleep(0.1)
        commit(settings, {(topic, first): end + 50})  # never past what was published
        while progress.done != end:
            assert time.monotonic() < deadline, f"the bar stayed at {progress.done}"
            time.sleep(0.1)
    drawn = terminal.getvalue()
    assert f"{end // 2}/{progress.total}" in drawn and f"{end}/{progress.total}" in drawn
    assert f"job {progress.total} records in" in drawn  # the run ended: it read them all

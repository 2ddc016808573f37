"""The benchmark's job stages on the real broker (the suite itself runs on demand, not in `make test`)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.suite import timed_job
from benchmarks.trivial_job import start
from jobs.personalize_job import source_spec
from personalize.generator import EventGenerator
from personalize.kafka_tools import read_topic
from personalize.publish import publish
from personalize.settings import Settings

pytestmark = pytest.mark.integration


def test_the_trivial_job_creates_its_topic_and_counts_every_record(fresh_settings: Settings) -> None:
    """On Apache Kafka topics are not created on first use: the stage once waited forever for its own."""
    settings = replace(fresh_settings, job=replace(fresh_settings.job, parallelism=1),
                       generator=replace(fresh_settings.generator, events=300, users=20))
    published = publish(EventGenerator(settings.generator).records(), settings.kafka, progress=False)
    output = f"bench.counts.{settings.redis.key_prefix.strip(':')}"
    timing = timed_job(lambda: start(settings, source_spec(settings, "earliest", published.end_offsets),
                                     f"trivial-{output}", output))
    assert timing["running_s"] > 0
    partitions = settings.kafka.topics.profiles.partitions
    assert len(list(read_topic(settings.kafka.bootstrap_servers, output, partitions,
                               expected=published.count))) == published.count

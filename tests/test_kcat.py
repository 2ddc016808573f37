"""A real, independent Kafka client reads the job's output topics: Debian's kcat (librdkafka), as a
user would (docs/local-stack.md), sees exactly the committed records the project's own consumer sees."""

from __future__ import annotations

import subprocess

import pytest

from personalize.bootstrap import KCAT
from personalize.kafka_tools import read_topic
from personalize.settings import Settings

pytestmark = pytest.mark.integration

Record = tuple[int, int, str, str | None]


def kcat_records(settings: Settings, topic: str) -> set[Record]:
    """(partition, offset, key, value) of every committed record, tombstones as None."""
    result = subprocess.run(
        [str(KCAT), "-C", "-b", settings.kafka.bootstrap_servers, "-t", topic, "-X", "isolation.level=read_committed",
         "-o", "beginning", "-e", "-q", "-Z", "-f", "%p\\t%o\\t%k\\t%s\\n"],
        capture_output=True, text=True, check=True, timeout=120)
    records = set()
    for line in result.stdout.splitlines():
        partition, offset, key, value = line.split("\t", 3)
        records.add((int(partition), int(offset), key, None if value == "NULL" else value))
    return records


def own_records(settings: Settings, topic: str, partitions: int) -> set[Record]:
    return {(record.partition, record.offset, (record.key or b"").decode(),
             None if record.value is None else record.value.decode())
            for record in read_topic(settings.kafka.bootstrap_servers, topic, partitions, idle_timeout_s=1.0,
                                     tombstones=True)}


@pytest.mark.skipif(not KCAT.exists(), reason="needs Debian's kcat: `make bootstrap BOOTSTRAP_ARGS=--test-tools`")
def test_kcat_reads_committed_what_the_job_wrote(demo_settings: Settings) -> None:
    topics = demo_settings.kafka.topics
    seen = {}
    for topic in topics.outputs():
        if topic.name == topics.handover.name:
            continue  # internal, and not written by a bounded run
        expected = own_records(demo_settings, topic.name, topic.partitions)
        assert kcat_records(demo_settings, topic.name) == expected, topic.name
        seen[topic.name] = len(expected)
    assert all(seen[getattr(topics, role).name] > 0
               for role in ("profiles", "features", "segments", "recommendations", "deadletter", "models")), seen

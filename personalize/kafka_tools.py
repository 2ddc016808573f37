"""Reading topics back for the demo summary, tests and tools (never inside the job)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def read_topic(bootstrap_servers: str, topic: str, partitions: int, idle_timeout_s: float = 3.0,
               expected: int | None = None, tombstones: bool = False) -> Iterator[ConsumerRecord]:
    """Yield every committed record of ``topic`` from the beginning (``read_committed``, as downstream
    consumers read it; tombstones, the null values an erasure writes, only with ``tombstones``).

    Stops at the end offsets the broker reports (the last stable offset), once ``expected`` records
    were seen if given; while the expected records have not arrived yet (a job still running), it
    keeps reading until ``idle_timeout_s`` passes without a new record.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None)
    try:
        assignment = [TopicPartition(topic, partition) for partition in range(partitions)]
        consumer.assign(assignment)
        consumer.seek_to_beginning(*assignment)
        seen, last_record = 0, time.monotonic()
        while True:
            batches = consumer.poll(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    if record.value is None and not tombstones:
                        continue
                    seen += 1
                    yield record
            complete = expected is None or seen >= expected
            if complete and _at_end(consumer, assignment):
                return
            if batches:
                last_record = time.monotonic()
                continue
            idle = time.monotonic() - last_record
            if (idle > idle_timeout_s and complete) or idle > 10 * idle_timeout_s + 30:
                return
    finally:
        consumer.close()


def _at_end(consumer: KafkaConsumer, assignment: list[TopicPartition]) -> bool:
    """Whether every partition's position reached its end offset (for read_committed: the last stable one)."""
    ends = consumer.end_offsets(assignment)
    return all(consumer.position(partition) >= ends[partition] for partition in assignment)

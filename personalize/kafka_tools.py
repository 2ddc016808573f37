"""Reading topics back for the demo summary, tests and tools (never inside the job)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord


def read_topic(bootstrap_servers: str, topic: str, partitions: int, idle_timeout_s: float = 3.0,
               expected: int | None = None, committed_only: bool = True,
               tombstones: bool = False) -> Iterator[ConsumerRecord]:
    """Yield every record of ``topic`` from the beginning (only committed ones by default; tombstones,
    the null values an erasure writes, only with ``tombstones``).

    Stops after ``idle_timeout_s`` without new records (once ``expected`` records were seen, if
    given). Not bounded by "latest" offsets on purpose: the local broker reports them wrongly.
    It also does not filter aborted transactions, so callers compare sets of record ids; and in
    long runs its last stable offset can stall, hiding committed records from read_committed
    consumers (docs/local-stack.md), hence ``committed_only=False`` for summaries.
    """
    isolation = "read_committed" if committed_only else "read_uncommitted"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, isolation_level=isolation,
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
            if batches:
                last_record = time.monotonic()
                continue
            idle = time.monotonic() - last_record
            complete = expected is None or seen >= expected
            if (idle > idle_timeout_s and complete) or idle > 10 * idle_timeout_s + 30:
                return
    finally:
        consumer.close()

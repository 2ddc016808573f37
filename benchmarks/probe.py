"""A plain consumer next to the job in the latency stage: when each event became readable.

It reads the job's input topics as the job's source does (``read_committed``, the same fetch wait),
so publish -> probe is what the broker and the machine cost before the job sees an event. A stall
that shows in the probe is not the job's.
"""

from __future__ import annotations

import json
import threading
import time

from kafka import KafkaConsumer, TopicPartition

from personalize.settings import KafkaSettings


class BrokerProbe(threading.Thread):
    """Consumes the input topics from the end until stopped; ``seen`` maps event id -> wall time."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(name="broker-probe", daemon=True)
        self.seen: dict[str, float] = {}
        self._stopping = threading.Event()
        self._consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, isolation_level="read_committed",
                                       enable_auto_commit=False, group_id=None,
                                       fetch_max_wait_ms=kafka.fetch_max_wait_ms)
        self._assignment = [TopicPartition(topic.name, partition) for topic in kafka.topics.inputs()
                            for partition in range(topic.partitions)]
        self._consumer.assign(self._assignment)
        self._consumer.seek_to_beginning(*self._assignment)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                batches = self._consumer.poll(timeout_ms=200, max_records=5000)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        event_id = _event_id(record.value)
                        if event_id is not None:
                            self.seen.setdefault(event_id, now)
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)


def _event_id(value: bytes | None) -> str | None:
    try:
        document = json.loads(value or b"")
    except ValueError:
        return None
    event_id = document.get("event_id") if isinstance(document, dict) else None
    return event_id if isinstance(event_id, str) else None

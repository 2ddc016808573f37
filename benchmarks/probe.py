"""A plain consumer next to the job in the latency stage: when each event became readable.

It reads the job's input topics as the job's source does (``read_committed``, the same fetch wait),
so publish -> probe is what the broker and the machine cost before the job sees an event. A stall
that shows in the probe is not the job's.

With the input topics stamping records at append (:func:`stamp_at_append`), it also learns when the
broker appended each event: publish -> append is the load generator's share (its client's batching,
and its process waiting for a core on a busy machine), append -> Redis the broker's and the job's.
"""

from __future__ import annotations

import json
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from personalize.settings import KafkaSettings

#: ``ConsumerRecord.timestamp_type`` of a record stamped by the broker.
LOG_APPEND_TIME = 1


class BrokerProbe(threading.Thread):
    """Consumes the input topics from the end until stopped; ``seen`` maps event id -> wall time."""

    def __init__(self, kafka: KafkaSettings) -> None:
        super().__init__(name="broker-probe", daemon=True)
        self.seen: dict[str, float] = {}
        self.appended: dict[str, float] = {}
        """Event id -> when the broker appended it (epoch seconds), from topics stamped at append."""
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
                            if record.timestamp_type == LOG_APPEND_TIME:
                                self.appended.setdefault(event_id, record.timestamp / 1000)
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join(timeout=10)


def stamp_at_append(kafka: KafkaSettings) -> None:
    """Have the input topics stamp each record with the broker's append time (``LogAppendTime``), for the
    probe to read. Only for the benchmark's own topics: a record's time is then no longer the producer's."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, client_id="personalize-bench")
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic.name,
                                            configs={"message.timestamp.type": "LogAppendTime"})
                             for topic in kafka.topics.inputs()])
    finally:
        admin.close()


def _event_id(value: bytes | None) -> str | None:
    try:
        document = json.loads(value or b"")
    except ValueError:
        return None
    event_id = document.get("event_id") if isinstance(document, dict) else None
    return event_id if isinstance(event_id, str) else None

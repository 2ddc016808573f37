"""The latency stage's broker probe (benchmarks/probe.py) on the real broker: with the input topics stamped
at append, it learns when the broker appended each event, after it was handed to the producer."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaProducer

from benchmarks.probe import BrokerProbe, stamp_at_append
from personalize.settings import Settings

pytestmark = pytest.mark.integration


def test_the_probe_reads_each_events_append_time_from_topics_stamped_at_append(fresh_settings: Settings) -> None:
    kafka = fresh_settings.kafka
    stamp_at_append(kafka)
    probe = BrokerProbe(kafka)
    probe.start()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    sent = time.time()
    for i in range(3):  # a producer's own timestamp far in the past: the broker's replaces it
        producer.send(kafka.topics.behavior.name, json.dumps({"event_id": f"e{i}"}).encode(), timestamp_ms=1_000)
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 30
    while len(probe.appended) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    probe.stop()
    assert sorted(probe.appended) == ["e0", "e1", "e2"] and sorted(probe.seen) == ["e0", "e1", "e2"]
    assert all(sent - 1 <= appended <= probe.seen[event_id] + 1 for event_id, appended in probe.appended.items())

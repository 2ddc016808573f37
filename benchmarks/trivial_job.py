"""The baseline PyFlink job: Kafka -> keyed counter -> Kafka, with the full job's connectors and settings.

It uses the same Kafka source, exactly-once sink, execution mode and checkpointing as the
personalization job (``jobs/pipeline.py``), so the gap between the two is the cost of the job's
own logic, not of Flink, PyFlink or the connectors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from kafka import KafkaAdminClient
from pyflink.common import JobClient, Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from connectors.kafka import OUTPUT_TYPE, SourceSpec, attach_kafka_sink, event_time_expression, kafka_source
from jobs.personalize_job import connector_jars
from jobs.pipeline import create_environment
from personalize.settings import Settings, Topic
from personalize.topics import create_topics

OUTPUT_TOPIC = "bench.counts"
#: The Kafka table sink accepts a per-row ``topic`` (what the job's sink uses) only when its ``topic``
#: option lists more than one topic; this second topic gets no records.
UNUSED_TOPIC = "bench.counts.unused"


def user_of(row: Row) -> str:
    """The record's user (the job's key), with one JSON parse; malformed records share one key."""
    try:
        event = json.loads(bytes(row[0]))
        return str(event.get("user_id") or event.get("anonymous_id") or "")
    except (ValueError, AttributeError):
        return ""


class CountPerUser(KeyedProcessFunction):
    """One ValueState read and write per record, and one output record: the least a keyed job does."""

    def __init__(self, topic: str) -> None:
        self.topic = topic

    def open(self, runtime_context: RuntimeContext) -> None:
        self.count = runtime_context.get_state(ValueStateDescriptor("count", Types.LONG()))

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        count = (self.count.value() or 0) + 1
        self.count.update(count)
        yield Row(ctx.get_current_key().encode("utf-8"), str(count).encode("ascii"), self.topic)


def create_output_topics(settings: Settings, output_topic: str) -> None:
    """The counter's topics, as the stack creates the job's: brokers that do not create topics on first
    use (Apache Kafka with ``auto.create.topics.enable=false``) would keep the sink waiting for them."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    try:
        partitions = settings.kafka.topics.profiles.partitions
        create_topics(admin, [(Topic(name, partitions), {}) for name in (output_topic, UNUSED_TOPIC)], 1,
                      settings.stack.start_timeout_s)
    finally:
        admin.close()


def start(settings: Settings, spec: SourceSpec, transactional_id_prefix: str,
          output_topic: str = OUTPUT_TOPIC) -> JobClient:
    """Submit the counter job over ``spec`` (a bounded spec ends it) without waiting."""
    create_output_topics(settings, output_topic)
    env, t_env = create_environment(settings, connector_jars(), bounded=spec.bounded)
    event_time = event_time_expression(settings.validation.min_event_time_ms, settings.validation.max_future_skew_ms)
    source = kafka_source(t_env, settings.kafka, spec, settings.job.max_out_of_orderness_ms, event_time)
    counts = (source.key_by(user_of, key_type=Types.STRING())
              .process(CountPerUser(output_topic), output_type=OUTPUT_TYPE)
              .name("count_per_user").uid("count_per_user"))
    attach_kafka_sink(t_env, counts, settings.kafka, [output_topic, UNUSED_TOPIC], transactional_id_prefix)
    return env.execute_async(f"{settings.job.name}-trivial")

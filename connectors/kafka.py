"""Kafka source and sink built with Flink's Table API Kafka connector, bridged to DataStream.

Why the Table connector: PyFlink's DataStream ``KafkaSource`` only offers value deserializers,
so the job could not see a record's topic/partition/offset (the dead-letter contract needs them),
and its ``KafkaSink`` cannot set a per-record key or topic. The SQL connector runs the same
``KafkaSource``/``KafkaSink`` underneath and exposes both as metadata columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pyflink.common import Types
from pyflink.datastream import DataStream
from pyflink.table import StreamTableEnvironment
from pyflink.table.expressions import col, lit

from personalize.settings import KafkaSettings

#: Rows read from Kafka: raw value bytes plus where they came from.
SOURCE_FIELDS = ["payload", "topic", "partition", "offset", "record_ts"]
SOURCE_TYPE = Types.ROW_NAMED(
    SOURCE_FIELDS,
    [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.INT(), Types.LONG(), Types.LONG()],
)
#: Rows written to Kafka: key, value (None = tombstone) and the destination topic.
OUTPUT_FIELDS = ["k", "v", "topic"]
OUTPUT_TYPE = Types.ROW_NAMED(
    OUTPUT_FIELDS, [Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING()]
)


@dataclass(frozen=True)
class SourceSpec:
    """Which topics to read and from where.

    ``end_offsets`` bounds a replay per topic and partition (exclusive): the offsets the publisher
    was acknowledged, so a replay reads exactly what was published, whatever arrives later.
    ``start`` is ``earliest`` or ``group`` (committed group offsets, earliest when none).
    """

    topics: Sequence[str]
    start: str = "group"
    end_offsets: Mapping[str, Mapping[int, int]] | None = None
    partitions: Mapping[str, int] = field(default_factory=dict)
    read_back: bool = True
    """An unbounded run reads the identity loop's internal topic back; False leaves the loop off, as a
    bounded replay does (the demo: replaying a month in a minute and a half, a forwarded event's round
    trip would bring it back hours of event time behind the watermark, late)."""

    @property
    def bounded(self) -> bool:
        """Whether the input ends (at ``end_offsets``)."""
        return self.end_offsets is not None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _with_clause(options: Mapping[str, str]) -> str:
    return ",\n  ".join(f"{_quote(key)} = {_quote(value)}" for key, value in options.items())


def bounded_offsets(end_offsets: Mapping[int, int], partitions: int) -> str:
    """Connector syntax for end offsets; partitions nobody wrote to end at 0."""
    ends = {partition: 0 for partition in range(partitions)} | dict(end_offsets)
    return ";".join(f"partition:{p},offset:{o}" for p, o in sorted(ends.items()))


def source_options(kafka: KafkaSettings, topic: str, spec: SourceSpec) -> dict[str, str]:
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "properties.group.id": kafka.group_id,
        "properties.isolation.level": "read_committed",
        "properties.fetch.max.wait.ms": str(kafka.fetch_max_wait_ms),
        "format": "raw",
    }
    if spec.start == "earliest":
        options["scan.startup.mode"] = "earliest-offset"
    else:
        options["scan.startup.mode"] = "group-offsets"
        options["properties.auto.offset.reset"] = "earliest"
    if spec.end_offsets is not None:
        options["scan.bounded.mode"] = "specific-offsets"
        options["scan.bounded.specific-offsets"] = bounded_offsets(
            spec.end_offsets.get(topic, {}), spec.partitions.get(topic, 1)
        )
    return options


#: Epoch milliseconds of the record timestamp. TIMESTAMP_LTZ neither casts to BIGINT nor crosses into
#: Python as a plain value, so it goes through a string in the session zone (set to UTC by the job).
RECORD_TS_MILLIS = (
    "CAST(UNIX_TIMESTAMP(CAST(`record_time` AS STRING)) AS BIGINT) * 1000"
    " + EXTRACT(MILLISECOND FROM `record_time`)"
)


def interval(ms: int) -> str:
    """A SQL day-time interval literal (plain SECOND literals overflow their precision at a day)."""
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"INTERVAL '{days} {hours:02}:{minutes:02}:{seconds:02}.{millis:03}' DAY TO SECOND(3)"


def event_time_expression(min_event_time_ms: int, max_future_skew_ms: int) -> str:
    """SQL for the event time the watermarks follow.

    Read in the source so that every Kafka partition gets its own watermark (partitions are read
    at different speeds; a watermark assigned after the source would run ahead with the fastest one
    and make the others late). Only a plausible ``ts`` counts, by the same bounds as validation:
    one absurd timestamp (year 2200) would otherwise push the watermark past every later event.
    An ISO-8601 ``ts`` (which validation parses), or a Segment message's ISO ``timestamp``, counts as
    its Kafka record timestamp. Anything else
    (malformed payloads, no ``ts``, an implausible one) is at the epoch and never moves event time:
    a record validation refuses must not expire everyone's windows (docs/security.md).
    """
    payload = "CAST(`payload` AS STRING)"
    ts = f"COALESCE(JSON_VALUE({payload}, '$.ts'), JSON_VALUE({payload}, '$.timestamp'))"  # Segment: `timestamp`
    claimed = f"TO_TIMESTAMP_LTZ(TRY_CAST({ts} AS BIGINT), 3)"
    return (
        f"CASE WHEN {claimed} >= TO_TIMESTAMP_LTZ({min_event_time_ms}, 3)"
        f" AND {claimed} <= `record_time` + {interval(max_future_skew_ms)} THEN {claimed}"
        f" WHEN {claimed} IS NULL AND REGEXP({ts}, '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}[T ][0-9]{{2}}:[0-9]{{2}}')"
        f" THEN `record_time` ELSE TO_TIMESTAMP_LTZ(0, 3) END"
    )


def kafka_source(t_env: StreamTableEnvironment, kafka: KafkaSettings, spec: SourceSpec,
                 max_out_of_orderness_ms: int, event_time_sql: str, name: str = "kafka_source") -> DataStream:
    """One DataStream of :data:`SOURCE_TYPE` rows over all ``spec.topics``, with event-time watermarks.

    Idle partitions stop holding the watermark back after ``table.exec.source.idle-timeout``.
    """
    tables = []
    for index, topic in enumerate(spec.topics):
        table = f"{name}_{index}"
        t_env.execute_sql(f"""
            CREATE TEMPORARY TABLE {table} (
              `payload` BYTES,
              `topic` STRING METADATA VIRTUAL,
              `partition` INT METADATA VIRTUAL,
              `offset` BIGINT METADATA VIRTUAL,
              `record_time` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
              `event_time` AS {event_time_sql},
              WATERMARK FOR `event_time` AS `event_time` - {interval(max_out_of_orderness_ms)}
            ) WITH (
              {_with_clause(source_options(kafka, topic, spec))}
            )""")
        tables.append(t_env.sql_query(
            f"SELECT `payload`, `topic`, `partition`, `offset`, "
            f"{RECORD_TS_MILLIS} AS record_ts FROM {table}"
        ))
    union = tables[0]
    for table in tables[1:]:
        union = union.union_all(table)
    return t_env.to_data_stream(union)


def sink_options(kafka: KafkaSettings, topics: Sequence[str], transactional_id_prefix: str,
                 parallelism: int | None = None, delivery_guarantee: str = "exactly-once") -> dict[str, str]:
    options = {
        "connector": "kafka",
        "topic": ";".join(topics),
        "properties.bootstrap.servers": kafka.bootstrap_servers,
        "properties.transaction.timeout.ms": str(kafka.transaction_timeout_ms),
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": delivery_guarantee,
    }
    if delivery_guarantee == "exactly-once":
        options["sink.transactional-id-prefix"] = transactional_id_prefix
    if parallelism is not None:
        options["sink.parallelism"] = str(parallelism)
    return options


def attach_kafka_sink(
    t_env: StreamTableEnvironment,
    stream: DataStream,
    kafka: KafkaSettings,
    topics: Sequence[str],
    transactional_id_prefix: str,
    skip: Sequence[str] = (),
    name: str = "kafka_sink",
    parallelism: int | None = None,
    delivery_guarantee: str = "exactly-once",
) -> None:
    """Write :data:`OUTPUT_TYPE` rows (exactly-once unless ``delivery_guarantee`` says
    ``at-least-once``), each to the topic named in its ``topic`` field, if that is one of ``topics``.

    Rows whose ``topic`` is in ``skip`` (records the job routes internally or to another sink) are
    dropped, in Java; so are rows for topics not in ``topics`` when ``skip`` is empty and a sink
    serves only some topics (``name`` tells the sinks apart; ``parallelism`` defaults to the job's).
    """
    single = len(topics) == 1  # the connector writes the `topic` metadata only when given several topics
    topic_column = "" if single else ", `topic` STRING METADATA"
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {name} (
          `k` BYTES,
          `v` BYTES{topic_column}
        ) WITH (
          {_with_clause(sink_options(kafka, topics, transactional_id_prefix, parallelism, delivery_guarantee))}
        )""")
    statements = t_env.create_statement_set()
    table = t_env.from_data_stream(stream)
    if skip:
        table = table.where(~col("topic").in_(*[lit(topic) for topic in skip]))
    else:
        table = table.where(col("topic").in_(*[lit(topic) for topic in topics]))
    if single:
        table = table.select(col("k"), col("v"))
    statements.add_insert(name, table)
    statements.attach_as_datastream()

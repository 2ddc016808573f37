"""Wire the job: sources -> parse/validate -> watermarks -> key by user -> profile -> sinks.

Sources and sinks are injected (:class:`PipelineIO`) so tests can swap Kafka and Redis for
collections and collectors, as in flink-training.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import redis
import yaml
from pyflink.common import Configuration, Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from connectors.kafka import OUTPUT_TYPE, SourceSpec, attach_kafka_sink, event_time_expression, kafka_source
from connectors.population import SharedPopulation
from connectors.redis_writer import RedisStateWriterFactory, UserStateSink
from jobs.adapters import DEAD_LETTERS, EVENT_TYPE, LATE_EVENTS, ParseEvents, UserFunction, UserOperators, user_key
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import DECISION_FIELDS
from operators.features.rfm import RFM_METRICS, PopulationScorer
from operators.features.windows import WindowSpec
from operators.profile import ProfileOperator
from operators.rules.catalog import RuleBook
from operators.rules.language import RuleError
from operators.validation import Limits
from personalize.paths import resolve
from personalize.settings import FeatureSettings, RedisSettings, Settings, SettingsError
from state.descriptors import RULE_CATALOG

SourceBuilder = Callable[[StreamExecutionEnvironment, StreamTableEnvironment], DataStream]
SinkBuilder = Callable[[StreamTableEnvironment, DataStream], None]


def feature_config(features: FeatureSettings) -> FeatureConfig:
    windows = tuple(WindowSpec(w["name"], w["length_ms"], w["bucket_ms"]) for w in features.windows)
    config = FeatureConfig(
        windows=windows, max_items=features.max_items, max_categories=features.max_categories,
        session_gap_ms=features.session_gap_ms, abandon_return_ms=features.abandon_return_ms,
        rfm_window=WindowSpec(f"{features.rfm_window_days}d", features.rfm_window_days * DAY_MS, DAY_MS),
        affinity_half_life_ms=features.affinity_half_life_ms, top_categories=features.top_categories,
        emit_min_engagement_change=features.emit_min_engagement_change,
        emit_max_silence_ms=features.emit_max_silence_ms, retention_ms=features.retention_ms,
    )
    try:
        return replace(config, item_window=config.window(features.item_window),
                       session_window=config.window(features.session_window))
    except KeyError as exc:
        raise SettingsError(f"features: {exc.args[0]}") from None


#: Rule commands have no event time, and their watermark must never move the users' event time:
#: while event partitions are idle, a two-input operator follows its other input's watermark, and
#: a wall-clock watermark there would expire every window at once. Pinned at the epoch, the rules
#: input holds event time back only until it is idle itself (``job.idleness_ms`` after a command).
RULES_EVENT_TIME = "TO_TIMESTAMP_LTZ(0, 3)"


def rule_book(settings: Settings) -> RuleBook | None:
    """The initial rules from ``rules.file``, compiled once here so a bad file stops the job at start."""
    if not settings.rules.enabled:
        return None
    path = resolve(settings.rules.file)
    try:
        document = yaml.safe_load(path.read_text())
        book = RuleBook(tuple(document["segments"]), DECISION_FIELDS, settings.rules.timestamps_per_step)
        book.catalog()
    except OSError as exc:
        raise SettingsError(f"rules.file: cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise SettingsError(f"rules.file {path}: expected YAML with a 'segments' list ({exc})") from None
    except RuleError as exc:
        raise SettingsError(f"rules.file {path}: {exc}") from None
    return book


@dataclass(frozen=True)
class SharedPopulationFactory:
    """Picklable: each parallel instance shares its R/F/M distributions through Redis."""

    redis: RedisSettings
    refresh_interval_ms: int

    def __call__(self, instance: int) -> PopulationScorer:
        population = SharedPopulation(redis.Redis.from_url(self.redis.url), self.redis.key_prefix, RFM_METRICS,
                                      instance, self.refresh_interval_ms)
        population.restore()
        return population


@dataclass(frozen=True)
class PipelineIO:
    """The job's edges: a source of raw Kafka-shaped rows, a sink for output rows, a Redis writer.

    The source also assigns event time and watermarks (the Kafka source does it per partition).
    """

    source: SourceBuilder
    rules: SourceBuilder
    """Rule commands (rows shaped like the event source's), broadcast to every user-state instance."""
    sink: SinkBuilder
    redis: Callable[[], UserStateSink]
    population: Callable[[int], PopulationScorer]


def put_interpreter_first_on_path() -> None:
    """Make thread-mode workers (PemJa) use this interpreter's environment, the project's venv.

    PemJa runs the ``python`` found on the JVM's PATH; given a venv interpreter through
    ``python.executable`` it fails with "No module named 'pemja'". The JVM inherits PATH when
    PyFlink starts it, so this must run before the first PyFlink object is created.
    """
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path


def create_environment(settings: Settings, jars: list[Path]) -> tuple[StreamExecutionEnvironment,
                                                                        StreamTableEnvironment]:
    put_interpreter_first_on_path()
    config = Configuration()
    if settings.job.execution_mode == "process":
        config.set_string("python.executable", sys.executable)
    config.set_string("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in jars))
    config.set_string("python.execution-mode", settings.job.execution_mode)
    config.set_string("pipeline.name", settings.job.name)
    config.set_string("pipeline.auto-watermark-interval", f"{settings.job.watermark_interval_ms} ms")
    # Bounded restarts: a job failing on every attempt must surface, not loop forever.
    config.set_string("restart-strategy.type", "fixed-delay")
    config.set_string("restart-strategy.fixed-delay.attempts", str(settings.job.restart_attempts))
    config.set_string("restart-strategy.fixed-delay.delay", f"{settings.job.restart_delay_ms} ms")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(settings.job.parallelism)
    env.enable_checkpointing(settings.job.checkpoint_interval_ms)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    t_env.get_config().set("table.exec.source.idle-timeout", f"{settings.job.idleness_ms} ms")
    return env, t_env


def kafka_io(settings: Settings, spec: SourceSpec, transactional_id_prefix: str | None = None) -> PipelineIO:
    """Production edges: Kafka in and out (exactly-once), Redis for serving."""
    topics = settings.kafka.topics
    prefix = transactional_id_prefix or settings.kafka.transactional_id_prefix
    event_time = event_time_expression(settings.validation.min_event_time_ms, settings.validation.max_future_skew_ms)
    # Rule commands always replay from the start on a fresh start: the topic is the log that rebuilds
    # the catalog (a restore from a checkpoint resumes from its offsets instead).
    rules = topics.rules
    rules_spec = SourceSpec([rules.name], "earliest", spec.end_offsets, {rules.name: rules.partitions})
    return PipelineIO(
        source=lambda env, t_env: kafka_source(
            t_env, settings.kafka, spec, settings.job.max_out_of_orderness_ms, event_time),
        rules=lambda env, t_env: kafka_source(
            t_env, settings.kafka, rules_spec, 0, RULES_EVENT_TIME, "rules_source"),
        sink=lambda t_env, stream: attach_kafka_sink(
            t_env, stream, settings.kafka, [topic.name for topic in topics.outputs()], prefix
        ),
        redis=RedisStateWriterFactory(settings.redis),
        population=SharedPopulationFactory(settings.redis, settings.features.population_refresh_ms),
    )


def build_pipeline(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, settings: Settings,
                   io: PipelineIO) -> DataStream:
    """Add the job's operators to ``env``; returns the output stream handed to ``io.sink``."""
    job, topics, validation = settings.job, settings.kafka.topics, settings.validation
    limits = Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)
    parsed = (
        io.source(env, t_env)
        .process(ParseEvents(limits, topics.deadletter.name), output_type=EVENT_TYPE)
        .name("parse-validate").uid("parse-validate")
    )
    operators = UserOperators(
        profile=ProfileOperator(job.dedup_window_ms, job.dedup_max_ids_per_user),
        features=feature_config(settings.features),
        features_enabled=settings.features.enabled,
        rules=rule_book(settings),
        topics={"profiles": topics.profiles.name, "features": topics.features.name, "late": topics.late.name,
                "segments": topics.segments.name, "deadletter": topics.deadletter.name},
        state_ttl_ms=job.state_ttl_ms, allowed_lateness_ms=settings.features.allowed_lateness_ms,
        redis=io.redis, population=io.population, flush_interval_ms=settings.redis.flush_interval_ms,
    )
    users = (
        parsed.key_by(user_key, key_type=Types.STRING())
        .connect(io.rules(env, t_env).broadcast(RULE_CATALOG))
        .process(UserFunction(operators), output_type=OUTPUT_TYPE)
        .name("user-state").uid("user-state")
    )
    output = users.union(parsed.get_side_output(DEAD_LETTERS), users.get_side_output(LATE_EVENTS))
    io.sink(t_env, output)
    return output

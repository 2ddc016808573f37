"""Wire the job: sources -> parse/validate -> watermarks -> key by user -> profile -> sinks.

Sources and sinks are injected (:class:`PipelineIO`) so tests can swap Kafka and Redis for
collections and collectors, as in flink-training.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import yaml
from pyflink.common import Configuration, Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from connectors.kafka import OUTPUT_TYPE, SourceSpec, attach_kafka_sink, event_time_expression, kafka_source
from connectors.pii_secret import SECRET_FILE_NAME, SecretSource
from connectors.population import SharedPopulation
from connectors.redis_client import connect
from connectors.redis_writer import DeadLetterCounter, DeadLetterCounterFactory, RedisStateWriterFactory, UserStateSink
from jobs.adapters import (
    DEAD_LETTERS,
    EVENT_TYPE,
    INTERNAL_ROUTES,
    KEYED_EVENT_TYPE,
    LATE_EVENTS,
    RECS_ROUTE,
    TRAINING_ROUTE,
    IngestPrivacy,
    ModelTrainerFunction,
    ParseEvents,
    PrivacyOperators,
    RecommenderFunction,
    RecommenderSettings,
    SegmentInput,
    Sharding,
    TrainerSettings,
    UserFunction,
    UserOperators,
    identity_key,
    user_key,
)
from jobs.experiments import ExperimentMetricsFunction, ExperimentMetricsSettings
from jobs.shards import ShardFunction, micro_batched
from operators.experiments.attribution import Bounds
from operators.experiments.config import Experiment, ExperimentCatalog, ExperimentError, parse_experiments
from operators.experiments.serving import EXPERIMENTS_ROUTE, ExperimentPolicy
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import DECISION_FIELDS, FeatureOperator
from operators.features.rfm import RFM_METRICS, LocalPopulation, PopulationScorer
from operators.features.windows import WindowSpec
from operators.models.config import ModelConfig
from operators.models.user import MODEL_FIELDS
from operators.privacy.consent import ConsentPolicy
from operators.privacy.pii import SecretError
from operators.profile import ProfileOperator
from operators.recs.config import RecConfig, rec_config
from operators.rules.catalog import RuleBook
from operators.rules.engine import SegmentEngine
from operators.rules.language import RuleError
from operators.user_core import CoreSettings, IdentitySettings, UserCore
from operators.validation import Limits
from personalize.paths import resolve
from personalize.segment_format import segment_spec
from personalize.settings import FeatureSettings, JobSettings, ModelSettings, RedisSettings, Settings, SettingsError
from state.descriptors import EXPERIMENT_CATALOG, MODEL_SNAPSHOT, RULE_CATALOG

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


#: Rule commands have no event time; the table source needs one, pinned at the epoch. Its watermarks
#: never reach the operators the commands are broadcast to (:func:`without_event_time`).
RULES_EVENT_TIME = "TO_TIMESTAMP_LTZ(0, 3)"


def rule_book(settings: Settings) -> RuleBook | None:
    """The initial rules from ``rules.file``, compiled once here so a bad file stops the job at start."""
    if not settings.rules.enabled:
        return None
    path = resolve(settings.rules.file)
    try:
        document = yaml.safe_load(path.read_text())
        book = RuleBook(tuple(document["segments"]), DECISION_FIELDS + MODEL_FIELDS,
                        settings.rules.timestamps_per_step)
        book.catalog()
    except OSError as exc:
        raise SettingsError(f"rules.file: cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, TypeError, KeyError) as exc:
        raise SettingsError(f"rules.file {path}: expected YAML with a 'segments' list ({exc})") from None
    except RuleError as exc:
        raise SettingsError(f"rules.file {path}: {exc}") from None
    return book


def model_config(settings: Settings) -> ModelConfig | None:
    """The models' parameters, or None when they are off (they learn from feature vectors, so they
    need features too)."""
    models: ModelSettings = settings.models
    if not models.enabled or not settings.features.enabled:
        return None
    return ModelConfig(**{name: value for name, value in asdict(models).items() if name != "enabled"})


def recommendation_config(settings: Settings) -> RecConfig | None:
    if not settings.recommendations.enabled:
        return None
    try:
        return rec_config(asdict(settings.recommendations))
    except ValueError as exc:
        raise SettingsError(f"recommendations: {exc}") from None


def secret_location(settings: Settings) -> SecretSource:
    """Where the job's secret is looked for: the setting, the environment variable, the file."""
    privacy = settings.privacy
    file = privacy.secret_file or str(Path(settings.stack.run_dir) / SECRET_FILE_NAME)
    return SecretSource(privacy.secret, privacy.secret_env, str(resolve(file)))


def secret_source(settings: Settings) -> SecretSource:
    """Where workers find the job's secret (pseudonyms, erasure confirmations, the signatures of model
    snapshots, the experiments' assignment key); checked here, so a missing secret stops the job at start."""
    privacy = settings.privacy
    source = secret_location(settings)
    if privacy.enabled or privacy.hash_identifiers or model_config(settings) is not None \
            or settings.experiments.definitions:
        try:
            source.resolve()
        except SecretError as exc:
            raise SettingsError(str(exc)) from None
    return source


def stitches_identities(settings: Settings) -> bool:
    return settings.privacy.enabled and settings.privacy.stitch_identities


def privacy_operators(settings: Settings, secret: SecretSource) -> PrivacyOperators | None:
    privacy, topics = settings.privacy, settings.kafka.topics
    if not privacy.enabled:
        return None
    return PrivacyOperators(secret, (topics.profiles.name, topics.features.name, topics.segments.name),
                            topics.erasures.name, privacy.consent_state_ttl_ms)


def experiment_definitions(settings: Settings) -> tuple[Experiment, ...]:
    """The configured experiments that run (docs/experiments.md); a bad definition stops the job before it
    starts, naming the field."""
    if not settings.experiments.definitions:
        return ()
    if not settings.recommendations.enabled:
        raise SettingsError("experiments.definitions: experiments need recommendations (recommendations.enabled "
                            "is false)")
    try:
        return ExperimentCatalog.of(parse_experiments(list(settings.experiments.definitions))).active()
    except ExperimentError as exc:
        raise SettingsError(str(exc)) from None


def experiment_bounds(settings: Settings) -> Bounds:
    """What one user's experiment state may hold."""
    return Bounds(settings.experiments.max_exposures, settings.experiments.max_items, settings.experiments.lateness_ms)


def core_settings(settings: Settings, stitching: bool = False) -> CoreSettings:
    """What the per-user core does with these settings (the job's, the local runner's)."""
    job, topics, privacy = settings.job, settings.kafka.topics, settings.privacy
    consent = None
    if privacy.enabled:
        try:
            consent = ConsentPolicy(dict(privacy.consent_defaults))
        except ValueError as exc:
            raise SettingsError(f"privacy.consent_defaults: {exc}") from None
    identity = IdentitySettings(topics.handover.name, topics.merges.name, privacy.max_links) if stitching else None
    return CoreSettings(
        profile=ProfileOperator(job.dedup_window_ms, job.dedup_max_ids_per_user),
        features=feature_config(settings.features), features_enabled=settings.features.enabled,
        topics={"profiles": topics.profiles.name, "features": topics.features.name, "late": topics.late.name,
                "segments": topics.segments.name, "deadletter": topics.deadletter.name,
                "models": topics.models.name},
        allowed_lateness_ms=settings.features.allowed_lateness_ms, models=model_config(settings),
        recs=recommendation_config(settings), rec_shards=settings.recommendations.shards, consent=consent,
        identity=identity)


def local_core(settings: Settings) -> UserCore:
    """The per-user core as one job instance builds it, for the local runner (``jobs/local_runner.py``): a
    local R/F/M population, the settings' rules and experiments, erasure when privacy is on. Without identity stitching,
    which needs the job's internal topic. Without a configured secret (a fresh checkout: the stack writes
    one), erasure confirmations hash with a secret of this run: a local run publishes nothing."""
    config = core_settings(settings)
    source = secret_location(settings)
    try:
        secret = source.resolve()
    except SecretError:
        secret = os.urandom(32)
    operators = privacy_operators(settings, source)
    core = UserCore(config, FeatureOperator(config.features, LocalPopulation()),
                    operators.erasure(secret) if operators is not None else None)
    book = rule_book(settings)
    if book is not None:
        core.engine = SegmentEngine(book.catalog().rule_set(book.compiler()))
    experiments = experiment_definitions(settings)
    if experiments:
        core.experiments = ExperimentPolicy(experiments, secret, experiment_bounds(settings))
    return core


@dataclass(frozen=True)
class SharedPopulationFactory:
    """Picklable: each parallel instance shares its R/F/M distributions through Redis."""

    redis: RedisSettings
    refresh_interval_ms: int

    def __call__(self, instance: int) -> PopulationScorer:
        population = SharedPopulation(connect(self.redis), self.redis.key_prefix, RFM_METRICS,
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
    snapshots: SourceBuilder
    """Model snapshots read back from the trainer's topic, broadcast with the rule commands."""
    sink: SinkBuilder
    redis: Callable[[], UserStateSink]
    deadletters: Callable[[], DeadLetterCounter]
    population: Callable[[int], PopulationScorer]
    reads_back: bool = True
    """Whether ``source`` also reads the job's internal identity topic back (identity stitching needs
    it). Not in bounded runs: end offsets name only the input topics."""


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


def restart_strategy(job: JobSettings) -> dict[str, str]:
    """Exponential delay, bounded: a job failing on every attempt must surface, not loop forever, but
    the delays grow long enough for lost TaskManagers to be replaced (a restart needs all its slots),
    and a long healthy spell resets the count (fixed-delay attempts add up over the job's lifetime)."""
    prefix = "restart-strategy.exponential-delay."
    return {"restart-strategy.type": "exponential-delay",
            prefix + "initial-backoff": f"{job.restart_initial_delay_ms} ms",
            prefix + "max-backoff": f"{job.restart_max_delay_ms} ms",
            prefix + "backoff-multiplier": "2.0",
            prefix + "reset-backoff-threshold": f"{job.restart_reset_after_ms} ms",
            prefix + "attempts-before-reset-backoff": str(job.restart_attempts)}


def flink_log_dir(settings: Settings) -> Path:
    """Where this process's local Flink (the MiniCluster) logs: its own directory under the run directory,
    so no run overwrites another's log. Fixed at the first call, before PyFlink starts its JVM, which
    reads ``FLINK_LOG_DIR`` once."""
    configured = os.environ.get("FLINK_LOG_DIR")
    if configured:
        return Path(configured)
    directory = resolve(settings.stack.run_dir) / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["FLINK_LOG_DIR"] = str(directory)
    return directory


def create_environment(settings: Settings, jars: list[Path], savepoint: str | None = None,
                       bounded: bool = False) -> tuple[StreamExecutionEnvironment, StreamTableEnvironment]:
    """The job's environment; ``savepoint``: restore from this savepoint or retained checkpoint;
    ``bounded``: the input ends at given offsets (:func:`table_options`)."""
    put_interpreter_first_on_path()
    flink_log_dir(settings)
    config = Configuration()
    if savepoint is not None:
        config.set_string("execution.savepoint.path", savepoint)
    if settings.job.execution_mode == "process":
        config.set_string("python.executable", sys.executable)
    config.set_string("pipeline.jars", ";".join(jar.resolve().as_uri() for jar in jars))
    config.set_string("python.execution-mode", settings.job.execution_mode)
    config.set_string("pipeline.name", settings.job.name)
    config.set_string("pipeline.auto-watermark-interval", f"{settings.job.watermark_interval_ms} ms")
    for key, value in restart_strategy(settings.job).items():
        config.set_string(key, value)
    # On disk, never in JobManager memory: that caps a task's state at 5 MB, and the item model is larger.
    checkpoints = resolve(settings.job.checkpoint_dir or str(Path(settings.stack.run_dir) / "checkpoints"))
    config.set_string("execution.checkpointing.dir", checkpoints.resolve().as_uri())
    # The micro-batched user operator writes its cached values on the batcher's marker, which must reach it
    # before the barrier: an unaligned barrier would overtake it (docs/architecture.md, the decoded-value cache).
    config.set_string("execution.checkpointing.unaligned.enabled", "false")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(settings.job.parallelism)
    env.set_buffer_timeout(settings.job.buffer_timeout_ms)
    env.enable_checkpointing(settings.job.checkpoint_interval_ms)
    t_env = StreamTableEnvironment.create(env)
    for key, value in table_options(settings.job, bounded).items():
        t_env.get_config().set(key, value)
    return env, t_env


def table_options(job: JobSettings, bounded: bool) -> dict[str, str]:
    """The table environment's options: UTC, and the sources' idleness timeout unless ``bounded``.

    A bounded input needs none: each of its partitions either has records to read or has ended, and
    an ended one no longer holds back the watermark. With a timeout, a reader that delivers nothing
    for ``job.idleness_ms`` (a stalled TaskManager) would count as idle and the rest of its backlog
    would be late (docs/operations.md, "Determinism")."""
    options = {"table.local-time-zone": "UTC"}
    if not bounded:
        options["table.exec.source.idle-timeout"] = f"{job.idleness_ms} ms"
    return options


def kafka_io(settings: Settings, spec: SourceSpec, transactional_id_prefix: str | None = None) -> PipelineIO:
    """Production edges: Kafka in and out (exactly-once), Redis for serving."""
    topics = settings.kafka.topics
    prefix = transactional_id_prefix or settings.kafka.transactional_id_prefix
    event_time = event_time_expression(settings.validation.min_event_time_ms, settings.validation.max_future_skew_ms)
    # Rule commands always replay from the start on a fresh start: the topic is the log that rebuilds
    # the catalog (a restore from a checkpoint resumes from its offsets instead).
    rules, models = topics.rules, topics.models
    rules_spec = SourceSpec([rules.name], "earliest", spec.end_offsets, {rules.name: rules.partitions})
    # Snapshots replay from the start too: the newest one is what scores (the newest lineage wins).
    models_spec = SourceSpec([models.name], "earliest", spec.end_offsets, {models.name: models.partitions})
    reads_back = not spec.bounded and spec.read_back and stitches_identities(settings)
    if reads_back:  # handovers and forwarded events come back through the event source, keyed by user
        spec = replace(spec, topics=[*spec.topics, topics.handover.name],
                       partitions={**spec.partitions, topics.handover.name: topics.handover.partitions})
    return PipelineIO(
        reads_back=reads_back,
        source=lambda env, t_env: kafka_source(
            t_env, settings.kafka, spec, settings.job.max_out_of_orderness_ms, event_time),
        rules=lambda env, t_env: kafka_source(
            t_env, settings.kafka, rules_spec, 0, RULES_EVENT_TIME, "rules_source"),
        snapshots=lambda env, t_env: kafka_source(
            t_env, settings.kafka, models_spec, settings.job.max_out_of_orderness_ms, event_time, "snapshots_source"),
        sink=lambda t_env, stream: attach_sinks(t_env, stream, settings, prefix, reads_back),
        redis=RedisStateWriterFactory(settings.redis),
        deadletters=DeadLetterCounterFactory(settings.redis),
        population=SharedPopulationFactory(settings.redis, settings.features.population_refresh_ms),
    )


def attach_sinks(t_env: StreamTableEnvironment, stream: DataStream, settings: Settings, prefix: str,
                 reads_back: bool) -> None:
    """The outputs' exactly-once sink; with the identity loop, a second one for the internal topic, by
    ``privacy.handover_delivery``. At least once by default: its records are read back at once instead
    of after the next checkpoint, and the merge is idempotent (docs/privacy.md)."""
    topics = settings.kafka.topics
    internal = topics.handover.name
    attach_kafka_sink(t_env, stream, settings.kafka, [t.name for t in topics.outputs() if t.name != internal], prefix,
                      (*INTERNAL_ROUTES, internal))
    if reads_back:
        attach_kafka_sink(t_env, stream, settings.kafka, [internal], f"internal-{prefix}", name="internal_sink",
                          delivery_guarantee=settings.privacy.handover_delivery)


def build_pipeline(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, settings: Settings,
                   io: PipelineIO) -> DataStream:
    """Add the job's operators to ``env``; returns the output stream handed to ``io.sink``."""
    job, topics, validation = settings.job, settings.kafka.topics, settings.validation
    limits = Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)
    secret = secret_source(settings)
    stitching = io.reads_back and stitches_identities(settings)
    ingest = IngestPrivacy(settings.privacy.hash_identifiers, settings.privacy.redact_deadletters, secret,
                           topics.handover.name if stitching else "")
    key = identity_key if stitching else user_key
    sharding = Sharding(job.shards, key) if job.micro_batch_ms > 0 else None
    parsed = (
        io.source(env, t_env)
        .process(ParseEvents(limits, topics.deadletter.name, io.deadletters, ingest,
                             SegmentInput(topics.tracking.name, segment_spec(settings)), sharding),
                 output_type=EVENT_TYPE if sharding is None else KEYED_EVENT_TYPE)
        .name("parse-validate").uid("parse-validate")
    )
    core = core_settings(settings, stitching)
    models, recs = core.models, core.recs
    experiments = experiment_definitions(settings)
    operators = UserOperators(
        core=core, rules=rule_book(settings), state_ttl_ms=job.state_ttl_ms, redis=io.redis,
        population=io.population, flush_interval_ms=settings.redis.flush_interval_ms,
        privacy=privacy_operators(settings, secret), secret=secret, max_snapshot_bytes=validation.max_snapshot_bytes,
        redact_deadletters=settings.privacy.redact_deadletters, experiments=experiments,
        experiment_bounds=experiment_bounds(settings), cache_users=job.state_cache_users,
    )
    rules = control = without_event_time(io.rules(env, t_env), "rules-time")
    if models is not None:
        control = control.union(without_event_time(io.snapshots(env, t_env), "snapshots-time"))
    if sharding is None:
        keyed, function = parsed.key_by(key, key_type=Types.STRING()), UserFunction(operators)
    else:
        keyed = micro_batched(parsed, job.micro_batch_ms, job.micro_batch_max_records)
        function = ShardFunction(operators)
    users = (
        keyed.connect(control.broadcast(RULE_CATALOG, MODEL_SNAPSHOT, EXPERIMENT_CATALOG))
        .process(function, output_type=OUTPUT_TYPE)
        .name("user-state").uid("user-state")
    )
    # The user operator's main output also carries internal records (INTERNAL_ROUTES): the sink skips them.
    outputs = [parsed.get_side_output(DEAD_LETTERS), users.get_side_output(LATE_EVENTS)]
    if models is not None:
        trainer = TrainerSettings(models, {"models": topics.models.name, "drift": topics.drift.name}, io.redis,
                                  job.model_state_write_ms, secret)
        outputs.append(
            routed(users, TRAINING_ROUTE)
            .process(ModelTrainerFunction(trainer), output_type=OUTPUT_TYPE)
            .name("model-trainer").uid("model-trainer")
        )
    if recs is not None:
        recommender = RecommenderSettings(recs, topics.recommendations.name, settings.recommendations.redis_ttl_s,
                                          job.state_ttl_ms, io.redis, settings.redis.flush_interval_ms,
                                          job.model_state_write_ms, experiments, experiment_bounds(settings),
                                          secret, topics.deadletter.name, settings.privacy.redact_deadletters)
        # The control topic's experiment commands reach the recommender too: experiments may start at run time.
        lists = (
            routed(users, RECS_ROUTE)
            .connect(rules.broadcast(EXPERIMENT_CATALOG))
            .process(RecommenderFunction(recommender), output_type=OUTPUT_TYPE)
            .name("recommender").uid("recommender")
        )
        metrics = ExperimentMetricsSettings(settings.experiments.confidence, topics.experiments.name, io.redis,
                                            settings.experiments.publish_interval_ms)
        outputs += [lists, (
            routed(lists, EXPERIMENTS_ROUTE)
            .process(ExperimentMetricsFunction(metrics), output_type=OUTPUT_TYPE)
            .name("experiment-metrics").uid("experiment-metrics")
        )]
    output = users.union(*outputs)
    io.sink(t_env, output)
    return output


def without_event_time(control: DataStream, name: str) -> DataStream:
    """A control stream (rule commands, model snapshots) that never holds back the event time of the
    operators it is broadcast to: idle from the start, without watermarks (``ControlStreamTime``).

    Broadcast with its own watermarks, it did: a two-input operator's event time is the lower of its
    inputs' unless one is idle, and the snapshots' watermark (the trainer's event time, behind the
    users') stayed in force whenever their source was not marked idle after its last snapshot; a
    wall-clock one would instead expire every window at once while the event partitions are idle."""
    strategy = get_gateway().jvm.personalize.flink.ControlStreamTime()
    timed = control._j_data_stream.assignTimestampsAndWatermarks(strategy)
    timed.name(name).uid(name)
    return DataStream(timed)


def routed(stream: DataStream, route: str) -> KeyedStream:
    """The rows of ``stream`` whose ``topic`` is ``route``, keyed by the key they are addressed to (their
    ``k``): picked and keyed in Java, with no Python call per record (``RouteByKey``)."""
    gateway = get_gateway()
    pairs = stream._j_data_stream.flatMap(gateway.jvm.personalize.flink.RouteByKey(route),
                                          Types.ROW([Types.STRING(), OUTPUT_TYPE]).get_java_type_info())
    pairs.name(f"route {route}")
    keyed = pairs.keyBy(gateway.jvm.KeyByKeySelector(), Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(keyed, OUTPUT_TYPE, DataStream(pairs))

"""One frozen, validated configuration object for the whole job and its tools.

Sources, later wins: ``config/defaults.yaml``, an optional YAML file (``--config`` or
``PERSONALIZE_CONFIG``), then environment variables ``PERSONALIZE__SECTION__KEY=value``
(values are parsed as YAML scalars, so ``PERSONALIZE__JOB__PARALLELISM=1`` is an int).
The merged mapping is validated against ``config/settings.schema.json`` before anything starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from personalize.paths import CONFIG_DIR

ENV_PREFIX = "PERSONALIZE__"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Loader(yaml.SafeLoader):
    """Safe YAML without implicit timestamps: instants stay strings, as the schema and ``iso_to_ms`` expect."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class SettingsError(ValueError):
    """The configuration is invalid; the message names the offending field."""


@dataclass(frozen=True)
class Topic:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    """Kafka topic-level configs the topic is created with (``cleanup.policy``, ``retention.ms``)."""


@dataclass(frozen=True)
class StackSettings:
    run_dir: str
    kafka_port: int
    kafka_controller_port: int
    kafka_heap: str
    redis_port: int
    start_timeout_s: int
    topic_config: dict[str, str]
    """Over every topic's config on the local broker (history replays carry months-old timestamps)."""


@dataclass(frozen=True)
class Topics:
    behavior: Topic
    profile: Topic
    consent: Topic
    tracking: Topic
    """Events in the Segment spec (Segment's and RudderStack's tracking libraries; docs/events.md)."""
    rules: Topic
    deadletter: Topic
    profiles: Topic
    features: Topic
    late: Topic
    segments: Topic
    recommendations: Topic
    models: Topic
    """Internal: model snapshots from the trainer back to the scoring user operator."""
    drift: Topic
    erasures: Topic
    """Erasure confirmations (privacy audit)."""
    merges: Topic
    """Identity merges (an anonymous visitor joined a known user)."""
    handover: Topic
    """Internal: state and events on their way to the merged profile, read back by the job."""
    experiments: Topic
    """Per-arm metrics of the running experiments (docs/experiments.md)."""

    def all(self) -> list[Topic]:
        return [self.behavior, self.profile, self.consent, self.tracking, self.rules, self.deadletter, self.profiles,
                self.features, self.late, self.segments, self.recommendations, self.models, self.drift,
                self.erasures, self.merges, self.handover, self.experiments]

    def outputs(self) -> list[Topic]:
        """Topics the job writes (one exactly-once sink routes records among them)."""
        return [self.profiles, self.features, self.deadletter, self.late, self.segments, self.recommendations,
                self.models, self.drift, self.erasures, self.merges, self.handover, self.experiments]

    def inputs(self) -> list[Topic]:
        """Topics carrying user events, in the order the job reads them."""
        return [self.behavior, self.profile, self.consent, self.tracking]


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str
    group_id: str
    transactional_id_prefix: str
    transaction_timeout_ms: int
    fetch_max_wait_ms: int
    """How long a source's fetch may wait for data when none arrives."""
    topics: Topics


@dataclass(frozen=True)
class RedisSettings:
    url: str
    key_prefix: str
    user_ttl_s: int
    flush_max_ops: int
    flush_interval_ms: int
    changes_stream_maxlen: int
    cluster: bool = False
    """The url names one node of a Redis Cluster (``connectors/redis_client.py``)."""


@dataclass(frozen=True)
class JobSettings:
    name: str
    parallelism: int
    execution_mode: str
    checkpoint_interval_ms: int
    checkpoint_dir: str
    restart_attempts: int
    restart_initial_delay_ms: int
    restart_max_delay_ms: int
    restart_reset_after_ms: int
    max_out_of_orderness_ms: int
    idleness_ms: int
    watermark_interval_ms: int
    buffer_timeout_ms: int
    """Longest wait of a record in a network buffer between operators (Flink's default: 100 ms)."""
    dedup_window_ms: int
    dedup_max_ids_per_user: int
    state_ttl_ms: int
    model_state_write_ms: int
    micro_batch_ms: int
    """0: the user operator is called per record; else per list of a shard's records, emitted at most
    this long after its first record (and at every watermark and checkpoint)."""
    micro_batch_max_records: int
    state_cache_users: int
    shards: int
    """Key space of the micro-batched user operator (each shard's users share one list); the upper
    bound of its parallelism, so rescaling works."""


@dataclass(frozen=True)
class ValidationSettings:
    max_payload_bytes: int
    min_event_time_ms: int
    max_future_skew_ms: int
    max_snapshot_bytes: int
    """A model snapshot record larger than this is refused (docs/security.md)."""


@dataclass(frozen=True)
class GeneratorSettings:
    seed: int
    users: int
    events: int
    items: int
    categories: tuple[str, ...]
    start_ms: int
    malformed_share: float
    duplicate_share: float
    out_of_order_share: float
    max_disorder_ms: int


@dataclass(frozen=True)
class FeatureSettings:
    """Raw ``features`` section; ``features.config.feature_config`` turns it into the operator's config."""

    enabled: bool
    windows: tuple[dict[str, Any], ...]
    item_window: str
    max_items: int
    max_categories: int
    session_gap_ms: int
    session_window: str
    abandon_return_ms: int
    rfm_window_days: int
    affinity_half_life_ms: int
    top_categories: int
    emit_min_engagement_change: float
    emit_max_silence_ms: int
    allowed_lateness_ms: int
    retention_ms: int
    population_refresh_ms: int


@dataclass(frozen=True)
class RuleSettings:
    enabled: bool
    file: str
    """The initial rule set; relative paths are relative to the project root."""
    timestamps_per_step: int


@dataclass(frozen=True)
class ModelSettings:
    """Raw ``models`` section: ``enabled`` and the fields of ``operators.models.config.ModelConfig``
    (docs/models.md)."""

    enabled: bool
    clusterer: str
    n_clusters: int
    seed: int
    sample_users: int
    refit_every: int
    train_sample_share: float
    train_vectors_per_user: int
    intent_horizon_ms: int
    intent_max_pending: int
    intent_learning_rate: float
    intent_negative_share: float
    snapshot_every: int
    snapshot_interval_ms: int
    drift_detector: str
    drift_warmup: int
    hysteresis_margin: float
    hysteresis_patience: int


@dataclass(frozen=True)
class RecommendationSettings:
    """Raw ``recommendations`` section: the fields of ``operators.recs.config.RecConfig`` plus the job's
    own (``enabled``, ``redis_ttl_s``); see docs/recommendations.md."""

    enabled: bool
    shards: int
    k: int
    weights: dict[str, float]
    event_weights: dict[str, float]
    recent_items: int
    query_items: int
    position_decay: float
    similarity: str
    max_neighbours: int
    scored_neighbours: int
    max_items: int
    pair_decay: float
    covisit_half_life: int
    trending_half_life: int
    trending_pool: int
    category_pool: int
    max_segments: int
    affinity_half_life_ms: int
    top_categories: int
    max_categories: int
    max_cart: int
    max_purchased: int
    max_per_category: int
    exclude_purchased: bool
    pinned_items: tuple[str, ...]
    checkout_timeout_ms: int
    min_change: float
    redis_ttl_s: int


@dataclass(frozen=True)
class ClusterSettings:
    """The local standalone Flink cluster (``personalize cluster``)."""

    run_dir: str
    rest_port: int
    rpc_port: int
    metrics_port: int
    taskmanagers: int
    slots_per_taskmanager: int
    jobmanager_memory: str
    taskmanager_memory: str
    state_backend: str
    incremental_checkpoints: bool
    checkpoint_dir: str
    savepoint_dir: str
    start_timeout_s: int
    supervise: bool


@dataclass(frozen=True)
class PrivacySettings:
    """Consent, erasure and PII protection (docs/privacy.md)."""

    enabled: bool
    consent_defaults: dict[str, bool]
    consent_categories: dict[str, list[str]]
    """Consent-manager category ids that decide each purpose on the Segment-spec topic (docs/events.md)."""
    secret: str = field(repr=False)
    """Never printed: ``repr`` of settings ends up in logs."""
    secret_env: str
    secret_file: str
    hash_identifiers: bool
    redact_deadletters: bool
    consent_state_ttl_ms: int
    stitch_identities: bool
    handover_delivery: str
    """The identity loop's sink: ``at-least-once`` (a login merges ~0.2 s later; merges are idempotent) or
    ``exactly-once`` (the merge waits for the next checkpoint)."""
    max_links: int


@dataclass(frozen=True)
class DashboardSettings:
    """Access to ``personalize dashboard`` (docs/dashboard.md). The secret is never a setting: only the name
    of the variable that holds it, so no file in the repository or in a config carries it."""

    auth: str
    """``none``, ``basic`` or ``token``."""
    basic_user: str
    secret_env: str
    allowed_hosts: tuple[str, ...]
    """Host header names served; empty: the bind address's name, localhost and 127.0.0.1."""


@dataclass(frozen=True)
class ExperimentSettings:
    """Experiments (docs/experiments.md): the configured definitions and the per-user bounds."""

    definitions: tuple[dict[str, Any], ...]
    """Raw definitions; ``operators.experiments.config.parse_experiments`` checks them."""
    confidence: float
    """Level of every interval (and 1 - the test's significance level)."""
    max_exposures: int
    max_items: int
    lateness_ms: int
    publish_interval_ms: int
    """How often an experiment's metrics are published while they change (and at the end of a bounded input)."""


@dataclass(frozen=True)
class Settings:
    stack: StackSettings
    kafka: KafkaSettings
    redis: RedisSettings
    job: JobSettings
    validation: ValidationSettings
    generator: GeneratorSettings
    features: FeatureSettings
    rules: RuleSettings
    cluster: ClusterSettings
    models: ModelSettings
    recommendations: RecommendationSettings
    privacy: PrivacySettings
    dashboard: DashboardSettings
    experiments: ExperimentSettings


def iso_to_ms(text: str, field: str = "timestamp") -> int:
    """Parse an ISO-8601 instant (``Z`` or offset required) into epoch milliseconds."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"{field}: {text!r} is not an ISO-8601 instant") from None
    if parsed.tzinfo is None:
        raise SettingsError(f"{field}: {text!r} has no time zone")
    return (parsed - _EPOCH) // timedelta(milliseconds=1)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``PERSONALIZE__A__B=v`` variables into ``{"a": {"b": v}}``."""
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        node = overrides
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"{name}: {'.'.join(path[:-1])} is set by another variable as a value")
            node = child
        try:
            node[path[-1]] = yaml.load(raw, Loader=_Loader) if raw != "" else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise SettingsError(f"{name}: not a YAML value ({problem})") from None
    return overrides


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SettingsError(f"cannot read config file {path}: not UTF-8 text (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SettingsError(f"cannot read config file {path}: not valid YAML{line} ({problem})") from None
    if not isinstance(loaded, dict):
        raise SettingsError(f"config file {path} must hold a mapping, not {type(loaded).__name__}")
    return loaded


def validate(raw: Mapping[str, Any]) -> None:
    schema = json.loads((CONFIG_DIR / "settings.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]
        raise SettingsError("invalid configuration:\n" + "\n".join(lines))


def from_mapping(raw: Mapping[str, Any]) -> Settings:
    validate(raw)
    kafka = dict(raw["kafka"])
    topics = Topics(**{key: Topic(**value) for key, value in kafka.pop("topics").items()})
    validation = dict(raw["validation"])
    generator = dict(raw["generator"])
    return Settings(
        stack=StackSettings(**raw["stack"]),
        kafka=KafkaSettings(topics=topics, **kafka),
        redis=RedisSettings(**raw["redis"]),
        job=JobSettings(**raw["job"]),
        validation=ValidationSettings(
            max_payload_bytes=validation["max_payload_bytes"],
            min_event_time_ms=iso_to_ms(validation["min_event_time"], "validation.min_event_time"),
            max_future_skew_ms=validation["max_future_skew_ms"],
            max_snapshot_bytes=validation["max_snapshot_bytes"],
        ),
        features=FeatureSettings(**{**raw["features"], "windows": tuple(raw["features"]["windows"])}),
        rules=RuleSettings(**raw["rules"]),
        cluster=ClusterSettings(**raw["cluster"]),
        models=ModelSettings(**raw["models"]),
        recommendations=RecommendationSettings(**{**raw["recommendations"],
                                                  "pinned_items": tuple(raw["recommendations"]["pinned_items"])}),
        privacy=PrivacySettings(**raw["privacy"]),
        dashboard=DashboardSettings(**{**raw["dashboard"], "allowed_hosts": tuple(raw["dashboard"]["allowed_hosts"])}),
        experiments=ExperimentSettings(**{**raw["experiments"],
                                          "definitions": tuple(raw["experiments"]["definitions"])}),
        generator=GeneratorSettings(
            seed=generator["seed"], users=generator["users"], events=generator["events"],
            items=generator["items"], categories=tuple(generator["categories"]),
            start_ms=iso_to_ms(generator["start"], "generator.start"), malformed_share=generator["malformed_share"],
            duplicate_share=generator["duplicate_share"], out_of_order_share=generator["out_of_order_share"],
            max_disorder_ms=generator["max_disorder_ms"],
        ),
    )


def raw_settings(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    merged = _read_yaml(CONFIG_DIR / "defaults.yaml")
    config_file = config_file or environ.get("PERSONALIZE_CONFIG")
    if config_file:
        merged = deep_merge(merged, _read_yaml(Path(config_file)))
    return deep_merge(merged, env_overrides(environ))


def load(config_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate settings; raises :class:`SettingsError` with every problem listed."""
    return from_mapping(raw_settings(config_file, environ))

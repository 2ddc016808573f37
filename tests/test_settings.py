"""Settings: defaults, YAML file and environment overrides, validation that names every bad field, immutability."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from personalize import settings as settings_module
from personalize.paths import CONFIG_DIR
from personalize.settings import Settings, SettingsError, deep_merge, env_overrides, iso_to_ms, load

NO_ENV: dict[str, str] = {}


@pytest.fixture(scope="module")
def defaults() -> Settings:
    return load(environ=NO_ENV)


def test_defaults_load_and_match_the_yaml(defaults: Settings) -> None:
    raw = yaml.safe_load((CONFIG_DIR / "defaults.yaml").read_text())
    settings_module.validate(raw)
    assert defaults.job.parallelism == raw["job"]["parallelism"]
    assert defaults.kafka.topics.behavior.name == raw["kafka"]["topics"]["behavior"]["name"]
    assert defaults.generator.categories == tuple(raw["generator"]["categories"])
    assert [t.name for t in defaults.kafka.topics.inputs()] == ["events.behavior", "events.profile", "events.consent",
                                                                "events.tracking"]
    assert len({t.name for t in defaults.kafka.topics.all()}) == 17


def test_timestamps_are_parsed_to_epoch_ms(defaults: Settings) -> None:
    assert defaults.validation.min_event_time_ms == 946_684_800_000
    assert defaults.generator.start_ms == 1_767_225_600_000


@pytest.mark.parametrize(("text", "millis"), [
    ("2026-01-01T00:00:00Z", 1_767_225_600_000),
    ("2026-01-01T02:00:00+02:00", 1_767_225_600_000),
    ("2026-01-01T00:00:00.250Z", 1_767_225_600_250),
    ("2004-10-19T20:52:19.699Z", 1_098_219_139_699),
], ids=["z", "offset", "millis", "float-rounding-trap"])
def test_iso_to_ms(text: str, millis: int) -> None:
    assert iso_to_ms(text) == millis


@pytest.mark.parametrize(("name", "value", "path", "expected"), [
    ("PERSONALIZE__JOB__PARALLELISM", "1", ("job", "parallelism"), 1),
    ("PERSONALIZE__KAFKA__TOPICS__BEHAVIOR__PARTITIONS", "8", ("kafka", "topics", "behavior", "partitions"), 8),
    ("PERSONALIZE__KAFKA__BOOTSTRAP_SERVERS", "broker:9092", ("kafka", "bootstrap_servers"), "broker:9092"),
    ("PERSONALIZE__JOB__CHECKPOINT_DIR", "", ("job", "checkpoint_dir"), ""),
    ("PERSONALIZE__GENERATOR__MALFORMED_SHARE", "0.25", ("generator", "malformed_share"), 0.25),
    ("PERSONALIZE__GENERATOR__CATEGORIES", "[books, toys]", ("generator", "categories"), ("books", "toys")),
    ("PERSONALIZE__GENERATOR__START", "2026-02-01T00:00:00Z", ("generator", "start_ms"), 1_769_904_000_000),
    ("PERSONALIZE__VALIDATION__MIN_EVENT_TIME", "2010-01-01", ("validation", "min_event_time_ms"), None),
], ids=["int", "nested", "string", "empty-string", "float", "list", "timestamp-stays-a-string", "date-needs-zone"])
def test_env_override(name: str, value: str, path: tuple[str, ...], expected: Any) -> None:
    if expected is None:
        with pytest.raises(SettingsError, match=r"validation\.min_event_time: .* no time zone"):
            load(environ={name: value})
        return
    node: Any = load(environ={name: value})
    for part in path:
        node = getattr(node, part)
    assert node == expected and type(node) is type(expected)


def test_env_overrides_ignore_other_variables_and_nest() -> None:
    assert env_overrides({"PATH": "/bin", "PERSONALIZE_CONFIG": "x.yaml", "PERSONALIZE__": "1",
                          "PERSONALIZE__STACK__KAFKA_PORT": "1234"}) == {"stack": {"kafka_port": 1234}}


def test_deep_merge_keeps_siblings_and_replaces_leaves() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}
    assert deep_merge(base, {"a": {"c": {"d": 3}}, "e": [2]}) == {"a": {"b": 1, "c": {"d": 3}}, "e": [2]}
    assert base == {"a": {"b": 1, "c": {"d": 2}}, "e": [1]}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "override.yaml"
    path.write_text(text)
    return path


def test_yaml_file_overrides_defaults_and_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "job:\n  parallelism: 3\n  name: custom\nredis:\n  url: rediss://cache:6380/1\n"
                           "generator:\n  start: 2026-03-01T00:00:00Z\n")
    loaded = load(path, environ={"PERSONALIZE__JOB__PARALLELISM": "5"})
    assert (loaded.job.parallelism, loaded.job.name, loaded.redis.url) == (5, "custom", "rediss://cache:6380/1")
    assert loaded.generator.start_ms == 1_772_323_200_000
    assert loaded.job.checkpoint_interval_ms == load(environ=NO_ENV).job.checkpoint_interval_ms


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "job: {parallelism: 7}\n")
    assert load(environ={"PERSONALIZE_CONFIG": str(path)}).job.parallelism == 7


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n", "must hold a mapping, not list"),
    ("job: [unclosed\n", "cannot read config file"),
], ids=["not-a-mapping", "bad-yaml"])
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(write(tmp_path, text), environ=NO_ENV)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("job: {name: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(SettingsError, match=r"^cannot read config file .*: not UTF-8 text \(byte 15\)$"):
        load(path, environ=NO_ENV)


@pytest.mark.parametrize("value", ["[unclosed", "{a: b", "key: value: other", "'open"])
def test_an_override_that_is_not_yaml_is_one_line(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^PERSONALIZE__JOB__NAME: not a YAML value \(.+\)$"):
        load(environ={"PERSONALIZE__JOB__NAME": value})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load(tmp_path / "absent.yaml", environ=NO_ENV)


def test_every_invalid_field_is_listed() -> None:
    with pytest.raises(SettingsError) as raised:
        load(environ={"PERSONALIZE__JOB__PARALLELISM": "0", "PERSONALIZE__REDIS__URL": "http://x",
                      "PERSONALIZE__STACK__KAFKA_PORT": "70000", "PERSONALIZE__GENERATOR__DUPLICATE_SHARE": "0.9"})
    message = str(raised.value)
    for field in ("job.parallelism", "redis.url", "stack.kafka_port", "generator.duplicate_share"):
        assert f"  {field}: " in message


@pytest.mark.parametrize(("environ", "field"), [
    ({"PERSONALIZE__JOB__PARALLELISM": "two"}, "job.parallelism"),
    ({"PERSONALIZE__JOB__PARALLELISM": "1.5"}, "job.parallelism"),
    ({"PERSONALIZE__JOB__EXECUTION_MODE": "fork"}, "job.execution_mode"),
    ({"PERSONALIZE__KAFKA__TOPICS__BEHAVIOR__NAME": "bad name"}, "kafka.topics.behavior.name"),
    ({"PERSONALIZE__KAFKA__TOPICS__BEHAVIOR__PARTITIONS": "0"}, "kafka.topics.behavior.partitions"),
    ({"PERSONALIZE__GENERATOR__CATEGORIES": "[]"}, "generator.categories"),
    ({"PERSONALIZE__VALIDATION__MAX_PAYLOAD_BYTES": "10"}, "validation.max_payload_bytes"),
    ({"PERSONALIZE__VALIDATION__MIN_EVENT_TIME": "soon"}, "validation.min_event_time"),
    ({"PERSONALIZE__JOB": "3"}, "job"),
    ({"PERSONALIZE__PRIVACY__HANDOVER_DELIVERY": "at-most-once"}, "privacy.handover_delivery"),
    ({"PERSONALIZE__REDIS__KEY_PREFIX": ""}, "redis.key_prefix"),
    ({"PERSONALIZE__REDIS__KEY_PREFIX": "app*"}, "redis.key_prefix"),
    ({"PERSONALIZE__REDIS__KEY_PREFIX": "app[1]:"}, "redis.key_prefix"),
    ({"PERSONALIZE__JOB__RESTART_ATTEMPTS": "0"}, "job.restart_attempts"),
    ({"PERSONALIZE__PRIVACY__CONSENT_CATEGORIES__MARKETING": "Ads"}, "privacy.consent_categories.marketing"),
], ids=["word", "fraction", "enum", "topic-pattern", "partitions", "empty-list", "minimum", "timestamp", "section",
        "delivery", "empty-prefix", "glob-prefix", "bracket-prefix", "no-restarts", "consent-categories"])
def test_invalid_value_names_its_field(environ: dict[str, str], field: str) -> None:
    with pytest.raises(SettingsError, match=rf"(?m)^\s*{re.escape(field)}: "):
        load(environ=environ)


@pytest.mark.parametrize(("environ", "unexpected"), [
    ({"PERSONALIZE__JOB__PARALELISM": "2"}, "'paralelism' was unexpected"),
    ({"PERSONALIZE__METRICS__PORT": "9000"}, "'metrics' was unexpected"),
    ({"PERSONALIZE__KAFKA__TOPICS__CLICKS__NAME": "clicks"}, "'clicks' was unexpected"),
    ({"PERSONALIZE__PRIVACY__CONSENT_CATEGORIES__NEWSLETTER": "[Email]"}, "'newsletter' was unexpected"),
], ids=["typo", "section", "topic", "purpose"])
def test_unknown_key_is_rejected(environ: dict[str, str], unexpected: str) -> None:
    with pytest.raises(SettingsError, match=unexpected):
        load(environ=environ)


def test_settings_are_frozen(defaults: Settings) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.job.parallelism = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        defaults.kafka = defaults.kafka  # type: ignore[misc]
    changed = dataclasses.replace(defaults, job=dataclasses.replace(defaults.job, parallelism=8))
    assert (changed.job.parallelism, defaults.job.parallelism) == (8, 2)
    assert isinstance(defaults.generator.categories, tuple)


def test_the_privacy_secret_is_never_printed() -> None:
    settings = load(environ={"PERSONALIZE__PRIVACY__SECRET": "a-secret-of-32-bytes-for-testing!"})
    assert settings.privacy.secret == "a-secret-of-32-bytes-for-testing!"
    assert "a-secret-of-32" not in repr(settings)


def _fields(cls: type, path: str = "") -> list[tuple[str, str]]:
    """(dotted path, field name) of every leaf setting of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    leaves: list[tuple[str, str]] = []
    for spec in dataclasses.fields(cls):
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind) and kind not in (settings_module.Topic, settings_module.Topics):
            leaves += _fields(kind, f"{path}{spec.name}.")
        else:
            leaves.append((f"{path}{spec.name}", spec.name))
    return leaves


def test_every_setting_is_read_by_something() -> None:
    """A documented setting nothing reads is a lie (``recommendations.shards`` was one for a while): each
    leaf of Settings is read as an attribute by code outside the settings module itself."""
    root = Path(settings_module.__file__).resolve().parents[1]
    code = "\n".join(path.read_text(encoding="utf-8") for package in ("jobs", "operators", "personalize",
                                                                      "connectors", "state", "benchmarks")
                     for path in (root / package).rglob("*.py") if path.name != "settings.py")
    unread = [dotted for dotted, name in _fields(Settings) if not re.search(rf"\.{name}\b", code)]
    assert unread == []

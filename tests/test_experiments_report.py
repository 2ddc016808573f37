"""The offline check with known answers: a planted lift is recovered within its interval on a demo-sized run, an
A/A test shows no significant lift, and the generator's gate changes nothing when it is off."""

from __future__ import annotations

import json
from dataclasses import replace

import jsonschema
import pytest

from operators.experiments.stats import arm_metrics, metrics_record
from personalize import cli, settings
from personalize.experiments_report import Report, bounds_of, demo_experiment, planted_lift, replay
from personalize.generator import EventGenerator
from personalize.paths import CONFIG_DIR

DEFAULTS = settings.load(environ={})
DEMO = DEFAULTS.generator
"""Demo-sized: ``personalize demo``'s 2,000 users and 50,000 events."""
LIFT = 1.5


def run(aa: bool) -> Report:
    return replay(DEMO, demo_experiment(aa), LIFT, bounds_of(DEFAULTS.experiments),
                  confidence=DEFAULTS.experiments.confidence)


def test_the_planted_lift_is_recovered_within_its_interval() -> None:
    report = run(aa=False)
    control, treated = report.metrics
    versus = treated.versus_control
    assert versus is not None and versus.relative_lift_ci is not None and versus.p_value is not None
    assert planted_lift(report.experiment, treated.arm, LIFT) == pytest.approx(LIFT - 1)
    assert LIFT - 1 in versus.relative_lift_ci
    assert 0.0 not in versus.relative_lift_ci and versus.p_value < 0.01  # and it is found significant
    assert min(control.counts.exposed_users, treated.counts.exposed_users) > 900  # both arms of ~1,000 users exposed
    assert versus.revenue_difference_ci is not None and control.revenue_per_user is not None
    assert (LIFT - 1) * control.revenue_per_user in versus.revenue_difference_ci  # revenue is planted alike
    assert treated.counts.crossovers == 0  # a visitor keeps their arm after signing up: nobody crosses


def test_an_a_a_test_shows_no_significant_lift() -> None:
    _, second = run(aa=True).metrics
    versus = second.versus_control
    assert versus is not None and versus.relative_lift_ci is not None and versus.revenue_difference_ci is not None
    assert versus.p_value is not None and versus.p_value > 0.05
    assert 0.0 in versus.relative_lift_ci and 0.0 in versus.revenue_difference_ci


SMALL = replace(DEMO, users=100, events=3_000)


def test_the_generator_gate_changes_no_byte_when_everyone_buys_and_none_buy_when_nobody_does() -> None:
    assert list(EventGenerator(SMALL, buyers=lambda key: 1.0).records()) == list(EventGenerator(SMALL).records())
    types = {json.loads(r.value).get("type") for r in EventGenerator(SMALL, buyers=lambda key: 0.0).records()
             if r.kind == "valid"}
    assert "product_view" in types and not types & {"add_to_cart", "checkout_start", "purchase"}


def test_the_report_command_prints_a_table_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["experiments", "report", "--events", "3000", "--users", "100", "--aa"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("experiment offline-aa (control: a), ")
    assert [line.split()[0] for line in lines[1:]] == ["arm", "a", "b"]


def test_a_configured_experiment_is_replayed_by_id(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PERSONALIZE__EXPERIMENTS__DEFINITIONS", json.dumps([{
        "id": "three-way", "control": "off", "conversion_window": "1h",
        "arms": [{"id": "off", "weight": 1, "treatment": "none"}, {"id": "pop", "weight": 1, "treatment": "popularity"},
                 {"id": "recs", "weight": 2}]}]))
    assert cli.main(["experiments", "report", "--events", "3000", "--users", "100",
                     "--experiment", "three-way"]) == cli.EXIT_OK
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()[2:]] == [
        ["off", "none"], ["pop", "popularity"], ["recs", "personalized"]]


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--experiment", "absent"], {}, "'absent' is not in experiments.definitions (configured: none)"),
    (["--experiment", "x"], {"PERSONALIZE__EXPERIMENTS__DEFINITIONS": '[{"id": "x"}]'},
     "experiments.definitions[0].arms: expected a list of 2..8 arms"),
    (["--lift", "0"], {}, "--lift must be positive"),
], ids=["unknown", "invalid", "lift"])
def test_usage_errors_exit_2_with_one_line(argv: list[str], environ: dict[str, str], message: str,
                                           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["experiments", "report", *argv]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("personalize: ") and message in err and err.count("\n") == 1


def test_metrics_records_follow_their_schema() -> None:
    schema = json.loads((CONFIG_DIR / "schemas" / "experiments.metrics.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    report = replay(SMALL, demo_experiment(), LIFT, bounds_of(DEFAULTS.experiments))
    record = metrics_record(report.experiment, report.metrics, SMALL.start_ms, report.confidence)
    validator.validate(json.loads(json.dumps(record)))
    empty = metrics_record(report.experiment, arm_metrics(report.experiment, {}), 0, 0.95)
    validator.validate(empty)
    assert empty["arms"][1]["versus_control"]["p_value"] is None

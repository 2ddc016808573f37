"""Experiments, pure parts: definitions and commands, assignment, the merge rule, attribution and statistics."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import pytest
from scipy import stats as scipy_stats

from operators.events import Event
from operators.experiments.assignment import Assignment, assign, merge_assignments, unit_draw
from operators.experiments.attribution import Bounds, Counts, ExperimentState, Exposure
from operators.experiments.config import (
    MAX_EXPERIMENTS,
    ExperimentCatalog,
    ExperimentCommand,
    ExperimentError,
    is_experiment_command,
    parse_command,
    parse_experiment,
    parse_experiments,
)
from operators.experiments.stats import arm_metrics, t_quantile, two_proportion_p_value, wilson
from operators.validation import Rejection, parse_event
from tests.contract_cases import RECORD_TS, doc

SECRET = b"a-secret-of-32-bytes-for-testing!"
HOUR = 3_600_000


def definition(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "recs-v1", "version": 1, "control": "control", "conversion_window": "24h",
        "arms": [{"id": "control", "weight": 1, "treatment": "none"},
                 {"id": "recs-default", "weight": 1, "treatment": "personalized"},
                 {"id": "recs-variant", "weight": 2, "treatment": "personalized",
                  "source_weights": {"covisit": 1.0, "trending": 0.5}}]}
    base.update(changes)
    return base


EXPERIMENT = parse_experiment(definition())


# --- definitions and commands --------------------------------------------------------------------------------------

def test_a_definition_parses_and_round_trips() -> None:
    assert [(a.id, a.weight, a.treatment) for a in EXPERIMENT.arms] == [
        ("control", 1.0, "none"), ("recs-default", 1.0, "personalized"), ("recs-variant", 2.0, "personalized")]
    assert EXPERIMENT.conversion_window_ms == 24 * HOUR
    assert EXPERIMENT.arm("recs-variant").source_weights == {"covisit": 1.0, "trending": 0.5}  # type: ignore[union-attr]
    assert parse_experiment(json.loads(json.dumps(EXPERIMENT.definition()))) == EXPERIMENT


@pytest.mark.parametrize(("changes", "message"), [
    ({"id": "Recs"}, r"experiment\.id: expected a non-empty string matching"),
    ({"arms": [{"id": "control", "weight": 1}]}, r"experiment\.arms: expected a list of 2\.\.8 arms"),
    ({"arms": [{"id": "a", "weight": 1}, {"id": "a", "weight": 1}], "control": "a"}, "arm ids must be unique"),
    ({"control": "nobody"}, r"experiment\.control: 'nobody' is not one of the arms"),
    ({"conversion_window": "soon"}, r"experiment\.conversion_window: 'soon' is not a duration"),
    ({"conversion_window": None}, r"experiment\.conversion_window: expected a duration"),
    ({"arms": [{"id": "control", "weight": 0}, {"id": "b", "weight": 1}]}, r"arms\[0\]\.weight: expected a number > 0"),
    ({"arms": [{"id": "control", "weight": True}, {"id": "b", "weight": 1}]}, r"arms\[0\]\.weight"),
    ({"arms": [{"id": "control", "weight": 1, "treatment": "magic"}, {"id": "b", "weight": 1}]},
     r"arms\[0\]\.treatment: expected one of"),
    ({"arms": [{"id": "control", "weight": 1, "treatment": "none", "source_weights": {"covisit": 1}},
               {"id": "b", "weight": 1}]}, "only a personalized arm has source weights"),
    ({"arms": [{"id": "control", "weight": 1}, {"id": "b", "weight": 1, "source_weights": {"magic": 1}}]},
     r"arms\[1\]\.source_weights: unknown field\(s\) \['magic'\]"),
    ({"arms": [{"id": "control", "weight": 1}, {"id": "b", "weight": 1, "source_weights": {"covisit": -1}}]},
     r"source_weights\.covisit: expected a number >= 0"),
    ({"version": 0}, r"experiment\.version: expected an integer"),
    ({"owner": "me"}, r"experiment: unknown field\(s\) \['owner'\]"),
    ({"name": 5}, "name and description must be strings"),
], ids=["id", "one-arm", "duplicate-arm", "control", "window", "window-null", "weight-zero", "weight-bool",
        "treatment", "weights-on-control", "unknown-source", "negative-source", "version", "unknown-field", "name"])
def test_a_bad_definition_names_its_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(definition(**changes))


def test_configured_experiments_need_unique_ids_and_are_bounded() -> None:
    with pytest.raises(ExperimentError, match="experiment ids must be unique"):
        parse_experiments([definition(), definition()])
    with pytest.raises(ExperimentError, match="at most 16"):
        parse_experiments([definition(id=f"e{i}") for i in range(MAX_EXPERIMENTS + 1)])
    assert parse_experiments([]) == ()


def command(body: Any) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize(("payload", "message"), [
    (None, "empty record"),
    (b"x" * 70_000, "bytes > 65536"),
    (b"{not json", r"not JSON \(JSONDecodeError\)"),
    (b"{\"a\": \"\xff\"}", "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "bytes > 65536"),
    (b"[" * 60_000 + b"]" * 5_000, "not JSON"),
    (command(["experiment.add"]), "expected an object with 'command' one of"),
    (command({"command": "add", "segment": {}}), "expected an object with 'command' one of"),
    (command({"command": "experiment.add", "experiment": definition(), "extra": 1}), "takes exactly 'experiment'"),
    (command({"command": "experiment.add"}), "takes exactly 'experiment'"),
    (command({"command": "experiment.add", "experiment": definition(control="x")}), r"command\.experiment\.control"),
    (command({"command": "experiment.pause", "id": "recs-v1"}), r"command\.version: expected a positive integer"),
    (command({"command": "experiment.stop", "id": "Bad Id", "version": 2}), "takes 'id' .* and 'version'"),
    (command({"command": "experiment.resume", "id": "recs-v1", "version": True}), "positive integer"),
], ids=["empty", "large", "not-json", "not-utf8", "deep-large", "deep", "array", "rule-command", "extra-field",
        "no-definition", "bad-definition", "no-version", "bad-id", "bool-version"])
def test_a_bad_command_is_refused_with_its_reason(payload: bytes | None, message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        parse_command(payload)


def test_commands_parse_and_round_trip() -> None:
    add = parse_command(command({"command": "experiment.add", "experiment": definition()}))
    assert (add.command, add.id, add.version, add.experiment) == ("add", "recs-v1", 1, EXPERIMENT)
    pause = parse_command(command({"command": "experiment.pause", "id": "recs-v1", "version": 2}))
    assert pause == ExperimentCommand("pause", "recs-v1", 2)
    assert parse_command(pause.to_json()) == pause and parse_command(add.to_json()) == add
    assert is_experiment_command(json.loads(pause.to_json()))
    assert not is_experiment_command({"command": "add", "segment": {}}) and not is_experiment_command([1])


def test_the_catalog_moves_forward_and_refuses_what_does_not_apply() -> None:
    catalog = ExperimentCatalog.of((EXPERIMENT,))
    assert catalog.active() == (EXPERIMENT,)
    catalog.apply(ExperimentCommand("pause", "recs-v1", 2))
    assert catalog.active() == ()
    with pytest.raises(ExperimentError, match="version 2 is not newer than the current version 2"):
        catalog.apply(ExperimentCommand("resume", "recs-v1", 2))
    with pytest.raises(ExperimentError, match="pause recs-v1: not possible for an experiment that is paused"):
        catalog.apply(ExperimentCommand("pause", "recs-v1", 3))
    longer = parse_experiment(definition(version=3, conversion_window="48h", name="longer window"))
    assert catalog.apply(ExperimentCommand("update", "recs-v1", 3, longer)).status == "paused"
    assert catalog.apply(ExperimentCommand("resume", "recs-v1", 4)).experiment.conversion_window_ms == 48 * HOUR
    resplit = parse_experiment(definition(version=5, arms=definition()["arms"][:2]))
    with pytest.raises(ExperimentError, match="arms and control cannot change"):
        catalog.apply(ExperimentCommand("update", "recs-v1", 5, resplit))
    assert catalog.apply(ExperimentCommand("stop", "recs-v1", 5)).status == "stopped"
    for refused in (ExperimentCommand("add", "recs-v1", 6, parse_experiment(definition(version=6))),
                    ExperimentCommand("resume", "recs-v1", 6)):
        with pytest.raises(ExperimentError, match="not possible for an experiment that is stopped"):
            catalog.apply(refused)
    with pytest.raises(ExperimentError, match="pause other: not possible for an experiment that is unknown"):
        catalog.apply(ExperimentCommand("pause", "other", 1))
    assert catalog.entries["recs-v1"].experiment.version == 5
    for n in range(MAX_EXPERIMENTS):  # a stopped experiment does not count against the limit
        catalog.apply(ExperimentCommand("add", f"e{n}", 1, parse_experiment(definition(id=f"e{n}"))))
    with pytest.raises(ExperimentError, match="already 16 experiments that are not stopped"):
        catalog.apply(ExperimentCommand("add", "one-more", 1, parse_experiment(definition(id="one-more"))))


# --- assignment ----------------------------------------------------------------------------------------------------

def test_assignment_is_a_pure_function_of_secret_experiment_and_user() -> None:
    users = [f"user-{i:05d}" for i in range(4_000)]
    arms = [assign(SECRET, EXPERIMENT, user) for user in users]
    assert arms == [assign(SECRET, EXPERIMENT, user) for user in reversed(users)][::-1]
    shares = Counter(arms)
    assert abs(shares["recs-variant"] / 4_000 - 0.5) < 0.03 and abs(shares["control"] / 4_000 - 0.25) < 0.03
    other_secret = [assign(b"another-secret-of-32-bytes-long!!", EXPERIMENT, user) for user in users]
    other_experiment = [assign(SECRET, parse_experiment(definition(id="recs-v2")), user) for user in users]
    for changed in (other_secret, other_experiment):  # independent draws: about half the users change arm
        assert 0.4 < sum(a != b for a, b in zip(arms, changed, strict=True)) / 4_000 < 0.8
    assert unit_draw(SECRET, "recs-v1", "user-00001") == unit_draw(SECRET, "recs-v1", "user-00001")


def test_the_merge_rule_known_arm_wins_and_crossovers_are_reported() -> None:
    known = {"a": Assignment("x", 100, True, 5.0), "b": Assignment("x"), "c": Assignment("x")}
    visitor = {"a": Assignment("y", 50), "b": Assignment("x", 70, True, 9.0), "c": Assignment("y"),
               "d": Assignment("z", 10)}
    merged, crossed = merge_assignments(known, visitor)
    assert merged == {"a": Assignment("x", 100, True, 5.0),  # known wins; visitor exposed in y: a crossover
                      "b": Assignment("x", 70, True, 9.0),  # same arm, only the visitor exposed: theirs
                      "c": Assignment("x"),  # visitor never exposed in y: no crossover
                      "d": Assignment("z", 10)}  # only the visitor was in d: kept after sign-up
    assert crossed == ("a",)


# --- attribution ---------------------------------------------------------------------------------------------------

ACTIVE = {EXPERIMENT.id: EXPERIMENT}


def event(event_type: str, ts: int, item: str = "i1", price: float = 0.0, quantity: int = 1,
          user: str = "user-1") -> Event:
    return Event(f"e-{ts}", event_type, user, user, "", ts, item, "", price, quantity, "", "")


def exposed_state(ts: int = 0, items: tuple[str, ...] = ("i1", "i2")) -> tuple[ExperimentState, str]:
    state = ExperimentState()
    deltas = state.expose([EXPERIMENT], "user-1", SECRET, ts, items)
    arm = assign(SECRET, EXPERIMENT, "user-1")
    assert deltas == [("recs-v1", arm, Counts(exposures=1, exposed_users=1))]
    return state, arm


def test_clicks_conversions_and_revenue_are_attributed_to_the_exposed_arm() -> None:
    state, arm = exposed_state()
    assert state.attribute(event("product_view", 10), ACTIVE) == [("recs-v1", arm, Counts(clicks=1))]
    assert state.attribute(event("add_to_cart", 20), ACTIVE) == [
        ("recs-v1", arm, Counts(conversions=1, converted_users=1))]
    assert state.attribute(event("purchase", 30, price=10.0, quantity=2), ACTIVE) == [
        ("recs-v1", arm, Counts(conversions=1, revenue=20.0, revenue_sq=400.0))]
    assert state.attribute(event("purchase", 40, item="i2", price=5.0), ACTIVE) == [  # (20+5)^2 - 20^2
        ("recs-v1", arm, Counts(conversions=1, revenue=5.0, revenue_sq=225.0))]
    assert state.assignments["recs-v1"] == Assignment(arm, 0, True, 25.0)


@pytest.mark.parametrize(("case", "evt"), [
    ("other-item", event("add_to_cart", 10, item="i9")),
    ("before-exposure", event("add_to_cart", -1)),
    ("after-the-window", event("add_to_cart", 24 * HOUR + 1)),
    ("not-a-conversion", event("remove_from_cart", 10)),
    ("no-item", event("page_view", 10, item="")),
])
def test_what_is_not_attributed(case: str, evt: Event) -> None:
    state, _ = exposed_state()
    assert state.attribute(evt, ACTIVE) == []
    assert state.attribute(event("add_to_cart", 24 * HOUR), ACTIVE)  # the window's last millisecond counts


def test_a_paused_experiment_attributes_nothing_and_a_repeat_list_is_one_exposure() -> None:
    state, arm = exposed_state()
    assert state.attribute(event("add_to_cart", 10), {}) == []
    assert state.expose([EXPERIMENT], "user-1", SECRET, 5, ["i1", "i2", "i1"]) == []
    assert state.expose([EXPERIMENT], "user-1", SECRET, 6, ["i2", "i1"]) == [
        ("recs-v1", arm, Counts(exposures=1))]
    assert state.expose([EXPERIMENT], "user-1", SECRET, 7, []) == []


def test_state_is_bounded_and_expired_exposures_go() -> None:
    bounds = Bounds(max_exposures=3, max_items=4, lateness_ms=1_000)
    state = ExperimentState()
    for n in range(10):
        state.expose([EXPERIMENT], "user-1", SECRET, n * 1_000, [f"i{n}-{k}" for k in range(10)], bounds)
    assert [e.ts for e in state.exposures] == [7_000, 8_000, 9_000]
    assert all(len(e.items) == 4 for e in state.exposures)
    state.expose([EXPERIMENT], "user-1", SECRET, 8_000 + 24 * HOUR + 1_001, ["new"], bounds)
    assert [e.items for e in state.exposures] == [("i9-0", "i9-1", "i9-2", "i9-3"), ("new",)]


def test_a_recommendation_view_exposes_through_the_validated_event() -> None:
    other = parse_experiment(definition(id="other", version=1))
    experiments = {EXPERIMENT.id: EXPERIMENT, other.id: other}
    state = ExperimentState()
    view = parse_event(json.dumps(doc("recommendation_view", user_id="user-1", ts=RECORD_TS,
                                      properties={"items": ["i1"]})).encode(), RECORD_TS)
    assert not isinstance(view, Rejection)
    assert {d[0] for d in state.on_event(view, experiments, SECRET)} == {"recs-v1", "other"}
    named = parse_event(json.dumps(doc("recommendation_view", user_id="user-1", ts=RECORD_TS, event_id="e-2",
                                       properties={"items": ["i2"], "experiment_id": "other"})).encode(), RECORD_TS)
    assert not isinstance(named, Rejection)
    assert [d[0] for d in state.on_event(named, experiments, SECRET)] == ["other"]
    unknown = named._replace(attributes=json.dumps({"properties": {"items": ["i3"], "experiment_id": "gone"}}))
    assert state.on_event(unknown, experiments, SECRET) == []
    conversion = event("add_to_cart", RECORD_TS + 1, item="i1")
    assert {d[0] for d in state.on_event(conversion, experiments, SECRET)} == {"recs-v1", "other"}


def test_an_identify_keeps_the_known_arm_and_counts_a_crossover() -> None:
    known, visitor = ExperimentState(), ExperimentState()
    known.assignments["recs-v1"] = Assignment("recs-default", 0)
    known.exposures.append(Exposure("recs-v1", "recs-default", 0, ("k1",)))
    visitor.assignments["recs-v1"] = Assignment("control", 5)
    visitor.exposures.append(Exposure("recs-v1", "control", 5, ("v1",)))
    assert known.merge(visitor) == [("recs-v1", "recs-default", Counts(crossovers=1))]
    assert [e.items for e in known.exposures] == [("k1",)]  # the losing arm's exposures attribute nothing
    assert known.attribute(event("add_to_cart", 10, item="v1"), ACTIVE) == []


def test_forget_drops_stopped_experiments() -> None:
    state, _ = exposed_state()
    state.forget(["another"])
    assert (state.assignments, state.exposures) == ({}, [])


# --- statistics ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("df", [5, 10, 30, 200, 10_000])
def test_t_quantile_matches_scipy(df: int) -> None:
    assert t_quantile(0.95, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=5e-3)


def test_wilson_interval_matches_a_textbook_value() -> None:
    interval = wilson(8, 100, 0.95)  # Newcombe (1998): 0.0411 .. 0.1500
    assert (interval.low, interval.high) == (pytest.approx(0.0411, abs=1e-4), pytest.approx(0.1500, abs=1e-4))
    assert wilson(0, 10, 0.95).low == pytest.approx(0.0, abs=1e-12)
    assert wilson(10, 10, 0.95).high == pytest.approx(1.0, abs=1e-12)


def test_two_proportion_test_matches_scipy() -> None:
    table = [[60, 940], [40, 960]]
    _, p, _, _ = scipy_stats.chi2_contingency(table, correction=False)
    assert two_proportion_p_value(60, 1000, 40, 1000) == pytest.approx(p, rel=1e-9)
    assert two_proportion_p_value(0, 10, 0, 10) is None


def revenue_counts(values: list[float], converted: int) -> Counts:
    return Counts(exposed_users=len(values), converted_users=converted, revenue=sum(values),
                  revenue_sq=sum(v * v for v in values))


def test_arm_metrics_against_scipy() -> None:
    treated = [0.0] * 80 + [10.0, 25.0, 40.0, 12.5] * 5
    control = [0.0] * 90 + [8.0, 30.0] * 5
    counts = {"control": revenue_counts(control, 10), "recs-default": revenue_counts(treated, 20)}
    metrics = {m.arm: m for m in arm_metrics(EXPERIMENT, counts)}
    assert metrics["control"].versus_control is None
    versus = metrics["recs-default"].versus_control
    assert versus is not None and versus.revenue_difference_ci is not None and versus.relative_lift_ci is not None
    welch = scipy_stats.ttest_ind(treated, control, equal_var=False).confidence_interval(0.95)
    assert versus.revenue_difference_ci.low == pytest.approx(welch.low, rel=1e-3)
    assert versus.revenue_difference_ci.high == pytest.approx(welch.high, rel=1e-3)
    mean = scipy_stats.ttest_1samp(treated, 0).confidence_interval(0.95)
    ci = metrics["recs-default"].revenue_per_user_ci
    assert ci is not None and (ci.low, ci.high) == (pytest.approx(mean.low, rel=1e-3), pytest.approx(mean.high,
                                                                                                      rel=1e-3))
    assert versus.relative_lift == pytest.approx(1.0)
    log_se = math.sqrt(1 / 20 - 1 / 100 + 1 / 10 - 1 / 100)
    assert versus.relative_lift_ci.high == pytest.approx(2 * math.exp(1.959964 * log_se) - 1, rel=1e-5)
    empty = metrics["recs-variant"]
    assert (empty.conversion_rate, empty.versus_control) == (None, versus.__class__(*(None,) * 7))

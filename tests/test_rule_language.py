"""The rule language: the schema and the compiler agree; bad rules and commands are rejected with a path;
conditions match a brute-force reading of their definition."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.features.operator import DECISION_FIELDS
from operators.models.user import MODEL_FIELDS
from operators.rules.catalog import RuleCatalog, RuleCommand, parse_command
from operators.rules.conditions import Count, Facts, Sequence, Step
from operators.rules.language import Compiler, RuleError, parse_duration
from operators.rules.signals import Retention, Signal, SignalLog
from personalize.paths import CONFIG_DIR

COMPILER = Compiler(DECISION_FIELDS + MODEL_FIELDS)
SCHEMA = json.loads((CONFIG_DIR / "rules.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
COUNT = {"count": {"event": "purchase", "within": "1d", "at_least": 1}}


def segment(when: Any, **extra: Any) -> dict[str, Any]:
    return {"id": "s", "version": 1, "when": when, **extra}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no version", {"id": "s", "when": COUNT}, "missing required field 'version'"),
    ("bad id", segment(COUNT, id="Bad Id"), "segment.id"),
    ("unknown field", segment(COUNT, colour="red"), "unknown field(s) ['colour']"),
    ("two conditions", segment({**COUNT, "not": COUNT}), "expected exactly one of"),
    ("unknown event", segment({"count": {"event": "teleport", "within": "1d", "at_least": 1}}), "teleport"),
    ("bad duration", segment({"count": {"event": "purchase", "within": "1x", "at_least": 1}}), "not a duration"),
    ("two comparators", segment({"count": {"event": "purchase", "within": "1d", "at_least": 1, "at_most": 3}}),
     "exactly one of"),
    ("threshold too big", segment({"count": {"event": "purchase", "within": "1d", "at_least": 65}}), "1..64"),
    ("zero at_least", segment({"count": {"event": "purchase", "within": "1d", "at_least": 0}}), "1..64"),
    ("bad same", segment({"count": {"event": "purchase", "within": "1d", "at_least": 1, "same": "user"}}),
     "'item' or 'category'"),
    ("empty all", segment({"all": []}), "non-empty list"),
    ("unknown feature", segment({"feature": {"name": "shoe_size", "op": ">", "value": 1}}), "unknown feature"),
    ("bad op", segment({"feature": {"name": "r_score", "op": "~", "value": 1}}), ".op"),
    ("number op on text", segment({"feature": {"name": "r_score", "op": ">", "value": "x"}}), "needs a number"),
    ("in without list", segment({"attribute": {"name": "country", "op": "in", "value": "DE"}}), "non-empty list"),
    ("sequence without hold", segment({"sequence": {"steps": [{"event": "purchase"}]}}), "missing 'hold'"),
    ("absent first", segment({"sequence": {"steps": [{"absent": "purchase"}], "hold": "1h"}}), "first step"),
    ("step without within", segment({"sequence": {"steps": [{"event": "add_to_cart"}, {"event": "purchase"}],
                                                  "hold": "1h"}}), "missing 'within'"),
    ("too many steps", segment({"sequence": {"steps": [{"event": "search"}] + [{"event": "search", "within": "1h"}] * 4,
                                             "hold": "1h"}}), "1..4 steps"),
]


@pytest.mark.parametrize(("case", "definition", "message"), INVALID, ids=[case for case, _, _ in INVALID])
def test_invalid_rules_are_rejected_by_compiler_and_schema(case: str, definition: dict[str, Any],
                                                           message: str) -> None:
    with pytest.raises(RuleError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        COMPILER.segment(definition)
    if case not in ("unknown feature", "number op on text", "in without list", "two comparators", "zero at_least"):
        assert not VALIDATOR.is_valid({"segments": [definition]}), case  # semantic checks are the compiler's


def test_default_rules_pass_schema_and_compiler() -> None:
    rules = yaml.safe_load((CONFIG_DIR / "rules.yaml").read_text())
    VALIDATOR.validate(rules)
    assert len(RuleCatalog.from_definitions(rules["segments"], COMPILER).rule_set(COMPILER).segments) == 8


@pytest.mark.parametrize(("text", "ms"), [("500ms", 500), ("30s", 30_000), ("15m", 900_000), ("24h", 86_400_000),
                                          ("7d", 604_800_000), ("2w", 1_209_600_000), (1234, 1234)])
def test_durations(text: str | int, ms: int) -> None:
    assert parse_duration(text, "x") == ms


def test_commands_move_versions_forward_only() -> None:
    catalog = RuleCatalog.from_definitions([segment(COUNT)], COMPILER)
    update = parse_command(json.dumps({"command": "update", "segment": segment(COUNT, version=2)}).encode(),
                           COMPILER)
    assert catalog.apply(update).version == 2
    with pytest.raises(RuleError, match="not newer"):
        catalog.apply(update)
    assert catalog.apply(RuleCommand("pause", "s", 3)).status == "paused"
    with pytest.raises(RuleError, match="paused"):
        catalog.apply(RuleCommand("pause", "s", 4))
    assert catalog.apply(RuleCommand("resume", "s", 4)).status == "active"
    assert catalog.apply(RuleCommand("delete", "s", 5)).status == "deleted"
    with pytest.raises(RuleError, match="deleted"):
        catalog.apply(RuleCommand("update", "s", 6, segment(COUNT, version=6)))
    assert catalog.apply(RuleCommand("add", "s", 6, segment(COUNT, version=6))).status == "active"
    with pytest.raises(RuleError, match="unknown"):
        catalog.apply(RuleCommand("delete", "nope", 1))


@pytest.mark.parametrize("payload", [
    b"{not json", b"[]", b'{"command": "explode"}', b'{"command": "add"}',
    b'{"command": "delete", "id": "s"}', b'{"command": "delete", "id": "s", "version": true}',
    json.dumps({"command": "add", "segment": segment({"count": {"event": "x", "within": "1d", "at_least": 1}})})
    .encode(),
])
def test_malformed_commands_are_rejected(payload: bytes) -> None:
    with pytest.raises(RuleError):
        parse_command(payload, COMPILER)


@pytest.mark.parametrize("payload", [
    None, b"", b"null", b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b'{"command": "add", "segment": ' + b"[" * 3000
    + b"]" * 3000 + b"}", b'{"command": "add", "segment": {"id": "s", "when": ' + b'{"not": ' * 900 + b"{}"
    + b"}" * 900 + b"}}", b"{" + b" " * 70_000 + b"}"])
def test_hostile_commands_are_rule_errors_never_anything_else(payload: bytes | None) -> None:
    """What once failed the job: a null record (TypeError) and deep nesting (RecursionError)."""
    with pytest.raises(RuleError):
        parse_command(payload, COMPILER)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda v: json.dumps(v).encode(), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(
        ["command", "segment", "id", "version", "when", "count", "event", "within", "at_least", "all", "any"]),
        inner, max_size=5), max_leaves=40)))
def test_arbitrary_commands_are_parsed_or_refused_with_a_rule_error(payload: bytes) -> None:
    try:
        parse_command(payload, COMPILER)
    except RuleError as refused:
        assert str(refused)


def test_command_round_trip() -> None:
    command = RuleCommand("add", "s", 1, segment(COUNT))
    assert parse_command(command.to_json(), COMPILER) == command
    assert VALIDATOR.is_valid(json.loads(command.to_json()))


# --- conditions against a brute-force reading --------------------------------------------------------------

MINUTE = 60_000
times_strategy = st.lists(st.integers(0, 600), max_size=30).map(lambda xs: [x * MINUTE for x in xs])


def facts(logs: dict[Signal, list[int]], retention: Retention) -> Facts:
    built = {}
    for signal, times in logs.items():
        log = SignalLog()
        for ts in times:
            log.add("", ts, retention)
        built[signal.key] = log
    return Facts(built, 0, {}, {})


@settings(max_examples=200, deadline=None)
@given(times=times_strategy, threshold=st.integers(1, 5), within=st.integers(1, 120), now=st.integers(0, 700))
def test_count_matches_brute_force_and_its_change_time(times: list[int], threshold: int, within: int,
                                                       now: int) -> None:
    signal = Signal(("purchase",))
    condition = Count(signal, within * MINUTE, threshold)
    now_ms = now * MINUTE
    seen = [ts for ts in times if ts <= now_ms]
    state = facts({signal: seen}, Retention(threshold, within * MINUTE))

    def brute(at: int) -> bool:
        return sum(1 for ts in seen if at - within * MINUTE < ts <= at) >= threshold

    holds, changes_at = condition.evaluate(state, now_ms)
    assert holds == brute(now_ms)
    if holds:
        assert changes_at is not None and brute(changes_at - 1) and not brute(changes_at)


def brute_sequence(steps: list[tuple[str, int]], hold: int, logs: dict[str, list[int]], cancels: list[int],
                   now: int) -> bool:
    """Enumerate every chain: event steps pick an event, absence steps need silence for their window."""
    def chains(index: int, previous: int, start: int) -> list[tuple[int, int]]:
        if index == len(steps):
            return [(previous, start)]
        kind, within = steps[index]
        times = logs[str(index)]
        if kind == "absent":
            end = previous + within
            if end > now or any(previous < ts <= end for ts in times):
                return []
            return chains(index + 1, end, start)
        found = []
        for ts in times:
            if ts <= now and (index == 0 or previous < ts <= previous + within):
                found += chains(index + 1, ts, ts if index == 0 else start)
        return found

    # A cancel at the very moment of the first step cancels too (the engine cannot order equal times).
    return any(done <= now < done + hold and not any(start <= ts <= now for ts in cancels)
               for done, start in chains(0, 0, 0))


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.tuples(st.sampled_from(["event", "absent"]), st.integers(1, 60)), min_size=0, max_size=2),
    logs=st.lists(st.lists(st.integers(0, 200), max_size=6), min_size=3, max_size=3),
    cancels=st.lists(st.integers(0, 200), max_size=3),
    hold=st.integers(1, 60),
    now=st.integers(0, 260),
)
def test_sequence_matches_brute_force(shape: list[tuple[str, int]], logs: list[list[int]], cancels: list[int],
                                      hold: int, now: int) -> None:
    steps_spec = [("event", 0), *shape]
    signals = [Signal((f"type{i}",)) for i in range(len(steps_spec))]  # distinct signals, one per step
    steps = tuple(Step(signals[i], absent=kind == "absent", within_ms=within)
                  for i, (kind, within) in enumerate(steps_spec))
    cancel = Signal(("cancel",))
    condition = Sequence(steps, hold, cancel, keep=64)
    # The engine never holds timestamps newer than "now" (now is the newest event time seen).
    by_step = {str(i): sorted(ts for ts in logs[i] if ts <= now) for i in range(len(steps_spec))}
    cancels = sorted(ts for ts in cancels if ts <= now)
    state = facts({**{signals[i]: by_step[str(i)] for i in range(len(steps_spec))}, cancel: cancels},
                  Retention(64, 10**6))
    holds, changes_at = condition.evaluate(state, now)
    assert holds == brute_sequence(steps_spec, hold, by_step, cancels, now)
    if changes_at is not None:  # without new events, nothing changes before then (it may be a mere re-check)
        assert changes_at > now
        assert all(brute_sequence(steps_spec, hold, by_step, cancels, t) == holds for t in range(now, changes_at))
        if not holds:  # an absence completing: it does start to hold then
            assert brute_sequence(steps_spec, hold, by_step, cancels, changes_at)

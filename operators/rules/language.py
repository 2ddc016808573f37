"""The rule language (docs/rules.md, config/rules.schema.json): definitions in, compiled segments out.

Compilation checks everything a rule can get wrong and names the offending field, so a bad rule
from the control topic is rejected with an error record instead of failing the job later.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from operators.events import EVENT_TYPES
from operators.rules.conditions import (
    OPERATORS,
    All,
    Any_,
    Compare,
    Condition,
    Count,
    FirstSeenWithin,
    Not,
    Sequence,
    Step,
)
from operators.rules.signals import Signal

MAX_THRESHOLD = 64
"""Largest K of "at least K events": rules keep K timestamps per signal and user."""
MAX_STEPS = 4
MAX_DEPTH = 8
MAX_DURATION_MS = 400 * 86_400_000
ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_COMPARATORS = {"at_least": (0, False), "more_than": (1, False), "fewer_than": (0, True), "at_most": (1, True)}
_CONDITION_KEYS = ("count", "sequence", "first_seen", "feature", "attribute", "all", "any", "not")
_NUMERIC_OPS = {">", ">=", "<", "<="}


class RuleError(ValueError):
    """A rule definition is invalid; the message starts with the path of the offending field."""


@dataclass(frozen=True)
class Segment:
    """A compiled segment definition. ``version`` increases with every change of the rule."""

    id: str
    name: str
    version: int
    priority: int
    when: Condition
    exit_when: Condition | None = None
    """Hysteresis: once in, a user leaves only when this holds (instead of when ``when`` stops holding)."""
    group: str = ""
    """Exclusive group: a user is in at most one segment of a group (highest priority, then most recent)."""
    min_dwell_ms: int = 0
    description: str = ""


def parse_duration(value: Any, path: str) -> int:
    """``"30m"``, ``"24h"``, ``"7d"``... or integer milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise RuleError(f"{path}: expected a duration like '24h' or milliseconds, got {value!r}")
    if isinstance(value, int):
        ms = value
    else:
        match = _DURATION.match(value.strip())
        if not match:
            raise RuleError(f"{path}: {value!r} is not a duration (use e.g. 500ms, 30s, 15m, 24h, 7d, 2w)")
        ms = int(match.group(1)) * _UNIT_MS[match.group(2)]
    if not 0 < ms <= MAX_DURATION_MS:
        raise RuleError(f"{path}: duration must be positive and at most 400d")
    return ms


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RuleError(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _only(spec: Mapping[str, Any], allowed: Collection[str], path: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise RuleError(f"{path}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")


def _string(spec: Mapping[str, Any], key: str, path: str, pattern: re.Pattern[str] | None = None) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.match(value)):
        shape = f" matching {pattern.pattern}" if pattern is not None else ""
        raise RuleError(f"{path}.{key}: expected a non-empty string{shape}, got {value!r}")
    return value


def _integer(spec: Mapping[str, Any], key: str, path: str, low: int, high: int, default: int | None = None) -> int:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RuleError(f"{path}.{key}: expected an integer in {low}..{high}, got {value!r}")
    return value


def _types(value: Any, path: str) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise RuleError(f"{path}: expected an event type or a non-empty list of them, got {value!r}")
    unknown = sorted(set(names) - EVENT_TYPES)
    if unknown:
        raise RuleError(f"{path}: unknown event type(s) {unknown}; known: {sorted(EVENT_TYPES)}")
    return tuple(sorted(set(names)))


def _signal(spec: Mapping[str, Any], types_key: str, path: str, per: str = "") -> Signal:
    filters = {key: _string(spec, key, path) for key in ("item", "category") if key in spec}
    return Signal(_types(spec[types_key], f"{path}.{types_key}"), per=per, **filters)


class Compiler:
    """Compiles rule definitions.

    ``features`` are the feature names conditions may compare; ``sequence_keep`` is how many
    timestamps a sequence keeps per step (``rules.timestamps_per_step``).
    """

    def __init__(self, features: Collection[str], sequence_keep: int = 16) -> None:
        self.features = frozenset(features)
        self.sequence_keep = sequence_keep

    def segment(self, spec: Any, path: str = "segment") -> Segment:
        spec = _mapping(spec, path)
        _only(spec, ("id", "name", "version", "priority", "group", "min_dwell", "when", "exit_when",
                     "description"), path)
        for required in ("id", "version", "when"):
            if required not in spec:
                raise RuleError(f"{path}: missing required field {required!r}")
        segment_id = _string(spec, "id", path, ID_PATTERN)
        return Segment(
            id=segment_id,
            name=_string(spec, "name", path) if "name" in spec else segment_id,
            version=_integer(spec, "version", path, 1, 2**53),
            priority=_integer(spec, "priority", path, -1_000_000, 1_000_000, default=0),
            when=self.condition(spec["when"], f"{path}.when"),
            exit_when=self.condition(spec["exit_when"], f"{path}.exit_when") if "exit_when" in spec else None,
            group=_string(spec, "group", path, ID_PATTERN) if "group" in spec else "",
            min_dwell_ms=parse_duration(spec["min_dwell"], f"{path}.min_dwell") if "min_dwell" in spec else 0,
            description=_string(spec, "description", path) if "description" in spec else "",
        )

    def condition(self, spec: Any, path: str, depth: int = 0) -> Condition:
        if depth > MAX_DEPTH:
            raise RuleError(f"{path}: conditions nest deeper than {MAX_DEPTH}")
        spec = _mapping(spec, path)
        if len(spec) != 1 or next(iter(spec)) not in _CONDITION_KEYS:
            raise RuleError(f"{path}: expected exactly one of {list(_CONDITION_KEYS)}, got {sorted(spec)}")
        kind, body = next(iter(spec.items()))
        path = f"{path}.{kind}"
        if kind in ("all", "any"):
            if not isinstance(body, list) or not body:
                raise RuleError(f"{path}: expected a non-empty list of conditions")
            children = tuple(self.condition(child, f"{path}[{i}]", depth + 1) for i, child in enumerate(body))
            return All(children) if kind == "all" else Any_(children)
        if kind == "not":
            return Not(self.condition(body, path, depth + 1))
        body = _mapping(body, path)
        if kind == "count":
            return self._count(body, path)
        if kind == "sequence":
            return self._sequence(body, path)
        if kind == "first_seen":
            return self._first_seen(body, path)
        return self._compare(body, path)

    def _count(self, spec: Mapping[str, Any], path: str) -> Count:
        _only(spec, ("event", "within", "same", "item", "category", *_COMPARATORS), path)
        comparators = [key for key in _COMPARATORS if key in spec]
        if len(comparators) != 1 or "event" not in spec or "within" not in spec:
            raise RuleError(f"{path}: needs 'event', 'within' and exactly one of {list(_COMPARATORS)}")
        comparator = comparators[0]
        offset, negated = _COMPARATORS[comparator]
        threshold = _integer(spec, comparator, path, 1 - offset, MAX_THRESHOLD - offset) + offset
        per = spec.get("same", "")
        if per not in ("", "item", "category"):
            raise RuleError(f"{path}.same: expected 'item' or 'category', got {per!r}")
        return Count(_signal(spec, "event", path, per), parse_duration(spec["within"], f"{path}.within"),
                     threshold, negated)

    def _sequence(self, spec: Mapping[str, Any], path: str) -> Sequence:
        _only(spec, ("steps", "hold", "cancel_on"), path)
        steps_spec = spec.get("steps")
        if not isinstance(steps_spec, list) or not 1 <= len(steps_spec) <= MAX_STEPS:
            raise RuleError(f"{path}.steps: expected a list of 1..{MAX_STEPS} steps")
        if "hold" not in spec:
            raise RuleError(f"{path}: missing 'hold' (how long the condition holds after the sequence completes)")
        steps = tuple(self._step(step, f"{path}.steps[{i}]", first=i == 0) for i, step in enumerate(steps_spec))
        cancel = Signal(_types(spec["cancel_on"], f"{path}.cancel_on")) if "cancel_on" in spec else None
        return Sequence(steps, parse_duration(spec["hold"], f"{path}.hold"), cancel, self.sequence_keep)

    @staticmethod
    def _step(spec: Any, path: str, first: bool) -> Step:
        spec = _mapping(spec, path)
        _only(spec, ("event", "absent", "within", "item", "category"), path)
        kinds = [key for key in ("event", "absent") if key in spec]
        if len(kinds) != 1:
            raise RuleError(f"{path}: expected exactly one of 'event' or 'absent'")
        if first and (kinds[0] == "absent" or "within" in spec):
            raise RuleError(f"{path}: the first step must be an 'event' step without 'within'")
        if not first and "within" not in spec:
            raise RuleError(f"{path}: missing 'within' (relative to the previous step)")
        within = 0 if first else parse_duration(spec["within"], f"{path}.within")
        return Step(_signal(spec, kinds[0], path), absent=kinds[0] == "absent", within_ms=within)

    @staticmethod
    def _first_seen(spec: Mapping[str, Any], path: str) -> FirstSeenWithin:
        _only(spec, ("within",), path)
        if "within" not in spec:
            raise RuleError(f"{path}: missing 'within'")
        return FirstSeenWithin(parse_duration(spec["within"], f"{path}.within"))

    def _compare(self, spec: Mapping[str, Any], path: str) -> Compare:
        source = path.rsplit(".", 1)[-1]
        _only(spec, ("name", "op", "value"), path)
        name = _string(spec, "name", path, NAME_PATTERN)
        if source == "feature" and name not in self.features:
            raise RuleError(f"{path}.name: unknown feature {name!r}; known: {sorted(self.features)}")
        op = spec.get("op")
        if op not in OPERATORS:
            raise RuleError(f"{path}.op: expected one of {list(OPERATORS)}, got {op!r}")
        if "value" not in spec:
            raise RuleError(f"{path}: missing 'value'")
        value = spec["value"]
        if op in ("in", "not_in"):
            if not isinstance(value, list) or not value:
                raise RuleError(f"{path}.value: '{op}' needs a non-empty list")
            value = tuple(value)
        elif op in _NUMERIC_OPS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RuleError(f"{path}.value: '{op}' needs a number, got {value!r}")
        return Compare(source, name, op, value)

"""Experiment definitions and the control-topic commands that change them at run time.

A definition names its arms, their weights and treatments, the control arm and the conversion window.
Everything is checked here, with the path of the offending field in the message, so a bad definition in
the settings stops the job before it starts and a bad command is dead-lettered instead of failing it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from operators.recs.config import SOURCES
from operators.rules.language import ID_PATTERN, RuleError, _integer, _mapping, _only, _string, parse_duration

#: What an arm's users are shown: nothing (their list is a shadow list, computed and never emitted), the
#: popularity list only, or the personalized list (optionally with other source weights).
TREATMENTS = ("none", "popularity", "personalized")
MAX_ARMS = 8
MAX_EXPERIMENTS = 16
"""Experiments not stopped at once: per-user state keeps one assignment per experiment (stopped ones are
forgotten; their ids stay reserved)."""
MAX_COMMAND_BYTES = 65_536
COMMAND_PREFIX = "experiment."
"""Experiment commands share the rule commands' topic; their ``command`` starts with this."""
COMMANDS = ("add", "update", "pause", "resume", "stop")
ACTIVE, PAUSED, STOPPED = "active", "paused", "stopped"
_FIELDS = ("id", "version", "name", "description", "arms", "control", "conversion_window")
_ARM_FIELDS = ("id", "weight", "treatment", "source_weights")


class ExperimentError(RuleError):
    """An experiment definition or command is invalid; the message starts with the offending field's path."""


@dataclass(frozen=True)
class Arm:
    id: str
    weight: float
    """Relative share of users; the arm's share is its weight over the sum of the experiment's weights."""
    treatment: str
    source_weights: Mapping[str, float] = field(default_factory=dict)
    """Recommendation source weights for a ``personalized`` arm; empty: the job's ``recommendations.weights``."""


@dataclass(frozen=True)
class Experiment:
    id: str
    version: int
    arms: tuple[Arm, ...]
    control: str
    """The arm every other arm is compared with."""
    conversion_window_ms: int
    name: str = ""
    description: str = ""

    def arm(self, arm_id: str) -> Arm | None:
        return next((arm for arm in self.arms if arm.id == arm_id), None)

    def definition(self) -> dict[str, Any]:
        """The definition as JSON-ready data: ``parse_experiment(e.definition()) == e``."""
        return {"id": self.id, "version": self.version, "name": self.name, "description": self.description,
                "control": self.control, "conversion_window": self.conversion_window_ms,
                "arms": [{"id": a.id, "weight": a.weight, "treatment": a.treatment,
                          "source_weights": dict(a.source_weights)} for a in self.arms]}


def _number(value: Any, path: str, zero: bool = False) -> float:
    """A weight: positive (or non-negative when ``zero``) and at most a million."""
    low_ok = isinstance(value, int | float) and not isinstance(value, bool) and (value >= 0 if zero else value > 0)
    if not low_ok or value > 1e6:
        raise ExperimentError(f"{path}: expected a number {'>=' if zero else '>'} 0 and <= 1e6, got {value!r}")
    return float(value)


def _arm(spec: Any, path: str) -> Arm:
    spec = _mapping(spec, path)
    _only(spec, _ARM_FIELDS, path)
    treatment = spec.get("treatment", "personalized")
    if treatment not in TREATMENTS:
        raise ExperimentError(f"{path}.treatment: expected one of {list(TREATMENTS)}, got {treatment!r}")
    weights = _mapping(spec.get("source_weights", {}), f"{path}.source_weights")
    if weights and treatment != "personalized":
        raise ExperimentError(f"{path}.source_weights: only a personalized arm has source weights")
    _only(weights, SOURCES, f"{path}.source_weights")
    return Arm(_string(spec, "id", path, ID_PATTERN), _number(spec.get("weight"), f"{path}.weight"),
               treatment, {name: _number(value, f"{path}.source_weights.{name}", zero=True)
                           for name, value in sorted(weights.items())})


def _parse(spec: Any, path: str) -> Experiment:
    spec = _mapping(spec, path)
    _only(spec, _FIELDS, path)
    arms_spec = spec.get("arms")
    if not isinstance(arms_spec, list) or not 2 <= len(arms_spec) <= MAX_ARMS:
        raise ExperimentError(f"{path}.arms: expected a list of 2..{MAX_ARMS} arms")
    arms = tuple(_arm(arm, f"{path}.arms[{index}]") for index, arm in enumerate(arms_spec))
    ids = [arm.id for arm in arms]
    if len(set(ids)) != len(ids):
        raise ExperimentError(f"{path}.arms: arm ids must be unique, got {ids}")
    control = _string(spec, "control", path, ID_PATTERN)
    if control not in ids:
        raise ExperimentError(f"{path}.control: {control!r} is not one of the arms {ids}")
    name, description = spec.get("name", ""), spec.get("description", "")
    if not isinstance(name, str) or not isinstance(description, str):
        raise ExperimentError(f"{path}: name and description must be strings")
    return Experiment(_string(spec, "id", path, ID_PATTERN), _integer(spec, "version", path, 1, 2**31 - 1, 1), arms,
                      control, parse_duration(spec.get("conversion_window"), f"{path}.conversion_window"),
                      name, description)


def parse_experiment(spec: Any, path: str = "experiment") -> Experiment:
    """A checked experiment; raises :class:`ExperimentError` naming the offending field."""
    try:
        return _parse(spec, path)
    except ExperimentError:
        raise
    except RuleError as exc:  # the shared field helpers of the rule language
        raise ExperimentError(str(exc)) from None


def parse_experiments(specs: Any, path: str = "experiments.definitions") -> tuple[Experiment, ...]:
    """The configured experiments: unique ids, at most :data:`MAX_EXPERIMENTS`."""
    if not isinstance(specs, list) or len(specs) > MAX_EXPERIMENTS:
        raise ExperimentError(f"{path}: expected a list of at most {MAX_EXPERIMENTS} experiments")
    experiments = tuple(parse_experiment(spec, f"{path}[{index}]") for index, spec in enumerate(specs))
    ids = [experiment.id for experiment in experiments]
    if len(set(ids)) != len(ids):
        raise ExperimentError(f"{path}: experiment ids must be unique, got {ids}")
    return experiments


@dataclass(frozen=True)
class ExperimentCommand:
    """``add``/``update`` carry a whole definition; ``pause``/``resume``/``stop`` name an id and a newer version."""

    command: str
    id: str
    version: int
    experiment: Experiment | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"command": COMMAND_PREFIX + self.command}
        if self.experiment is not None:
            body["experiment"] = self.experiment.definition()
        else:
            body.update(id=self.id, version=self.version)
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def is_experiment_command(document: Any) -> bool:
    """Whether a decoded control record is meant for experiments (the shell routes it here, not to the rules)."""
    return isinstance(document, dict) and str(document.get("command", "")).startswith(COMMAND_PREFIX)


def parse_command(payload: bytes | None) -> ExperimentCommand:
    """A control-topic record -> a checked command; anything else raises :class:`ExperimentError` with the reason."""
    if not payload:
        raise ExperimentError("command: empty record")
    if len(payload) > MAX_COMMAND_BYTES:
        raise ExperimentError(f"command: {len(payload)} bytes > {MAX_COMMAND_BYTES}")
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExperimentError(f"command: not JSON ({type(exc).__name__})") from None
    names = [COMMAND_PREFIX + name for name in COMMANDS]
    if not isinstance(raw, dict) or raw.get("command") not in names:
        raise ExperimentError(f"command: expected an object with 'command' one of {names}")
    command = raw["command"].removeprefix(COMMAND_PREFIX)
    if command in ("add", "update"):
        if sorted(raw) != ["command", "experiment"]:
            raise ExperimentError(f"command: '{raw['command']}' takes exactly 'experiment' (got {sorted(raw)})")
        experiment = parse_experiment(raw["experiment"], "command.experiment")
        return ExperimentCommand(command, experiment.id, experiment.version, experiment)
    experiment_id, version = raw.get("id"), raw.get("version")
    if set(raw) - {"command", "id", "version"} or not isinstance(experiment_id, str) \
            or not ID_PATTERN.match(experiment_id):
        raise ExperimentError(f"command: '{raw['command']}' takes 'id' (an experiment id) and 'version' "
                              f"(got {sorted(raw)})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExperimentError(f"command.version: expected a positive integer, got {version!r}")
    return ExperimentCommand(command, experiment_id, version)


@dataclass(frozen=True)
class Entry:
    experiment: Experiment
    status: str

    def to_json(self) -> bytes:
        """What a job instance keeps in broadcast state (read back with :func:`entry_from_json`)."""
        return json.dumps({"status": self.status, "experiment": self.experiment.definition()},
                          separators=(",", ":"), sort_keys=True).encode()


def entry_from_json(data: bytes) -> Entry:
    document = json.loads(data)
    return Entry(parse_experiment(document["experiment"]), document["status"])


#: Status a command may start from -> the status it leaves. A stopped experiment is final: its id is never
#: reused, because the same id would hash users into the same arms and mix two experiments' metrics.
_TRANSITIONS = {"add": ((None,), ACTIVE), "update": ((ACTIVE, PAUSED), None), "pause": ((ACTIVE,), PAUSED),
                "resume": ((PAUSED,), ACTIVE), "stop": ((ACTIVE, PAUSED), STOPPED)}


@dataclass
class ExperimentCatalog:
    """Experiments by id, as every job instance holds them: the configured ones, then the commands in order."""

    entries: dict[str, Entry] = field(default_factory=dict)

    @staticmethod
    def of(experiments: tuple[Experiment, ...]) -> ExperimentCatalog:
        return ExperimentCatalog({e.id: Entry(e, ACTIVE) for e in experiments})

    def active(self) -> tuple[Experiment, ...]:
        """Experiments that assign users and count exposures, by id."""
        return tuple(e.experiment for _, e in sorted(self.entries.items()) if e.status == ACTIVE)

    def apply(self, command: ExperimentCommand) -> Entry:
        """The entry after ``command``; raises :class:`ExperimentError` (changing nothing) when it does not apply.

        ``update`` may change the name, description and conversion window, never the arms: changing weights
        or treatments mid-run would move users between arms and mix what the arms measure (start a new
        experiment instead).
        """
        current = self.entries.get(command.id)
        allowed, after = _TRANSITIONS[command.command]
        status = current.status if current is not None else None
        if status not in allowed:
            raise ExperimentError(f"{command.command} {command.id}: not possible for an experiment that is "
                                  f"{status or 'unknown'}")
        if current is not None and command.version <= current.experiment.version:
            raise ExperimentError(f"{command.command} {command.id}: version {command.version} is not newer than "
                                  f"the current version {current.experiment.version}")
        if current is None and sum(e.status != STOPPED for e in self.entries.values()) >= MAX_EXPERIMENTS:
            raise ExperimentError(f"add {command.id}: already {MAX_EXPERIMENTS} experiments that are not stopped")
        if command.experiment is not None:
            new = command.experiment
            if current is not None and (new.arms, new.control) != (current.experiment.arms,
                                                                     current.experiment.control):
                raise ExperimentError(f"update {command.id}: arms and control cannot change; stop it and add a "
                                      f"new experiment")
        else:  # pause, resume, stop: only on a known experiment (the transition check above)
            new = replace(current.experiment, version=command.version)  # type: ignore[union-attr]
        entry = Entry(new, after or status or ACTIVE)
        self.entries[command.id] = entry
        return entry

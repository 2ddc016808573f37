"""The rule catalog: versioned segment definitions, runtime commands, and the compiled, indexed rule set.

Every instance of the job holds the same catalog (defaults from the rules file, then the commands
of the control topic in order), so every instance compiles the same :class:`RuleSet`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from operators.rules.language import ID_PATTERN, Compiler, RuleError, Segment
from operators.rules.signals import Retention, Signal

COMMANDS = ("add", "update", "pause", "resume", "delete")
ACTIVE, PAUSED, DELETED = "active", "paused", "deleted"


@dataclass(frozen=True)
class RuleEntry:
    """One rule as the catalog keeps it: its definition, version and status."""

    id: str
    version: int
    status: str
    definition: Mapping[str, Any]

    def to_json(self) -> bytes:
        return json.dumps({"id": self.id, "version": self.version, "status": self.status,
                           "definition": self.definition}, separators=(",", ":"), sort_keys=True).encode()

    @staticmethod
    def from_json(data: bytes) -> RuleEntry:
        raw = json.loads(data)
        return RuleEntry(raw["id"], raw["version"], raw["status"], raw["definition"])


@dataclass(frozen=True)
class RuleSet:
    """Compiled active segments with the indexes evaluation needs."""

    segments: Mapping[str, Segment]
    statuses: Mapping[str, tuple[str, int]]
    """Status and version of every rule ever known, for the causes of exits from paused/deleted ones."""
    fingerprint: int
    signals: Mapping[str, tuple[Signal, Retention]]
    by_input: Mapping[str, tuple[str, ...]]
    groups: Mapping[str, tuple[str, ...]]
    features: frozenset[str]
    attributes: frozenset[str]

    def affected_by(self, event_type: str, changed: Iterable[str]) -> set[str]:
        """Segments whose answer an event of this type, changing these inputs, may change.

        ``changed`` names inputs as conditions do: ``first_seen``, ``feature:<name>``, ``attribute:<name>``.
        """
        affected = set(self.by_input.get(event_type, ()))
        for name in changed:
            affected.update(self.by_input.get(name, ()))
        return affected

    @staticmethod
    def build(entries: Iterable[RuleEntry], compiler: Compiler) -> RuleSet:
        segments: dict[str, Segment] = {}
        statuses: dict[str, tuple[str, int]] = {}
        for entry in sorted(entries, key=lambda e: e.id):
            statuses[entry.id] = (entry.status, entry.version)
            if entry.status == ACTIVE:
                segments[entry.id] = replace(compiler.segment(entry.definition, f"rules[{entry.id}]"),
                                             version=entry.version)
        signals: dict[str, tuple[Signal, Retention]] = {}
        by_input: dict[str, list[str]] = {}
        groups: dict[str, list[str]] = {}
        features: set[str] = set()
        attributes: set[str] = set()
        for segment in segments.values():
            conditions = [segment.when] if segment.exit_when is None else [segment.when, segment.exit_when]
            for condition in conditions:
                for signal, retention in condition.signals():
                    known = signals.get(signal.key)
                    signals[signal.key] = (signal, known[1].merge(retention) if known else retention)
                for name in set(condition.inputs()):
                    if name.startswith("feature:"):
                        features.add(name.removeprefix("feature:"))
                    elif name.startswith("attribute:"):
                        attributes.add(name.removeprefix("attribute:"))
                    by_input.setdefault(name, []).append(segment.id)
            if segment.group:
                groups.setdefault(segment.group, []).append(segment.id)
        fingerprint = zlib.crc32(json.dumps(sorted(statuses.items())).encode())
        return RuleSet(segments, statuses, fingerprint, signals,
                       {name: tuple(sorted(set(ids))) for name, ids in by_input.items()},
                       {name: tuple(ids) for name, ids in groups.items()}, frozenset(features), frozenset(attributes))


@dataclass(frozen=True)
class RuleCommand:
    command: str
    id: str
    version: int
    definition: Mapping[str, Any] | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"command": self.command}
        if self.definition is not None:
            body["segment"] = self.definition
        else:
            body.update(id=self.id, version=self.version)
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


#: A rule command larger than this is refused (a segment definition is a few hundred bytes).
MAX_COMMAND_BYTES = 65_536


def parse_command(payload: bytes | None, compiler: Compiler) -> RuleCommand:
    """A control-topic record -> a checked command (the segment definition compiles); anything else
    (an empty or null record, not JSON, too large, nested too deeply) is a :class:`RuleError`."""
    if not payload:
        raise RuleError("command: empty record")
    if len(payload) > MAX_COMMAND_BYTES:
        raise RuleError(f"command: {len(payload)} bytes > {MAX_COMMAND_BYTES}")
    try:
        return _parse_command(payload, compiler)
    except RecursionError:
        raise RuleError("command: nested too deeply") from None


def _parse_command(payload: bytes, compiler: Compiler) -> RuleCommand:
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RuleError(f"command: not JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("command") not in COMMANDS:
        raise RuleError(f"command: expected an object with 'command' one of {list(COMMANDS)}")
    command = raw["command"]
    if command in ("add", "update"):
        unknown = sorted(set(raw) - {"command", "segment"})
        if unknown or "segment" not in raw:
            raise RuleError(f"command: '{command}' takes exactly 'segment' (got {sorted(raw)})")
        segment = compiler.segment(raw["segment"], "segment")
        return RuleCommand(command, segment.id, segment.version, raw["segment"])
    unknown = sorted(set(raw) - {"command", "id", "version"})
    rule_id, version = raw.get("id"), raw.get("version")
    if unknown or not isinstance(rule_id, str) or not ID_PATTERN.match(rule_id):
        raise RuleError(f"command: '{command}' takes 'id' (a rule id) and 'version' (got {sorted(raw)})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RuleError(f"command.version: expected a positive integer, got {version!r}")
    return RuleCommand(command, rule_id, version)


@dataclass
class RuleCatalog:
    """Rule entries by id; commands move them forward, never back (versions strictly increase)."""

    entries: dict[str, RuleEntry] = field(default_factory=dict)

    @staticmethod
    def from_definitions(definitions: Iterable[Mapping[str, Any]], compiler: Compiler) -> RuleCatalog:
        catalog = RuleCatalog()
        for index, definition in enumerate(definitions):
            segment = compiler.segment(definition, f"segments[{index}]")
            if segment.id in catalog.entries:
                raise RuleError(f"segments[{index}].id: duplicate id {segment.id!r}")
            catalog.entries[segment.id] = RuleEntry(segment.id, segment.version, ACTIVE, dict(definition))
        return catalog

    def apply(self, command: RuleCommand) -> RuleEntry:
        """The entry after ``command``; raises :class:`RuleError` (and changes nothing) when it does not apply."""
        current = self.entries.get(command.id)
        if current is not None and command.version <= current.version:
            raise RuleError(f"{command.command} {command.id}: version {command.version} is not newer than "
                            f"the current version {current.version}")
        status = current.status if current is not None else DELETED
        allowed_from = {"add": (DELETED,), "update": (ACTIVE, PAUSED), "pause": (ACTIVE,), "resume": (PAUSED,),
                        "delete": (ACTIVE, PAUSED)}[command.command]
        if status not in allowed_from:
            state = "unknown" if current is None else status
            raise RuleError(f"{command.command} {command.id}: not possible for a rule that is {state}")
        new_status = {"add": ACTIVE, "update": status, "pause": PAUSED, "resume": ACTIVE,
                      "delete": DELETED}[command.command]
        definition = command.definition if command.definition is not None else current.definition  # type: ignore[union-attr]
        entry = RuleEntry(command.id, command.version, new_status, definition)
        self.entries[command.id] = entry
        return entry

    def rule_set(self, compiler: Compiler) -> RuleSet:
        return RuleSet.build(self.entries.values(), compiler)

    def describe(self) -> list[dict[str, Any]]:
        return [{"id": e.id, "version": e.version, "status": e.status, "definition": e.definition}
                for e in sorted(self.entries.values(), key=lambda e: e.id)]


@dataclass(frozen=True)
class RuleBook:
    """What every job instance starts from: the initial definitions and how to compile rules."""

    definitions: tuple[Mapping[str, Any], ...]
    features: tuple[str, ...]
    sequence_keep: int = 16

    def compiler(self) -> Compiler:
        return Compiler(self.features, self.sequence_keep)

    def catalog(self, applied: Iterable[RuleEntry] = ()) -> RuleCatalog:
        """The initial definitions, overridden by the entries runtime commands produced."""
        catalog = RuleCatalog.from_definitions(self.definitions, self.compiler())
        catalog.entries.update({entry.id: entry for entry in applied})
        return catalog

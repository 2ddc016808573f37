"""Per-user segment membership: signals in, exact enter/exit changes out.

Time is event time. Before an event is applied, every moment at which some answer was due to
change (``RuleState.wake``) up to the event's time is evaluated first, so an exit caused by a
window expiring carries the exact expiry time even if the user's next event arrives before the
timer. The job also sets an event-time timer at ``wake`` so users who stay silent leave on time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.events import Event
from operators.jsontext import sorted_json
from operators.rules.catalog import RuleSet
from operators.rules.conditions import FIRST_SEEN, Facts, earliest
from operators.rules.language import Segment
from operators.rules.signals import Retention, Signal, SignalLog

SEGMENTS_SCHEMA = "segments.v1"
MAX_CATCH_UP = 1000
"""Evaluations per catch-up at most (a safety net; each moves time strictly forward)."""
MAX_ATTRIBUTE_CHARS = 200


@dataclass
class Membership:
    since: int
    version: int


@dataclass
class RuleState:
    """Everything rules keep of one user: signal timestamps, referenced attributes and features, memberships."""

    logs: dict[str, SignalLog] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    """The referenced features as of the user's latest event (what time-driven evaluations see)."""
    members: dict[str, Membership] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    """Segments of an exclusive group that qualify but lost to another, and since when they qualify."""
    now: int = 0
    """Newest event time seen or reached by a timer."""
    first_seen: int = 0
    """The user's first event time (from the profile, which also counts late events)."""
    seq: int = 0
    wake: int | None = None
    """Earliest event time at which an answer may change without an event; a timer is set there."""
    fingerprint: int = 0
    """The rule set last fully evaluated for this user; another one means re-evaluate everything."""


@dataclass(frozen=True)
class SegmentChange:
    """One enter or exit, with its cause. ``change_id`` is deterministic: ``<user>:s<seq>``."""

    user_key: str
    seq: int
    segment: str
    action: str
    cause: Mapping[str, Any]
    previous: tuple[str, ...]
    current: tuple[str, ...]
    event_time: int

    @property
    def change_id(self) -> str:
        return f"{self.user_key}:s{self.seq}"

    def to_json(self, processing_time: int, arm: tuple[str, str] | None = None) -> bytes:
        """``arm``: (experiment, arm) of the user while an experiment runs (docs/experiments.md)."""
        document = {
            "id": self.change_id, "schema": SEGMENTS_SCHEMA, "user": self.user_key, "seq": self.seq,
            "segment": self.segment, "action": self.action, "cause": self.cause, "previous": list(self.previous),
            "segments": list(self.current), "event_time": self.event_time, "processing_time": processing_time,
        }
        if arm is not None:
            document |= {"experiment": arm[0], "arm": arm[1]}
        return sorted_json(document)


def extract_attributes(attributes_json: str, wanted: frozenset[str]) -> dict[str, Any]:
    """Profile attributes an event states: context ``device``/``campaign``, ``geo`` fields, profile traits.

    Only attributes some rule references are kept (data minimisation).
    """
    if not wanted or not attributes_json:
        return {}
    raw = json.loads(attributes_json)
    context = raw.get("context") or {}
    stated = {"device": context.get("device"), "campaign": context.get("campaign"), **(context.get("geo") or {}),
              **(raw.get("traits") or {})}
    found: dict[str, Any] = {}
    for name in wanted & stated.keys():
        value = stated[name]
        if isinstance(value, str):
            found[name] = value[:MAX_ATTRIBUTE_CHARS]
        elif isinstance(value, int | float):
            found[name] = value
    return found



MODEL_SEGMENT_PREFIX = "cluster:"
"""Segments the models decide. Rule ids cannot contain ':', so the two never collide."""


def is_model_segment(name: str) -> bool:
    return name.startswith(MODEL_SEGMENT_PREFIX)


class SegmentEngine:
    """Applies a :class:`RuleSet` to a user's :class:`RuleState`."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        # Per event type, the signals it may count (in rule-set order), and the order changes go out in:
        # looked up per event instead of asking every signal and sorting by priority each time.
        self._signals_by_type: dict[str, list[tuple[str, Signal, Retention]]] = {}
        for key, (signal, retention) in rules.signals.items():
            for event_type in dict.fromkeys(signal.types):
                self._signals_by_type.setdefault(event_type, []).append((key, signal, retention))
        self._order = {name: (-segment.priority, name) for name, segment in rules.segments.items()}

    def observe(self, state: RuleState, event: Event, first_seen: int,
                features: Mapping[str, Any]) -> list[SegmentChange]:
        """Apply an accepted event; ``features`` are the user's current feature values (may be empty)."""
        rules = self.rules
        changes = self.advance(state, event.user_key, event.ts)
        for key, signal, retention in self._signals_by_type.get(event.type, ()):
            entity = signal.entity(event)
            if entity is not None:
                log = state.logs.setdefault(key, SignalLog())
                log.add(entity, event.ts, retention)
                log.prune(max(state.now, event.ts), retention)
        stated = extract_attributes(event.attributes, rules.attributes)
        changed = [f"attribute:{name}" for name, value in stated.items() if state.attributes.get(name) != value]
        state.attributes.update(stated)
        current = {name: features[name] for name in rules.features if name in features}
        changed += [f"feature:{name}" for name in rules.features if current.get(name) != state.features.get(name)]
        state.features = current
        if first_seen != state.first_seen:
            changed.append(FIRST_SEEN)
            state.first_seen = first_seen
        state.now = max(state.now, event.ts)
        cause = {"kind": "event", "event": {"id": event.event_id, "type": event.type}}
        if state.fingerprint != rules.fingerprint:  # the rules changed since this user was last evaluated
            state.fingerprint = rules.fingerprint
            for key in [key for key in state.logs if key not in rules.signals]:
                del state.logs[key]
            affected = None
        else:
            affected = rules.affected_by(event.type, changed)
        changes += self._evaluate(state, event.user_key, state.now, affected, cause)
        return changes

    def advance(self, state: RuleState, user_key: str, now: int) -> list[SegmentChange]:
        """Evaluate every due moment up to ``now`` (timers, and before applying a later event)."""
        changes: list[SegmentChange] = []
        for _ in range(MAX_CATCH_UP):
            due = state.wake
            if due is None or due > now:
                break
            state.wake = None
            state.now = max(state.now, due)
            state.fingerprint = self.rules.fingerprint
            changes += self._evaluate(state, user_key, due, None, {"kind": "expiry"})
        return changes

    def forget(self, state: RuleState, user_key: str, now: int, kind: str) -> list[SegmentChange]:
        """The user's state is being dropped (retention, erasure): exit every segment with ``kind`` as cause."""
        changes = []
        for segment in self._ordered(state.members):
            changes.append(self._change(state, user_key, segment, "exit", {"kind": kind}, now))
            del state.members[segment]
        return changes

    def move_model_segment(self, state: RuleState, user_key: str, segment: str | None, now: int,
                           cause: Mapping[str, Any], version: int) -> list[SegmentChange]:
        """Put the user in model segment ``segment`` (None: in none), leaving any other model segment.

        Model segments (``cluster:<id>``, decided by the online models, not by rules) share the
        user's change sequence and membership list with rule segments, so consumers see one stream.
        """
        changes = []
        for name in self._ordered(n for n in state.members if is_model_segment(n) and n != segment):
            changes.append(self._change(state, user_key, name, "exit", cause, now))
            del state.members[name]
        if segment is not None and segment not in state.members:
            changes.append(self._change(state, user_key, segment, "enter", cause, now))
            state.members[segment] = Membership(now, version)
        return changes

    def _evaluate(self, state: RuleState, user_key: str, now: int, affected: set[str] | None,
                  cause: Mapping[str, Any]) -> list[SegmentChange]:
        rules = self.rules
        candidates = set(rules.segments) if affected is None else set(affected)
        candidates.update(name for name in state.members if name not in rules.segments and not is_model_segment(name))
        for name in list(candidates):
            segment = rules.segments.get(name)
            if segment is not None and segment.group:
                candidates.update(rules.groups[segment.group])
        if not candidates:
            return []
        facts = Facts(state.logs, state.first_seen, state.features, state.attributes)
        qualifies: dict[str, bool] = {}
        wake = state.wake if affected is not None else None
        for name in candidates:
            segment = rules.segments.get(name)
            if segment is None:
                qualifies[name] = False
                continue
            holds, changes_at = self._holds(segment, state.members.get(name), facts, now)
            qualifies[name] = holds
            if changes_at is not None and changes_at > now:
                wake = earliest(wake, changes_at)
        state.wake = wake
        winners = self._resolve_groups(state, qualifies, now)
        return self._changes(state, user_key, qualifies, winners, now, cause)

    @staticmethod
    def _holds(segment: Segment, member: Membership | None, facts: Facts, now: int) -> tuple[bool, int | None]:
        if member is None:
            return segment.when.evaluate(facts, now)
        if segment.exit_when is not None:
            leave, changes_at = segment.exit_when.evaluate(facts, now)
            stays = not leave
        else:
            stays, changes_at = segment.when.evaluate(facts, now)
        dwell_end = member.since + segment.min_dwell_ms
        if not stays and now < dwell_end:
            return True, earliest(changes_at, dwell_end)
        return stays, changes_at

    def _resolve_groups(self, state: RuleState, qualifies: dict[str, bool], now: int) -> dict[str, str]:
        """Per exclusive group, the one qualifying segment that wins: highest priority, then most recent."""
        winners: dict[str, str] = {}
        segments = self.rules.segments
        for name, holds in qualifies.items():
            segment = segments.get(name)
            if not holds or segment is None or not segment.group:
                continue
            best = winners.get(segment.group)
            if best is None or self._rank(segment, state, now) > self._rank(segments[best], state, now):
                winners[segment.group] = name
        return winners

    @staticmethod
    def _rank(segment: Segment, state: RuleState, now: int) -> tuple[int, int, str]:
        """Priority, then since when the segment qualifies (members: since they entered)."""
        member = state.members.get(segment.id)
        since = member.since if member is not None else state.waiting.get(segment.id, now)
        return segment.priority, since, segment.id

    def _changes(self, state: RuleState, user_key: str, qualifies: dict[str, bool], winners: dict[str, str],
                 now: int, cause: Mapping[str, Any]) -> list[SegmentChange]:
        rules = self.rules
        exits: list[tuple[str, Mapping[str, Any]]] = []
        enters: list[tuple[str, Mapping[str, Any]]] = []
        for name in self._ordered(qualifies):
            segment = rules.segments.get(name)
            winner = winners.get(segment.group) if segment is not None and segment.group else name
            member = state.members.get(name)
            stays = qualifies[name] and winner == name
            if qualifies[name] and not stays:
                state.waiting.setdefault(name, member.since if member is not None else now)
            else:
                state.waiting.pop(name, None)
            if member is not None and not stays:
                if segment is None:
                    status, version = rules.statuses.get(name, ("deleted", member.version))
                    exits.append((name, {"kind": f"rule_{status}", "rule": name, "version": version}))
                elif qualifies[name]:
                    exits.append((name, {"kind": "preempted", "by": winner, "rule": name,
                                         "version": segment.version}))
                else:
                    exits.append((name, {**cause, "rule": name, "version": segment.version}))
            elif member is None and stays and segment is not None:
                enters.append((name, {**cause, "rule": name, "version": segment.version}))
            elif member is not None and segment is not None:
                member.version = segment.version
        changes = []
        for name, reason in exits:
            changes.append(self._change(state, user_key, name, "exit", reason, now))
            del state.members[name]
        for name, reason in enters:
            changes.append(self._change(state, user_key, name, "enter", reason, now))
            state.members[name] = Membership(now, rules.segments[name].version)
        return changes

    def _ordered(self, names: Iterable[str]) -> list[str]:
        """Highest priority first, then by id: the order changes are emitted in."""
        order = self._order
        names = list(names)
        try:
            return sorted(names, key=order.__getitem__)
        except KeyError:  # a segment no longer in the rules (paused, deleted) or a model segment: priority 0
            return sorted(names, key=lambda n: order.get(n) or (0, n))

    @staticmethod
    def _change(state: RuleState, user_key: str, segment: str, action: str, cause: Mapping[str, Any],
                now: int) -> SegmentChange:
        before = tuple(sorted(state.members))
        after = tuple(sorted(set(before) - {segment})) if action == "exit" else tuple(sorted({*before, segment}))
        state.seq += 1
        return SegmentChange(user_key, state.seq, segment, action, cause, before, after, now)

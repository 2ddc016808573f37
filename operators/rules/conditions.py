"""Compiled rule conditions.

Every condition answers, for a user at event time ``now``, whether it holds and the earliest
event time at which that answer may change *without another event* (a window expiring, an
absence completing, a hold running out). The engine sets one event-time timer at the earliest
such time, which is what makes exits exact instead of waiting for the user's next event.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from operators.rules.signals import Retention, Signal, SignalLog

#: (holds, changes_at): the answer and the earliest event time it may change by time passing alone.
Truth = tuple[bool, int | None]

EMPTY_LOG = SignalLog()
FIRST_SEEN = "first_seen"
"""Input name of conditions an earlier first event (an out-of-order one) may change."""


@dataclass(frozen=True)
class Facts:
    """What conditions read for one user."""

    logs: Mapping[str, SignalLog]
    first_seen: int
    features: Mapping[str, Any]
    attributes: Mapping[str, str]

    def log(self, signal: Signal) -> SignalLog:
        return self.logs.get(signal.key, EMPTY_LOG)


class Condition(Protocol):
    def evaluate(self, facts: Facts, now: int) -> Truth: ...

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        """The signals it reads and how much of each it needs."""
        ...

    def inputs(self) -> Iterator[str]:
        """Event types, ``first_seen``, ``feature:<name>`` or ``attribute:<name>``: what may change the answer."""
        ...


def earliest(first: int | None, second: int | None) -> int | None:
    """The earlier of two change times, either of which may be None (no change due)."""
    if first is None:
        return second
    return first if second is None else min(first, second)


@dataclass(frozen=True)
class Count:
    """At least ``threshold`` events of a signal within the last ``within_ms`` (negated: fewer than)."""

    signal: Signal
    within_ms: int
    threshold: int
    negated: bool = False

    def evaluate(self, facts: Facts, now: int) -> Truth:
        cutoff, k = now - self.within_ms, self.threshold
        expires: int | None = None
        for times in facts.log(self.signal).entities.values():
            end = bisect.bisect_right(times, now)
            if end >= k and times[end - k] > cutoff:
                expiry = times[end - k] + self.within_ms
                expires = expiry if expires is None else max(expires, expiry)
        holds = expires is not None
        return holds != self.negated, expires

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        yield self.signal, Retention(self.threshold, self.within_ms)

    def inputs(self) -> Iterator[str]:
        yield from self.signal.types


@dataclass(frozen=True)
class Step:
    signal: Signal
    absent: bool = False
    """An absence step completes when no event of the signal follows the previous step within ``within_ms``."""
    within_ms: int = 0


@dataclass(frozen=True)
class Sequence:
    """Steps in event-time order, e.g. "add_to_cart, then no purchase within 1 h, then a visit within 48 h".

    Holds for ``hold_ms`` after a match completes, unless a ``cancel`` event follows the match's
    first step. Evaluated over the signals' sorted timestamps, so out-of-order events are fine.
    """

    steps: tuple[Step, ...]
    hold_ms: int
    cancel: Signal | None = None
    keep: int = 16

    def evaluate(self, facts: Facts, now: int) -> Truth:
        logs = [facts.log(step.signal) for step in self.steps]
        lower = max(log.floor for log in logs)
        if self.cancel is not None:
            cancel_log = facts.log(self.cancel)
            cancels = cancel_log.times()
            before = bisect.bisect_right(cancels, now)
            lower = max(lower, cancel_log.floor, cancels[before - 1] if before else -1)
        first = logs[0].times()
        reached = first[bisect.bisect_right(first, lower): bisect.bisect_right(first, now)]
        pending: list[int] = []
        last = len(self.steps) - 1
        for index, (step, log) in enumerate(zip(self.steps, logs, strict=True)):
            if index == 0 or not reached:
                continue
            times = log.times()
            if step.absent:
                reached, waiting = self._absences(reached, times, step.within_ms, now)
                if index == last:
                    pending = waiting
            else:
                reached = self._followers(reached, times, step.within_ms, now)
        alive = [done + self.hold_ms for done in reached if done + self.hold_ms > now]
        if alive:
            return True, max(alive)
        return False, min(pending, default=None)

    @staticmethod
    def _absences(reached: list[int], times: list[int], within_ms: int, now: int) -> tuple[list[int], list[int]]:
        """Completed absences (their end times) and ones still running (their future end times)."""
        done: list[int] = []
        waiting: list[int] = []
        for start in reached:
            end = start + within_ms
            following = bisect.bisect_right(times, start)
            if following < len(times) and times[following] <= min(end, now):
                continue  # the absent event happened
            (done if end <= now else waiting).append(end)
        return done, waiting

    @staticmethod
    def _followers(reached: list[int], times: list[int], within_ms: int, now: int) -> list[int]:
        """Events that follow some reached time within ``within_ms`` (the latest earlier one decides)."""
        followers: list[int] = []
        for ts in times[: bisect.bisect_right(times, now)]:
            previous = bisect.bisect_left(reached, ts) - 1
            if previous >= 0 and ts <= reached[previous] + within_ms and (not followers or followers[-1] != ts):
                followers.append(ts)
        return followers

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        horizon = sum(step.within_ms for step in self.steps) + self.hold_ms
        for step in self.steps:
            yield step.signal, Retention(self.keep, horizon)
        if self.cancel is not None:
            yield self.cancel, Retention(1, horizon)

    def inputs(self) -> Iterator[str]:
        for step in self.steps:
            yield from step.signal.types
        if self.cancel is not None:
            yield from self.cancel.types


@dataclass(frozen=True)
class FirstSeenWithin:
    """The user's first event is less than ``within_ms`` old ("new visitor")."""

    within_ms: int

    def evaluate(self, facts: Facts, now: int) -> Truth:
        end = facts.first_seen + self.within_ms
        return (True, end) if now < end else (False, None)

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        return iter(())

    def inputs(self) -> Iterator[str]:
        yield FIRST_SEEN


def _in(actual: Any, expected: Any) -> bool:
    return actual in expected


def _not_in(actual: Any, expected: Any) -> bool:
    return actual not in expected


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "in": _in, "not_in": _not_in,
}


@dataclass(frozen=True)
class Compare:
    """A feature (``source="feature"``) or profile attribute (``"attribute"``) compared with a value.

    Features are known as of the user's latest event, so such conditions change at events only.
    A missing value never matches.
    """

    source: str
    name: str
    op: str
    value: Any

    def evaluate(self, facts: Facts, now: int) -> Truth:
        values = facts.features if self.source == "feature" else facts.attributes
        actual = values.get(self.name)
        if actual is None:
            return False, None
        try:
            return bool(OPERATORS[self.op](actual, self.value)), None
        except TypeError:  # e.g. a string attribute compared with a number
            return False, None

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        return iter(())

    def inputs(self) -> Iterator[str]:
        yield f"{self.source}:{self.name}"


@dataclass(frozen=True)
class _Combinator:
    children: tuple[Condition, ...]

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        for child in self.children:
            yield from child.signals()

    def inputs(self) -> Iterator[str]:
        for child in self.children:
            yield from child.inputs()


@dataclass(frozen=True)
class All(_Combinator):
    def evaluate(self, facts: Facts, now: int) -> Truth:
        holds, changes = True, None
        for child in self.children:
            child_holds, child_changes = child.evaluate(facts, now)
            if not child_holds:
                if child_changes is None:
                    return False, None  # false until an event changes it, whatever the others do
                holds = False
            changes = earliest(changes, child_changes)
        return holds, changes


@dataclass(frozen=True)
class Any_(_Combinator):
    def evaluate(self, facts: Facts, now: int) -> Truth:
        holds, changes = False, None
        for child in self.children:
            child_holds, child_changes = child.evaluate(facts, now)
            if child_holds:
                if child_changes is None:
                    return True, None  # true until an event changes it
                holds = True
            changes = earliest(changes, child_changes)
        return holds, changes


@dataclass(frozen=True)
class Not:
    child: Condition

    def evaluate(self, facts: Facts, now: int) -> Truth:
        holds, changes = self.child.evaluate(facts, now)
        return not holds, changes

    def signals(self) -> Iterator[tuple[Signal, Retention]]:
        return self.child.signals()

    def inputs(self) -> Iterator[str]:
        return self.child.inputs()

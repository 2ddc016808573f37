"""Identity stitching under parallelism: routing, the alias table and the records that move state.

State is keyed by ``user_key`` (``user_id``, else ``anon:<anonymous_id>``), so an anonymous
visitor's history and the known user's profile live under two keys, usually on two subtasks. A
keyed function cannot touch another key's state, and PyFlink has no iterations, so state moves
through the job's own internal topic (like ``models.snapshots``), read back as a fourth input:

1. ``identify`` (anonymous_id A -> user_id U) is keyed by ``anon:A`` (:func:`routing_key`).
2. There, :func:`route` answers HANDOVER: the operator exits A's segments, removes A's population
   contribution, ships its stored state as a :class:`Handover` to key U, clears it and keeps only
   the alias ``A -> U`` (:class:`IdentityState`, the alias table, keyed by anonymous id).
3. At U the handover is merged (``operators.privacy.merge``), A is linked, the identify event is
   then processed like any event, and a merge event goes to the merges topic (:func:`merge_record`).
4. Later events of A alone still arrive at ``anon:A``; :func:`route` answers FORWARD and they travel
   to U on the internal topic, in order behind the handover.

Internal records are :class:`~operators.events.Event` rows with types that validation never
accepts (``__handover__``, ``__erase__``), so no producer can inject one through the event topics,
and they cross the internal topic signed with the job's secret (``state.internal``), so no producer can
inject one there either.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from operators.events import Event, is_anonymous, user_key_of

HANDOVER_TYPE = "__handover__"
ERASE_TYPE = "__erase__"
INTERNAL_TYPES = frozenset({HANDOVER_TYPE, ERASE_TYPE})
MERGE_SCHEMA = "identity.merge.v1"
#: Anonymous keys remembered per known user (for erasure cascades); the oldest link goes first.
DEFAULT_MAX_LINKS = 16


def routing_key(event: Event) -> str:
    """The key an event is processed under: ``identify`` at the anonymous key (which owns the state
    to hand over), everything else at its ``user_key``. Replaces the job's key selector."""
    if event.type == "identify" and event.anonymous_id:
        return user_key_of("", event.anonymous_id)
    return event.user_key


@dataclass
class IdentityState:
    """At ``anon:A``: :attr:`alias_of` (the alias table entry). At a known key: :attr:`linked`."""

    alias_of: str = ""
    """The known user key this anonymous key merged into ("" none)."""
    since: int = 0
    """Event time of the identify that set :attr:`alias_of` (the newest identify wins)."""
    linked: dict[str, int] = field(default_factory=dict)
    """Anonymous keys merged into this known user -> identify time, oldest first."""

    def related_keys(self) -> tuple[str, ...]:
        """Keys holding the same person's data: an erasure here cascades to them."""
        return ((self.alias_of,) if self.alias_of else ()) + tuple(self.linked)


class Route(StrEnum):
    LOCAL = "local"
    """Process here as today."""
    FORWARD = "forward"
    """Send the event (re-keyed to :attr:`IdentityStep.target`) over the internal topic."""
    HANDOVER = "handover"
    """Ship this key's state to :attr:`IdentityStep.target` as a :class:`Handover`, then clear it."""


@dataclass(frozen=True)
class IdentityStep:
    route: Route
    state: IdentityState | None
    """The identity state to store (None: none, nothing changed)."""
    target: str = ""


def route(state: IdentityState | None, event: Event, key: str) -> IdentityStep:
    """Where an event arriving at ``key`` (its :func:`routing_key`) is processed."""
    if not is_anonymous(key):
        return IdentityStep(Route.LOCAL, state)
    if event.type == "identify" and event.user_id:
        target = user_key_of(event.user_id, "")  # never an anonymous key, so never back here
        if state is not None and state.alias_of and (state.alias_of == target or event.ts < state.since):
            return IdentityStep(Route.FORWARD, state, target)  # known link, or an older login: count it there
        return IdentityStep(Route.HANDOVER, IdentityState(alias_of=target, since=event.ts), target)
    if state is not None and state.alias_of:
        return IdentityStep(Route.FORWARD, state, state.alias_of)
    return IdentityStep(Route.LOCAL, state)


def forwarded(event: Event, target: str) -> Event:
    """The event as it travels to ``target``: the key changes, its ids are kept, except that a
    repeated identify loses its anonymous id, or :func:`routing_key` would send it back."""
    return event._replace(user_key=target, anonymous_id="" if event.type == "identify" else event.anonymous_id)


def link(state: IdentityState | None, anonymous_key: str, ts: int, max_links: int = DEFAULT_MAX_LINKS) -> IdentityState:
    """Remember at the known key that ``anonymous_key`` merged into it (bounded: oldest link dropped)."""
    state = state or IdentityState()
    state.linked.pop(anonymous_key, None)
    state.linked[anonymous_key] = ts
    while len(state.linked) > max_links:
        del state.linked[next(iter(state.linked))]
    return state


def _internal(event_id: str, event_type: str, target: str, ts: int, attributes: Mapping[str, object],
              user_id: str = "", anonymous_id: str = "") -> Event:
    return Event(event_id=event_id, type=event_type, user_key=target, user_id=user_id, anonymous_id=anonymous_id,
                 ts=ts, item_id="", category="", price=0.0, quantity=1, session_id="",
                 attributes=json.dumps(attributes, separators=(",", ":"), sort_keys=True))


@dataclass(frozen=True)
class Handover:
    """An anonymous key's stored state on its way to the known user, with the identify that moved it."""

    source: str
    target: str
    identify: Event
    states: Mapping[str, bytes]
    """Stored codec bytes by logical state name (``state/slots.py``); absent: none."""

    def to_event(self) -> Event:
        identify = self.identify
        return _internal(f"handover:{identify.event_id}", HANDOVER_TYPE, self.target, identify.ts, {
            "source": self.source, "identify": list(identify),
            "states": {name: base64.b64encode(data).decode("ascii") for name, data in self.states.items()},
        }, identify.user_id, identify.anonymous_id)

    @classmethod
    def from_event(cls, event: Event) -> Handover:
        document = json.loads(event.attributes)
        return cls(source=document["source"], target=event.user_key, identify=Event(*document["identify"]),
                   states={name: base64.b64decode(data) for name, data in document["states"].items()})


@dataclass(frozen=True)
class ErasureCommand:
    """An erasure cascading to a related key (alias target or linked anonymous key)."""

    source: str
    target: str
    reason: str
    ts: int

    def to_event(self) -> Event:
        return _internal(f"erase:{self.source}>{self.target}:{self.ts}", ERASE_TYPE, self.target, self.ts,
                         {"source": self.source, "reason": self.reason})

    @classmethod
    def from_event(cls, event: Event) -> ErasureCommand:
        document = json.loads(event.attributes)
        return cls(source=document["source"], target=event.user_key, reason=document["reason"], ts=event.ts)


def merge_record(handover: Handover, merged: tuple[str, ...]) -> tuple[bytes, bytes]:
    """Key and value of the merge event (merges topic): which anonymous key joined which user, when,
    and which of its states were merged. Deterministic id: a replay repeats it."""
    identify = handover.identify
    value = {"id": f"{handover.target}:merge:{identify.event_id}", "schema": MERGE_SCHEMA, "user": handover.target,
             "anonymous": handover.source, "ts": identify.ts, "merged": sorted(merged)}
    return (handover.target.encode("utf-8"),
            json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8"))

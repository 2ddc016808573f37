"""The user operator's keyed state, in one table: every slot's logical name, its Flink state name and
its codec.

The descriptors (``state/descriptors.py``), the merge of an anonymous visitor into the known user
and the erasure plan all read their state names here, so a new slot cannot be forgotten by one of
them. Flink state names are part of savepoint compatibility: never rename one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from operators.privacy.merge import UserStates
from state.codecs import (
    decode_consent,
    decode_features,
    decode_identity,
    decode_models,
    decode_profile,
    decode_recs,
    decode_rules,
    encode_consent,
    encode_features,
    encode_identity,
    encode_models,
    encode_profile,
    encode_recs,
    encode_rules,
)


@dataclass(frozen=True)
class StateSlot:
    """One keyed value of the user operator, stored as its codec's bytes."""

    name: str
    """Logical name: a :class:`UserStates` field, and the name a handover carries the bytes under."""
    state_name: str
    """Flink's name of the state (versioned)."""
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


PROFILE = StateSlot("profile", "profile-v1", encode_profile, decode_profile)
FEATURES = StateSlot("features", "features-v1", encode_features, decode_features)
RULES = StateSlot("rules", "rules-v1", encode_rules, decode_rules)
MODELS = StateSlot("models", "models-v1", encode_models, decode_models)
RECS = StateSlot("recs", "recs-v1", encode_recs, decode_recs)
#: What a user key knows of the user's behaviour: merged into the known user at a login, cleared at
#: an erasure or when retention passes (in :class:`UserStates` field order).
USER_SLOTS = (PROFILE, FEATURES, RULES, MODELS, RECS)
#: Kept through an erasure on purpose (docs/privacy.md): without it the next event would profile the user again.
CONSENT = StateSlot("consent", "consent-v1", encode_consent, decode_consent)
#: Identity stitching: at an anonymous key its alias (the known user it merged into); at a known key its links.
IDENTITY = StateSlot("identity", "identity-v1", encode_identity, decode_identity)
#: The recommender's map state (user key -> the list last published); its forget request clears the entry.
PUBLISHED_RECS_STATE = "published-recs-v1"
#: The recommender's per-user experiment state (arms and recent exposures), by user key.
EXPERIMENT_STATE = "experiments-by-user-v1"
RECOMMENDER_STATES = (PUBLISHED_RECS_STATE, EXPERIMENT_STATE)
#: The states an erasure clears: the user's, the identity links, and (when the user has a list) the
#: recommender's entry.
ERASED_STATES = (*(slot.state_name for slot in USER_SLOTS), IDENTITY.state_name)
KEPT_STATES = (CONSENT.state_name,)


def decode_states(stored: Mapping[str, bytes | None]) -> UserStates:
    """The user's states from their stored bytes by logical name (absent or empty: none)."""
    return UserStates(**{slot.name: slot.decode(data) if (data := stored.get(slot.name)) else None
                         for slot in USER_SLOTS})


def encode_states(states: UserStates) -> dict[str, bytes]:
    """The bytes to store by logical name; a state that is None is absent (clear it)."""
    return {slot.name: slot.encode(value) for slot in USER_SLOTS if (value := getattr(states, slot.name)) is not None}

SLOTS = {slot.name: slot for slot in (*USER_SLOTS, CONSENT, IDENTITY)}


class StoredValues:
    """One user's values as the per-user core sees them (``operators.user_core.UserValues``): decoded on
    first read, encoded and written back by :meth:`store` after the call.

    ``states`` maps each logical name to anything with ``value()``, ``update(bytes)`` and ``clear()``:
    Flink's ``ValueState``, the micro-batched operator's per-user slot, the local runner's dict cell.
    """

    def __init__(self, states: Mapping[str, Any]) -> None:
        self.states = states
        self.decoded_values: dict[str, Any] = {}
        self.changed: set[str] = set()

    def get(self, name: str) -> Any | None:
        if name in self.decoded_values:
            return self.decoded_values[name]
        raw = self.states[name].value()
        value = SLOTS[name].decode(bytes(raw)) if raw else None
        self.decoded_values[name] = value
        return value

    def put(self, name: str, value: Any) -> None:
        self.decoded_values[name] = value
        self.changed.add(name)

    def clear(self, names: Iterable[str]) -> None:
        for name in names:
            self.put(name, None)

    def stored(self, names: Iterable[str]) -> dict[str, bytes]:
        """The bytes as stored (or as they will be, for a value changed in this call)."""
        out = {}
        for name in names:
            if name in self.changed:
                value = self.decoded_values[name]
                if value is not None:
                    out[name] = SLOTS[name].encode(value)
            elif raw := self.states[name].value():
                out[name] = bytes(raw)
        return out

    def decoded(self, stored: Mapping[str, bytes]) -> UserStates:
        return decode_states(stored)

    def store(self) -> None:
        """Write what the call changed."""
        for name in self.changed:
            value = self.decoded_values[name]
            if value is None:
                self.states[name].clear()
            else:
                self.states[name].update(SLOTS[name].encode(value))
        self.decoded_values.clear()
        self.changed.clear()

"""Consent per user: the purposes a user granted, the decision "may we personalize?", and when a
change means erasure.

Consent changes arrive on their own topic, read at its own speed, so a user's behaviour events
can be processed before or after a consent change that is earlier or later in event time. The
rules here make the outcome safe either way:

- the newest consent change by event time wins (an older one arriving late is ignored);
- personalization needs consent *now* and an event no older than the latest grant: after a
  withdrawal nothing of the user is processed, whatever the event's time, and after a re-consent
  events from the withdrawn period stay out.

The consent record is the one keyed state an erasure keeps: without it the user's next event would
fall back to the default and be profiled again. It holds booleans, times and a counter, nothing
about behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.events import CONSENT_PURPOSES, Event

PERSONALIZATION = "personalization"
#: ``properties.erase: true`` on a ``consent_change`` makes it an explicit erasure request.
ERASE_PROPERTY = "erase"
CONSENT_WITHDRAWN = "consent_withdrawn"
ERASURE_REQUEST = "erasure_request"
#: Counters (profile ``seq``, feature ``version``, rule ``seq``) of a fresh start begin at
#: ``generation * COUNTER_STRIDE``, so output ids after a re-consent never repeat erased ones.
COUNTER_STRIDE = 2**32
DEFAULT_CONSENT: Mapping[str, bool] = {"personalization": True, "analytics": True, "marketing": False}


def _attributes(event: Event) -> dict[str, Any]:
    return json.loads(event.attributes) if event.attributes else {}


def consent_choices(event: Event) -> dict[str, bool]:
    """The purposes a ``consent_change`` names (validation guarantees known purposes and booleans)."""
    consent = _attributes(event).get("consent")
    return dict(consent) if isinstance(consent, dict) else {}


def is_erasure_request(event: Event) -> bool:
    """Proposed contract (docs/privacy.md): ``consent_change`` with ``properties.erase: true``.

    Valid under contract v1 as it is (``properties`` is free-form), so producers can send it before
    the validator knows it; only ``true`` (not ``"true"``) counts.
    """
    if event.type != "consent_change":
        return False
    properties = _attributes(event).get("properties")
    return isinstance(properties, dict) and properties.get(ERASE_PROPERTY) is True


@dataclass
class ConsentState:
    """Explicit choices of one user (purposes never named follow the configured default)."""

    choices: dict[str, bool] = field(default_factory=dict)
    changed_at: int | None = None
    """Event time of the newest applied consent change; None: never changed."""
    granted_since: int = 0
    """Event time of the latest re-grant of personalization; older events are not personalized."""
    generation: int = 0
    """Erasures so far: a fresh start after one counts its outputs from :attr:`counter_base`."""

    @property
    def counter_base(self) -> int:
        return self.generation * COUNTER_STRIDE


@dataclass(frozen=True)
class ConsentStep:
    """What one consent change means for the operator."""

    state: ConsentState
    """Store this (even when the change was stale: then it is the unchanged state)."""
    erase: str = ""
    """Erasure reason (:data:`CONSENT_WITHDRAWN`, :data:`ERASURE_REQUEST`), "" for none."""
    reconsent: bool = False
    """Personalization was granted again: the user starts fresh (state was erased at the withdrawal)."""
    stale: bool = False
    """Older than the change already applied: ignored."""


@dataclass(frozen=True)
class ConsentPolicy:
    """Consent decisions with a configurable default for users who never sent a consent change
    (opt-out regimes default personalization to true, opt-in regimes to false)."""

    defaults: Mapping[str, bool] = field(default_factory=lambda: dict(DEFAULT_CONSENT))

    def __post_init__(self) -> None:
        if set(self.defaults) != set(CONSENT_PURPOSES) or not all(isinstance(v, bool) for v in self.defaults.values()):
            raise ValueError(f"consent defaults must map exactly {', '.join(CONSENT_PURPOSES)} to booleans")

    def allows(self, state: ConsentState | None, purpose: str) -> bool:
        if state is not None and purpose in state.choices:
            return state.choices[purpose]
        return self.defaults[purpose]

    def may_personalize(self, state: ConsentState | None, event_ts: int) -> bool:
        """Whether the event may feed features, segments, models, recommendations and the profile."""
        return self.allows(state, PERSONALIZATION) and (state is None or event_ts >= state.granted_since)

    def apply(self, state: ConsentState | None, event: Event) -> ConsentStep:
        """Apply a ``consent_change`` (an erasure request sets every purpose to false)."""
        current = state or ConsentState()
        if current.changed_at is not None and event.ts < current.changed_at:
            return ConsentStep(current, stale=True)
        erase_requested = is_erasure_request(event)
        choices = dict.fromkeys(CONSENT_PURPOSES, False) if erase_requested else consent_choices(event)
        before = self.allows(current, PERSONALIZATION)
        updated = ConsentState(choices={**current.choices, **choices}, changed_at=event.ts,
                               granted_since=current.granted_since, generation=current.generation)
        after = self.allows(updated, PERSONALIZATION)
        erase = ERASURE_REQUEST if erase_requested else CONSENT_WITHDRAWN if before and not after else ""
        if erase:
            updated.generation += 1
        reconsent = after and not before
        if reconsent:
            updated.granted_since = event.ts
        return ConsentStep(updated, erase=erase, reconsent=reconsent)

    def cascaded(self, state: ConsentState | None, reason: str, ts: int) -> ConsentStep:
        """An erasure reaching a related key (linked anonymous key, alias target): the same person, so
        that key erases too and stops personalizing (its cookie must not rebuild what was erased)."""
        current = state or ConsentState()
        choices = dict.fromkeys(CONSENT_PURPOSES, False) if reason == ERASURE_REQUEST else {PERSONALIZATION: False}
        changed_at = ts if current.changed_at is None else max(current.changed_at, ts)
        return ConsentStep(ConsentState(choices={**current.choices, **choices}, changed_at=changed_at,
                                        granted_since=current.granted_since, generation=current.generation + 1),
                           erase=reason)

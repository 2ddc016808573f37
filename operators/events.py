"""Event contract v1 as the job sees it after validation.

The wire format is JSON (``docs/events.md``, ``config/event.schema.json``); validation turns it
into an :class:`Event`, a flat named tuple so it crosses Flink's Python operator boundaries as a
typed row without pickling.
"""

from __future__ import annotations

from typing import NamedTuple

SCHEMA_VERSION = 1

BEHAVIOR_TYPES = frozenset({
    "page_view", "product_view", "search", "add_to_cart", "remove_from_cart",
    "checkout_start", "purchase", "email_open", "email_click",
})
PROFILE_TYPES = frozenset({"profile_update", "identify"})
CONSENT_TYPES = frozenset({"consent_change"})
EVENT_TYPES = BEHAVIOR_TYPES | PROFILE_TYPES | CONSENT_TYPES

#: Types that must name an item.
ITEM_TYPES = frozenset({"product_view", "add_to_cart", "remove_from_cart", "purchase"})
CONSENT_PURPOSES = ("personalization", "analytics", "marketing")


class Event(NamedTuple):
    """A validated event. ``user_key`` is the id the job keys by: ``user_id``, else ``anon:<anonymous_id>``."""

    event_id: str
    type: str
    user_key: str
    user_id: str
    anonymous_id: str
    ts: int
    item_id: str
    category: str
    price: float
    quantity: int
    session_id: str
    attributes: str
    """JSON text of the remaining structured fields (context, properties, traits, consent, query)."""


def user_key_of(user_id: str, anonymous_id: str) -> str:
    """The keying id: known users by ``user_id``; anonymous visitors in their own namespace."""
    return user_id if user_id else f"anon:{anonymous_id}"

"""Event contract v2 (a superset of v1) as the job sees it after validation.

The wire format is JSON (``docs/events.md``, ``config/event.schema.json``); validation turns it
into an :class:`Event`, a flat named tuple so it crosses Flink's Python operator boundaries as a
typed row without pickling.
"""

from __future__ import annotations

from typing import NamedTuple

SCHEMA_VERSION = 1
"""The version of a document without ``schema_version`` (and of everything the generator writes)."""
SCHEMA_VERSIONS = (1, 2)
"""Versions the job reads. v2 adds ``recommendation_view``; every v1 document is a valid v2 document."""
TYPE_SINCE = {"recommendation_view": 2}
"""Types newer than v1 and the version a document of that type must declare (docs/events.md#versioning)."""

BEHAVIOR_TYPES = frozenset({
    "page_view", "product_view", "search", "add_to_cart", "remove_from_cart",
    "checkout_start", "purchase", "email_open", "email_click", "recommendation_view",
})
PROFILE_TYPES = frozenset({"profile_update", "identify"})
CONSENT_TYPES = frozenset({"consent_change"})
EVENT_TYPES = BEHAVIOR_TYPES | PROFILE_TYPES | CONSENT_TYPES

#: Types that must name an item.
ITEM_TYPES = frozenset({"product_view", "add_to_cart", "remove_from_cart", "purchase"})
CONSENT_PURPOSES = ("personalization", "analytics", "marketing")
#: Most items one ``recommendation_view`` may report (``properties.items``).
MAX_VIEW_ITEMS = 50


class Event(NamedTuple):
    """A validated event. ``user_key`` is the id the job keys by (:func:`user_key_of`)."""

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


ANONYMOUS_PREFIX = "anon:"
ESCAPE_PREFIX = "="
"""Put before a known user id that would otherwise read as an anonymous key (or as an escaped one)."""


def user_key_of(user_id: str, anonymous_id: str) -> str:
    """The keying id: anonymous visitors as ``anon:<anonymous_id>``, known users by ``user_id``.

    The two namespaces never meet, whatever the ids look like: a user id that starts with ``anon:``
    (or with the escape itself) gets a leading ``=``, so a known user ``anon:X`` is ``=anon:X`` and
    never shares a profile with the anonymous visitor ``X``, and no two user ids share a key.
    """
    if user_id:
        return ESCAPE_PREFIX + user_id if user_id.startswith((ANONYMOUS_PREFIX, ESCAPE_PREFIX)) else user_id
    return ANONYMOUS_PREFIX + anonymous_id


def is_anonymous(user_key: str) -> bool:
    return user_key.startswith(ANONYMOUS_PREFIX)

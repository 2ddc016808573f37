"""Generated records in the Segment spec, for ``personalize produce --format segment`` and the tests.

The mapping of ``operators/segment_spec.py`` (docs/events.md) run backwards, so the demo can run on what
Segment's and RudderStack's tracking libraries send: every valid event maps back to itself (a purchase
gets the id ``<event id>:0``, as one product of an ``Order Completed``). A record the generator broke on
purpose mostly stays broken the same way: a type the contract lacks becomes a track event of that name,
which maps to nothing (``unmapped_spec_event``); a field a Segment message has no place for (a price on a
page view) is left out, which makes that record valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from operators.segment_spec import CONSENT_EVENT, TRACK_EVENTS, SegmentSpec, without_nulls
from personalize.generator import GeneratedRecord
from personalize.settings import Settings, SettingsError

#: The ``settings.kafka.topics`` key of the Segment-spec input.
TRACKING_ROLE = "tracking"
EVENT_NAMES = {event_type: name for name, event_type in TRACK_EVENTS.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def segment_spec(settings: Settings) -> SegmentSpec:
    """``privacy.consent_categories`` as the mapper's spec; :class:`SettingsError` naming it when invalid."""
    try:
        return SegmentSpec({purpose: tuple(names) for purpose, names in settings.privacy.consent_categories.items()})
    except ValueError as exc:
        raise SettingsError(f"privacy.consent_categories: {exc}") from None


def segment_message(doc: Mapping[str, Any], spec: SegmentSpec) -> dict[str, Any]:
    """A contract document as a Segment message. Consent purposes are stated by the first category
    ``spec`` maps each to (a purpose mapped to none cannot be stated and is left out)."""
    kind = doc.get("type")
    context = _context(doc)
    properties = dict(doc.get("properties") or {})
    message: dict[str, Any] = {"messageId": doc.get("event_id"), "userId": doc.get("user_id"),
                               "anonymousId": doc.get("anonymous_id"), "timestamp": _iso(doc.get("ts"))}
    if kind == "page_view":
        message.update(type="page", properties=properties)
    elif kind in ("identify", "profile_update"):
        message.update(type="identify", traits=doc.get("traits"))
    elif kind == "consent_change":
        categories = spec.consent_categories
        context["consent"] = {"categoryPreferences": {
            categories[purpose][0]: granted for purpose, granted in (doc.get("consent") or {}).items()
            if categories.get(purpose)}}
        message.update(type="track", event=CONSENT_EVENT, properties=properties)
    else:
        product = without_nulls({"product_id": doc.get("item_id"), "category": doc.get("category"),
                                 "price": doc.get("price"), "quantity": doc.get("quantity")})
        if kind == "purchase":
            properties.update(order_id=doc.get("order_id"), products=[product])
        else:
            properties.update(product)
        if kind == "search":
            properties["query"] = doc.get("query")
        message.update(type="track", event=EVENT_NAMES.get(str(kind), kind), properties=without_nulls(properties))
    message["context"] = context
    return without_nulls(message)


def segment_records(records: Iterable[GeneratedRecord], spec: SegmentSpec) -> Iterator[GeneratedRecord]:
    """The records as Segment messages on the tracking topic; payloads that are not a JSON object (the
    generator's invalid JSON and non-UTF-8 records) go as they are."""
    for record in records:
        try:
            doc = json.loads(record.value)
        except ValueError:  # UnicodeDecodeError too
            doc = None
        value = (json.dumps(segment_message(doc, spec), separators=(",", ":")).encode() if isinstance(doc, dict)
                 else record.value)
        yield replace(record, topic_role=TRACKING_ROLE, value=value)


def _context(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's context and session id where Segment keeps them."""
    context = doc.get("context") or {}
    return without_nulls({
        "device": {"type": context["device"]} if "device" in context else None,
        "location": context.get("geo"),
        "campaign": {"name": context["campaign"]} if "campaign" in context else None,
        "sessionId": doc.get("session_id"),
    })


def _iso(ts: Any) -> Any:
    """Epoch milliseconds as Segment's ISO-8601 ``timestamp``; other values (and years beyond 9999) as they are."""
    if not isinstance(ts, int) or isinstance(ts, bool):
        return ts
    try:
        return (_EPOCH + timedelta(milliseconds=ts)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return ts

"""Events in the Segment spec (the track, identify, page and screen calls of Segment's and RudderStack's
tracking libraries), mapped onto event contract v1.

Shops already send these; mapping them here spares every shop a translation service. The mapper only
builds contract documents and hands them to the contract's own validator, so every guarantee of
docs/events.md (printable ids, 64-bit numbers, nesting, timestamp bounds) holds for them too. A message
the contract has no type for is dead-lettered as ``unmapped_spec_event``, never dropped. The mapping
table is in docs/events.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.events import CONSENT_PURPOSES, ITEM_TYPES, Event
from operators.validation import (
    INVALID_FIELD,
    MISSING_FIELD,
    NOT_AN_OBJECT,
    UNMAPPED_SPEC_EVENT,
    Limits,
    Rejection,
    decode_payload,
    validate_document,
)

#: Segment's consent-change event (Consent Management); other events' ``context.consent`` repeats the
#: user's standing choices on every call and changes nothing.
CONSENT_EVENT = "Segment Consent Preference Updated"
#: Track event names (Segment's ecommerce v2 and email specs) and the contract type each becomes.
TRACK_EVENTS: Mapping[str, str] = {
    "Product Viewed": "product_view",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Checkout Started": "checkout_start",
    "Order Completed": "purchase",
    "Products Searched": "search",
    "Email Opened": "email_open",
    "Email Link Clicked": "email_click",
    CONSENT_EVENT: "consent_change",
}
#: Calls that are views of a page or an app screen.
VIEW_CALLS = ("page", "screen")
#: Fields of ``context.location`` kept as the contract's ``context.geo``.
GEO_FIELDS = ("country", "region", "city")
#: Products of one ``Order Completed`` (each becomes a purchase): bounds what one record can fan out to.
MAX_ORDER_PRODUCTS = 100
#: Characters of an unmapped type or event name a dead letter's detail shows.
MAX_NAME_CHARS = 64
DEFAULT_CONSENT_CATEGORIES: Mapping[str, tuple[str, ...]] = {
    "personalization": ("Personalization",), "analytics": ("Analytics",), "marketing": ("Advertising", "Marketing"),
}


@dataclass(frozen=True)
class SegmentSpec:
    """Which consent categories (a consent manager's category ids, the keys of
    ``context.consent.categoryPreferences``) decide each purpose: ``privacy.consent_categories``."""

    consent_categories: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_CONSENT_CATEGORIES))

    def __post_init__(self) -> None:
        if not set(self.consent_categories) <= set(CONSENT_PURPOSES) or not all(
                isinstance(name, str) and name for names in self.consent_categories.values() for name in names):
            raise ValueError(f"consent categories map {', '.join(CONSENT_PURPOSES)} to lists of category ids")

    def purposes(self, preferences: Any) -> dict[str, bool] | Rejection:
        """The purposes the preferences decide. A purpose is granted only when every category mapped to
        it that the preferences name is granted (conservative: one refusal refuses); category ids match
        case-insensitively; categories mapped to no purpose are ignored."""
        if not isinstance(preferences, dict) or not preferences:
            return Rejection(MISSING_FIELD, "context.consent.categoryPreferences")
        mapped: dict[str, list[str]] = {}
        for purpose, categories in self.consent_categories.items():
            for category in categories:
                mapped.setdefault(category.casefold(), []).append(purpose)
        stated: dict[str, bool] = {}
        for category, granted in preferences.items():
            for purpose in mapped.get(category.casefold(), ()):
                if not isinstance(granted, bool):
                    return Rejection(INVALID_FIELD, "context.consent.categoryPreferences maps categories to booleans")
                stated[purpose] = stated.get(purpose, True) and granted
        if not stated:
            return Rejection(UNMAPPED_SPEC_EVENT, "no category of context.consent.categoryPreferences decides a "
                                                  "purpose (privacy.consent_categories)")
        return stated


_LIMITS = Limits()


def parse_segment(payload: bytes | None, record_ts_ms: int, limits: Limits = _LIMITS,
                  spec: SegmentSpec = SegmentSpec()) -> tuple[Event, ...] | Rejection:
    """The validated events a Segment message stands for (several for an order of several products), or
    why it was rejected: all or nothing, so one record is one dead letter. Never raises on bad input."""
    doc = decode_payload(payload, limits)
    if isinstance(doc, Rejection):
        return doc
    mapped = to_contract(doc, spec)
    if isinstance(mapped, Rejection):
        return mapped
    events = []
    for document in mapped:
        result = validate_document(document, record_ts_ms, limits)
        if isinstance(result, Rejection):
            return result
        events.append(result)
    return tuple(events)


def to_contract(doc: Any, spec: SegmentSpec = SegmentSpec()) -> list[dict[str, Any]] | Rejection:
    """Contract documents (not yet validated) for a decoded Segment message, or why it has none."""
    if not isinstance(doc, dict):
        return Rejection(NOT_AN_OBJECT, f"top level is {type(doc).__name__}")
    call = doc.get("type")
    if call is None:
        return Rejection(MISSING_FIELD, "type")
    if not isinstance(call, str):
        return Rejection(INVALID_FIELD, "type must be a string")
    context, properties = _object(doc, "context"), _object(doc, "properties")
    if isinstance(context, Rejection):
        return context
    if isinstance(properties, Rejection):
        return properties
    timestamp = doc.get("timestamp")
    base = {"event_id": doc.get("messageId"), "user_id": _id_text(doc.get("userId")),
            "anonymous_id": _id_text(doc.get("anonymousId")),
            "ts": timestamp if timestamp is not None else doc.get("originalTimestamp"),
            "session_id": _id_text(context.get("sessionId")), "context": _context(context)}
    if call in VIEW_CALLS:
        named = {name: doc[name] for name in ("name", "category") if doc.get(name) is not None}
        return [without_nulls({**base, "type": "page_view", "properties": {**named, **properties}})]
    if call == "identify":
        both = base["user_id"] is not None and base["anonymous_id"] is not None
        return [without_nulls({**base, "type": "identify" if both else "profile_update", "traits": doc.get("traits")})]
    if call != "track":
        return Rejection(UNMAPPED_SPEC_EVENT, f"Segment call {_shown(call)} has no contract type (docs/events.md)")
    name = doc.get("event")
    if name is None:
        return Rejection(MISSING_FIELD, "event")
    event_type = TRACK_EVENTS.get(name) if isinstance(name, str) else None
    if event_type is None:
        return Rejection(UNMAPPED_SPEC_EVENT, f"track event {_shown(name)} has no contract type (docs/events.md)")
    if event_type == "consent_change":
        consent = context.get("consent")
        purposes = spec.purposes(consent.get("categoryPreferences") if isinstance(consent, dict) else None)
        if isinstance(purposes, Rejection):
            return purposes
        return [without_nulls({**base, "type": event_type, "consent": purposes, "properties": properties})]
    if event_type == "purchase":
        return _order(base, properties)
    fields: dict[str, Any] = {}
    if event_type in ITEM_TYPES:
        fields, properties = _product(properties)
    elif event_type == "search":
        fields = {"query": properties.get("query")}
        properties = {key: value for key, value in properties.items() if key != "query"}
    return [without_nulls({**base, **fields, "type": event_type, "properties": properties})]


def _order(base: dict[str, Any], properties: dict[str, Any]) -> list[dict[str, Any]] | Rejection:
    """One purchase per product of an ``Order Completed``: event ids ``<messageId>:<index>``, the order's
    other properties on each. Without ``products``, one purchase of the product in ``properties``."""
    order = {key: value for key, value in properties.items() if key not in ("products", "order_id")}
    common = {**base, "type": "purchase", "order_id": _id_text(properties.get("order_id"))}
    products = properties.get("products")
    if products is None:
        fields, rest = _product(order)
        return [without_nulls({**common, **fields, "properties": rest})]
    if not isinstance(products, list) or not 0 < len(products) <= MAX_ORDER_PRODUCTS or not all(
            isinstance(product, dict) for product in products):
        return Rejection(INVALID_FIELD, f"properties.products must be a list of 1..{MAX_ORDER_PRODUCTS} objects")
    message_id = base["event_id"]
    documents = []
    for index, product in enumerate(products):
        fields, rest = _product(product)
        event_id = f"{message_id}:{index}" if isinstance(message_id, str) else message_id
        documents.append(without_nulls({**common, **fields, "event_id": event_id, "properties": {**order, **rest}}))
    return documents


def _product(fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The contract's item fields of a Segment product (``product_id``, else ``sku``), and the rest."""
    id_field = "product_id" if fields.get("product_id") is not None else "sku"
    item = {"item_id": _id_text(fields.get(id_field)), "category": fields.get("category"),
            "price": fields.get("price"), "quantity": fields.get("quantity")}
    rest = {key: value for key, value in fields.items() if key not in (id_field, "category", "price", "quantity")}
    return item, rest


def _context(context: dict[str, Any]) -> dict[str, Any]:
    """The contract's ``device``, ``geo`` and ``campaign`` from Segment's context. Nothing else of it is
    kept (ip, user agent, library, page, traits): the job reads nothing else (data minimisation)."""
    device, campaign = context.get("device"), context.get("campaign")
    location = context.get("location")
    mapped = {"device": device.get("type") if isinstance(device, dict) else None,
              "campaign": campaign.get("name") if isinstance(campaign, dict) else None,
              "geo": without_nulls({name: location.get(name) for name in GEO_FIELDS})
              if isinstance(location, dict) else None}
    return {name: value for name, value in mapped.items() if value not in (None, {})}


def _object(doc: dict[str, Any], name: str) -> dict[str, Any] | Rejection:
    value = doc.get(name)
    if value is None:
        return {}
    return value if isinstance(value, dict) else Rejection(INVALID_FIELD, f"{name} must be an object")


def _id_text(value: Any) -> Any:
    """Integer ids as text (shops send numeric user and product ids); anything else as it is, for the
    validator to judge."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def without_nulls(document: dict[str, Any]) -> dict[str, Any]:
    """Without the fields that are absent (null): the contract reads null as absent only for ids."""
    return {name: value for name, value in document.items() if value is not None}


def _shown(name: Any) -> str:
    """A type or event name for a dead letter's detail: bounded and printable (it is producer text)."""
    if not isinstance(name, str):
        return f"of JSON type {type(name).__name__}"
    shown = "".join(character if character.isprintable() else "?" for character in name[:MAX_NAME_CHARS])
    return f"'{shown}'" + ("..." if len(name) > MAX_NAME_CHARS else "")

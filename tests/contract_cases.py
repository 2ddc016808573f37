"""Shared tables of event documents for the validator tests and the validator/JSON Schema contract test.

Every case is a JSON-encodable document (byte-level cases live in ``test_validation.py``). ``blind``
names why ``config/event.schema.json`` cannot reject a case the validator rejects: the schema knows
nothing of the record time (``RANGE``) and checks ``date-time`` only when a format checker library
is installed (``FORMAT``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RECORD_TS = 1_767_225_600_000
"""Kafka record time of every case: 2026-01-01T00:00:00Z."""
TS = RECORD_TS - 60_000
"""Event time of the minimal documents: one minute before the record time."""
MIN_EVENT_TIME = 946_684_800_000
"""``Limits().min_event_time_ms``: 2000-01-01T00:00:00Z."""
DAY_MS = 86_400_000

RANGE = "range"
FORMAT = "format"

DROP = object()
"""Field value meaning: remove the field from the minimal document."""

_ITEM = {"item_id": "item-00001", "category": "books", "price": 12.5}
MINIMAL: dict[str, dict[str, Any]] = {
    "page_view": {},
    "product_view": dict(_ITEM),
    "search": {"query": "red shoes"},
    "add_to_cart": {**_ITEM, "quantity": 2},
    "remove_from_cart": {"item_id": "item-00001"},
    "checkout_start": {},
    "purchase": {**_ITEM, "quantity": 1, "order_id": "o-1"},
    "email_open": {},
    "email_click": {},
    "profile_update": {"traits": {"plan": "plus"}},
    "identify": {"anonymous_id": "a-1"},
    "consent_change": {"consent": {"personalization": True}},
    "recommendation_view": {"schema_version": 2, "properties": {"items": ["item-00001", "item-00002"]}},
}
"""Type-specific fields of the smallest valid document of every event type."""


def doc(event_type: str = "page_view", **fields: Any) -> dict[str, Any]:
    """The minimal valid document of ``event_type`` with ``fields`` overridden (``DROP`` removes one)."""
    base: dict[str, Any] = {"schema_version": 1, "event_id": "e-1", "type": event_type, "user_id": "u-1", "ts": TS,
                            **MINIMAL.get(event_type, {})}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not DROP}


@dataclass(frozen=True)
class Bad:
    id: str
    doc: Any
    reason: str
    detail: str = ""
    """A substring of the rejection detail."""
    blind: str = ""
    """Why the JSON Schema accepts this document anyway (``RANGE`` or ``FORMAT``), if it does."""


@dataclass(frozen=True)
class Good:
    id: str
    doc: dict[str, Any]
    ts: int = TS
    """Expected ``Event.ts``."""


_VIEW = "recommendation_view"
GOOD: list[Good] = [
    *(Good(f"minimal-{event_type}", doc(event_type)) for event_type in MINIMAL),
    Good("version-absent", doc(schema_version=DROP)),
    Good("version-1.0", doc(schema_version=1.0)),
    Good("iso-ts-z", doc(ts="2025-12-31T23:59:00Z")),
    Good("iso-ts-offset", doc(ts="2026-01-01T01:59:00+02:00")),
    Good("iso-ts-fraction-exact-ms", doc(ts="2004-10-19T20:52:19.699Z"), ts=1_098_219_139_699),
    Good("float-integral-ts", doc(ts=float(TS))),
    Good("ts-at-min-event-time", doc(ts=MIN_EVENT_TIME), ts=MIN_EVENT_TIME),
    Good("ts-at-max-future-skew", doc(ts=RECORD_TS + DAY_MS), ts=RECORD_TS + DAY_MS),
    Good("anonymous-only", doc(user_id=DROP, anonymous_id="a-9")),
    Good("user-id-null-anonymous-set", doc(user_id=None, anonymous_id="a-9")),
    Good("id-256-chars", doc(event_id="e" * 256)),
    Good("price-bounds", doc("product_view", price=1e9)),
    Good("price-int-zero", doc("product_view", price=0)),
    Good("price-null", doc("product_view", price=None)),
    Good("quantity-max-float-integral", doc("add_to_cart", quantity=10_000.0)),
    Good("search-empty-query", doc("search", query="")),
    Good("optional-nulls", doc(category=None, session_id=None, order_id=None, context=None, properties=None,
                               traits=None, consent=None)),
    Good("context-full", doc(context={"device": "mobile", "geo": {"country": "DE"}, "campaign": "x", "extra": 1})),
    Good("context-geo-null", doc(context={"device": "mobile", "geo": None})),
    Good("consent-all-purposes", doc("consent_change", consent={"personalization": False, "analytics": True,
                                                                "marketing": False})),
    Good("unknown-top-level-field", doc(referrer={"any": ["thing"]})),
    Good("traits-on-page-view", doc(traits={})),
    Good("version-2-of-a-v1-type", doc(schema_version=2)),
    Good("view-with-list-and-experiment", doc(_VIEW, properties={"items": ["i-1"] * 50, "list_id": "l-1",
                                                                "experiment_id": "recs-v1", "widget": "home"})),
    Good("view-anonymous", doc(_VIEW, user_id=DROP, anonymous_id="a-9")),
]

_TYPE = "page_view"
_VIEW_ITEMS = {"items": ["item-00001"]}
BAD: list[Bad] = [
    Bad("top-level-array", [doc()], "not_an_object", "list"),
    Bad("top-level-string", "page_view", "not_an_object", "str"),
    Bad("top-level-number", 42, "not_an_object", "int"),
    Bad("top-level-null", None, "not_an_object", "NoneType"),
    Bad("version-3", doc(schema_version=3), "unsupported_version", "schema_version is not one of [1, 2]"),
    Bad("version-string-1", doc(schema_version="1"), "unsupported_version", "schema_version is not one of"),
    Bad("version-true", doc(schema_version=True), "unsupported_version", "schema_version is not one of"),
    Bad("version-null", doc(schema_version=None), "unsupported_version", "schema_version is not one of"),
    Bad("event-id-missing", doc(event_id=DROP), "missing_field", "event_id"),
    Bad("event-id-null", doc(event_id=None), "missing_field", "event_id"),
    Bad("event-id-int", doc(event_id=7), "invalid_field", "event_id"),
    Bad("event-id-empty", doc(event_id=""), "invalid_field", "event_id"),
    Bad("event-id-300-chars", doc(event_id="e" * 300), "invalid_field", "1..256"),
    Bad("type-missing", doc(type=DROP), "missing_field", "type"),
    Bad("type-unknown", doc(type="wishlist_add"), "unknown_type", "type is not an event type"),
    Bad("type-wrong-case", doc(type="PageView"), "unknown_type", "type is not an event type"),
    Bad("type-list", doc(type=[_TYPE]), "unknown_type"),
    Bad("type-object", doc(type={"name": _TYPE}), "unknown_type"),
    Bad("users-missing", doc(user_id=DROP), "missing_user", "user_id or anonymous_id"),
    Bad("users-null", doc(user_id=None, anonymous_id=None), "missing_user"),
    Bad("user-id-empty", doc(user_id=""), "invalid_field", "user_id"),
    Bad("user-id-int", doc(user_id=12), "invalid_field", "user_id"),
    Bad("anonymous-id-300-chars", doc(anonymous_id="a" * 300), "invalid_field", "anonymous_id"),
    Bad("identify-without-anonymous-id", doc("identify", anonymous_id=DROP), "missing_user", "identify"),
    Bad("identify-without-user-id", doc("identify", user_id=DROP), "missing_user", "identify"),
    Bad("ts-missing", doc(ts=DROP), "missing_field", "ts"),
    Bad("ts-null", doc(ts=None), "missing_field", "ts"),
    Bad("ts-bool", doc(ts=True), "invalid_field", "ts"),
    Bad("ts-fractional", doc(ts=TS + 0.5), "invalid_field", "ts"),
    Bad("ts-list", doc(ts=[TS]), "invalid_field", "ts"),
    Bad("ts-object", doc(ts={"ms": TS}), "invalid_field", "ts"),
    Bad("ts-naive-iso", doc(ts="2025-12-31T23:59:00"), "invalid_field", "time zone", blind=FORMAT),
    Bad("ts-date-only", doc(ts="2025-12-31"), "invalid_field", "time zone", blind=FORMAT),
    Bad("ts-unparseable", doc(ts="yesterday"), "invalid_field", "ISO-8601", blind=FORMAT),
    Bad("ts-year-1970", doc(ts=86_400_000), "timestamp_out_of_range", "before validation.min_event_time",
        blind=RANGE),
    Bad("ts-just-before-min", doc(ts=MIN_EVENT_TIME - 1), "timestamp_out_of_range", blind=RANGE),
    Bad("ts-year-2200", doc(ts=7_258_118_400_000), "timestamp_out_of_range", blind=RANGE),
    Bad("user-id-control-char", doc(user_id="u\x07"), "invalid_field", "printable"),
    Bad("item-id-line-separator", doc("product_view", item_id="i\u2028"), "invalid_field", "printable"),
    Bad("session-id-nbsp", doc(session_id="s\xa01"), "invalid_field", "printable"),
    Bad("ts-just-past-skew", doc(ts=RECORD_TS + DAY_MS + 1), "timestamp_out_of_range", blind=RANGE),
    Bad("ts-in-seconds", doc(ts=TS // 1000), "timestamp_out_of_range", blind=RANGE),
    Bad("ts-in-microseconds", doc(ts=TS * 1000), "timestamp_out_of_range", blind=RANGE),
    Bad("ts-iso-year-2200", doc(ts="2200-01-01T00:00:00Z"), "timestamp_out_of_range", blind=RANGE),
    Bad("price-string", doc("product_view", price="12.50 EUR"), "invalid_field", "price must be a number"),
    Bad("price-nan-string", doc("product_view", price="NaN"), "invalid_field", "price must be a number"),
    Bad("price-negative", doc("product_view", price=-0.01), "invalid_field", "price must be within"),
    Bad("price-bool", doc("product_view", price=True), "invalid_field", "price must be a number"),
    Bad("price-huge", doc("product_view", price=1e10), "invalid_field", "price must be within"),
    Bad("price-huge-int", doc("product_view", price=10**19), "invalid_field", "price must be within"),
    # Beyond a double's range a number is no JSON the job reads (docs/events.md, "Values").
    Bad("price-beyond-double", doc("product_view", price=10**400), "invalid_json", "infinity"),
    Bad("price-object", doc("product_view", price={"amount": 1}), "invalid_field", "price"),
    Bad("quantity-zero", doc("add_to_cart", quantity=0), "invalid_field", "quantity"),
    Bad("quantity-fraction", doc("add_to_cart", quantity=1.5), "invalid_field", "quantity"),
    Bad("quantity-bool", doc("add_to_cart", quantity=True), "invalid_field", "quantity"),
    Bad("quantity-too-many", doc("add_to_cart", quantity=10_001), "invalid_field", "quantity"),
    Bad("quantity-string", doc("add_to_cart", quantity="2"), "invalid_field", "quantity"),
    *(Bad(f"item-missing-{t}", doc(t, item_id=DROP), "missing_field", "item_id")
      for t in ("product_view", "add_to_cart", "remove_from_cart", "purchase")),
    Bad("item-null-purchase", doc("purchase", item_id=None), "missing_field", "item_id"),
    Bad("item-int", doc("product_view", item_id=1), "invalid_field", "item_id"),
    Bad("category-empty", doc("product_view", category=""), "invalid_field", "category"),
    Bad("session-id-list", doc(session_id=["s"]), "invalid_field", "session_id"),
    Bad("search-without-query", doc("search", query=DROP), "missing_field", "query"),
    Bad("search-query-null", doc("search", query=None), "invalid_field", "query must be a string"),
    Bad("query-number-on-page-view", doc(query=5), "invalid_field", "query must be a string"),
    Bad("profile-update-without-traits", doc("profile_update", traits=DROP), "missing_field", "traits"),
    Bad("profile-update-empty-traits", doc("profile_update", traits={}), "missing_field", "traits"),
    Bad("profile-update-traits-list", doc("profile_update", traits=["plan"]), "invalid_field", "traits"),
    Bad("consent-change-without-consent", doc("consent_change", consent=DROP), "missing_field", "consent"),
    Bad("consent-change-empty-consent", doc("consent_change", consent={}), "missing_field", "consent"),
    Bad("consent-unknown-purpose", doc("consent_change", consent={"ads": True}), "invalid_field", "consent"),
    Bad("consent-not-bool", doc("consent_change", consent={"marketing": "yes"}), "invalid_field", "booleans"),
    Bad("erase-not-bool", doc("consent_change", properties={"erase": "true"}), "invalid_field", "properties.erase"),
    Bad("consent-on-page-view-not-bool", doc(consent={"analytics": 1}), "invalid_field", "consent"),
    Bad("context-string", doc(context="mobile"), "invalid_field", "context must be an object"),
    Bad("context-list", doc(context=[]), "invalid_field", "context must be an object"),
    Bad("context-device-int", doc(context={"device": 1}), "invalid_field", "context.device"),
    Bad("context-device-null", doc(context={"device": None}), "invalid_field", "context.device"),
    Bad("context-campaign-list", doc(context={"campaign": ["x"]}), "invalid_field", "context.campaign"),
    Bad("context-geo-string", doc(context={"geo": "DE"}), "invalid_field", "context.geo"),
    Bad("context-geo-int-value", doc(context={"geo": {"zip": 10115}}), "invalid_field", "context.geo"),
    Bad("properties-list", doc(properties=[{"path": "/"}]), "invalid_field", "properties must be an object"),
    Bad("order-id-number", doc("purchase", order_id=12345), "invalid_field", "order_id"),
    Bad("view-version-1", doc(_VIEW, schema_version=1), "unsupported_version", "needs schema_version 2"),
    Bad("view-version-absent", doc(_VIEW, schema_version=DROP), "unsupported_version", "needs schema_version 2"),
    Bad("view-without-properties", doc(_VIEW, properties=DROP), "missing_field", "properties.items"),
    Bad("view-properties-null", doc(_VIEW, properties=None), "missing_field", "properties.items"),
    Bad("view-without-items", doc(_VIEW, properties={"list_id": "l-1"}), "missing_field", "properties.items"),
    Bad("view-items-empty", doc(_VIEW, properties={"items": []}), "invalid_field", "properties.items"),
    Bad("view-items-string", doc(_VIEW, properties={"items": "item-00001"}), "invalid_field", "properties.items"),
    Bad("view-items-51", doc(_VIEW, properties={"items": ["i"] * 51}), "invalid_field", "1..50"),
    Bad("view-item-int", doc(_VIEW, properties={"items": ["i", 7]}), "invalid_field", "properties.items[]"),
    Bad("view-item-null", doc(_VIEW, properties={"items": [None]}), "missing_field", "properties.items[]"),
    Bad("view-item-control-char", doc(_VIEW, properties={"items": ["i\x07"]}), "invalid_field", "printable"),
    Bad("view-list-id-int", doc(_VIEW, properties={**_VIEW_ITEMS, "list_id": 3}), "invalid_field",
        "properties.list_id"),
    Bad("view-experiment-id-empty", doc(_VIEW, properties={**_VIEW_ITEMS, "experiment_id": ""}), "invalid_field",
        "properties.experiment_id"),
]

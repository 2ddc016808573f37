"""Parse and validate raw event payloads into :class:`~operators.events.Event`.

A hand-written validator rather than a JSON Schema engine: it runs on every record, so it must
cost microseconds, and it must name *one* stable reason code per rejection for the dead-letter
topic. ``config/event.schema.json`` documents the same contract; a test keeps the two in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from operators.events import (
    CONSENT_PURPOSES,
    EVENT_TYPES,
    ITEM_TYPES,
    MAX_VIEW_ITEMS,
    SCHEMA_VERSION,
    SCHEMA_VERSIONS,
    TYPE_SINCE,
    Event,
    user_key_of,
)

MAX_ID_LENGTH = 256
MAX_DETAIL_CHARS = 200
MAX_PRICE = 1e9
MAX_QUANTITY = 10_000
ATTRIBUTE_FIELDS = ("context", "properties", "traits", "consent", "query", "order_id")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)

# Reason codes: stable, documented in docs/events.md, counted on the dashboard.
PAYLOAD_TOO_LARGE = "payload_too_large"
EMPTY_PAYLOAD = "empty_payload"
NOT_UTF8 = "not_utf8"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
UNSUPPORTED_VERSION = "unsupported_version"
MISSING_FIELD = "missing_field"
INVALID_FIELD = "invalid_field"
UNKNOWN_TYPE = "unknown_type"
MISSING_USER = "missing_user"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
#: A Segment-spec record (operators/segment_spec.py) the contract has no type for.
UNMAPPED_SPEC_EVENT = "unmapped_spec_event"
REASONS = (PAYLOAD_TOO_LARGE, EMPTY_PAYLOAD, NOT_UTF8, INVALID_JSON, NOT_AN_OBJECT, UNSUPPORTED_VERSION,
           MISSING_FIELD, INVALID_FIELD, UNKNOWN_TYPE, MISSING_USER, TIMESTAMP_OUT_OF_RANGE, UNMAPPED_SPEC_EVENT)
# Reasons of the control and internal inputs (docs/events.md): a rule or experiment command that does not
# apply, a model snapshot or an identity-loop record this job did not sign or cannot read.
INVALID_RULE = "invalid_rule"
INVALID_SNAPSHOT = "invalid_snapshot"
INVALID_INTERNAL = "invalid_internal"
INVALID_EXPERIMENT = "invalid_experiment"


class Rejection(NamedTuple):
    reason: str
    detail: str


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail)


@dataclass(frozen=True)
class Limits:
    """Validation bounds. Timestamps are judged against the Kafka record time, never the wall clock."""

    max_payload_bytes: int = 65_536
    min_event_time_ms: int = 946_684_800_000  # 2000-01-01T00:00:00Z
    max_future_skew_ms: int = 86_400_000


def _require_id(doc: dict[str, Any], name: str, required: bool = True) -> str:
    """An identifier field: absent or null is allowed unless required; present means 1..256 printable
    characters: no control, format or separator characters but the space, and no lone surrogates (which
    no encoder can write, so as a key they would fail the job downstream instead of one record here)."""
    return _id_value(doc.get(name), name, required)


def _id_value(value: Any, name: str, required: bool = True) -> str:
    if value is None:
        if required:
            raise _Invalid(MISSING_FIELD, name)
        return ""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH or not value.isprintable():
        raise _Invalid(INVALID_FIELD, f"{name} must be printable text of 1..{MAX_ID_LENGTH} characters")
    return value


def _integral(value: Any) -> int | None:
    """JSON Schema's notion of an integer: ints and floats without a fractional part, not booleans."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _timestamp_ms(value: Any) -> int:
    if value is None:
        raise _Invalid(MISSING_FIELD, "ts")
    if (millis := _integral(value)) is not None:
        return millis
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _Invalid(INVALID_FIELD, "ts must be epoch milliseconds or ISO-8601") from None
        if parsed.tzinfo is None:
            raise _Invalid(INVALID_FIELD, "ts needs a time zone (Z or +hh:mm)")
        return (parsed - _EPOCH) // _MILLISECOND  # exact; float timestamp() * 1000 can be 1 ms off
    raise _Invalid(INVALID_FIELD, "ts must be epoch milliseconds or ISO-8601")


def _price(doc: dict[str, Any]) -> float:
    value = doc.get("price")
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or (
            isinstance(value, float) and not math.isfinite(value)):  # math.isfinite overflows on huge ints
        raise _Invalid(INVALID_FIELD, "price must be a number")
    if not 0 <= value <= MAX_PRICE:
        raise _Invalid(INVALID_FIELD, f"price must be within 0..{MAX_PRICE:g}")
    return float(value)


def _quantity(doc: dict[str, Any]) -> int:
    value = doc.get("quantity")
    if value is None:
        return 1
    quantity = _integral(value)
    if quantity is None or not 1 <= quantity <= MAX_QUANTITY:
        raise _Invalid(INVALID_FIELD, f"quantity must be an integer within 1..{MAX_QUANTITY}")
    return quantity


def _check_context(context: dict[str, Any]) -> None:
    for name in ("device", "campaign"):
        if name in context and not isinstance(context[name], str):
            raise _Invalid(INVALID_FIELD, f"context.{name} must be a string")
    geo = context.get("geo")
    if geo is not None and (not isinstance(geo, dict) or not all(isinstance(v, str) for v in geo.values())):
        raise _Invalid(INVALID_FIELD, "context.geo must be an object of strings")


#: The field each of these event types must carry (built once, not per event).
_REQUIRED_BY_TYPE = {"search": "query", "profile_update": "traits", "consent_change": "consent"}
#: Values of a structured field that state nothing (``{}`` compares equal to any empty object).
_EMPTY: tuple[Any, ...] = (None, {}, "")


def _check_structured(doc: dict[str, Any], event_type: str) -> None:
    """Objects and type-specific fields; anything present is checked whatever the event type."""
    for name in ("context", "properties", "traits", "consent"):
        if doc.get(name) is not None and not isinstance(doc[name], dict):
            raise _Invalid(INVALID_FIELD, f"{name} must be an object")
    if doc.get("context"):
        _check_context(doc["context"])
    if "query" in doc and not isinstance(doc["query"], str):
        raise _Invalid(INVALID_FIELD, "query must be a string")
    _require_id(doc, "order_id", required=False)
    consent = doc.get("consent")
    if consent and (not set(consent) <= set(CONSENT_PURPOSES)
                    or not all(isinstance(v, bool) for v in consent.values())):
        raise _Invalid(INVALID_FIELD, f"consent maps {'/'.join(CONSENT_PURPOSES)} to booleans")
    erase = (doc.get("properties") or {}).get("erase")
    if "erase" in (doc.get("properties") or {}) and not isinstance(erase, bool):
        raise _Invalid(INVALID_FIELD, "properties.erase must be true or false")  # "true" must not be ignored
    if event_type == "recommendation_view":
        _check_view(doc.get("properties") or {})
    required = _REQUIRED_BY_TYPE.get(event_type)
    if required and not doc.get(required) and doc.get(required) != "":
        raise _Invalid(MISSING_FIELD, required)


def _check_view(properties: dict[str, Any]) -> None:
    """A ``recommendation_view`` names the items shown, in order; the list and experiment ids are optional."""
    items = properties.get("items")
    if items is None:
        raise _Invalid(MISSING_FIELD, "properties.items")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_VIEW_ITEMS:
        raise _Invalid(INVALID_FIELD, f"properties.items must be a list of 1..{MAX_VIEW_ITEMS} item ids")
    for item in items:
        _id_value(item, "properties.items[]")
    for name in ("list_id", "experiment_id"):
        _id_value(properties.get(name), f"properties.{name}", required=False)


def _validate(doc: Any, record_ts_ms: int, limits: Limits) -> Event:
    if not isinstance(doc, dict):
        raise _Invalid(NOT_AN_OBJECT, f"top level is {type(doc).__name__}")
    version = doc.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or version not in SCHEMA_VERSIONS:
        raise _Invalid(UNSUPPORTED_VERSION, f"schema_version is not one of {list(SCHEMA_VERSIONS)}, the versions "
                                            f"this job reads")
    event_id = _require_id(doc, "event_id")
    event_type = doc.get("type")
    if event_type is None:
        raise _Invalid(MISSING_FIELD, "type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:  # lists/objects are unhashable
        raise _Invalid(UNKNOWN_TYPE, "type is not an event type of the contract (docs/events.md)")
    if TYPE_SINCE.get(event_type, SCHEMA_VERSION) > version:
        raise _Invalid(UNSUPPORTED_VERSION, f"type {event_type} needs schema_version {TYPE_SINCE[event_type]}")
    user_id = _require_id(doc, "user_id", required=False)
    anonymous_id = _require_id(doc, "anonymous_id", required=False)
    if not user_id and not anonymous_id:
        raise _Invalid(MISSING_USER, "user_id or anonymous_id is required")
    if event_type == "identify" and not (user_id and anonymous_id):
        raise _Invalid(MISSING_USER, "identify needs both user_id and anonymous_id")
    ts = _timestamp_ms(doc.get("ts"))
    if ts < limits.min_event_time_ms or ts > record_ts_ms + limits.max_future_skew_ms:
        raise _Invalid(TIMESTAMP_OUT_OF_RANGE, "ts is before validation.min_event_time or further ahead of the "
                                               "record's timestamp than validation.max_future_skew_ms")
    item_id = _require_id(doc, "item_id", required=event_type in ITEM_TYPES)
    category = _require_id(doc, "category", required=False)
    session_id = _require_id(doc, "session_id", required=False)
    _check_structured(doc, event_type)
    attributes = {name: doc[name] for name in ATTRIBUTE_FIELDS if doc.get(name) not in _EMPTY}
    return Event(
        event_id=event_id, type=event_type, user_key=user_key_of(user_id, anonymous_id), user_id=user_id,
        anonymous_id=anonymous_id, ts=ts, item_id=item_id, category=category, price=_price(doc),
        quantity=_quantity(doc), session_id=session_id,
        attributes=_attributes_json(attributes) if attributes else "",
    )


def _attributes_json(attributes: dict[str, Any]) -> str:
    """The structured fields as compact JSON text, which every later encoder can write again.

    The parser already refused what is not JSON; this refuses what JSON allows but the job's encoders
    do not (docs/events.md): integers beyond 64 bits and nesting deeper than 255 levels.
    """
    try:
        return orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS).decode("utf-8")
    except TypeError:
        raise _Invalid(INVALID_FIELD, "context, properties and traits hold integers within 64 bits and at most "
                                      "255 levels of nesting") from None


def decode_payload(payload: bytes | None, limits: Limits = Limits()) -> Any:
    """The payload's JSON document, or the :class:`Rejection` of bytes that are not one (never raises).

    Shared by every input format, so size, encoding and parser limits are the same for all of them.
    """
    if not payload:
        return Rejection(EMPTY_PAYLOAD, "record has no value")
    if len(payload) > limits.max_payload_bytes:
        return Rejection(PAYLOAD_TOO_LARGE, f"{len(payload)} bytes > {limits.max_payload_bytes}")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(NOT_UTF8, f"invalid byte at position {exc.start}")
    try:
        return orjson.loads(payload)  # strict: no NaN/Infinity, no lone surrogates, 64-bit integers, depth <= 1024
    except orjson.JSONDecodeError as exc:
        return Rejection(INVALID_JSON, _position_only(str(exc)))


def validate_document(doc: Any, record_ts_ms: int, limits: Limits = Limits()) -> Event | Rejection:
    """A decoded document judged by the contract: the event, or why it was rejected (never raises)."""
    try:
        return _validate(doc, record_ts_ms, limits)
    except _Invalid as invalid:
        return invalid.rejection


def parse_event(payload: bytes | None, record_ts_ms: int, limits: Limits = Limits()) -> Event | Rejection:
    """Return the validated event, or the reason it was rejected. Never raises on bad input."""
    doc = decode_payload(payload, limits)
    return doc if isinstance(doc, Rejection) else validate_document(doc, record_ts_ms, limits)


def _position_only(message: str) -> str:
    """A parser message cut before any quoted input: a dead letter's detail never echoes a value."""
    return message.split(":", 1)[0][:MAX_DETAIL_CHARS]

"""parse_event: one stable reason code per rejection, exact events for good input, and never an exception."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import EVENT_TYPES, Event
from operators.validation import REASONS, Limits, Rejection, parse_event
from tests.contract_cases import BAD, GOOD, MINIMAL, RECORD_TS, TS, Bad, Good, doc

FAST = settings(max_examples=200, deadline=None, database=None)


def encode(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def parse(value: Any, record_ts: int = RECORD_TS) -> Event | Rejection:
    return parse_event(encode(value), record_ts)


def accepted(result: Event | Rejection) -> Event:
    assert isinstance(result, Event), result
    return result


def rejected(result: Event | Rejection) -> Rejection:
    assert isinstance(result, Rejection), result
    return result


GOOD_TEXT = encode(doc())
BYTE_CASES: list[tuple[str, bytes | None, str, str]] = [
    ("none", None, "empty_payload", "no value"),
    ("empty", b"", "empty_payload", "no value"),
    ("invalid-json", b"{event_id: 1}", "invalid_json", "expected a string key"),
    ("truncated-json", GOOD_TEXT[: len(GOOD_TEXT) // 2], "invalid_json", ""),
    ("trailing-garbage", GOOD_TEXT + b"}", "invalid_json", "unexpected content after document"),
    ("whitespace-only", b"   ", "invalid_json", ""),
    ("not-utf8-latin1", '{"note": "café"}'.encode("latin-1"), "not_utf8", "position 13"),
    ("not-utf8-binary", b"\xff\xfe\x00\x01", "not_utf8", "position 0"),
    ("nan-token", GOOD_TEXT[:-1] + b', "price": NaN}', "invalid_json", "expected a JSON value"),
    ("infinity-token-in-properties", GOOD_TEXT[:-1] + b', "properties": {"x": -Infinity}}', "invalid_json",
     "no digit after sign"),
    ("lone-surrogate", GOOD_TEXT[:-1] + b', "context": {"device": "a\\ud800"}}', "invalid_json", "surrogate"),
    ("deep-nesting", b"[" * 10_000 + b"]" * 10_000, "invalid_json", ""),
]


@pytest.mark.parametrize(("payload", "reason", "detail"), [c[1:] for c in BYTE_CASES], ids=[c[0] for c in BYTE_CASES])
def test_bad_payload_bytes(payload: bytes | None, reason: str, detail: str) -> None:
    rejection = rejected(parse_event(payload, RECORD_TS))
    assert rejection.reason == reason
    assert detail in rejection.detail


def test_oversized_payload_is_rejected_before_parsing() -> None:
    limits = Limits(max_payload_bytes=len(GOOD_TEXT))
    accepted(parse_event(GOOD_TEXT, RECORD_TS, limits))
    rejection = rejected(parse_event(GOOD_TEXT + b" ", RECORD_TS, limits))
    assert rejection == Rejection("payload_too_large", f"{len(GOOD_TEXT) + 1} bytes > {len(GOOD_TEXT)}")
    assert rejected(parse_event(b"\xff" * 10, RECORD_TS, Limits(max_payload_bytes=9))).reason == "payload_too_large"


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_document(case: Bad) -> None:
    rejection = rejected(parse(case.doc))
    assert rejection.reason == case.reason
    assert case.detail in rejection.detail


IDS = ["event_id", "user_id", "anonymous_id", "item_id", "category", "session_id", "order_id"]


@pytest.mark.parametrize("field", IDS)
def test_ids_with_lone_surrogates_are_rejected(field: str) -> None:
    """Valid JSON escapes, but no UTF-8 encoding: as a key they would fail the job, not one record."""
    fields = {"type": "product_view", "item_id": "i1"}
    rejection = rejected(parse(doc(**{**fields, field: "u\ud800x"})))
    assert rejection.reason == "invalid_json" and "surrogate" in rejection.detail
    accepted(parse(doc(**{**fields, field: "caf\u00e9 \U0001f600"})))


@pytest.mark.parametrize("field", IDS)
@pytest.mark.parametrize("odd", ["a\x00b", "line\nbreak", "tab\t", "rtl\u202eoverride", "zero\u200bwidth", "\x7f",
                                 "nbsp\u00a0", "para\u2029"])
def test_ids_are_printable_text(field: str, odd: str) -> None:
    """Control, format and separator characters in an id would mislead every screen and log that shows it."""
    fields = {"type": "product_view", "item_id": "i1"}
    assert rejected(parse(doc(**{**fields, field: odd}))) == Rejection(
        "invalid_field", f"{field} must be printable text of 1..256 characters")


def test_structured_fields_hold_values_every_encoder_can_write() -> None:
    """A trait of 10**30 once failed the job in the rule state's encoder (beyond 64 bits): numbers beyond
    64-bit integers are read as doubles, and nesting beyond what the encoders write is refused."""
    event = accepted(parse(doc("profile_update", traits={"plan": 10**30, "big": 2**64})))
    assert json.loads(event.attributes)["traits"] == {"big": float(2**64), "plan": 1e30}
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    assert rejected(parse(doc(properties={"x": deep}))).reason == "invalid_field"


@FAST
@given(st.sampled_from(["type", "schema_version", "ts", "price", "quantity", *IDS]),
       st.sampled_from(["SECRET-VALUE-123@example.com", "\x00SECRET-VALUE-123"]))
def test_a_rejection_never_echoes_a_field_value(field: str, marker: str) -> None:
    """Dead letters are read by people and kept for weeks: a detail names fields and limits, never values."""
    result = parse(doc("product_view", **{"item_id": "i1", field: marker}))
    assert isinstance(result, Event) or "SECRET-VALUE" not in result.detail


def test_timestamp_limits_are_configurable() -> None:
    limits = Limits(min_event_time_ms=TS, max_future_skew_ms=0)
    accepted(parse_event(encode(doc(ts=TS)), TS, limits))
    assert rejected(parse_event(encode(doc(ts=TS - 1)), TS, limits)).reason == "timestamp_out_of_range"
    assert rejected(parse_event(encode(doc(ts=TS + 1)), TS, limits)).reason == "timestamp_out_of_range"


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_good_document(case: Good) -> None:
    event = accepted(parse(case.doc))
    assert event.event_id == case.doc["event_id"] and event.type == case.doc["type"]
    assert event.ts == case.ts


def test_every_event_type_has_a_minimal_good_case() -> None:
    assert set(MINIMAL) == EVENT_TYPES
    assert {c.doc["type"] for c in GOOD if c.id.startswith("minimal-")} == EVENT_TYPES


def test_minimal_purchase_fields() -> None:
    event = accepted(parse(doc("purchase")))
    assert event == Event(event_id="e-1", type="purchase", user_key="u-1", user_id="u-1", anonymous_id="", ts=TS,
                          item_id="item-00001", category="books", price=12.5, quantity=1, session_id="",
                          attributes='{"order_id":"o-1"}')


def test_defaults_of_optional_fields() -> None:
    event = accepted(parse(doc()))
    assert (event.item_id, event.category, event.price, event.quantity, event.session_id, event.attributes) == (
        "", "", 0.0, 1, "", "")
    assert isinstance(accepted(parse(doc("product_view", price=3))).price, float)


@pytest.mark.parametrize(("user_id", "anonymous_id", "user_key"), [
    ("u-1", None, "u-1"),
    (None, "a-9", "anon:a-9"),
    ("u-1", "a-9", "u-1"),
], ids=["known", "anonymous-only", "both-prefers-user-id"])
def test_user_key(user_id: str | None, anonymous_id: str | None, user_key: str) -> None:
    event = accepted(parse(doc(user_id=user_id, anonymous_id=anonymous_id)))
    assert (event.user_key, event.user_id, event.anonymous_id) == (user_key, user_id or "", anonymous_id or "")


def test_attributes_are_sorted_compact_json_of_structured_fields() -> None:
    fields = {
        "query": "red shoes", "properties": {"z": 1, "a": [1, 2]}, "context": {"geo": {"country": "DE"}, "device": "m"},
        "traits": {"plan": "plus"}, "consent": {"marketing": True}, "order_id": "o-7",
        "session_id": "s-1", "referrer": "not kept",
    }
    event = accepted(parse(doc("search", **fields)))
    kept = {k: v for k, v in fields.items() if k not in ("session_id", "referrer")}
    assert event.attributes == json.dumps(kept, sort_keys=True, separators=(",", ":"))
    assert event.attributes.startswith('{"consent":{"marketing":true},"context":{"device":"m","geo"')
    assert event.session_id == "s-1"


def test_attributes_skip_null_and_empty_fields() -> None:
    event = accepted(parse(doc(context={}, properties=None, traits={}, query="", order_id=None)))
    assert event.attributes == ""


# --- properties: parse_event never raises, whatever it is fed -------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
FIELDS = ("schema_version", "event_id", "type", "user_id", "anonymous_id", "ts", "item_id", "category", "price",
          "quantity", "session_id", "order_id", "query", "context", "properties", "traits", "consent")


def check_result(result: object) -> None:
    assert isinstance(result, Event | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REASONS and isinstance(result.detail, str)
    else:
        json.loads(result.attributes or "{}")  # strict enough for any downstream JSON reader


def test_never_raises_near_the_recursion_limit() -> None:
    """Nesting json.loads just manages may still be too deep to re-encode as attributes."""
    head, tail = json.dumps(doc()).encode()[:-1] + b', "properties": {"x": ', b"}}"
    limit = sys.getrecursionlimit()
    for depth in range(limit // 2, limit + 10):
        check_result(parse_event(head + b"[" * depth + b"]" * depth + tail, RECORD_TS))


@FAST
@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    check_result(parse_event(payload, RECORD_TS))


@FAST
@given(JSON_VALUES)
def test_never_raises_on_arbitrary_json(value: Any) -> None:
    check_result(parse(value))


@FAST
@given(st.sampled_from(sorted(MINIMAL)), st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=3),
       st.sets(st.sampled_from(FIELDS), max_size=2))
def test_never_raises_on_near_valid_documents(event_type: str, changes: dict[str, Any], dropped: set[str]) -> None:
    document = {k: v for k, v in {**doc(event_type), **changes}.items() if k not in dropped}
    check_result(parse(document))


@FAST
@given(st.text(alphabet='{}[]":,0123456789.eE+-tfnulNaIiy \\', max_size=60))
def test_never_raises_on_json_like_text(text: str) -> None:
    check_result(parse_event(text.encode("utf-8"), RECORD_TS))

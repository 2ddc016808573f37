"""Events in the Segment spec: messages shaped after Segment's published spec examples map to the exact
contract events, anything the contract has no type for is rejected as ``unmapped_spec_event``, hostile
input never raises, and the demo's converter maps every generated event back to itself."""

from __future__ import annotations

import copy
import json
import re
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyflink.common import Row

from connectors.pii_secret import SecretSource
from jobs.adapters import DEAD_LETTERS, IngestPrivacy, ParseEvents, SegmentInput
from operators.events import Event
from operators.segment_spec import MAX_NAME_CHARS, MAX_ORDER_PRODUCTS, TRACK_EVENTS, SegmentSpec, parse_segment
from operators.validation import REASONS, UNMAPPED_SPEC_EVENT, Limits, Rejection, parse_event
from personalize import cli
from personalize import settings as settings_module
from personalize.generator import EventGenerator, GeneratedRecord
from personalize.paths import ROOT
from personalize.publish import read_jsonl
from personalize.segment_format import TRACKING_ROLE, segment_records, segment_spec
from tests.contract_cases import RECORD_TS
from tests.test_metrics import FakeGroup

FAST = settings(max_examples=200, deadline=None, database=None)
SPEC = SegmentSpec()
TS = RECORD_TS - 60_000
TIMESTAMP = "2025-12-31T23:59:00.000Z"
"""``TS`` as Segment writes it."""

# Common fields as analytics.js sends them (Segment's "Spec: Common Fields"), values our own.
CONTEXT = {
    "active": True, "ip": "203.0.113.7", "locale": "de-DE", "timezone": "Europe/Berlin",
    "library": {"name": "analytics.js", "version": "2.11.1"},
    "campaign": {"name": "winter-sale", "source": "newsletter", "medium": "email", "term": "boots", "content": "a"},
    "device": {"id": "B5372DB0", "manufacturer": "Apple", "model": "iPhone7,2", "type": "ios"},
    "location": {"city": "Berlin", "country": "Germany", "latitude": 52.52, "longitude": 13.4, "speed": 0},
    "page": {"path": "/boots", "referrer": "", "title": "Boots", "url": "https://shop.example/boots"},
    "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
}
MAPPED_CONTEXT = {"device": "ios", "campaign": "winter-sale", "geo": {"city": "Berlin", "country": "Germany"}}
COMMON = {"anonymousId": "507f191e810c19729de860ea", "userId": "97980cfea0067", "messageId": "022bb90c-bbac",
          "timestamp": TIMESTAMP, "sentAt": "2025-12-31T23:59:01.000Z", "receivedAt": "2025-12-31T23:59:02.000Z",
          "integrations": {"All": True}, "version": 2, "context": CONTEXT}
PRODUCT = {"product_id": "507f1f77bcf86cd799439011", "sku": "G-32", "category": "Games", "name": "Monopoly",
           "brand": "Hasbro", "variant": "200 pieces", "price": 18.99, "quantity": 2, "coupon": "MAYDEALS",
           "position": 3, "url": "https://shop.example/p/monopoly", "image_url": "https://shop.example/p/m.jpg"}
PRODUCT_REST = {key: value for key, value in PRODUCT.items()
                if key not in ("product_id", "category", "price", "quantity")}


def message(call: str, **fields: Any) -> dict[str, Any]:
    return {**copy.deepcopy(COMMON), "type": call, **fields}


def track(name: str, properties: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return message("track", event=name, properties=properties, **fields)


def parse(value: Any, spec: SegmentSpec = SPEC) -> tuple[Event, ...] | Rejection:
    return parse_segment(json.dumps(value).encode(), RECORD_TS, Limits(), spec)


def events(value: Any, spec: SegmentSpec = SPEC) -> tuple[Event, ...]:
    result = parse(value, spec)
    assert not isinstance(result, Rejection), result
    return result


def one(value: Any, spec: SegmentSpec = SPEC) -> Event:
    (event,) = events(value, spec)
    return event


def rejected(value: Any, spec: SegmentSpec = SPEC) -> Rejection:
    result = parse(value, spec)
    assert isinstance(result, Rejection), result
    return result


def attributes(event: Event) -> dict[str, Any]:
    return json.loads(event.attributes) if event.attributes else {}


# --- the published spec's calls ---------------------------------------------------------------------------------

def test_page_is_a_page_view_with_the_common_fields_mapped() -> None:
    event = one(message("page", name="Boots", category="Shoes", properties={"path": "/boots", "title": "Boots"}))
    assert event == Event(event_id="022bb90c-bbac", type="page_view", user_key="97980cfea0067", user_id="97980cfea0067",
                          anonymous_id="507f191e810c19729de860ea", ts=TS, item_id="", category="", price=0.0,
                          quantity=1, session_id="", attributes=event.attributes)
    properties = {"name": "Boots", "category": "Shoes", "path": "/boots", "title": "Boots"}
    assert attributes(event) == {"context": MAPPED_CONTEXT, "properties": properties}


def test_screen_is_a_page_view_and_nothing_else_of_the_context_is_kept() -> None:
    event = one(message("screen", name="Cart", properties={"variation": "blue"}))
    assert event.type == "page_view"
    kept = json.dumps(attributes(event))
    assert attributes(event)["properties"] == {"name": "Cart", "variation": "blue"}
    for dropped in ("203.0.113.7", "Mozilla", "analytics.js", "Europe/Berlin", "52.52"):
        assert dropped not in kept  # data minimisation: the job reads device, geo and campaign only


def test_identify_with_both_ids_links_them_and_carries_the_traits() -> None:
    traits = {"name": "Peter Gibbons", "email": "peter@example.com", "plan": "premium", "logins": 5}
    event = one(message("identify", traits=traits))
    assert (event.type, event.user_key, event.anonymous_id) == ("identify", "97980cfea0067", "507f191e810c19729de860ea")
    assert attributes(event)["traits"] == traits


@pytest.mark.parametrize("missing", ["anonymousId", "userId"])
def test_identify_with_one_id_is_a_profile_update(missing: str) -> None:
    doc = message("identify", traits={"plan": "plus"})
    doc[missing] = None
    event = one(doc)
    assert event.type == "profile_update" and attributes(event)["traits"] == {"plan": "plus"}


def test_identify_with_one_id_and_no_traits_says_what_is_missing() -> None:
    doc = message("identify")
    del doc["anonymousId"]
    assert rejected(doc) == Rejection("missing_field", "traits")


@pytest.mark.parametrize(("name", "event_type"), [("Product Viewed", "product_view"), ("Product Added", "add_to_cart"),
                                                  ("Product Removed", "remove_from_cart")])
def test_product_events_name_the_item(name: str, event_type: str) -> None:
    event = one(track(name, {"cart_id": "skdjsidjsdkdj29j", **PRODUCT, "currency": "usd", "value": 37.98}))
    assert (event.type, event.item_id, event.category, event.price, event.quantity) == (
        event_type, "507f1f77bcf86cd799439011", "Games", 18.99, 2)
    assert attributes(event)["properties"] == {"cart_id": "skdjsidjsdkdj29j", **PRODUCT_REST,
                                               "currency": "usd", "value": 37.98}


def test_a_product_without_product_id_is_named_by_its_sku() -> None:
    product = {key: value for key, value in PRODUCT.items() if key != "product_id"}
    event = one(track("Product Viewed", product))
    assert event.item_id == "G-32" and "sku" not in attributes(event)["properties"]


def test_numeric_ids_are_read_as_text() -> None:
    event = one(track("Product Viewed", {"product_id": 9714107479}, userId=12345, anonymousId=None))
    assert (event.user_key, event.item_id) == ("12345", "9714107479")


def test_products_searched_is_a_search() -> None:
    event = one(track("Products Searched", {"query": "blue roses", "results": 12}))
    assert event.type == "search"
    assert attributes(event) == {"context": MAPPED_CONTEXT, "query": "blue roses", "properties": {"results": 12}}


def test_an_object_query_is_not_the_contract_s_text() -> None:
    assert rejected(track("Products Searched", {"query": {"color": "blue"}})) == Rejection(
        "invalid_field", "query must be a string")


def test_checkout_started_keeps_the_cart_in_its_properties() -> None:
    properties = {"order_id": "50314b8e9bcf000000000000", "value": 30, "revenue": 25.0, "currency": "USD",
                  "products": [PRODUCT, {**PRODUCT, "product_id": "505bd76785ebb509fc183733"}]}
    event = one(track("Checkout Started", properties))
    assert (event.type, event.item_id) == ("checkout_start", "")
    assert attributes(event)["properties"] == properties


def test_order_completed_is_one_purchase_per_product() -> None:
    second = {"product_id": "505bd76785ebb509fc183733", "sku": "46493-32", "name": "Uno", "price": 3, "quantity": 2,
              "category": "Games"}
    order = {"checkout_id": "fksdjfsdjfisjf9sdfjsd9f", "order_id": "50314b8e9bcf000000000000", "total": 27.5,
             "revenue": 25.0, "shipping": 3, "tax": 2, "discount": 2.5, "coupon": "hasbros", "currency": "USD"}
    purchases = events(track("Order Completed", {**order, "products": [PRODUCT, second]}))
    assert [(e.event_id, e.type, e.item_id, e.price, e.quantity) for e in purchases] == [
        ("022bb90c-bbac:0", "purchase", "507f1f77bcf86cd799439011", 18.99, 2),
        ("022bb90c-bbac:1", "purchase", "505bd76785ebb509fc183733", 3.0, 2)]
    first, other = (attributes(e) for e in purchases)
    assert first["order_id"] == other["order_id"] == "50314b8e9bcf000000000000"
    order_rest = {key: value for key, value in order.items() if key != "order_id"}
    assert first["properties"] == {**order_rest, **PRODUCT_REST}
    assert other["properties"] == {**order_rest, "sku": "46493-32", "name": "Uno"}


def test_order_completed_without_products_is_one_purchase_of_its_own_product() -> None:
    event = one(track("Order Completed", {"order_id": "o-1", "product_id": "p-1", "price": 5}))
    assert (event.event_id, event.item_id, event.price) == ("022bb90c-bbac", "p-1", 5.0)


@pytest.mark.parametrize("products", [[], "p-1", [PRODUCT, "p-2"], [PRODUCT] * (MAX_ORDER_PRODUCTS + 1)],
                         ids=["empty", "text", "not-objects", "too-many"])
def test_order_products_must_be_a_bounded_list_of_objects(products: Any) -> None:
    assert rejected(track("Order Completed", {"order_id": "o-1", "products": products})).reason == "invalid_field"


def test_an_order_is_all_or_nothing() -> None:
    """One record is one dead letter: a bad product rejects the whole order, so none of it is counted twice."""
    bad = {**PRODUCT, "price": "18.99 EUR"}
    assert rejected(track("Order Completed", {"order_id": "o-1", "products": [PRODUCT, bad]})) == Rejection(
        "invalid_field", "price must be a number")


def test_a_derived_event_id_obeys_the_id_bounds() -> None:
    order = track("Order Completed", {"products": [PRODUCT]}, messageId="m" * 256)
    assert rejected(order).detail.startswith("event_id must be printable text")
    assert one({**order, "messageId": "m" * 254}).event_id == "m" * 254 + ":0"


@pytest.mark.parametrize(("name", "event_type"), [("Email Opened", "email_open"),
                                                  ("Email Link Clicked", "email_click")])
def test_email_events(name: str, event_type: str) -> None:
    properties = {"campaign_id": "123", "campaign_name": "Summer", "email_id": "18vzF7u6", "email_subject": "Hi"}
    event = one(track(name, properties))
    assert event.type == event_type and attributes(event)["properties"] == properties


# --- consent --------------------------------------------------------------------------------------------------

def consent(preferences: Any) -> dict[str, Any]:
    doc = track("Segment Consent Preference Updated", {})
    doc["context"]["consent"] = {"categoryPreferences": preferences}
    return doc


def test_the_consent_event_maps_categories_to_purposes() -> None:
    event = one(consent({"Advertising": True, "Analytics": False, "Functional": True, "DataSharing": False}))
    assert event.type == "consent_change"
    assert attributes(event)["consent"] == {"analytics": False, "marketing": True}


def test_category_ids_are_configurable_and_a_refusal_in_any_refuses() -> None:
    spec = SegmentSpec({"personalization": ("C0003", "C0004"), "marketing": ("c0005",)})
    event = one(consent({"c0003": True, "C0004": False, "C0005": True}), spec)
    assert attributes(event)["consent"] == {"personalization": False, "marketing": True}


def test_consent_erasure_requests_pass_through() -> None:
    doc = consent({"Personalization": False})
    doc["properties"] = {"erase": True}
    assert attributes(one(doc))["properties"] == {"erase": True}


@pytest.mark.parametrize(("preferences", "reason"), [
    ({"Functional": True}, UNMAPPED_SPEC_EVENT), ({}, "missing_field"), (None, "missing_field"),
    ({"Analytics": "yes"}, "invalid_field"),
], ids=["no-purpose", "empty", "absent", "not-boolean"])
def test_consent_without_a_usable_choice_is_rejected(preferences: Any, reason: str) -> None:
    assert rejected(consent(preferences)).reason == reason


def test_standing_consent_on_other_events_changes_nothing() -> None:
    """Segment repeats the user's choices on every call; only the consent event is a change."""
    doc = track("Product Viewed", PRODUCT)
    doc["context"]["consent"] = {"categoryPreferences": {"Personalization": False}}
    event = one(doc)
    assert event.type == "product_view" and "consent" not in attributes(event)


def test_consent_categories_must_name_purposes() -> None:
    with pytest.raises(ValueError, match="consent categories"):
        SegmentSpec({"newsletter": ("Email",)})
    with pytest.raises(ValueError, match="consent categories"):
        SegmentSpec({"marketing": ("",)})


# --- what does not map ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("doc", "shown"), [
    (message("group", groupId="0e8c78ea9d97a7b8185e8632", traits={"name": "Initech"}), "Segment call 'group'"),
    (message("alias", previousId="39239-239239"), "Segment call 'alias'"),
    (track("Product Clicked", PRODUCT), "track event 'Product Clicked'"),
    (track("Cart Viewed", {"cart_id": "d92jd29jd92jd29j92d92jd"}), "track event 'Cart Viewed'"),
    (track("product viewed", PRODUCT), "track event 'product viewed'"),  # names are Segment's, exactly
    (track("x" * 500, {}), f"track event '{'x' * MAX_NAME_CHARS}'..."),
    (track("Bell\x07\u200b", {}), "track event 'Bell??'"),
    (track(["Product Viewed"], PRODUCT), "track event of JSON type list"),
], ids=["group", "alias", "product-clicked", "cart-viewed", "case", "long-name", "unprintable", "not-text"])
def test_unmapped_messages_are_rejected_naming_them_boundedly(doc: dict[str, Any], shown: str) -> None:
    rejection = rejected(doc)
    assert rejection.reason == UNMAPPED_SPEC_EVENT
    assert rejection.detail.startswith(shown + " has no contract type")
    assert len(rejection.detail) <= 200


@pytest.mark.parametrize(("change", "rejection"), [
    ({"type": None}, Rejection("missing_field", "type")),
    ({"type": 7}, Rejection("invalid_field", "type must be a string")),
    ({"event": None}, Rejection("missing_field", "event")),
    ({"messageId": None}, Rejection("missing_field", "event_id")),
    ({"userId": None, "anonymousId": None}, Rejection("missing_user", "user_id or anonymous_id is required")),
    ({"userId": ""}, Rejection("invalid_field", "user_id must be printable text of 1..256 characters")),
    ({"properties": [1]}, Rejection("invalid_field", "properties must be an object")),
    ({"context": "web"}, Rejection("invalid_field", "context must be an object")),
], ids=["no-type", "type-not-text", "no-event", "no-message-id", "no-user", "empty-user", "properties-list",
        "context-text"])
def test_broken_messages_get_the_contract_s_reasons(change: dict[str, Any], rejection: Rejection) -> None:
    doc = {**track("Product Viewed", PRODUCT), **change}
    assert rejected({key: value for key, value in doc.items() if value is not None}) == rejection


@pytest.mark.parametrize(("timestamps", "reason"), [
    ({"timestamp": "2025-12-31T23:59:00", "originalTimestamp": TIMESTAMP}, "invalid_field"),
    ({"timestamp": None}, "missing_field"),
    ({"timestamp": "1999-12-31T23:59:59Z"}, "timestamp_out_of_range"),
    ({"timestamp": "2026-01-02T00:00:01+00:00"}, "timestamp_out_of_range"),
], ids=["no-zone", "none", "before-2000", "too-far-ahead"])
def test_timestamps_obey_the_contract_s_bounds(timestamps: dict[str, Any], reason: str) -> None:
    doc = {key: value for key, value in {**message("page"), **timestamps}.items() if value is not None}
    assert rejected(doc).reason == reason


def test_without_timestamp_the_original_timestamp_counts() -> None:
    doc = message("page", originalTimestamp=TIMESTAMP)
    del doc["timestamp"]
    assert one(doc).ts == TS


def test_context_values_the_contract_refuses_are_refused() -> None:
    doc = message("page")
    doc["context"]["device"] = {"type": 1}
    assert rejected(doc) == Rejection("invalid_field", "context.device must be a string")


def test_too_large_and_broken_payloads_are_judged_as_on_every_input() -> None:
    assert parse_segment(None, RECORD_TS).reason == "empty_payload"  # type: ignore[union-attr]
    assert parse_segment(b"x" * 70_000, RECORD_TS).reason == "payload_too_large"  # type: ignore[union-attr]
    assert parse_segment(b'{"type": "page"', RECORD_TS).reason == "invalid_json"  # type: ignore[union-attr]
    assert parse_segment(b'"page"', RECORD_TS) == Rejection("not_an_object", "top level is str")


def test_a_dead_letter_detail_never_echoes_values() -> None:
    secret = "peter@example.com"
    for doc in (track("Product Viewed", {"product_id": secret * 20}), message("identify", traits=[secret]),
                track("Order Completed", {"products": [{"product_id": secret, "price": secret}]})):
        assert secret not in rejected(doc).detail


# --- hostile input --------------------------------------------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
                | st.sampled_from(["track", "page", "identify", "screen", *TRACK_EVENTS, TIMESTAMP]))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["type", "event", "properties", "products", "product_id", "context", "consent",
                         "categoryPreferences", "Analytics", "device", "location", "traits", "userId"])
        | st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
SEGMENT_FIELDS = ("type", "event", "userId", "anonymousId", "messageId", "timestamp", "originalTimestamp",
                  "properties", "traits", "context", "name")
SAMPLES = [message("page"), message("identify", traits={"plan": "x"}), consent({"Analytics": True}),
           track("Order Completed", {"products": [PRODUCT, PRODUCT]}), track("Products Searched", {"query": "q"}),
           track("Product Added", PRODUCT)]


def check(result: object) -> None:
    if isinstance(result, Rejection):
        assert result.reason in REASONS and isinstance(result.detail, str) and len(result.detail) <= 200
        return
    assert isinstance(result, tuple) and result and all(isinstance(event, Event) for event in result)
    for event in result:
        json.loads(event.attributes or "{}")


@FAST
@given(st.binary(max_size=300))
def test_never_raises_on_arbitrary_bytes(payload: bytes) -> None:
    check(parse_segment(payload, RECORD_TS))


@FAST
@given(JSON_VALUES)
def test_never_raises_on_arbitrary_json(value: Any) -> None:
    check(parse(value))


@FAST
@given(st.sampled_from(SAMPLES), st.dictionaries(st.sampled_from(SEGMENT_FIELDS), JSON_VALUES, max_size=3),
       st.sampled_from(["properties", "context"]), st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=3))
def test_never_raises_on_near_valid_messages(sample: dict[str, Any], changes: dict[str, Any], section: str,
                                             inner: dict[str, Any]) -> None:
    doc = copy.deepcopy(sample)
    if isinstance(doc.get(section), dict):
        doc[section].update(inner)
    doc.update(changes)
    check(parse(doc))


def test_never_raises_near_the_recursion_limit() -> None:
    head, tail = json.dumps(message("page"))[:-1].encode() + b', "properties": {"x": ', b"}}"
    limit = sys.getrecursionlimit()
    for depth in range(limit // 2, limit + 10, 7):
        check(parse_segment(head + b"[" * depth + b"]" * depth + tail, RECORD_TS))


# --- the job's parse operator -----------------------------------------------------------------------------------

class Runtime:
    """The runtime context the parse operator's ``open`` uses: its metric group."""

    def __init__(self, metrics: FakeGroup) -> None:
        self.metrics = metrics

    def get_metrics_group(self) -> FakeGroup:
        return self.metrics


def test_the_parse_operator_maps_the_tracking_topic_and_dead_letters_the_rest() -> None:
    privacy = IngestPrivacy(hash_identifiers=False, redact_deadletters=True, secret=SecretSource("", "", ""))
    parse_op = ParseEvents(Limits(), "dlq", privacy=privacy, segment=SegmentInput("events.tracking", SPEC))
    metrics = FakeGroup()
    parse_op.open(Runtime(metrics))  # type: ignore[arg-type]

    def process(payload: bytes, topic: str, offset: int) -> list[Any]:
        return list(parse_op.process_element(Row(payload, topic, 0, offset, RECORD_TS), None))  # type: ignore[arg-type]

    order = json.dumps(track("Order Completed", {"products": [PRODUCT, PRODUCT]})).encode()
    assert [row[0] for row in process(order, "events.tracking", 7)] == ["022bb90c-bbac:0", "022bb90c-bbac:1"]
    ((_, letter),) = process(order, "events.behavior", 8)  # the same bytes are no contract event
    assert json.loads(letter[1])["reason"] == "missing_field"
    unmapped = json.dumps(message("group", traits={"email": "peter@example.com"})).encode()
    ((tag, letter),) = process(unmapped, "events.tracking", 9)
    record = json.loads(letter[1])
    assert (tag, letter[0], letter[2]) == (DEAD_LETTERS, b"events.tracking:0:9", "dlq")
    assert record["reason"] == UNMAPPED_SPEC_EVENT
    assert "peter@example.com" not in letter[1].decode() and "traits.email" in record["redacted"]
    parse_op.close()  # pushes its counts to Flink's counters
    assert metrics.read() == {("reason", "missing_field", "dead_letters"): 1,
                              ("reason", UNMAPPED_SPEC_EVENT, "dead_letters"): 1,
                              ("event_type", "purchase", "events_in"): 2}


# --- the demo's converter ---------------------------------------------------------------------------------------

def test_generated_events_in_the_segment_spec_map_back_to_themselves() -> None:
    loaded = settings_module.load(environ={})
    small = replace(loaded.generator, users=60, events=3_000, malformed_share=0.03)
    records = list(EventGenerator(small).records())
    converted = list(segment_records(records, segment_spec(loaded)))
    assert {record.topic_role for record in converted} == {TRACKING_ROLE}
    verdicts: Counter[tuple[str, str]] = Counter()
    for original, segment in zip(records, converted, strict=True):
        assert (segment.key, segment.ts, segment.kind) == (original.key, original.ts, original.kind)
        expected, mapped = parse_event(original.value, original.ts), parse_segment(segment.value, segment.ts)
        if isinstance(expected, Rejection) or isinstance(mapped, Rejection):
            assert original.kind == "malformed"
            verdicts[(getattr(expected, "reason", "valid"), getattr(mapped, "reason", "valid"))] += 1
            continue
        (event,) = mapped
        if expected.type == "purchase":
            assert event.event_id == expected.event_id + ":0"
            event = event._replace(event_id=expected.event_id)
        assert event == expected
    assert verdicts[("unknown_type", UNMAPPED_SPEC_EVENT)] > 0
    # Broken records stay broken for the same reason, but for types the spec has no name for and fields a
    # Segment message has no place for (a price on a page view is left out, so that record becomes valid).
    assert {pair for pair in verdicts if pair[0] != pair[1]} <= {("unknown_type", UNMAPPED_SPEC_EVENT),
                                                                 ("invalid_field", "valid")}


def test_the_consent_purposes_travel_as_the_first_configured_category() -> None:
    doc = {"schema_version": 1, "event_id": "c-1", "type": "consent_change", "user_id": "u-1", "ts": TS,
           "consent": {"personalization": True, "marketing": False}}
    (converted,) = segment_records([GeneratedRecord("consent", b"u-1", json.dumps(doc).encode(), TS, "valid")], SPEC)
    message = json.loads(converted.value)
    assert (message["type"], message["event"]) == ("track", "Segment Consent Preference Updated")
    assert message["context"]["consent"] == {"categoryPreferences": {"Personalization": True, "Advertising": False}}
    assert attributes(one(message))["consent"] == doc["consent"]


# --- the documentation stays true ------------------------------------------------------------------------------

def test_docs_list_every_reason_and_every_mapped_name() -> None:
    text = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))
    assert set(REASONS) <= table
    for name in (*TRACK_EVENTS, "page", "screen", "identify"):
        assert f"`{name}`" in text, name


def test_the_documented_example_maps_as_shown() -> None:
    text = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    section = text[text.index("Example: this message"):]
    sent, shown = (json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, flags=re.DOTALL)[:2])
    assert parse_segment(json.dumps(sent).encode(), RECORD_TS) == (parse_event(json.dumps(shown).encode(), RECORD_TS),)


def test_produce_writes_the_demo_in_the_segment_spec(tmp_path: Path) -> None:
    path = tmp_path / "segment.jsonl"
    assert cli.main(["produce", "--events", "300", "--users", "20", "--format", "segment", "--jsonl", str(path)]) == 0
    records = list(read_jsonl(path))  # what `personalize replay` publishes: to the tracking topic
    assert len(records) == 300 and {record.topic_role for record in records} == {TRACKING_ROLE}
    mapped = [parse_segment(record.value, record.ts) for record in records if record.kind == "valid"]
    assert mapped and not [result for result in mapped if isinstance(result, Rejection)]

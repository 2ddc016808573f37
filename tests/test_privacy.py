"""Privacy logic (issue 7): keyed hashing, dead-letter redaction, consent, erasure plans, identity stitching."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.redis_keys import USER_KEYS
from operators.deadletter import dead_letter
from operators.events import EVENT_TYPES, Event, is_anonymous, user_key_of
from operators.features.affinity import CategoryAffinity
from operators.features.config import FeatureConfig
from operators.features.operator import DECISION_FIELDS, FeatureOperator, UserFeatures
from operators.features.rfm import LocalPopulation
from operators.features.sessions import Session, SessionTracker
from operators.features.windows import SlidingCount
from operators.models.intent import PendingExamples
from operators.models.user import MODEL_FIELDS, UserModelState
from operators.privacy.consent import (
    CONSENT_WITHDRAWN,
    COUNTER_STRIDE,
    ERASURE_REQUEST,
    ConsentPolicy,
    ConsentState,
    is_erasure_request,
)
from operators.privacy.erasure import ErasureSettings, Held, Tombstone, plan_erasure
from operators.privacy.identity import (
    ERASE_TYPE,
    HANDOVER_TYPE,
    INTERNAL_TYPES,
    ErasureCommand,
    Handover,
    IdentityState,
    Route,
    forwarded,
    link,
    merge_record,
    route,
    routing_key,
)
from operators.privacy.merge import (
    StateMerger,
    UserStates,
    merge_affinity,
    merge_features,
    merge_model_states,
    merge_profiles,
    merge_rec_states,
)
from operators.privacy.pii import (
    REDACTED,
    SECRET_ENV,
    PiiHasher,
    Redactor,
    SecretError,
    hasher_from,
    pseudonymize_event,
    resolve_secret,
)
from operators.profile import ProfileOperator, UserProfile
from operators.recs.config import RecConfig
from operators.recs.user import UserRecState
from operators.rules.catalog import RuleCatalog
from operators.rules.engine import RuleState, SegmentEngine
from operators.rules.language import Compiler
from operators.validation import Rejection, parse_event
from state.codecs import CodecError, decode_consent, decode_identity, encode_consent, encode_identity
from state.internal import MAX_INTERNAL_BYTES, InternalRecordError, decode_internal, encode_internal, internal_signer
from state.signing import Signer
from state.slots import (
    CONSENT,
    ERASED_STATES,
    IDENTITY,
    KEPT_STATES,
    RECOMMENDER_STATES,
    RULES,
    USER_SLOTS,
    decode_states,
    encode_states,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
SECRET = b"test-secret-0123456789abcdef"
OTHER_SECRET = b"another-secret-0123456789abcdef"
SIGNER = internal_signer(SECRET)


def event(event_type: str, ts: int, user_id: str = "alice", anonymous_id: str = "", item: str = "",
          category: str = "", event_id: str = "", **attributes: Any) -> Event:
    key = user_key_of(user_id, anonymous_id)
    return Event(event_id or f"{event_type}-{ts}", event_type, key, user_id, anonymous_id, ts, item, category,
                 10.0, 1, "", json.dumps(attributes, sort_keys=True) if attributes else "")


# --- keyed hashing -------------------------------------------------------------------------------------


def test_hashing_is_stable_and_salted() -> None:
    hasher, other = PiiHasher(SECRET), PiiHasher(OTHER_SECRET)
    assert hasher.user_id("alice") == PiiHasher(SECRET).user_id("alice")
    assert hasher.user_id("alice") != other.user_id("alice")
    assert hasher.user_id("alice") != hasher.user_id("bob")
    assert hasher.user_id("alice").startswith("h:") and len(hasher.user_id("alice")) == 34
    assert hasher.user_id("x") != hasher.anonymous_id("x") != hasher.email("x")  # one domain per kind
    assert hasher.email(" Alice@Example.COM ") == hasher.email("alice@example.com")


@pytest.mark.parametrize("secret", [b"", b"too-short"])
def test_empty_or_short_secret_is_refused(secret: bytes) -> None:
    with pytest.raises(SecretError, match=SECRET_ENV):
        PiiHasher(secret)
    with pytest.raises(SecretError):
        hasher_from(True, secret)
    assert hasher_from(False, secret) is None


def test_secret_comes_from_config_else_environment_and_is_never_printed() -> None:
    assert resolve_secret("from-config", {SECRET_ENV: "from-env"}) == b"from-config"
    assert resolve_secret("", {SECRET_ENV: "from-env"}) == b"from-env"
    assert resolve_secret("", {}) == b""
    assert SECRET.decode() not in repr(PiiHasher(SECRET))


def test_pseudonymized_event_keeps_no_raw_pii() -> None:
    hasher = PiiHasher(SECRET)
    raw = event("profile_update", T0, user_id="alice", anonymous_id="cookie-7",
                traits={"email": "alice@example.com", "phone": "+49 170 1234", "first_name": "Alice", "plan": "gold"},
                context={"ip": "10.1.2.3", "device": "mobile"})
    safe = pseudonymize_event(raw, hasher)
    assert safe.user_id == hasher.user_id("alice") and safe.user_key == safe.user_id
    assert safe.anonymous_id == hasher.anonymous_id("cookie-7")
    attributes = json.loads(safe.attributes)
    assert attributes["traits"] == {"email": hasher.email("alice@example.com"),
                                    "phone": hasher.hash("phone", "+49 170 1234"), "plan": "gold"}
    assert attributes["context"] == {"device": "mobile"}
    text = repr(safe)
    assert not any(value in text for value in ("alice", "cookie-7", "example.com", "1234", "Alice", "10.1.2.3"))
    anonymous = pseudonymize_event(event("page_view", T0, user_id="", anonymous_id="cookie-7"), hasher)
    assert anonymous.user_key == f"anon:{hasher.anonymous_id('cookie-7')}"


# --- dead-letter redaction ------------------------------------------------------------------------------


def letter(payload: bytes, redactor: Redactor | None = None) -> dict[str, Any]:
    result = parse_event(payload, T0)
    rejection = result if isinstance(result, Rejection) else Rejection("test", "")
    _, value = dead_letter(rejection, payload, "events.behavior", 1, 42, T0)
    return json.loads((redactor or Redactor()).dead_letter(value))


def test_redaction_replaces_known_pii_fields_in_json_payloads() -> None:
    payload = json.dumps({"event_id": "e1", "type": "teleport", "user_id": "alice", "anonymous_id": "cookie-7",
                          "ts": T0, "traits": {"email": "a@example.com", "phone": "555", "plan": "gold"},
                          "context": {"ip": "10.1.2.3", "device": "mobile"},
                          "properties": {"contacts": [{"email": "b@example.com"}]}}).encode()
    record = letter(payload)
    assert record["reason"] == "unknown_type" and record["source"]["offset"] == 42
    redacted = json.loads(record["payload"])
    assert redacted["user_id"] == redacted["anonymous_id"] == redacted["traits"]["email"] == REDACTED
    assert redacted["context"] == {"ip": REDACTED, "device": "mobile"}
    assert redacted["traits"]["plan"] == "gold" and redacted["type"] == "teleport"
    assert redacted["properties"]["contacts"][0]["email"] == REDACTED
    assert record["redacted"] == ["anonymous_id", "context.ip", "properties.contacts.[].email", "traits.email",
                                  "traits.phone", "user_id"]
    text = json.dumps(record)
    assert not any(value in text for value in ("alice", "cookie-7", "example.com", "555", "10.1.2.3"))


@pytest.mark.parametrize("key", ["Email", "EMAIL", "e-mail", "email_address", "userEmail", "phone_number",
                                 "PhoneNumber", "mobile", "userId", "UserID", "customer_id", "anonymousId",
                                 "first_name", "LastName", "Full-Name", "billingAddress", "street_address",
                                 "IP", "ip_address", "clientIp", "password", "date_of_birth", "creditCardNumber"])
def test_redaction_matches_pii_keys_in_any_case_or_separator_style(key: str) -> None:
    """``Email``, ``phone_number`` and ``userId`` values once reached the dead-letter topic."""
    record = letter(json.dumps({"type": "teleport", "properties": {"nested": [{key: "SECRET-VALUE"}]}}).encode())
    assert "SECRET-VALUE" not in json.dumps(record)
    assert record["redacted"] == [f"properties.nested.[].{key}"]


@pytest.mark.parametrize("key", ["device", "plan", "category", "item_id", "campaign", "price", "query"])
def test_redaction_keeps_what_is_not_personal(key: str) -> None:
    record = letter(json.dumps({"type": "teleport", "properties": {key: "kept-value"}}).encode())
    assert "kept-value" in record["payload"] and record["redacted"] == []


def test_redaction_with_a_hasher_keeps_pseudonyms_for_correlation() -> None:
    hasher = PiiHasher(SECRET)
    record = letter(json.dumps({"type": "page_view", "user_id": "alice", "traits": {"email": "A@x.org"}}).encode(),
                    Redactor(hasher))
    redacted = json.loads(record["payload"])
    assert redacted["user_id"] == hasher.user_id("alice") and redacted["traits"]["email"] == hasher.email("a@x.org")


@pytest.mark.parametrize(("payload", "why"), [
    (b'{"user_id": "alice", broken', "not_json"),
    (b'"alice@example.com"', "not_an_object"),
    (b'[{"user_id": "alice"}]', "not_an_object"),
    (b'\xff\xfe{"user_id": "alice"}', "not_utf8"),
    (b"[" * 60_000, "not_json"),  # nested too deeply for the parser
])
def test_unparseable_payloads_are_dropped_and_the_record_says_so(payload: bytes, why: str) -> None:
    record = letter(payload)
    assert record["payload_dropped"] == why
    assert "payload" not in record and "payload_base64" not in record
    assert record["payload_bytes"] == len(payload)


def test_truncated_payload_is_dropped() -> None:
    payload = json.dumps({"user_id": "alice", "pad": "x" * 70_000}).encode()
    _, value = dead_letter(Rejection("payload_too_large", ""), payload, "t", 0, 1, T0)
    record = json.loads(Redactor().dead_letter(value))
    assert record["payload_dropped"] == "truncated" and "alice" not in json.dumps(record)


def test_empty_payload_stays_empty() -> None:
    assert letter(b"")["payload"] == ""


# --- consent --------------------------------------------------------------------------------------------


def consent(ts: int, erase: bool = False, **choices: bool) -> Event:
    attributes: dict[str, Any] = {"consent": choices}
    if erase:
        attributes["properties"] = {"erase": True}
    return event("consent_change", ts, **attributes)


def test_never_seen_users_follow_the_configured_default() -> None:
    assert ConsentPolicy().may_personalize(None, T0)
    opt_in = ConsentPolicy({"personalization": False, "analytics": False, "marketing": False})
    assert not opt_in.may_personalize(None, T0) and not opt_in.allows(None, "analytics")
    with pytest.raises(ValueError, match="consent defaults"):
        ConsentPolicy({"personalization": True})


def test_withdrawal_means_erasure_and_stops_personalization_whatever_the_event_time() -> None:
    policy = ConsentPolicy()
    step = policy.apply(None, consent(T0 + HOUR, personalization=False))
    assert step.erase == CONSENT_WITHDRAWN and not step.reconsent and step.state.generation == 1
    assert not policy.may_personalize(step.state, T0)  # an older event arriving after the withdrawal
    assert not policy.may_personalize(step.state, T0 + 2 * HOUR)
    assert policy.allows(step.state, "analytics")  # purposes not named keep their value
    again = policy.apply(step.state, consent(T0 + 2 * HOUR, personalization=False, marketing=True))
    assert again.erase == "" and again.state.generation == 1  # nothing held any more: no second erasure


def test_reconsent_starts_fresh() -> None:
    policy = ConsentPolicy()
    withdrawn = policy.apply(None, consent(T0, personalization=False)).state
    step = policy.apply(withdrawn, consent(T0 + HOUR, personalization=True))
    assert step.reconsent and step.erase == ""
    assert step.state.counter_base == COUNTER_STRIDE  # new output ids never repeat erased ones
    assert policy.may_personalize(step.state, T0 + HOUR)
    assert not policy.may_personalize(step.state, T0 + HOUR - 1)  # from the withdrawn period


def test_older_consent_change_arriving_late_is_ignored() -> None:
    policy = ConsentPolicy()
    withdrawn = policy.apply(None, consent(T0 + HOUR, personalization=False)).state
    stale = policy.apply(withdrawn, consent(T0, personalization=True))
    assert stale.stale and stale.state is withdrawn and not stale.reconsent


def test_explicit_erasure_request_sets_every_purpose_false() -> None:
    policy = ConsentPolicy({"personalization": False, "analytics": True, "marketing": True})
    request = consent(T0, erase=True, personalization=True)
    assert is_erasure_request(request)
    step = policy.apply(None, request)
    assert step.erase == ERASURE_REQUEST and step.state.choices == dict.fromkeys(
        ("personalization", "analytics", "marketing"), False)
    assert not is_erasure_request(event("consent_change", T0, consent={"personalization": False},
                                        properties={"erase": "true"}))
    assert not is_erasure_request(event("page_view", T0, properties={"erase": True}))


def test_erasure_cascaded_from_a_related_key_suppresses_that_key_too() -> None:
    step = ConsentPolicy().cascaded(None, CONSENT_WITHDRAWN, T0)
    assert step.erase == CONSENT_WITHDRAWN and step.state.generation == 1
    assert not ConsentPolicy().may_personalize(step.state, T0 + HOUR)


def test_consent_payloads_pass_todays_validator() -> None:
    payload = json.dumps({"event_id": "c1", "type": "consent_change", "user_id": "alice", "ts": T0,
                          "consent": dict.fromkeys(("personalization", "analytics", "marketing"), False),
                          "properties": {"erase": True}}).encode()
    parsed = parse_event(payload, T0)
    assert isinstance(parsed, Event) and is_erasure_request(parsed)


def test_privacy_codecs_round_trip_and_refuse_unknown_versions() -> None:
    state = ConsentState({"personalization": False}, T0, T0 - 5, 2)
    assert decode_consent(encode_consent(state)) == state
    assert len(encode_consent(state)) < 80
    identity = IdentityState(alias_of="alice", since=T0, linked={"anon:a": T0})
    assert decode_identity(encode_identity(identity)) == identity
    with pytest.raises(CodecError):
        decode_consent(b'{"v":9}')
    with pytest.raises(CodecError):
        decode_identity(b"\x01garbage")


# --- erasure plans --------------------------------------------------------------------------------------

SETTINGS = ErasureSettings(erased_states=ERASED_STATES, kept_states=KEPT_STATES, recs_states=RECOMMENDER_STATES,
                           redis_user_keys=len(USER_KEYS),
                           tombstone_topics=("users.profiles", "users.features", "segments.changes"),
                           confirmation_topic="privacy.erasures", audit=PiiHasher(SECRET))


def test_erasure_plan_lists_every_state_key_set_and_topic() -> None:
    plan = plan_erasure("alice", CONSENT_WITHDRAWN, T0, 1,
                        Held(segments=("vip", "cart_abandoner"), related=("anon:c1", "anon:c2"), recs=True), SETTINGS,
                        source="anon:c2")
    assert plan.clear_states == ("profile-v1", "features-v1", "rules-v1", "models-v1", "recs-v1", "identity-v1",
                                 "published-recs-v1", "experiments-by-user-v1")
    assert plan.keep_states == ("consent-v1",)
    assert plan.leave_segments == ("cart_abandoner", "vip")
    assert plan.confirmation.redis_keys == 6 + 2  # the user's six keys, and two member sets left
    assert plan.tombstones == tuple(Tombstone(t, b"alice") for t in SETTINGS.tombstone_topics)
    assert plan.forget_recs
    assert plan.cascade == (ErasureCommand("alice", "anon:c1", CONSENT_WITHDRAWN, T0),)  # not back to the source


def test_one_table_names_every_user_state_with_its_codec() -> None:
    """The descriptors, the merge and the erasure read their state names from ``state/slots.py``."""
    assert [slot.name for slot in USER_SLOTS] == [f.name for f in dataclasses.fields(UserStates)]
    names = [slot.state_name for slot in (*USER_SLOTS, CONSENT, IDENTITY)] + list(RECOMMENDER_STATES)
    assert len(set(names)) == len(names) and all(name.endswith("-v1") for name in names)
    assert set(ERASED_STATES) | set(KEPT_STATES) == set(names) - set(RECOMMENDER_STATES)
    states = UserStates(profile=UserProfile(first_seen=T0, last_seen=T0, seq=3), recs=UserRecState())
    stored = encode_states(states)
    assert stored.keys() == {"profile", "recs"} and decode_states(stored) == states
    from state.descriptors import user_value  # imports pyflink: only here

    assert user_value(RULES, HOUR).get_name() == "rules-v1"


def test_confirmation_and_tombstones_carry_no_raw_ids() -> None:
    plan = plan_erasure("alice@example.com", ERASURE_REQUEST, T0, 3, Held(segments=("vip",)), SETTINGS)
    confirmation = plan.confirmation
    record = json.loads(confirmation.to_json())
    assert "alice" not in confirmation.to_json().decode() and b"alice" not in confirmation.key()
    assert record["subject"] == SETTINGS.audit.hash("erasure_subject", "alice@example.com")
    assert record["id"] == f"erasure:{record['subject']}:{T0}"
    assert record["reason"] == ERASURE_REQUEST and record["event_time"] == T0 and record["generation"] == 3
    assert record["redis_keys"] == 7 and record["tombstones"] == list(SETTINGS.tombstone_topics)
    assert all(t.topic != SETTINGS.confirmation_topic for t in plan.tombstones)
    other = dataclasses.replace(SETTINGS, audit=PiiHasher(OTHER_SECRET))
    assert plan_erasure("alice@example.com", ERASURE_REQUEST, T0, 3, Held(), other).confirmation.subject != \
        record["subject"]
    assert plan_erasure("alice@example.com", ERASURE_REQUEST, T0, 3, Held(), SETTINGS).confirmation.record_id == \
        record["id"]  # deterministic: a replay repeats the id


# --- identity routing -----------------------------------------------------------------------------------


def test_identify_is_routed_to_the_anonymous_key() -> None:
    identify = event("identify", T0, user_id="alice", anonymous_id="c1")
    assert identify.user_key == "alice" and routing_key(identify) == "anon:c1"
    assert routing_key(event("page_view", T0, user_id="", anonymous_id="c1")) == "anon:c1"
    assert routing_key(event("page_view", T0, user_id="alice", anonymous_id="c1")) == "alice"


def test_routing_hands_over_once_then_forwards() -> None:
    identify = event("identify", T0, user_id="alice", anonymous_id="c1")
    assert route(None, event("page_view", T0, user_id="", anonymous_id="c1"), "anon:c1").route == Route.LOCAL
    step = route(None, identify, "anon:c1")
    assert step.route == Route.HANDOVER and step.target == "alice"
    assert step.state == IdentityState(alias_of="alice", since=T0)
    later = route(step.state, event("add_to_cart", T0 + 1, user_id="", anonymous_id="c1", item="i1"), "anon:c1")
    assert later.route == Route.FORWARD and later.target == "alice"
    assert route(step.state, identify, "anon:c1").route == Route.FORWARD  # a re-sent identify: counted there
    older = route(step.state, event("identify", T0 - 1, user_id="bob", anonymous_id="c1"), "anon:c1")
    assert older.route == Route.FORWARD and older.target == "bob" and older.state == step.state
    newer = route(step.state, event("identify", T0 + 1, user_id="bob", anonymous_id="c1"), "anon:c1")
    assert newer.route == Route.HANDOVER and newer.state == IdentityState(alias_of="bob", since=T0 + 1)
    assert route(None, event("page_view", T0, user_id="alice"), "alice").route == Route.LOCAL


@pytest.mark.parametrize(("user_id", "anonymous_id", "key"), [
    ("alice", "", "alice"), ("", "c1", "anon:c1"), ("anon:c1", "", "=anon:c1"), ("=x", "", "==x"),
    ("anon:c1", "c1", "=anon:c1")])
def test_known_and_anonymous_keys_never_share_a_namespace(user_id: str, anonymous_id: str, key: str) -> None:
    assert user_key_of(user_id, anonymous_id) == key


@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12))
def test_user_keys_are_injective_and_never_anonymous_for_known_users(user_id: str, other: str,
                                                                     anonymous_id: str) -> None:
    known = user_key_of(user_id, anonymous_id)
    assert not is_anonymous(known) and known != user_key_of("", anonymous_id)
    assert (known == user_key_of(other, "")) == (user_id == other)


def test_a_login_whose_user_id_looks_anonymous_hands_over_once_instead_of_looping() -> None:
    """``identify`` with user_id ``anon:A`` and anonymous_id ``A`` once fed the identity loop itself."""
    identify = event("identify", T0, user_id="anon:A", anonymous_id="A")
    assert routing_key(identify) == "anon:A" and identify.user_key == "=anon:A"
    step = route(None, identify, "anon:A")
    assert step.route == Route.HANDOVER and step.target == "=anon:A"
    arrived = forwarded(identify, step.target)
    assert routing_key(arrived) == "=anon:A" and route(None, arrived, "=anon:A").route == Route.LOCAL


@given(st.text(min_size=1, max_size=12), st.text(min_size=1, max_size=12))
def test_an_identify_is_never_routed_back_to_its_own_key(user_id: str, anonymous_id: str) -> None:
    identify = event("identify", T0, user_id=user_id, anonymous_id=anonymous_id)
    key = routing_key(identify)
    step = route(None, identify, key)
    assert step.route == Route.HANDOVER and step.target != key and not is_anonymous(step.target)
    arrived = forwarded(identify, step.target)
    assert routing_key(arrived) == step.target and route(None, arrived, step.target).route == Route.LOCAL


def forged_internal_records() -> dict[str, bytes]:
    moved = forwarded(event("page_view", T0, user_id="", anonymous_id="c1"), "alice")
    good = encode_internal(moved, SIGNER)
    unsigned = json.loads(good)
    del unsigned["sig"]
    wrong_types = json.loads(good)
    wrong_types["event"][5] = "not a timestamp"
    return {
        "another job's key": encode_internal(moved, internal_signer(OTHER_SECRET)),
        "another kind of record": Signer(SECRET, "models.snapshot.v2").sign({"schema": "identity.internal.v1",
                                                                              "event": list(moved)}),
        "unsigned": json.dumps(unsigned).encode(),
        "changed after signing": good.replace(b"alice", b"mallory"),
        "wrong field types": SIGNER.sign({k: v for k, v in wrong_types.items() if k != "sig"}),
        "short event": SIGNER.sign({"schema": "identity.internal.v1", "event": list(moved)[:5]}),
        "the old unsigned list": json.dumps(list(moved)).encode(),
        "oversized": b" " * (MAX_INTERNAL_BYTES + 1),
        "cut": good[:-3],
        "empty": b"",
    }


@pytest.mark.parametrize("case", sorted(forged_internal_records()))
def test_an_internal_record_this_job_did_not_write_is_refused(case: str) -> None:
    with pytest.raises(InternalRecordError):
        decode_internal(forged_internal_records()[case], SIGNER)


@given(st.binary(max_size=300) | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                              lambda inner: st.lists(inner, max_size=4)
                                              | st.dictionaries(st.text(max_size=5), inner, max_size=4)
                                              ).map(lambda doc: json.dumps(doc).encode()))
def test_arbitrary_internal_payloads_are_refused_and_never_raise_anything_else(payload: bytes) -> None:
    with pytest.raises(InternalRecordError):
        decode_internal(payload, SIGNER)


def test_internal_records_round_trip_and_cannot_come_from_producers() -> None:
    identify = event("identify", T0, user_id="alice", anonymous_id="c1")
    handover = Handover("anon:c1", "alice", identify, {"profile": b"\x01\x00binary", "recs": b"{}"})
    row = decode_internal(encode_internal(handover.to_event(), SIGNER), SIGNER)
    assert row.type == HANDOVER_TYPE and row.user_key == "alice" and Handover.from_event(row) == handover
    command = ErasureCommand("alice", "anon:c1", CONSENT_WITHDRAWN, T0)
    row = decode_internal(encode_internal(command.to_event(), SIGNER), SIGNER)
    assert row.type == ERASE_TYPE and row.user_key == "anon:c1" and ErasureCommand.from_event(row) == command
    assert {HANDOVER_TYPE, ERASE_TYPE} == INTERNAL_TYPES and INTERNAL_TYPES.isdisjoint(EVENT_TYPES)
    moved = forwarded(event("page_view", T0, user_id="", anonymous_id="c1"), "alice")
    assert decode_internal(encode_internal(moved, SIGNER), SIGNER) == moved and moved.anonymous_id == "c1"
    again = forwarded(identify, "alice")  # a repeated login, forwarded: not routed back to the cookie
    assert routing_key(identify) == "anon:c1" and routing_key(again) == "alice" and again.user_id == "alice"
    key, value = merge_record(handover, ("profile", "recs"))
    assert key == b"alice" and json.loads(value) == {
        "id": f"alice:merge:{identify.event_id}", "schema": "identity.merge.v1", "user": "alice",
        "anonymous": "anon:c1", "ts": T0, "merged": ["profile", "recs"]}


def test_links_are_bounded_and_feed_erasure_cascades() -> None:
    state = None
    for i in range(5):
        state = link(state, f"anon:c{i}", T0 + i, max_links=3)
    assert state is not None and list(state.linked) == ["anon:c2", "anon:c3", "anon:c4"]
    assert state.related_keys() == ("anon:c2", "anon:c3", "anon:c4")
    assert IdentityState(alias_of="alice").related_keys() == ("alice",)


# --- merges ---------------------------------------------------------------------------------------------

CART_RULES = [{"id": "carter", "version": 1, "when": {"count": {"event": "add_to_cart", "within": "24h",
                                                                  "at_least": 1}}},
              {"id": "browser", "version": 1, "when": {"count": {"event": "product_view", "within": "24h",
                                                                   "at_least": 3}}}]


class Key:
    """One user key driven like the user operator drives its states (profile, features, rules, recs)."""

    def __init__(self, key: str, engine: SegmentEngine, features: FeatureOperator, recs: RecConfig) -> None:
        self.key, self.engine, self.features, self.recs = key, engine, features, recs
        self.states = UserStates()
        self.segments: list[tuple[str, str]] = []

    def apply(self, e: Event) -> None:
        s = self.states
        s.profile, update = ProfileOperator().process(s.profile, e)
        if update is None:
            return
        s.features, _ = self.features.process(s.features, e)
        s.rules = s.rules or RuleState()
        self.segments += [(c.action, c.segment) for c in
                          self.engine.observe(s.rules, e, s.profile.first_seen, s.features.decision)]
        s.recs = s.recs or UserRecState()
        s.recs.remember(e, self.recs)


def test_anonymous_to_known_merge_keeps_cart_and_segments() -> None:
    compiler = Compiler(DECISION_FIELDS + MODEL_FIELDS)
    rules = RuleCatalog.from_definitions(CART_RULES, compiler).rule_set(compiler)
    engine, recs = SegmentEngine(rules), RecConfig()
    population = LocalPopulation()
    features = FeatureOperator(FeatureConfig(), population)
    anonymous = Key("anon:c1", engine, features, recs)
    for i, e in enumerate([event("product_view", T0, "", "c1", "i1", "shoes"),
                           event("product_view", T0 + MINUTE, "", "c1", "i2", "shoes"),
                           event("add_to_cart", T0 + 2 * MINUTE, "", "c1", "i2", "shoes"),
                           event("purchase", T0 + 3 * MINUTE, "", "c1", "i9", "hats")]):
        anonymous.apply(e._replace(event_id=f"a{i}"))
    assert ("enter", "carter") in anonymous.segments
    known = Key("alice", engine, features, recs)
    known.apply(event("product_view", T0 - HOUR, "alice", "", "i3", "books", event_id="k1"))
    known.apply(event("purchase", T0 - HOUR, "alice", "", "i3", "books", event_id="k2"))
    assert sum(h.count for h in population.histograms.values()) == 6  # both keys bought: both scored

    # Handover at anon:c1: leave segments, withdraw the population contribution, ship the stored bytes.
    identify = event("identify", T0 + 4 * MINUTE, "alice", "c1", event_id="id1")
    step = route(None, identify, routing_key(identify))
    assert step.route == Route.HANDOVER
    s = anonymous.states
    assert s.rules is not None and s.features is not None
    exits = engine.forget(s.rules, "anon:c1", identify.ts, "merged")
    assert {(c.action, c.segment) for c in exits} == {("exit", "carter")}
    features.forget(s.features)
    assert sum(h.count for h in population.histograms.values()) == 3
    handover = Handover("anon:c1", step.target, identify, encode_states(s))
    received = Handover.from_event(decode_internal(encode_internal(handover.to_event(), SIGNER), SIGNER))

    # At alice: merge, then process the identify like any event.
    merger = StateMerger(features, recs, rules.signals)
    known.states = merger.merge(known.states, decode_states(received.states))
    known.apply(received.identify)
    merged = known.states
    assert merged.recs is not None and merged.profile is not None and merged.features is not None
    assert merged.recs.cart == {"i2": T0 + 2 * MINUTE}
    assert set(merged.recs.purchased) == {"i3", "i9"} and list(merged.recs.recent)[-1] == "i3"
    assert ("enter", "carter") in known.segments and merged.rules is not None and "carter" in merged.rules.members
    assert merged.profile.counts == {"product_view": 3, "purchase": 2, "add_to_cart": 1, "identify": 1}
    assert merged.profile.seq == 3 and merged.profile.first_seen == T0 - HOUR
    assert ProfileOperator().process(merged.profile, event("add_to_cart", T0, "", "c1", "i2", event_id="a2"))[1] \
        is None  # a re-send of an anonymous event is still a duplicate
    assert merged.features.purchases.count.total(FeatureConfig().rfm_window, merged.features.reference_ts) == 2
    assert sum(h.count for h in population.histograms.values()) == 3  # one user, moved to the merged value


def test_profile_merge_into_a_missing_known_profile_starts_at_the_counter_base() -> None:
    anonymous = UserProfile(counts={"page_view": 2}, first_seen=T0, last_seen=T0 + 1, seq=2)
    merged = merge_profiles(None, anonymous, 128, counter_base=COUNTER_STRIDE)
    assert merged is not None and merged.seq == COUNTER_STRIDE and merged.counts == {"page_view": 2}
    known = UserProfile(counts={"page_view": 1}, first_seen=T0 + 5, last_seen=T0 + 9, seq=7)
    assert merge_profiles(known, None, 128) is known


def test_rec_merge_drops_carted_items_bought_later_and_closes_checkout() -> None:
    config = RecConfig(max_cart=2, recent_items=3)
    anonymous = UserRecState(recent={"a": 1.0, "b": 2.0}, cart={"a": T0, "b": T0 + 1, "c": T0 + 2},
                             checkout_ts=T0 + 3, reference_ts=T0 + 3)
    known = UserRecState(recent={"b": 1.0, "d": 1.0}, purchased={"c": T0 + 5}, reference_ts=T0 + 5)
    merged = merge_rec_states(known, anonymous, config)
    assert merged is not None
    assert merged.cart == {"b": T0 + 1}  # "a" is beyond max_cart (oldest), "c" was bought after carting
    assert merged.checkout_ts == 0 and merged.reference_ts == T0 + 5
    assert list(merged.recent.items()) == [("a", 1.0), ("b", 2.0), ("d", 1.0)]


def test_a_login_keeps_the_known_users_arm_else_the_visitors() -> None:
    """docs/experiments.md: the known user's arm wins where they have one; a visitor who signs up keeps theirs."""
    anonymous = UserRecState(arms={"recs-v1": "control", "layout-v2": "b"})
    known = UserRecState(arms={"recs-v1": "recs"})
    merged = merge_rec_states(known, anonymous, RecConfig())
    assert merged is not None and merged.arms == {"recs-v1": "recs", "layout-v2": "b"}
    signed_up = merge_rec_states(None, anonymous, RecConfig())
    assert signed_up is not None and signed_up.arms == anonymous.arms


def test_affinity_merge_equals_adding_the_events_to_one_state() -> None:
    half_life = 7 * 24 * HOUR
    one, a, b = CategoryAffinity(), CategoryAffinity(), CategoryAffinity()
    for target, (category, weight, ts) in zip((a, b, a, b), [("x", 1.0, T0), ("x", 3.0, T0 + HOUR),
                                                             ("y", 2.0, T0), ("z", 1.0, T0 + 2 * HOUR)], strict=True):
        target.add(category, weight, ts, half_life, 10)
        one.add(category, weight, ts, half_life, 10)
    merged = merge_affinity(a, b, half_life, 10)
    assert merged.scores.keys() == one.scores.keys()
    assert all(merged.at(c, T0 + 3 * HOUR, half_life) == pytest.approx(one.at(c, T0 + 3 * HOUR, half_life))
               for c in one.scores)
    assert set(merge_affinity(a, b, half_life, 2).scores) == {"x", "y"}  # the weakest (z) goes


def test_feature_merge_joins_overlapping_sessions_and_closes_distant_ones() -> None:
    operator = FeatureOperator(FeatureConfig(), LocalPopulation())
    gap = operator.config.session_gap_ms

    def with_session(start: int, end: int, counts: float) -> UserFeatures:
        return UserFeatures(reference_ts=end, sessions=SessionTracker(current=Session(start, end, 2, carted=True),
                                                                      timer_at=end + gap),
                            counts={"page_view": {"24h": SlidingCount({end // HOUR: counts})}})

    merged = merge_features(with_session(T0 + 10 * MINUTE, T0 + 20 * MINUTE, 2), with_session(T0, T0 + 15 * MINUTE, 3),
                            operator)
    assert merged is not None and merged.sessions.current == Session(T0, T0 + 20 * MINUTE, 4, carted=True)
    assert merged.sessions.timer_at is None  # the operator registers the merged session's timer
    assert merged.counts["page_view"]["24h"].total(operator.config.window("24h"), merged.reference_ts) == 5
    apart = merge_features(with_session(T0 + 5 * HOUR, T0 + 5 * HOUR, 1), with_session(T0, T0 + MINUTE, 1), operator)
    assert apart is not None and apart.sessions.current is not None and apart.sessions.current.start == T0 + 5 * HOUR
    assert apart.sessions.previous_end == T0 + MINUTE and len(apart.session_lengths) == 1
    fresh = merge_features(None, UserFeatures(), operator, counter_base=COUNTER_STRIDE)
    assert fresh is not None and fresh.version == COUNTER_STRIDE


def test_model_merge_keeps_the_newest_pending_examples() -> None:
    known = UserModelState(pending=PendingExamples([(T0 + 2, {"f": 1.0}), (T0 + 4, {"f": 2.0})]), intent=0.4, version=3)
    anonymous = UserModelState(pending=PendingExamples([(T0 + 1, {"f": 3.0}), (T0 + 3, {"f": 4.0})], dropped=1))
    merged = merge_model_states(known, anonymous, max_pending=3)
    assert merged is not None
    assert [ts for ts, _ in merged.pending.examples] == [T0 + 2, T0 + 3, T0 + 4]
    assert merged.pending.dropped == 2 and merged.intent == 0.4 and merged.version == 3


def test_the_secret_comes_from_config_then_environment_then_file(tmp_path: Any, monkeypatch: Any) -> None:
    from connectors.pii_secret import SecretSource, ensure_secret_file

    file = tmp_path / "pii-secret"
    ensure_secret_file(file)
    from_file = file.read_text().strip().encode()
    assert len(from_file) == 64 and (file.stat().st_mode & 0o777) == 0o600
    ensure_secret_file(file)  # kept: pseudonyms stay stable across stack restarts
    assert file.read_text().strip().encode() == from_file
    monkeypatch.delenv("P13N_TEST_SECRET", raising=False)
    assert SecretSource("", "P13N_TEST_SECRET", str(file)).resolve() == from_file
    monkeypatch.setenv("P13N_TEST_SECRET", "from-the-environment-0123")
    assert SecretSource("", "P13N_TEST_SECRET", str(file)).resolve() == b"from-the-environment-0123"
    assert SecretSource("configured-secret-0123", "P13N_TEST_SECRET", str(file)).resolve() == b"configured-secret-0123"
    monkeypatch.delenv("P13N_TEST_SECRET")
    with pytest.raises(SecretError, match="P13N_TEST_SECRET"):
        SecretSource("", "P13N_TEST_SECRET", str(tmp_path / "missing")).resolve()
    with pytest.raises(SecretError):
        SecretSource("short", "P13N_TEST_SECRET", "").resolve()

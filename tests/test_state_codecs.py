"""Feature and rule state codec version 3: short documents bare, long ones zlib with a 4 KB window; versions 1
and 2 still read. Property-based round trips over documents either side of the threshold and real states."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.events import Event
from operators.features.config import FeatureConfig
from operators.features.operator import FeatureOperator, UserFeatures
from operators.features.rfm import LocalPopulation
from operators.models.inputs import BEHAVIOUR_FEATURES, INTENT_FEATURES
from operators.models.intent import PendingExamples
from operators.models.membership import Membership as ClusterMembership
from operators.models.user import UserModelState
from operators.rules.engine import Membership, RuleState
from operators.rules.signals import SignalLog
from state.codecs import (
    FEATURES_CODEC_VERSION,
    MODELS_CODEC_VERSION,
    RAW_JSON_MAX_BYTES,
    RULES_CODEC_VERSION,
    CodecError,
    _compressed,
    _compressed_document,
    decode_features,
    decode_models,
    decode_rules,
    encode_features,
    encode_models,
    encode_rules,
)

T0 = 1_767_225_600_000
TYPES = ("page_view", "product_view", "search", "add_to_cart", "checkout_start", "purchase", "email_open",
         "email_click", "remove_from_cart")


def stored_document(encoded: bytes) -> dict[str, Any]:
    """The JSON document inside a version 3 feature or rule blob, bare or compressed."""
    body = encoded[1:]
    return json.loads(body if body[:1] == b"{" else zlib.decompress(body))


def older_versions(encoded: bytes) -> tuple[bytes, bytes]:
    """The same state as version 1 (bare JSON, no version byte) and version 2 (always zlib, default window)."""
    document = stored_document(encoded)
    version_1 = json.dumps({**document, "v": 1}).encode()
    version_2 = bytes([2]) + zlib.compress(json.dumps({**document, "v": 2}).encode(), 1)
    return version_1, version_2


json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=30) | st.floats(
    allow_nan=False, allow_infinity=False)
documents = st.dictionaries(st.text(min_size=1, max_size=8), st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=8), inner, max_size=8),
    max_leaves=80), max_size=12)


@settings(max_examples=100, deadline=None)
@given(documents)
def test_documents_round_trip_bare_or_compressed(document: dict[str, Any]) -> None:
    document = {**document, "v": 3}
    encoded = _compressed(document, 3)
    assert encoded[0] == 3
    bare = len(encoded) - 1 <= RAW_JSON_MAX_BYTES and encoded[1:2] == b"{"
    assert bare == (len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()) <= RAW_JSON_MAX_BYTES)
    if not bare:
        assert (encoded[1] >> 4) + 8 == 12  # a zlib header after the version byte, declaring the 4 KB window
    assert _compressed_document(encoded, "test", 3) == document


def test_the_threshold_is_inclusive() -> None:
    for padding in range(RAW_JSON_MAX_BYTES - 20, RAW_JSON_MAX_BYTES + 20):
        document = {"v": 3, "x": "a" * padding}
        size = len(json.dumps(document, separators=(",", ":")))
        encoded = _compressed(document, 3)
        assert (encoded[1:2] == b"{") == (size <= RAW_JSON_MAX_BYTES)
        assert _compressed_document(encoded, "test", 3) == document


@pytest.mark.parametrize("data", [b"", b"\x04{}", b"\x01x", b"\x03not json", b"\x03x\x9c", b"\x02{\"v\":2}",
                                  b"\x03{\"v\":2}"])
def test_unknown_or_unreadable_documents_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        _compressed_document(data, "test", 3)


def event(kind: str, ts: int, item: int, category: int, price: float) -> Event:
    return Event(event_id=f"e-{kind}-{ts}", type=kind, user_key="u", user_id="u", anonymous_id="", ts=ts,
                 item_id=f"item-{item}", category=f"category-{category}", price=price, quantity=1,
                 session_id="", attributes="{}")


streams = st.lists(st.tuples(st.sampled_from(TYPES), st.integers(0, 40 * 24 * 60), st.integers(0, 30),
                             st.integers(0, 12), st.floats(0, 500).map(lambda p: round(p, 2))),
                   min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(streams)
def test_feature_state_round_trips_in_every_version(stream: list[tuple[str, int, int, int, float]]) -> None:
    operator = FeatureOperator(FeatureConfig(), LocalPopulation())
    features: UserFeatures | None = None
    for kind, minute, item, category, price in stream:
        features, _ = operator.process(features, event(kind, T0 + minute * 60_000, item, category, price))
    assert features is not None
    encoded = encode_features(features)
    assert encoded[0] == FEATURES_CODEC_VERSION
    decoded = decode_features(encoded)
    assert encode_features(decoded) == encoded
    assert operator.vector(decoded) == operator.vector(features)
    for older in older_versions(encoded):
        assert encode_features(decode_features(older)) == encoded


timestamps = st.integers(T0 - 10**10, T0)
rule_states = st.builds(
    RuleState,
    logs=st.dictionaries(st.text(min_size=1, max_size=20), st.builds(
        SignalLog, st.dictionaries(st.text(max_size=12), st.lists(timestamps, min_size=1, max_size=20).map(sorted),
                                   min_size=1, max_size=5), st.integers(-1, T0)), max_size=6),
    attributes=st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=40) | st.integers(-(2**53), 2**53),
                                max_size=4),
    features=st.dictionaries(st.text(min_size=1, max_size=20), json_leaf, max_size=25),
    members=st.dictionaries(st.text(min_size=1, max_size=20), st.builds(Membership, timestamps, st.integers(0, 99)),
                            max_size=5),
    waiting=st.dictionaries(st.text(min_size=1, max_size=20), timestamps, max_size=3),
    now=st.just(T0), first_seen=timestamps, seq=st.integers(0, 10**6), wake=st.none() | timestamps,
    fingerprint=st.integers(0, 2**63),
)


@settings(max_examples=200, deadline=None)
@given(rule_states)
def test_rule_state_round_trips_in_every_version(state: RuleState) -> None:
    encoded = encode_rules(state)
    assert encoded[0] == RULES_CODEC_VERSION
    assert decode_rules(encoded) == state
    for older in older_versions(encoded):
        assert decode_rules(older) == state


half = st.floats(0, 60_000, allow_nan=False, width=16)
model_states = st.builds(
    UserModelState,
    pending=st.builds(PendingExamples, st.lists(st.tuples(timestamps, st.tuples(*[half] * len(INTENT_FEATURES))),
                                                max_size=4), st.integers(0, 99)),
    membership=st.builds(ClusterMembership, st.none() | st.integers(0, 9), st.none() | st.integers(0, 9),
                         st.integers(0, 3)),
    intent=st.none() | st.floats(0, 1), version=st.integers(0, 10**6),
    behaviour=st.none() | st.tuples(*[half] * len(BEHAVIOUR_FEATURES)),
    vector_version=st.integers(0, 10**6), rescores=st.integers(0, 2_000),
)


@settings(max_examples=200, deadline=None)
@given(model_states)
def test_model_state_round_trips_with_its_rescore_input(state: UserModelState) -> None:
    encoded = encode_models(state)
    assert encoded[0] == MODELS_CODEC_VERSION
    assert decode_models(encoded) == state
    for broken in (encoded[:-1], b"\x07" + encoded[1:]):  # a cut value, an unknown version
        with pytest.raises(CodecError):
            decode_models(broken)

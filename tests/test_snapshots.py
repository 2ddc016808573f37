"""Model snapshots cross a topic as signed data: the scorer's numbers equal River's, and nothing but a
record this job signed is ever loaded (docs/security.md)."""

from __future__ import annotations

import base64
import pickle
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.models.clustering import BehaviourClusterer
from operators.models.config import ModelConfig
from operators.models.inputs import BEHAVIOUR_FEATURES, INTENT_FEATURES
from operators.models.intent import IntentClassifier
from operators.models.scaler import ScoringModelError
from operators.models.scoring import ScoringModel
from operators.models.training import ModelScorer, ModelSnapshot, ModelTrainer
from state.signing import Signer, canonical
from state.snapshots import SNAPSHOT_SCHEMA, SnapshotError, decode_snapshot, encode_snapshot, snapshot_signer
from tests.test_models import VALUES, train

SECRET = b"0123456789abcdef-the-jobs-secret"
SIGNER = snapshot_signer(SECRET)
LIMIT = 1 << 20
INPUTS = tuple(dict.fromkeys((*INTENT_FEATURES, *BEHAVIOUR_FEATURES)))
"""Every model input: both models' features (the clusterer's include one the intent model does not see)."""


def trained_models(seed: int, clusterer: str = "kmeans") -> tuple[BehaviourClusterer, IntentClassifier]:
    rng = random.Random(seed)
    clusters, intent = BehaviourClusterer(clusterer, 4, seed), IntentClassifier(negative_share=0.25)
    for _ in range(300):
        x = {name: rng.uniform(0, 3) for name in INPUTS}
        x["email_open_rate"] = 0.0  # a feature without variance scales to 0, as in River
        clusters.learn_one({name: x[name] for name in BEHAVIOUR_FEATURES})
        intent.learn_one({name: x[name] for name in INTENT_FEATURES}, rng.random() < 0.3)
    return clusters, intent


@pytest.mark.parametrize("clusterer", ["kmeans", "streamkmeans"])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), point=st.lists(st.floats(-5, 50, allow_nan=False), min_size=len(INPUTS),
                                                   max_size=len(INPUTS)))
def test_the_published_model_scores_as_rivers_models_do(clusterer: str, seed: int, point: list[float]) -> None:
    clusters, intent = trained_models(seed % 7, clusterer)
    model = ScoringModel.from_data(orjson.loads(canonical(ScoringModel.of(clusters, intent).to_data())))
    x = dict(zip(INPUTS, point, strict=True))
    expected, got = clusters.assign({name: x[name] for name in BEHAVIOUR_FEATURES}), model.assign(x)
    assert expected is not None and got is not None
    assert got.cluster == expected.cluster or got.distances[got.cluster] == pytest.approx(
        expected.distances[expected.cluster])  # a tie between two centers
    assert got.distances == pytest.approx(expected.distances)
    assert model.intent(x) == pytest.approx(
        intent.predict_proba_one({name: x[name] for name in INTENT_FEATURES})[True], abs=1e-12)


def snapshot() -> ModelSnapshot:
    trainer = ModelTrainer(ModelConfig(n_clusters=3, snapshot_every=100), lineage="a1")
    return train(trainer, 120)[-1]


def test_a_snapshot_record_round_trips_signed_and_carries_its_event_time() -> None:
    original = snapshot()
    record = encode_snapshot(original, SIGNER)
    restored = decode_snapshot(record, SIGNER, LIMIT)
    assert restored.model == original.model and restored.summary() == orjson.loads(orjson.dumps(original.summary()))
    document = orjson.loads(record)
    assert document["schema"] == SNAPSHOT_SCHEMA and document["id"] == "a1:v2" and document["ts"] == original.ts
    scorer = ModelScorer()
    scorer.load(restored)
    assert scorer.score(VALUES[1]) is not None


def resigned(document: dict[str, object]) -> bytes:
    document.pop("sig", None)
    return SIGNER.sign(document)


def refusals() -> dict[str, bytes]:
    """Records that must never be loaded, by what is wrong with them."""
    good = encode_snapshot(snapshot(), SIGNER)
    document = orjson.loads(good)
    tampered = dict(document, version=99)
    unsigned = dict(document)
    del unsigned["sig"]
    old_schema = {k: v for k, v in document.items() if k != "model"} | {
        "schema": "models.snapshot.v1", "models": base64.b64encode(pickle.dumps(object())).decode()}
    before_remove_rate = dict(document, schema="models.snapshot.v2", model=dict(document["model"], clusters={
        "scaler": document["model"]["clusters"]["scaler"],
        "centers": {c: center[:-1] for c, center in document["model"]["clusters"]["centers"].items()}}))
    return {
        "another job's key": encode_snapshot(snapshot(), snapshot_signer(b"another-secret-of-16-bytes")),
        "a v2 record of an older version (nine clustering features)": Signer(SECRET, "models.snapshot.v2").sign(
            {k: v for k, v in before_remove_rate.items() if k != "sig"}),
        "a v2 centroid width signed as v3": resigned(dict(before_remove_rate, schema=SNAPSHOT_SCHEMA)),
        "a field changed after signing": orjson.dumps(tampered),
        "no signature": orjson.dumps(unsigned),
        "pickle bytes": pickle.dumps(snapshot()),
        "a signed v1 record with pickled models": resigned(old_schema),
        "signed but malformed": resigned(dict(document, model={"clusters": {}, "intent": {}})),
        "oversized": good + b" " * LIMIT,
        "empty": b"",
        "not JSON": b"\x80\x04\x95",
        "a JSON list": b"[1, 2]",
    }


@pytest.mark.parametrize("case", sorted(refusals()))
def test_a_record_not_written_by_this_job_is_refused(case: str) -> None:
    with pytest.raises(SnapshotError) as refused:
        decode_snapshot(refusals()[case], SIGNER, LIMIT)
    assert str(refused.value)


@settings(max_examples=300)
@given(st.binary(max_size=2000) | st.builds(lambda v: orjson.dumps(v), st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)))
def test_arbitrary_bytes_and_json_never_load_and_never_raise_anything_else(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        decode_snapshot(data, SIGNER, LIMIT)


@settings(max_examples=300)
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=30) | st.dictionaries(st.sampled_from(
        ["clusters", "intent", "scaler", "centers", "mean", "std", "weights", "intercept", "0", "1"]), inner,
        max_size=6), max_leaves=80))
def test_model_data_is_either_well_formed_or_refused_with_a_reason(data: object) -> None:
    try:
        model = ScoringModel.from_data(data)
    except ScoringModelError as refused:
        assert str(refused)
    else:
        x = dict.fromkeys(INTENT_FEATURES, 1.0)
        assert 0.0 <= model.intent(x) <= 1.0

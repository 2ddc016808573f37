"""Segment models: one estimator check suite for every wrapper, labels, drift, hysteresis, snapshots."""

from __future__ import annotations

import copy
import dataclasses
import doctest
import inspect
import json
import math
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from river import base, metrics

from operators.events import Event
from operators.features.config import FeatureConfig
from operators.features.operator import FeatureOperator, FeatureVector
from operators.features.rfm import LocalPopulation
from operators.models import clustering, intent, membership
from operators.models.clustering import (
    BEHAVIOUR_FEATURES,
    CLUSTERERS,
    Assignment,
    BehaviourClusterer,
    ClusterStats,
    describe,
    describe_clusters,
)
from operators.models.config import ModelConfig
from operators.models.drift import DETECTORS, DriftEvent, DriftMonitor
from operators.models.inputs import (
    INTENT_FEATURES,
    ModelInput,
    behaviour_input,
    has_behaviour,
    intent_input,
    model_inputs,
)
from operators.models.intent import IntentClassifier, IntentLabeler, PendingExamples
from operators.models.membership import Membership, MembershipPolicy, update_membership
from operators.models.scoring import ScoringModel
from operators.models.training import (
    AUC_BINS,
    BinnedAUC,
    ModelScorer,
    ModelSnapshot,
    ModelTrainer,
    in_training_sample,
    learns_from,
)
from personalize.settings import ModelSettings

T0 = 1_767_225_600_000
HOUR = 3_600_000


# --- data -----------------------------------------------------------------------------------------------------

def behaviour_points(n: int, seed: int = 0) -> list[ModelInput]:
    """Three well-separated blobs over the clustering features (CluStream clusters every 500 points)."""
    rng = random.Random(seed)
    centers = [{name: rng.uniform(-3, 3) for name in BEHAVIOUR_FEATURES} for _ in range(3)]
    points: list[ModelInput] = []
    for i in range(n):
        center = centers[i % 3]
        points.append({name: center[name] + rng.gauss(0, 0.3) for name in BEHAVIOUR_FEATURES})
    return points


def intent_examples(n: int, seed: int = 0) -> list[tuple[ModelInput, bool]]:
    rng = random.Random(seed)
    examples: list[tuple[ModelInput, bool]] = []
    for _ in range(n):
        carts, views = rng.random(), rng.random()
        examples.append(({"carts": carts, "views": views}, rng.random() < 0.1 + 0.8 * carts))
    return examples


@dataclasses.dataclass(frozen=True)
class Case:
    """A wrapper, how to build it, and data it learns from (``y`` is None for clusterers)."""

    factory: Callable[..., base.Estimator]
    params: dict[str, Any]
    data: list[tuple[ModelInput, Any]]

    def build(self) -> Any:
        return self.factory(**self.params)


CASES = [
    *(pytest.param(Case(BehaviourClusterer, {"clusterer": name, "n_clusters": 3, "seed": 7,
                                                  "refit_every": 100, "sample_users": 64},
                        [(x, None) for x in behaviour_points(520)]), id=f"clusterer-{name}")
      for name in CLUSTERERS),
    pytest.param(Case(IntentClassifier, {"learning_rate": 0.05, "l2": 0.001, "negative_share": 0.5},
                      intent_examples(300)), id="intent"),
]


def learn(model: Any, data: list[tuple[ModelInput, Any]]) -> None:
    for x, y in data:
        if model._supervised:
            model.learn_one(x, y)
        else:
            model.learn_one(x)


def observe(model: Any, data: list[tuple[ModelInput, Any]]) -> list[Any]:
    """What a model shows the outside world: predictions and, for clusterers, distances and centroids."""
    probes = [x for x, _ in data[:40]]
    if model._supervised:
        return [model.predict_proba_one(x) for x in probes]
    return [model.assign(x) for x in probes] + [model.centroids()]


# --- one check suite, every wrapper ---------------------------------------------------------------------------

def check_params_are_attributes(case: Case) -> None:
    model = case.build()
    for name in inspect.signature(type(model).__init__).parameters:
        if name != "self":
            assert getattr(model, name) == case.params[name], name
    assert model._get_params() == case.params


def check_clone_is_unfitted_with_equal_params(case: Case) -> None:
    model = case.build()
    learn(model, case.data)
    clone = model.clone()
    assert clone is not model
    assert clone._get_params() == model._get_params()
    assert observe(clone, case.data) == observe(case.build(), case.data)
    assert observe(clone, case.data) != observe(model, case.data)


def check_pickle_round_trip(case: Case) -> None:
    model = case.build()
    half = len(case.data) // 2
    learn(model, case.data[:half])
    restored = pickle.loads(pickle.dumps(model))
    assert observe(restored, case.data) == observe(model, case.data)
    learn(model, case.data[half:])
    learn(restored, case.data[half:])
    assert observe(restored, case.data) == observe(model, case.data)


def check_learning_on_a_copy_leaves_the_original(case: Case) -> None:
    model = case.build()
    half = len(case.data) // 2
    learn(model, case.data[:half])
    before = pickle.dumps(model)
    twin = copy.deepcopy(model)
    inputs = copy.deepcopy(case.data[half:])
    learn(twin, case.data[half:])
    assert pickle.dumps(model) == before
    assert case.data[half:] == inputs  # learn_one does not modify its input


def check_predict_does_not_mutate(case: Case) -> None:
    """Nothing a prediction does is observable: the model then predicts and learns like an untouched twin.

    (Compared by behaviour, not bytes: DBSTREAM legitimately caches its re-clustering on first use.)
    """
    model = case.build()
    half = len(case.data) // 2
    learn(model, case.data[:half])
    twin = copy.deepcopy(model)
    observe(model, case.data[half:])
    assert observe(model, case.data) == observe(twin, case.data)
    learn(model, case.data[half:])
    learn(twin, case.data[half:])
    assert observe(model, case.data) == observe(twin, case.data)


def check_same_seed_same_model(case: Case) -> None:
    first, second = case.build(), case.build()
    learn(first, case.data)
    learn(second, case.data)
    assert pickle.dumps(first) == pickle.dumps(second)


CHECKS = [check_params_are_attributes, check_clone_is_unfitted_with_equal_params, check_pickle_round_trip,
          check_learning_on_a_copy_leaves_the_original, check_predict_does_not_mutate, check_same_seed_same_model]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_estimator_contract(check: Callable[[Case], None], case: Case) -> None:
    check(case)


@pytest.mark.parametrize("module", [clustering, intent, membership], ids=lambda module: module.__name__)
def test_docstring_examples_run(module: Any) -> None:
    assert doctest.testmod(module).failed == 0


def kmeans_centroids() -> str:
    model = BehaviourClusterer("kmeans", 3, seed=7)
    for i in range(300):
        model.learn_one({name: float((i * (k + 3)) % 7) for k, name in enumerate(BEHAVIOUR_FEATURES)})
    return json.dumps(model.centroids(), sort_keys=True)


def test_kmeans_is_the_same_under_any_hash_seed() -> None:
    """River draws KMeans' initial centers in set order; positional keys keep that order fixed."""
    other_seed = "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"
    elsewhere = subprocess.run(
        [sys.executable, "-c", "from tests.test_models import kmeans_centroids; print(kmeans_centroids())"],
        capture_output=True, text=True, timeout=60, check=True, env={"PYTHONHASHSEED": other_seed, "PYTHONPATH": "."})
    assert elsewhere.stdout.strip() == kmeans_centroids()


def blob(center: float, spread: float, rng: random.Random) -> ModelInput:
    return {name: center + rng.gauss(0, spread) for name in BEHAVIOUR_FEATURES}


def test_sampled_kmeans_counts_each_user_once_however_busy() -> None:
    """A user sending hundreds of inputs holds one slot: two groups of 40 users stay the two clusters,
    where an online KMeans lets the busy user's inputs pull a center of their own."""
    rng = random.Random(3)
    model = BehaviourClusterer("sampled_kmeans", 2, seed=1, refit_every=50, sample_users=1024)
    for user in range(80):
        model.learn_one(blob(0.0 if user < 40 else 4.0, 0.3, rng), slot=user)
    busy = 500
    for _ in range(400):
        model.learn_one(blob(9.0, 0.3, rng), slot=busy)
    for _ in range(40):  # ordinary traffic after the busy burst, so a re-fit runs with the busy slot stored
        model.learn_one(blob(0.0, 0.3, rng), slot=rng.randrange(40))
    left, right = model.predict_one(blob(0.0, 0.0, rng)), model.predict_one(blob(4.0, 0.0, rng))
    assert left != right


def test_sampled_kmeans_keeps_cluster_ids_across_refits_and_forgets_slots() -> None:
    rng = random.Random(5)
    model = BehaviourClusterer("sampled_kmeans", 3, seed=2, refit_every=30, sample_users=1024)
    for user in range(90):
        model.learn_one(blob(3.0 * (user % 3), 0.2, rng), slot=user)
    ids = [model.predict_one(blob(3.0 * group, 0.0, rng)) for group in range(3)]
    assert sorted(ids) == [0, 1, 2]
    for user in range(300):  # the groups drift a little; many re-fits, each from fresh k-means++ starts
        model.learn_one(blob(3.0 * (user % 3) + 0.5, 0.2, rng), slot=user % 90)
    assert [model.predict_one(blob(3.0 * group + 0.5, 0.0, rng)) for group in range(3)] == ids
    sample = model._sample
    assert sample is not None and sample.size == 90
    model.forget(7)
    model.forget(7 + 1024)  # the same slot (a sample restored under another models.sample_users)
    model.forget(1000)  # a slot never stored: nothing to forget
    assert sample.size == 89 == int(sample.filled.sum()) and not sample.filled[7]


def test_a_clusterer_pickled_before_sampled_kmeans_restores_as_it_was() -> None:
    """A savepoint of the trainer from before 2026-12-07 holds a River KMeans without the sample's fields."""
    old = BehaviourClusterer("kmeans", 3, seed=7)
    for x in behaviour_points(60):
        old.learn_one(x)
    point = behaviour_points(3)[0]
    expected = old.assign(point)
    for name in ("refit_every", "sample_users", "_sample"):
        del old.__dict__[name]
    restored = pickle.loads(pickle.dumps(old))
    assert restored.assign(point) == expected
    restored.learn_one(point, slot=4)
    assert restored.clusterer == "kmeans" and restored._sample is None


def test_a_sample_pickled_with_other_clustering_features_restores_empty_and_refits() -> None:
    """A savepoint from before ``remove_rate`` joined the inputs (2026-12-08) holds 9-wide rows and centers."""
    rng = random.Random(4)
    model = BehaviourClusterer("sampled_kmeans", 2, seed=1, refit_every=20, sample_users=64)
    for user in range(40):
        model.learn_one(blob(0.0 if user % 2 else 4.0, 0.3, rng), slot=user)
    sample = model._sample
    assert sample is not None and sample.centers
    sample.inputs = sample.inputs[:, :-1].copy()
    sample.centers = {c: {i: v for i, v in center.items() if i < len(BEHAVIOUR_FEATURES) - 1}
                      for c, center in sample.centers.items()}
    restored = pickle.loads(pickle.dumps(model))
    assert restored._sample is not None and restored._sample.size == 0 and not restored.fitted_centers()
    assert restored.assign(blob(0.0, 0.0, rng)) is None  # no cluster rather than one from another space
    for user in range(4):
        restored.learn_one(blob(0.0 if user % 2 else 4.0, 0.3, rng), slot=user)
    assert restored.predict_one(blob(0.0, 0.0, rng)) != restored.predict_one(blob(4.0, 0.0, rng))


def test_a_sample_pickled_with_its_scale_as_two_tuples_restores_and_assigns_alike() -> None:
    """A savepoint from before the shared ``Scaler`` (2026-12-07) holds the sample's scale as ``means`` and
    ``stds`` tuples: the restored sample scales with them."""
    rng = random.Random(9)
    model = BehaviourClusterer("sampled_kmeans", 2, seed=1, refit_every=20, sample_users=64)
    for user in range(40):
        model.learn_one(blob(0.0 if user % 2 else 4.0, 0.3, rng), slot=user)
    sample = model._sample
    assert sample is not None and sample.centers
    point = blob(4.0, 0.3, rng)
    expected = model.assign(point)
    scale = sample.__dict__.pop("fitted_scale")
    sample.__dict__.update(means=scale.means, stds=scale.stds)
    restored = pickle.loads(pickle.dumps(model))
    assert restored._sample is not None and restored._sample.fitted_scale == scale
    assert "means" not in restored._sample.__dict__ and restored.assign(point) == expected


def test_sampled_kmeans_centers_come_with_the_scaler_they_were_fitted_in() -> None:
    """The published scaler is the one of the last re-fit, so a snapshot scores as the trainer assigns."""
    rng = random.Random(8)
    trainer = ModelTrainer(ModelConfig(n_clusters=2, refit_every=40, sample_users=1024))
    for user in range(120):
        trainer.learn_behaviour(blob(0.0 if user % 2 else 5.0, 0.5, rng), "", T0 + user, slot=user % 60)
    clusterer = trainer.models.clusterer
    model = ScoringModel.of(clusterer, trainer.models.intent)
    for group in (0.0, 5.0):
        x = blob(group, 0.5, rng)
        published, trained = model.assign(x), clusterer.assign(x)
        assert published is not None and trained is not None
        assert published.cluster == trained.cluster and published.distance == pytest.approx(trained.distance)


def test_sampled_kmeans_scales_halfway_between_every_learned_input_and_the_sample() -> None:
    """A busy user's hundreds of inputs weigh on the learned inputs' scale, once on the sample's: the
    re-fit takes the middle of the two (docs/models.md, "Scaling for the re-fit")."""
    rng = random.Random(6)
    model = BehaviourClusterer("sampled_kmeans", 2, seed=1, refit_every=10_000, sample_users=1024)
    for user in range(40):
        model.learn_one(blob(0.0 if user % 2 else 4.0, 0.3, rng), slot=user)
    for _ in range(200):
        model.learn_one(blob(9.0, 0.3, rng), slot=99)
    sample = model._sample
    assert sample is not None
    learned_means, learned_variances = dict(model._scaler.means), dict(model._scaler.vars)
    sample.fit(learned_means, learned_variances)
    rows = sample.inputs[sample.filled].astype(float)
    means, variances = sample.scaler
    for i, name in enumerate(BEHAVIOUR_FEATURES):
        assert means[name] == pytest.approx((learned_means[name] + rows[:, i].mean()) / 2)
        assert variances[name] == pytest.approx((learned_variances[name] + rows[:, i].var()) / 2)
    assert sample.fitted_scale.means == tuple(means[name] for name in BEHAVIOUR_FEATURES)


# --- inputs ---------------------------------------------------------------------------------------------------

def feature_values(*types: str) -> dict[str, Any]:
    """A real feature vector after one event of each type, 10 minutes apart."""
    operator = FeatureOperator(FeatureConfig(), LocalPopulation())
    state = None
    for i, event_type in enumerate(types):
        event = Event(f"e{i}", event_type, "u", "u", "", T0 + i * 600_000, "item-1" if event_type != "page_view"
                      else "", "books", 20.0, 1, "", "")
        state, _ = operator.process(state, event)
    assert state is not None
    return operator.vector(state)


def test_inputs_are_finite_numbers_for_every_model_feature() -> None:
    values = feature_values("page_view", "product_view", "add_to_cart", "checkout_start", "purchase")
    x = behaviour_input(values)
    assert tuple(x) == BEHAVIOUR_FEATURES
    assert x["cart_rate"] == pytest.approx(1 / 3)  # 1 cart / (1 view + prior 2)
    assert x["remove_rate"] == 0.0  # no removes: the cart churn of a buyer who keeps what they cart
    assert tuple(intent_input(values)) == INTENT_FEATURES and set(x) - {"remove_rate"} < set(INTENT_FEATURES)
    assert all(isinstance(v, float) for v in intent_input(values).values())


def test_vectors_without_browsing_have_no_behaviour() -> None:
    assert not has_behaviour(feature_values("consent_change"))
    assert has_behaviour(feature_values("consent_change", "page_view"))


def test_model_inputs_are_the_two_inputs_computed_once() -> None:
    """What the user's step learns and scores from: the same as computing each input on its own."""
    values = feature_values("page_view", "product_view", "add_to_cart")
    behaviour, intent = model_inputs(values)
    assert behaviour == behaviour_input(values)
    assert list(intent.items()) == list(intent_input(values).items())
    assert model_inputs(feature_values("consent_change"))[0] is None


# --- pending intent labels ------------------------------------------------------------------------------------

LABELER = IntentLabeler(horizon_ms=24 * HOUR, max_pending=3)


def pending_at(*hours: float) -> PendingExamples:
    pending = PendingExamples()
    for h in hours:
        LABELER.add(pending, T0 + int(h * HOUR), {"at": h})
    return pending


def test_learning_from_a_share_of_the_negatives_keeps_probabilities_calibrated() -> None:
    """Fed every positive and a quarter of the negatives, the classifier that knows it still predicts the
    true purchase rates; one that does not overstates them about threefold."""
    rng = random.Random(11)
    corrected, naive = IntentClassifier(negative_share=0.25), IntentClassifier()
    for _ in range(40_000):
        carts = float(rng.random() < 0.5)
        label = rng.random() < (0.04 if carts == 0.0 else 0.2)
        if label or rng.random() < 0.25:
            corrected.learn_one({"carts": carts}, label)
            naive.learn_one({"carts": carts}, label)
    for carts, rate in ((0.0, 0.04), (1.0, 0.2)):
        assert corrected.predict_proba_one({"carts": carts})[True] == pytest.approx(rate, abs=0.03)
        assert naive.predict_proba_one({"carts": carts})[True] > 2 * rate


def test_a_purchase_labels_examples_within_the_horizon_before_it() -> None:
    pending = pending_at(0, 5, 10)
    settled = LABELER.purchase(pending, T0 + 5 * HOUR)  # the example taken at the purchase itself waits
    assert settled == [({"at": 0}, True)]
    assert [x for _, x in pending.examples] == [{"at": 5}, {"at": 10}]
    assert LABELER.purchase(pending_at(0), T0 + 25 * HOUR) == []  # too late to count


def test_expired_examples_are_negative_at_their_deadline() -> None:
    pending = pending_at(0, 5)
    assert LABELER.next_deadline(pending) == T0 + 24 * HOUR
    assert LABELER.expire(pending, T0 + 24 * HOUR - 1) == []
    assert LABELER.expire(pending, T0 + 24 * HOUR) == [({"at": 0}, False)]
    assert LABELER.next_deadline(pending) == T0 + 29 * HOUR
    LABELER.expire(pending, T0 + 30 * HOUR)
    assert LABELER.next_deadline(pending) is None and pending.examples == []


def test_pending_examples_are_bounded_and_ordered_by_time() -> None:
    pending = pending_at(3, 1, 2, 4)  # one too many; the out-of-order one sorts first and goes
    assert [x for _, x in pending.examples] == [{"at": 2}, {"at": 3}, {"at": 4}]
    assert pending.dropped == 1
    assert LABELER.next_deadline(pending) == T0 + 26 * HOUR


# --- drift ----------------------------------------------------------------------------------------------------

def signal(levels: list[tuple[float, int]], seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(level, 0.05) for level, count in levels for _ in range(count)]


def detections(monitor: DriftMonitor, values: list[float]) -> list[DriftEvent]:
    return [e for i, v in enumerate(values) if (e := monitor.update(v, T0 + i, 1)) is not None]


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_rise_is_drift(detector: str) -> None:
    found = detections(DriftMonitor("intent", "log_loss", detector, warmup=100), signal([(0.3, 2000), (0.6, 500)]))
    assert found and all(T0 + 2000 <= e.ts < T0 + 2200 for e in found[:1])
    assert found[0] == DriftEvent("intent", "log_loss", detector, 1, found[0].ts)
    assert json.loads(found[0].to_json())["id"] == f"intent:log_loss:v1:{found[0].ts}"


@pytest.mark.parametrize("detector", DETECTORS)
def test_a_stationary_stream_or_a_fall_is_not(detector: str) -> None:
    assert detections(DriftMonitor("clusters", "distance", detector, warmup=100), signal([(0.5, 5000)])) == []
    assert detections(DriftMonitor("clusters", "distance", detector, warmup=100),
                      signal([(0.6, 2000), (0.3, 1000)])) == []


def test_nothing_is_reported_during_the_warmup() -> None:
    assert detections(DriftMonitor("intent", "log_loss", warmup=5000), signal([(0.3, 2000), (0.6, 500)])) == []


@pytest.mark.parametrize("detector", DETECTORS)
def test_drift_monitors_pickle(detector: str) -> None:
    monitor = DriftMonitor("intent", "log_loss", detector, warmup=0)
    values = signal([(0.3, 1500), (0.6, 500)])
    detections(monitor, values[:1000])
    restored = pickle.loads(pickle.dumps(monitor))
    assert detections(restored, values[1000:]) == detections(monitor, values[1000:])


# --- hysteresis -----------------------------------------------------------------------------------------------

POLICY = MembershipPolicy(margin=0.2, patience=3)


def scored(best: int, **distances: float) -> Assignment:
    by_cluster = {int(name[1:]): d for name, d in distances.items()}
    return Assignment(best, by_cluster[best], by_cluster)


def memberships(*assignments: Assignment | None) -> list[str | None]:
    membership, segments = Membership(), []
    for assignment in assignments:
        membership = update_membership(POLICY, membership, assignment)
        segments.append(membership.segment)
    return segments


def test_a_slightly_closer_cluster_must_win_three_times_in_a_row() -> None:
    near = scored(2, c1=1.0, c2=0.9)
    assert memberships(scored(1, c1=1.0, c2=2.0), near, near, near) == ["cluster:1"] * 3 + ["cluster:2"]
    back = scored(1, c1=1.0, c2=1.1)
    assert memberships(scored(1, c1=1.0, c2=2.0), near, near, back, near, near) == ["cluster:1"] * 6


def test_a_clearly_closer_cluster_wins_at_once() -> None:
    assert memberships(scored(1, c1=1.0, c2=2.0), scored(2, c1=1.0, c2=0.8)) == ["cluster:1", "cluster:2"]


def test_a_vanished_cluster_or_no_behaviour_ends_membership() -> None:
    assert memberships(scored(1, c1=1.0, c2=2.0), scored(2, c2=1.5)) == ["cluster:1", "cluster:2"]
    assert memberships(scored(1, c1=1.0), None) == ["cluster:1", None]


# --- descriptions ---------------------------------------------------------------------------------------------

def test_descriptions_name_the_largest_deviations_and_a_characteristic_category() -> None:
    assert describe({"sessions": -0.3, "order_value": 0.2}) == "average"
    assert describe({"sessions": -2.0, "cart_rate": 0.9, "order_value": 1.2, "search_share": 0.6}) == \
        "occasional, high spend, carts often"
    stats = ClusterStats()
    for cluster_id, category in [(0, "toys")] * 8 + [(0, "books")] * 2 + [(1, "books")] * 10 + [(2, "books")] * 5 \
            + [(2, "toys")] * 5:
        stats.add(cluster_id, category)
    assert [stats.dominant_category(c) for c in (0, 1, 2)] == ["toys", "books", ""]  # 2: toys, but as everywhere
    assert stats.share(1) == pytest.approx(1 / 3, abs=0.01)


# --- trainer, snapshots, scorer -------------------------------------------------------------------------------

CONFIG = ModelConfig(n_clusters=3, snapshot_every=100, snapshot_interval_ms=HOUR, drift_warmup=0)
VALUES = [feature_values("page_view", "product_view"),
          feature_values("page_view", *["product_view", "add_to_cart"] * 3, "checkout_start", "purchase"),
          feature_values(*["search"] * 4, "product_view")]


def train(trainer: ModelTrainer, n: int, start: int = T0) -> list[ModelSnapshot]:
    snapshots = []
    for i in range(n):
        trainer.learn_vector(VALUES[i % 3], start + i * 1000)
        trainer.learn_intent(intent_input(VALUES[i % 3]), i % 3 == 1, start + i * 1000)
        if (snapshot := trainer.maybe_snapshot()) is not None:
            snapshots.append(snapshot)
    return snapshots


def test_the_first_snapshot_needs_enough_examples_then_count_or_event_time_triggers() -> None:
    trainer = ModelTrainer(CONFIG)
    first = train(trainer, 50)  # 100 learned: 50 vectors + 50 intent examples
    assert [s.version for s in first] == [1]
    assert first[0].cause == "model" and len(first[0].clusters) == 3
    assert train(trainer, 10, start=T0 + 60_000) == []  # 20 learned within a minute of event time
    later = train(trainer, 2, start=T0 + 2 * HOUR)
    assert [s.version for s in later] == [2]  # more than an hour of event time since version 1
    assert trainer.maybe_snapshot() is None  # nothing new learned


def test_racing_event_time_publishes_after_a_tenth_of_snapshot_every_at_the_soonest() -> None:
    """A replay whose examples are hours of event time apart: the interval alone would publish after
    each one; it waits for snapshot_every // 10 (10) examples since the last snapshot."""
    trainer = ModelTrainer(CONFIG)
    published_after = []
    for i in range(300):
        trainer.learn_intent(intent_input(VALUES[i % 3]), i % 3 == 1, T0 + i * 2 * HOUR)
        if trainer.maybe_snapshot() is not None:
            published_after.append(i + 1)
    assert published_after == [100, *range(110, 301, 10)]  # the first by count, then one per ten examples


def test_the_end_of_a_bounded_input_publishes_what_was_learned_since_the_last_snapshot() -> None:
    trainer = ModelTrainer(CONFIG)
    assert trainer.maybe_snapshot(final=True) is None  # nothing learned: nothing to publish
    train(trainer, 10)  # 20 learned: not enough for a first snapshot on its own
    final = trainer.maybe_snapshot(final=True)
    assert final is not None and final.version == 1 and trainer.quality()["examples"] == 10
    assert trainer.maybe_snapshot(final=True) is None


def test_a_drift_publishes_early_with_its_cause() -> None:
    trainer = ModelTrainer(CONFIG)
    train(trainer, 50)
    trainer.learn_vector(VALUES[0], T0 + 60_000)
    trainer.drifted = True  # what learn_vector sets when a monitor reports
    snapshot = trainer.maybe_snapshot()
    assert snapshot is not None and (snapshot.version, snapshot.cause) == (2, "drift")


def published(snapshots: list[ModelSnapshot]) -> list[tuple[Any, ...]]:
    """What scorers see of each snapshot."""
    views = []
    for snapshot in snapshots:
        scorer = ModelScorer()
        scorer.load(snapshot)
        views.append((snapshot.version, snapshot.ts, snapshot.cause, snapshot.clusters,
                      [scorer.score(values) for values in VALUES]))
    return views


def test_a_restored_trainer_publishes_the_same_snapshots() -> None:
    trainer = ModelTrainer(CONFIG)
    train(trainer, 40)
    restored = pickle.loads(pickle.dumps(trainer))
    assert published(train(restored, 80)) == published(train(trainer, 80))


def test_a_trainer_restored_from_before_negative_sampling_follows_what_its_senders_send() -> None:
    trainer = ModelTrainer(CONFIG)
    train(trainer, 40)
    del trainer.models.intent.__dict__["negative_share"]  # as pickled before the parameter existed
    restored = pickle.loads(pickle.dumps(trainer))
    assert restored.models.intent.negative_share == 1.0, "it learned every negative until now"
    restored.learn_intent(intent_input(VALUES[0]), False, T0, weight=4.0)
    assert restored.models.intent.negative_share == 0.25


def test_the_scorer_uses_the_newest_snapshot_only() -> None:
    trainer, scorer = ModelTrainer(CONFIG), ModelScorer()
    assert scorer.score(VALUES[0]) is None
    first, second = train(trainer, 50) + train(trainer, 50, start=T0 + HOUR)
    assert scorer.load(second) and not scorer.load(first) and not scorer.load(second)
    score = scorer.score(VALUES[1])
    assert score is not None and score.version == 2
    assert score.assignment is not None and score.assignment.cluster in score.assignment.distances
    assert 0.0 <= score.intent <= 1.0
    no_behaviour = scorer.score(feature_values("consent_change"))
    assert no_behaviour is not None and no_behaviour.assignment is None
    assert "model" not in second.summary()  # what Redis and the logs show: no model data


def test_training_samples_are_chosen_by_vector_id() -> None:
    ids = [f"user-{i}:f{j}" for i in range(200) for j in range(5)]
    picked = [i for i in ids if in_training_sample(i, 0.25)]
    assert picked == [i for i in ids if in_training_sample(i, 0.25)]
    assert 0.2 < len(picked) / len(ids) < 0.3
    assert all(in_training_sample(i, 1.0) for i in ids)


def test_a_busy_user_is_learned_from_about_train_vectors_per_user_times_in_30_days() -> None:
    def vectors(sessions: int, carts: int) -> list[FeatureVector]:
        values = {"sessions_30d": sessions, "add_to_cart_30d": carts}
        return [FeatureVector(f"user-{i}", j, T0, values) for i in range(100) for j in range(20)]

    config = ModelConfig(train_vectors_per_user=20)
    assert all(learns_from(v, config) for v in vectors(15, 5))  # 20 a month: every one
    busy = [learns_from(v, config) for v in vectors(150, 50)]  # 200 a month: about one in ten
    assert 0.08 < sum(busy) / len(busy) < 0.12
    assert busy == [learns_from(v, config) for v in vectors(150, 50)]  # a replay picks the same
    halved = [learns_from(v, dataclasses.replace(config, train_sample_share=0.5)) for v in vectors(150, 50)]
    assert 0.03 < sum(halved) / len(halved) < 0.07
    assert all(learns_from(v, dataclasses.replace(config, train_vectors_per_user=0)) for v in vectors(150, 50))


def test_model_settings_map_onto_the_model_config() -> None:
    config_fields = [f.name for f in dataclasses.fields(ModelConfig)]
    assert [f.name for f in dataclasses.fields(ModelSettings)] == ["enabled", *config_fields]


def test_descriptions_cover_every_cluster_of_a_trained_model() -> None:
    trainer = ModelTrainer(CONFIG)
    train(trainer, 60)
    descriptions = describe_clusters(trainer.models.clusterer, trainer.stats)
    assert [d.cluster for d in descriptions] == sorted(trainer.models.clusterer.centroids())
    assert all(d.text for d in descriptions)
    assert sum(d.share for d in descriptions) == pytest.approx(1.0)


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=AUC_BINS - 1)), max_size=60))
def test_the_binned_auc_counts_every_pair_of_a_positive_and_a_negative(examples: list[tuple[bool, int]]) -> None:
    """Exact for scores in distinct bins, a tie (one bin) counting half: what an O(n^2) count says."""
    auc = BinnedAUC()
    for label, bin_index in examples:
        auc.update(label, (bin_index + 0.5) / AUC_BINS)
    positives = [b for label, b in examples if label]
    negatives = [b for label, b in examples if not label]
    pairs = len(positives) * len(negatives)
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    assert auc.get() == pytest.approx(wins / pairs if pairs else 0.0)


def test_the_binned_auc_agrees_with_rivers_finest_roc_auc() -> None:
    """On continuous scores it is within the 1/1000 binning of River's ROCAUC at many thresholds, and
    probabilities at or beyond the ends still count (in the first or last bin)."""
    rng = random.Random(5)
    ours, rivers = BinnedAUC(), metrics.ROCAUC(n_thresholds=2000)
    for _ in range(3000):
        label = rng.random() < 0.3
        p = min(max(rng.gauss(0.6 if label else 0.4, 0.2), 0.0), 1.0)
        ours.update(label, p)
        rivers.update(label, p)
    ours.update(True, 1.5)
    ours.update(False, -0.5)
    assert abs(ours.get() - rivers.get()) < 0.005
    for hostile in (math.nan, math.inf, -math.inf):  # a diverging model must not stop the trainer
        ours.update(True, hostile)
    assert 0.0 < ours.get() < 1.0

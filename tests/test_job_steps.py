"""The per-user model and recommendation steps the job runs, as pure logic (no Flink)."""

from __future__ import annotations

import json
import pickle
import struct
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.kafka import sink_options
from connectors.redis_writer import DeadLetterCounter, RedisStateWriter
from jobs.adapters import (
    GlobalObject,
    flush_later,
    learn_interaction,
    learn_training_input,
)
from jobs.local_runner import Table, UserCells
from operators.events import Event
from operators.experiments.attribution import Bounds, Counts
from operators.experiments.config import parse_experiment
from operators.experiments.serving import ExperimentPolicy
from operators.features.config import FeatureConfig
from operators.features.operator import FeatureOperator, FeatureVector
from operators.features.rfm import LocalPopulation
from operators.models.inputs import (
    BEHAVIOUR_FEATURES,
    INTENT_FEATURES,
    behaviour_input,
    intent_example,
    intent_input,
    intent_values,
)
from operators.models.training import ModelScorer, ModelTrainer
from operators.models.user import RESCORE_SLOTS, TrainingInput, UserModels, UserModelState
from operators.privacy.identity import Handover
from operators.profile import ProfileOperator, ProfileUpdate
from operators.recs.config import RecConfig
from operators.recs.model import ItemModel
from operators.recs.serving import Published, RecommendationServer, RecommenderCore, RecRequest
from operators.recs.user import UserRecState
from operators.rules.catalog import RuleCatalog
from operators.rules.engine import RuleState, SegmentEngine
from operators.user_core import RECS_ROUTE, CoreSettings, IdentitySettings, StageModelScores, Step, UserCore
from personalize import settings as settings_module
from state.codecs import (
    HALF_MAX,
    CodecError,
    decode_models,
    decode_profile,
    decode_recs,
    encode_models,
    encode_profile,
    encode_recs,
)
from state.slots import StoredValues
from tests.conftest import free_ports
from tests.test_models import CONFIG, VALUES, train
from tests.test_rules import COMPILER, DEFAULT_RULES

T0 = 1_767_225_600_000
HOUR = 3_600_000


def vector(values_index: int, ts: int, version: int = 1, user: str = "u1") -> FeatureVector:
    return FeatureVector(user, version, ts, dict(VALUES[values_index]))


def trained_scorer() -> tuple[ModelTrainer, ModelScorer]:
    trainer, scorer = ModelTrainer(CONFIG, lineage="a"), ModelScorer()
    for snapshot in train(trainer, 200):
        scorer.load(snapshot)
    return trainer, scorer


# --- per-user model steps -------------------------------------------------------------------------------------

def test_a_vector_becomes_a_training_sample_and_a_pending_example_unless_a_purchase_emitted_it() -> None:
    models, state = UserModels(CONFIG), UserModelState()
    learned = models.vector(state, vector(1, T0), by_purchase=False)
    assert [(i.ts, i.label) for i in learned] == [(T0, None)]
    assert len(state.pending.examples) == 1
    models.vector(state, vector(1, T0 + 1, 2), by_purchase=True)
    assert len(state.pending.examples) == 1  # the order's next item would label it: no example
    assert models.deadline(state) == T0 + CONFIG.intent_horizon_ms


def test_purchases_label_positive_and_deadlines_negative() -> None:
    models, state = UserModels(CONFIG), UserModelState()
    models.vector(state, vector(0, T0), by_purchase=False)
    models.vector(state, vector(0, T0 + 2 * HOUR), by_purchase=False)
    assert [i.label for i in models.purchase(state, T0 + HOUR)] == [True]
    assert models.expire(state, T0 + 2 * HOUR + CONFIG.intent_horizon_ms - 1) == []
    assert [i.label for i in models.expire(state, T0 + 2 * HOUR + CONFIG.intent_horizon_ms)] == [False]
    assert models.deadline(state) is None


def test_every_positive_and_a_share_of_the_negatives_reach_the_trainer_the_same_in_every_run() -> None:
    models, again = (UserModels(replace(CONFIG, intent_negative_share=0.25)) for _ in range(2))
    examples = [(float(i),) * len(INTENT_FEATURES) for i in range(2000)]
    negatives = models._settled([(values, False) for values in examples], T0)
    assert negatives == again._settled([(values, False) for values in examples], T0), "the same in every run"
    assert 0.2 < len(negatives) / len(examples) < 0.3
    assert {example.weight for example in negatives} == {4.0}, "each stands for four"
    assert len(models._settled([(values, True) for values in examples], T0)) == len(examples)
    assert len(UserModels(replace(CONFIG, intent_negative_share=1.0))._settled(
        [(values, False) for values in examples], T0)) == len(examples)


def test_training_inputs_teach_the_trainer_without_a_user() -> None:
    models, trainer = UserModels(CONFIG), ModelTrainer(CONFIG)
    state = UserModelState()
    inputs = models.vector(state, vector(1, T0), by_purchase=False) + models.purchase(state, T0 + 1)
    restored = [pickle.loads(pickle.dumps(i)) for i in inputs]  # they cross an operator boundary pickled
    for training_input in restored:
        assert isinstance(training_input, TrainingInput)
        training_input.learn(trainer)
    assert (trainer.vectors_learned, trainer.intent_examples) == (1, 1)


def test_scoring_sets_intent_and_reports_only_membership_changes() -> None:
    _, scorer = trained_scorer()
    models, state = UserModels(CONFIG), UserModelState()
    assert models.score(state, vector(0, T0), ModelScorer()) is None  # no snapshot yet: no score
    first = models.score(state, vector(0, T0), scorer)
    assert first is not None and first.left is None and first.entered == state.membership.segment
    assert first.cause == "model" and first.score.version == scorer.version
    assert state.intent is not None and 0.0 <= state.intent <= 1.0 and state.version == scorer.version
    assert models.score(state, vector(0, T0 + 1, 2), scorer) is None  # same cluster: nothing to emit


def test_a_newer_snapshot_rescores_the_latest_vector_and_keeps_its_intent() -> None:
    trainer, scorer = trained_scorer()
    models, state = UserModels(CONFIG), UserModelState()
    assert models.rescore(state, scorer) is None and state.rescores == 0  # nothing scored yet
    models.score(state, vector(0, T0, version=5), scorer)
    scored_intent, first_version = state.intent, state.version
    assert state.behaviour is not None and (state.vector_version, state.rescores) == (5, 0)
    assert models.rescore(state, scorer) is None and state.rescores == 0, "the same snapshot: no re-score"
    for snapshot in train(trainer, 400, start=T0 + 10 * HOUR):
        scorer.load(snapshot)
    assert scorer.version > first_version
    models.rescore(state, scorer)
    assert (state.version, state.rescores, state.intent) == (scorer.version, 1, scored_intent)
    score = models.last_score
    assert score is not None and score.assignment == scorer.assign(
        dict(zip(BEHAVIOUR_FEATURES, state.behaviour, strict=True)))
    assert 5 * RESCORE_SLOTS < state.scores_version < 6 * RESCORE_SLOTS, "above the vector's writes, below the next's"
    models.score(state, vector(0, T0 + 1, version=6), scorer)
    assert state.rescores == 0 and state.scores_version == 6 * RESCORE_SLOTS


def test_an_intent_deadline_rescores_with_a_newer_snapshot_and_writes_the_scores() -> None:
    """The core re-scores at an intent deadline (a day after a vector), not at other wake-ups."""
    trainer, scorer = trained_scorer()
    settings = CoreSettings(profile=ProfileOperator(), features=FeatureConfig(), features_enabled=True, topics={},
                            allowed_lateness_ms=0, models=CONFIG)
    core, cells = UserCore(settings, FeatureOperator(FeatureConfig(), LocalPopulation())), UserCells()
    core.scorer = scorer

    def models_step(vector_: FeatureVector | None, now: int | None) -> list[StageModelScores]:
        step, values = Step(), StoredValues(cells)
        core._models(values, step, "u1", vector_, None, now)
        values.store()
        return [write for write in step.redis if isinstance(write, StageModelScores)]

    assert [write.version for write in models_step(vector(0, T0, version=5), None)] == [5 * RESCORE_SLOTS]
    for snapshot in train(trainer, 400, start=T0 + 10 * HOUR):
        scorer.load(snapshot)
    assert models_step(None, T0 + HOUR) == [], "no intent deadline was due"
    rescored = models_step(None, T0 + CONFIG.intent_horizon_ms)
    assert [write.version for write in rescored] == [5 * RESCORE_SLOTS + 1]
    assert rescored[0].fields[:2] == ["model_version", scorer.version]
    assert decode_models(cells["models"].value() or b"").rescores == 1


def test_model_state_codec_round_trip_is_compact() -> None:
    models, state = UserModels(CONFIG), UserModelState()
    for i in range(CONFIG.intent_max_pending):
        models.vector(state, vector(i % 3, T0 + i, i + 1), by_purchase=False)
    _, scorer = trained_scorer()
    models.score(state, vector(1, T0 + 99, 99), scorer)
    data = encode_models(state)
    restored = decode_models(data)
    assert restored.membership == state.membership and restored.intent == state.intent
    assert [ts for ts, _ in restored.pending.examples] == [ts for ts, _ in state.pending.examples]
    for (_, before), (_, after) in zip(state.pending.examples, restored.pending.examples, strict=True):
        assert len(after) == len(before) == len(INTENT_FEATURES)
        assert all(a == pytest.approx(b, rel=1e-3, abs=1e-4) for a, b in zip(after, before, strict=True))
    assert (restored.behaviour, restored.vector_version, restored.rescores) == (state.behaviour, 99, 0)
    assert restored.behaviour is not None and len(restored.behaviour) == len(BEHAVIOUR_FEATURES)
    assert len(data) < 1_100, "16 pending examples must stay well under the 2 KB per-user budget"
    assert encode_models(restored) == data  # decoding is exact: a stored example is learned as stored


def test_a_pending_example_beyond_half_precision_is_capped_not_fatal() -> None:
    example = {name: 0.0 for name in INTENT_FEATURES} | {"email_open_rate": 100_000.0}
    state = UserModelState()
    state.pending.examples.append((T0, intent_values(example)))
    restored = decode_models(encode_models(state))
    assert intent_example(restored.pending.examples[0][1])["email_open_rate"] == HALF_MAX


def test_model_state_of_the_previous_codec_version_is_still_read() -> None:
    values = list(range(len(INTENT_FEATURES)))
    v1 = json.dumps({"v": 1, "p": [[T0, values]], "d": 2, "m": [3, None, 0], "i": 0.25, "s": 7}).encode()
    state = decode_models(v1)
    assert state.pending.examples == [(T0, tuple(values))]
    assert (state.pending.dropped, state.membership.cluster, state.intent, state.version) == (2, 3, 0.25, 7)
    header = b'{"d":2,"m":[3,null,0],"i":0.25,"s":7}'
    v2 = b"\x02" + struct.pack("<I", len(header)) + header
    before_rescores = decode_models(v2 + struct.pack(f"<q{len(INTENT_FEATURES)}e", T0, *values))
    assert before_rescores.pending.examples == [(T0, tuple(float(v) for v in values))]
    assert (before_rescores.version, before_rescores.behaviour, before_rescores.rescores) == (7, None, 0)
    with pytest.raises(CodecError):
        decode_models(b"\x09" + v1)
    with pytest.raises(CodecError, match="not readable"):
        decode_models(encode_models(state)[:-1])  # a cut example


# --- snapshots through the topic ------------------------------------------------------------------------------

def test_a_new_lineage_replaces_the_scorer_model_whatever_its_version() -> None:
    old, _ = trained_scorer()
    newer = ModelTrainer(CONFIG, lineage="b")
    scorer = ModelScorer()
    for snapshot in train(old, 400):
        scorer.load(snapshot)
    assert scorer.version > 1
    first_of_new = train(newer, 50)[0]
    assert first_of_new.version == 1 and scorer.load(first_of_new)
    assert (scorer.lineage, scorer.version) == ("b", 1)
    assert not scorer.load(first_of_new)  # a repeat (a replay after a restore) changes nothing


# --- model segments in the segment engine ---------------------------------------------------------------------

def engine() -> SegmentEngine:
    return SegmentEngine(RuleCatalog.from_definitions(DEFAULT_RULES, COMPILER).rule_set(COMPILER))


def test_model_segments_share_the_change_sequence_and_survive_rule_evaluation() -> None:
    rules, state = engine(), RuleState()
    entered = rules.move_model_segment(state, "u1", "cluster:2", T0, {"kind": "model", "model_version": 3}, 3)
    assert [(c.action, c.segment, c.seq, c.cause["kind"]) for c in entered] == [("enter", "cluster:2", 1, "model")]
    event = Event("e1", "page_view", "u1", "u1", "", T0 + 1, "", "", 0.0, 1, "", "{}")
    changes = rules.observe(state, event, T0 + 1, {})
    assert "cluster:2" in state.members and all(c.segment != "cluster:2" for c in changes)
    moved = rules.move_model_segment(state, "u1", "cluster:4", T0 + 2, {"kind": "drift", "model_version": 4}, 4)
    assert [(c.action, c.segment) for c in moved] == [("exit", "cluster:2"), ("enter", "cluster:4")]
    assert moved[-1].seq == moved[0].seq + 1 and "cluster:4" in moved[-1].current
    left = rules.move_model_segment(state, "u1", None, T0 + 3, {"kind": "model", "model_version": 4}, 4)
    assert [(c.action, c.segment) for c in left] == [("exit", "cluster:4")]


def test_high_purchase_intent_follows_the_intent_score_with_hysteresis() -> None:
    rules, state = engine(), RuleState()

    def observe(ts: int, intent: float | None) -> list[tuple[str, str]]:
        event = Event(f"e{ts}", "product_view", "u1", "u1", "", ts, "i1", "books", 0.0, 1, "", "{}")
        features = {} if intent is None else {"intent": intent}
        return [(c.action, c.segment) for c in rules.observe(state, event, T0, features)
                if c.segment == "high_purchase_intent"]

    assert observe(T0, None) == []
    assert observe(T0 + 1, 0.75) == [("enter", "high_purchase_intent")]
    assert observe(T0 + 2, 0.6) == []  # between the thresholds: stays
    assert observe(T0 + 3, 0.4) == [("exit", "high_purchase_intent")]


# --- recommendations ------------------------------------------------------------------------------------------

def view(user_state: UserRecState, config: RecConfig, item: str, ts: int, event_type: str = "product_view",
         user: str = "u1") -> RecRequest:
    event = Event(f"{user}-{ts}", event_type, user, user, "", ts, item, "books", 10.0, 1, "", "{}")
    interaction = user_state.remember(event, config, "", ())
    return RecRequest(user, event.event_id, ts, interaction, user_state, ())


def test_the_server_learns_first_then_publishes_only_meaningful_changes() -> None:
    config = RecConfig()
    server = RecommendationServer(config)
    alice, bob = UserRecState(), UserRecState()
    for i, item in enumerate(["dune", "foundation", "hyperion"]):
        server.handle(view(alice, config, item, T0 + i, user="alice"), None)
    first = server.handle(view(bob, config, "dune", T0 + 10, user="bob"), None)
    assert first is not None and first.seq == 1 and first.record_id == f"bob:bob-{T0 + 10}"
    assert "foundation" in first.ranking.item_ids()
    assert any("covisit" in c.reasons for c in first.ranking.candidates)
    published = Published(first.seq, tuple(first.ranking.item_ids()))
    assert server.handle(view(bob, config, "dune", T0 + 11, user="bob"), published) is None  # same list


def test_checkout_empties_the_list_once_and_forgetting_publishes_nothing() -> None:
    config = RecConfig()
    server = RecommendationServer(config)
    user = UserRecState()
    listed = server.handle(view(user, config, "dune", T0), None)
    assert listed is not None and listed.ranking.item_ids()
    published = Published(listed.seq, tuple(listed.ranking.item_ids()))
    checkout = server.handle(view(user, config, "", T0 + 1, "checkout_start"), published)
    assert checkout is not None and checkout.ranking.suppressed == "checkout" and checkout.seq == 2
    emptied = Published(checkout.seq, ())
    assert server.handle(view(user, config, "", T0 + 2, "checkout_start"), emptied) is None
    assert server.handle(RecRequest("u1", "", T0 + 3, None, None, ()), emptied) is None


def test_rec_state_codec_round_trip() -> None:
    config = RecConfig()
    user = UserRecState()
    for i, (item, kind) in enumerate([("a", "product_view"), ("b", "add_to_cart"), ("c", "purchase"),
                                      ("d", "checkout_start")]):
        view(user, config, item, T0 + i, kind)
    assert decode_recs(encode_recs(user)) == user


def test_dead_letter_counts_wait_for_redis_instead_of_failing_the_job() -> None:
    port = free_ports(1)[0]  # nothing listens there
    redis_settings = replace(settings_module.load(environ={}).redis, url=f"redis://127.0.0.1:{port}/0",
                             flush_interval_ms=0)
    counter = DeadLetterCounter(redis_settings)
    counter.count("invalid_json")
    counter.count("invalid_json")
    counter.count("missing_field")
    assert counter.counts == {"invalid_json": 2, "missing_field": 1}  # kept for the next flush
    counter.close()


# --- global objects: written rarely, logged in between ------------------------------------------------------

class FakeValueState:
    def __init__(self) -> None:
        self.stored: bytes | None = None
        self.writes = 0

    def value(self) -> Any:
        return pickle.loads(self.stored) if self.stored is not None else None

    def update(self, value: Any) -> None:
        self.stored = pickle.dumps(value)
        self.writes += 1

    def clear(self) -> None:
        self.stored = None


class FakeListState:
    def __init__(self) -> None:
        self.entries: list[bytes] = []

    def add(self, entry: bytes) -> None:
        self.entries.append(entry)

    def get(self) -> list[bytes]:
        return list(self.entries)

    def clear(self) -> None:
        self.entries = []


class FakeContext:
    """What GlobalObject asks of a runtime context and a timer service (one key's state)."""

    def __init__(self) -> None:
        self.value, self.log, self.now, self.timers = FakeValueState(), FakeListState(), 0, []

    def get_state(self, descriptor: Any) -> FakeValueState:
        return self.value

    def get_list_state(self, descriptor: Any) -> FakeListState:
        return self.log

    def current_processing_time(self) -> int:
        return self.now

    def register_processing_time_timer(self, timestamp: int) -> None:
        self.timers.append(timestamp)


def global_list(context: FakeContext) -> GlobalObject:
    return GlobalObject(context, "test", list, lambda items, entry: items.append(entry), 1000)  # type: ignore[arg-type]


def test_a_global_object_is_written_once_per_interval_and_a_restore_replays_its_log() -> None:
    context = FakeContext()
    model = global_list(context)
    for now, entry in ((0, b"a"), (100, b"b"), (200, b"c")):
        context.now = now
        model.get("k").append(entry)
        model.changed("k", context, entry)  # type: ignore[arg-type]
    assert context.value.writes == 1 and context.log.entries == [b"b", b"c"] and context.timers == [1000]
    assert global_list(context).get("k") == [b"a", b"b", b"c"]  # restored: the written object plus its log
    model.on_timer("k", 200)  # another timer of the function (a Redis flush): not due yet
    assert context.value.writes == 1
    model.on_timer("k", 1000)
    assert context.value.writes == 2 and context.log.entries == [] and context.value.value() == [b"a", b"b", b"c"]
    context.now = 1100
    model.get("k").append(b"d")
    model.changed("k", context, b"d", force=True)  # type: ignore[arg-type]
    assert context.value.writes == 3 and context.log.entries == []


def test_replaying_logged_inputs_rebuilds_the_same_models() -> None:
    config = RecConfig()
    server, replayed = RecommendationServer(config), RecommendationServer(config).model
    alice = UserRecState()
    for i, item in enumerate(["dune", "foundation", "hyperion", "dune"]):
        request = view(alice, config, item, T0 + i, user="alice")
        server.handle(request, None)
        learn_interaction(config, replayed, pickle.dumps(request.interaction))
    # Ranking caches similarities in the model, so compare what the models rank, not their bytes.
    ranked = [RecommendationServer(config, model).recommender.rank(alice, (), T0 + 10).candidates
              for model in (server.model, replayed)]
    assert ranked[0] and ranked[0] == ranked[1]

    trainer, logged = ModelTrainer(CONFIG, lineage="a"), ModelTrainer(CONFIG, lineage="a")
    for i in range(240):
        values = VALUES[i % 3]
        training_input = (TrainingInput(T0 + i * 1000, behaviour_input(values)) if i % 2 else
                          TrainingInput(T0 + i * 1000, intent_input(values), label=i % 3 == 1))
        training_input.learn(trainer)
        trainer.maybe_snapshot()
        learn_training_input(logged, pickle.dumps(training_input))
    assert (logged.version, logged.quality()) == (trainer.version, trainer.quality())
    for values in VALUES:  # equal models (their pickles differ only in how shared inputs are memoised)
        assert logged.models.clusterer.assign(behaviour_input(values)) == \
            trainer.models.clusterer.assign(behaviour_input(values))
        assert logged.models.intent.predict_proba_one(intent_input(values)) == \
            trainer.models.intent.predict_proba_one(intent_input(values))


def test_after_an_erasure_a_users_lists_count_on_from_the_counter_base() -> None:
    from operators.privacy.consent import COUNTER_STRIDE

    config = RecConfig()
    server = RecommendationServer(config)
    server.handle(view(UserRecState(), config, "dune", T0, user="alice"), None)
    request = view(UserRecState(), config, "dune", T0 + 1, user="bob")._replace(seq_base=COUNTER_STRIDE)
    recs = server.handle(request, None)
    assert recs is not None and recs.seq == COUNTER_STRIDE + 1


def test_a_flush_is_scheduled_when_something_is_staged_and_only_then() -> None:
    """Event-time timers stage changes too (dormancy, session closes): each such staging must lead to a
    flush even when no event follows, and an empty buffer needs no timer."""
    (port,) = free_ports(1)
    sink = RedisStateWriter(replace(settings_module.load(environ={}).redis, url=f"redis://127.0.0.1:{port}/0"))
    function = SimpleNamespace(sink=sink, flush_timer_set=False)
    context = FakeContext()
    flush_later(function, context, 200)  # type: ignore[arg-type]
    assert context.timers == [] and not function.flush_timer_set
    sink.stage_profile(ProfileUpdate("nora", 1, {"page_view": 1}, 0, 0, "e1", "page_view", 0))
    flush_later(function, context, 200)  # type: ignore[arg-type]
    flush_later(function, context, 200)  # type: ignore[arg-type]
    assert context.timers == [200] and function.flush_timer_set  # one timer per pending batch


def test_the_identity_loop_is_at_least_once_by_default_and_the_outputs_exactly_once() -> None:
    settings = settings_module.load(environ={})
    assert settings.privacy.handover_delivery == "at-least-once"
    loop = sink_options(settings.kafka, ["identity.handover"], "internal-x", 1, settings.privacy.handover_delivery)
    assert loop["sink.delivery-guarantee"] == "at-least-once" and "sink.transactional-id-prefix" not in loop
    outputs = sink_options(settings.kafka, ["users.profiles", "segments.changes"], "x")
    assert outputs["sink.delivery-guarantee"] == "exactly-once" and outputs["sink.transactional-id-prefix"] == "x"


def merging_core() -> UserCore:
    """The per-user core with identity stitching, for its merge step alone."""
    identity = IdentitySettings("identity.handover", "identity.merges", 16)
    settings = CoreSettings(profile=ProfileOperator(), features=FeatureConfig(), features_enabled=True, topics={},
                            allowed_lateness_ms=0, identity=identity)
    return UserCore(settings, FeatureOperator(FeatureConfig(), LocalPopulation()))


def anonymous_handover(views: int) -> Handover:
    """What ``anon:c1`` ships when it logs in as alice after ``views`` product views."""
    profile = None
    for i in range(views):
        profile, _ = ProfileOperator().process(profile, Event(
            f"a{i}", "product_view", "anon:c1", "", "c1", T0 + i, "i1", "shoes", 1.0, 1, "", ""))
    assert profile is not None
    identify = Event("id1", "identify", "alice", "alice", "", T0 + views, "", "", 0.0, 0, "", "")
    return Handover("anon:c1", "alice", identify, {"profile": encode_profile(profile)})


def test_a_redelivered_handover_merges_once() -> None:
    """What the at-least-once identity loop relies on: after a failure the known user may read the
    handover twice, the second copy possibly from the replay (docs/privacy.md)."""
    core, cells = merging_core(), UserCells()
    step = Step()
    values = StoredValues(cells)
    core._merge(values, step, anonymous_handover(3))
    values.store()
    assert [record.topic for record in step.records] == ["identity.merges"]
    merged = cells["profile"].value()
    assert merged is not None and decode_profile(merged).counts == {"product_view": 3}
    again, values = Step(), StoredValues(cells)
    core._merge(values, again, anonymous_handover(4))  # the same anonymous key: skipped
    values.store()
    assert again.records == [] and cells["profile"].value() == merged


def test_a_visitor_from_another_arm_counts_a_crossover_in_the_known_users_arm() -> None:
    """docs/experiments.md: the known user's arm wins; the visitor's other arm is a crossover, counted there."""
    identity = IdentitySettings("identity.handover", "identity.merges", 16)
    settings = CoreSettings(profile=ProfileOperator(), features=FeatureConfig(), features_enabled=True, topics={},
                            allowed_lateness_ms=0, identity=identity, recs=RecConfig())
    core, cells = UserCore(settings, FeatureOperator(FeatureConfig(), LocalPopulation())), UserCells()
    cells["recs"].update(encode_recs(UserRecState(arms={"recs-v1": "recs", "old": "a"})))
    handover = anonymous_handover(2)
    visitor = UserRecState(arms={"recs-v1": "control", "old": "a", "other": "b"})
    handover = replace(handover, states={**handover.states, "recs": encode_recs(visitor)})
    step, values = Step(), StoredValues(cells)
    core._merge(values, step, handover)
    values.store()
    assert decode_recs(cells["recs"].value() or b"").arms == {"recs-v1": "recs", "old": "a", "other": "b"}
    requests = [message for route, _, message in step.sends if route == RECS_ROUTE]
    assert [request.crossed for request in requests] == [(("recs-v1", "recs"),)]
    experiment = parse_experiment({"id": "recs-v1", "control": "control", "conversion_window": "1d", "arms": [
        {"id": "control", "weight": 1, "treatment": "none"}, {"id": "recs", "weight": 1, "treatment": "personalized"}]})
    shard = RecommenderCore(RecConfig(), ExperimentPolicy((experiment,), b"k" * 32, Bounds()))
    counted = shard.on_requests(ItemModel(), requests, Table(), Table())
    assert counted.deltas == [("recs-v1", "recs", Counts(crossovers=1))] and not counted.outputs

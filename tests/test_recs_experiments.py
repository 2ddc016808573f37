"""The recommender core with experiments: the arm picks the list, shadow lists, exposures and attribution."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.local_runner import Table
from jobs.pipeline import experiment_definitions, secret_source
from operators.events import Event
from operators.experiments.assignment import Assignment, assign
from operators.experiments.attribution import Bounds, Counts, ExperimentState, Exposure
from operators.experiments.config import PAUSED, Entry, entry_from_json, parse_experiment
from operators.experiments.serving import ExperimentPolicy, by_experiment
from operators.recs.config import RecConfig
from operators.recs.model import ItemModel
from operators.recs.serving import Forget, Published, RecList, RecommenderCore, RecRequest, RecStep
from operators.recs.user import UserRecState
from personalize import settings as settings_module
from personalize.settings import SettingsError
from state.codecs import decode_arm_counts, decode_experiments, encode_arm_counts, encode_experiments
from tests.test_experiments import SECRET, definition

T0 = 1_767_225_600_000
CONFIG = RecConfig()
EXPERIMENT = parse_experiment(definition(arms=[
    {"id": "control", "weight": 1, "treatment": "none"},
    {"id": "popular", "weight": 1, "treatment": "popularity"},
    {"id": "recs", "weight": 1, "treatment": "personalized"}]))


class Shard:
    """One recommender shard driven as the Flink function drives it, with dict tables."""

    def __init__(self) -> None:
        self.core = RecommenderCore(CONFIG, ExperimentPolicy((EXPERIMENT,), SECRET, Bounds()))
        self.model = ItemModel()
        self.published: Table[Published] = Table()
        self.states: Table[ExperimentState] = Table()
        self.users: dict[str, UserRecState] = {}

    def send(self, user: str, event_type: str, item: str, ts: int, rank: bool = True,
             attributes: str = "{}", price: float = 0.0) -> RecStep:
        """What the user operator sends for one event of ``user``."""
        event = Event(f"{user}-{ts}", event_type, user, user, "", ts, item, "books", price, 1, "", attributes)
        state = self.users.setdefault(user, UserRecState())
        interaction = state.remember(event, CONFIG, "", ()) if rank else None
        request = RecRequest(user, event.event_id, ts, interaction, state, (), event=event, rank=rank)
        return self.core.on_requests(self.model, [request], self.published, self.states)


def arm_of(shard: Shard, user: str) -> str:
    return shard.states.get(user).assignments[EXPERIMENT.id].arm  # type: ignore[union-attr]


def warmed_up() -> Shard:
    """A shard whose model knows that people who view a view b, c and d."""
    shard = Shard()
    for n in range(30):
        for offset, item in enumerate("abcd"):
            shard.send(f"warm{n}", "product_view", item, T0 + 10 * n + offset)
    return shard


def test_each_arm_gets_its_treatment_and_every_list_says_which() -> None:
    shard = warmed_up()
    lists: dict[str, list[RecList]] = {"control": [], "popular": [], "recs": []}
    for n in range(60):
        user = f"u{n}"
        step = shard.send(user, "product_view", "a", T0 + 10_000 + n)
        arm = arm_of(shard, user)
        lists[arm] += [output for output in step.outputs if isinstance(output, RecList)]
        assert step.shadows == (arm == "control")
        assert by_experiment(step.deltas) == {EXPERIMENT.id: [(arm, Counts(exposures=1, exposed_users=1))]}
    assert not lists["control"]  # shown nothing: the shadow list is counted, never emitted
    assert lists["popular"] and lists["recs"]
    assert all((recs.experiment, recs.arm) == (EXPERIMENT.id, "popular") for recs in lists["popular"])
    assert all(set(c.reasons) == {"trending"} for recs in lists["popular"] for c in recs.ranking.candidates)
    assert any("covisit" in c.reasons for recs in lists["recs"] for c in recs.ranking.candidates)


def test_a_click_and_a_purchase_of_an_exposed_item_count_for_the_arm() -> None:
    shard = warmed_up()
    shard.send("u1", "product_view", "a", T0 + 10_000)
    arm = arm_of(shard, "u1")
    shown = shard.published.get("u1")
    assert shown is not None and "b" in shown.items
    click = shard.send("u1", "product_view", "b", T0 + 10_001)
    assert (EXPERIMENT.id, arm, Counts(clicks=1)) in click.deltas
    purchase = shard.send("u1", "purchase", "b", T0 + 10_002, price=20.0)
    assert (EXPERIMENT.id, arm, Counts(conversions=1, converted_users=1, revenue=20.0, revenue_sq=400.0)) \
        in purchase.deltas


def test_a_clients_view_exposes_without_ranking() -> None:
    shard = warmed_up()
    view = '{"properties": {"items": ["x", "y"], "experiment_id": "recs-v1"}}'
    step = shard.send("u1", "recommendation_view", "", T0 + 10_000, rank=False, attributes=view)
    assert not step.outputs and shard.published.get("u1") is None
    assert step.deltas == [(EXPERIMENT.id, arm_of(shard, "u1"), Counts(exposures=1, exposed_users=1))]
    assert shard.states.get("u1").exposures[0].items == ("x", "y")  # type: ignore[union-attr]


def test_the_arm_the_user_operator_remembers_wins_over_the_hash() -> None:
    """A visitor who logged in keeps their arm: the user operator sends it with the request."""
    shard = warmed_up()
    shard.send("u1", "product_view", "a", T0 + 10_000)
    hashed = arm_of(shard, "u1")
    kept = next(arm.id for arm in EXPERIMENT.arms if arm.id != hashed)
    state = shard.users["u1"]
    event = Event("u1-x", "product_view", "u1", "u1", "", T0 + 10_001, "b", "books", 0.0, 1, "", "{}")
    request = RecRequest("u1", event.event_id, event.ts, state.remember(event, CONFIG, "", ()), state, (),
                         event=event, arm=(EXPERIMENT.id, kept))
    step = shard.core.on_requests(shard.model, [request], shard.published, shard.states)
    assert arm_of(shard, "u1") == kept
    assert all(recs.arm == kept for recs in step.outputs if isinstance(recs, RecList))
    # A client's view on a key the recommender has not seen counts in the remembered arm too.
    view = Event("u9-v", "recommendation_view", "u9", "u9", "", T0 + 10_002, "", "", 0.0, 1, "",
                 '{"properties": {"items": ["a"]}}')
    hashed_u9 = assign(SECRET, EXPERIMENT, "u9")
    other = next(arm.id for arm in EXPERIMENT.arms if arm.id != hashed_u9)
    request = RecRequest("u9", view.event_id, view.ts, None, UserRecState(), (), event=view, rank=False,
                         arm=(EXPERIMENT.id, other))
    step = shard.core.on_requests(shard.model, [request], shard.published, shard.states)
    assert step.deltas == [(EXPERIMENT.id, other, Counts(exposures=1, exposed_users=1))]


def test_a_forgotten_user_leaves_no_experiment_state() -> None:
    shard = warmed_up()
    shard.send("u1", "product_view", "a", T0 + 10_000)
    assert shard.states.get("u1") is not None
    step = shard.core.on_requests(shard.model, [RecRequest("u1", "", T0 + 10_001, None, None, (), erase=True)],
                                  shard.published, shard.states)
    assert step.outputs == [Forget("u1", True)]
    assert shard.states.get("u1") is None and shard.published.get("u1") is None


def test_without_experiments_lists_carry_no_arm() -> None:
    core, model = RecommenderCore(CONFIG), ItemModel()
    published: Table[Published] = Table()
    states: Table[ExperimentState] = Table()
    user = UserRecState()
    for ts, item in enumerate("ab"):
        event = Event(f"e{ts}", "product_view", "u", "u", "", T0 + ts, item, "books", 0.0, 1, "", "{}")
        step = core.on_requests(model, [RecRequest("u", event.event_id, event.ts, user.remember(event, CONFIG, "", ()),
                                                   user, ())], published, states)
    lists = [output for output in step.outputs if isinstance(output, RecList)]
    assert lists and b'"arm"' not in lists[0].to_json(0) and not states


items = st.tuples(st.text(max_size=8), st.text(max_size=8))


@given(st.dictionaries(st.text(max_size=10), st.tuples(st.text(max_size=10), st.integers(-1, 2**53),
                                                       st.booleans(), st.floats(0, 1e9)), max_size=4),
       st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10), st.integers(0, 2**53), items), max_size=4))
def test_the_experiment_state_codec_round_trips(assignments: dict[str, tuple[str, int, bool, float]],
                                                exposures: list[tuple[str, str, int, tuple[str, ...]]]) -> None:
    state = ExperimentState({k: Assignment(*v) for k, v in assignments.items()}, [Exposure(*e) for e in exposures])
    assert decode_experiments(encode_experiments(state)) == state


@given(st.integers(-(2**63), 2**63 - 1), st.dictionaries(st.text(max_size=10), st.builds(
    Counts, *(st.integers(0, 2**40) for _ in range(5)), st.floats(0, 1e9), st.floats(0, 1e12),
    st.integers(0, 2**20)), max_size=4))
def test_the_arm_counts_codec_round_trips(watermark: int, counts: dict[str, Counts]) -> None:
    assert decode_arm_counts(encode_arm_counts(watermark, counts, EXPERIMENT)) == (watermark, counts, EXPERIMENT)


def test_a_users_state_keeps_nothing_of_a_stopped_experiment() -> None:
    state = ExperimentState({"old": Assignment("a", T0), EXPERIMENT.id: Assignment("recs")},
                            [Exposure("old", "a", T0, ("x",))])
    ExperimentPolicy((EXPERIMENT,), SECRET, Bounds(), kept=frozenset({EXPERIMENT.id})).tidy(state)
    assert set(state.assignments) == {EXPERIMENT.id} and not state.exposures


def test_a_catalog_entry_round_trips_through_broadcast_state() -> None:
    entry = Entry(EXPERIMENT, PAUSED)
    assert entry_from_json(entry.to_json()) == entry


def test_experiments_need_the_secret_and_recommendations_at_start(tmp_path: Path) -> None:
    base = settings_module.load(environ={})
    settings = replace(base, stack=replace(base.stack, run_dir=str(tmp_path)),
                       privacy=replace(base.privacy, enabled=False, hash_identifiers=False, secret="",
                                       secret_env="P13N_NO_SUCH_VARIABLE", secret_file=""),
                       models=replace(base.models, enabled=False))
    secret_source(settings)  # nothing needs it yet
    running = replace(settings, experiments=replace(settings.experiments, definitions=(EXPERIMENT.definition(),)))
    with pytest.raises(SettingsError, match="secret"):
        secret_source(running)
    off = replace(running, recommendations=replace(running.recommendations, enabled=False))
    with pytest.raises(SettingsError, match="recommendations"):
        experiment_definitions(off)
    assert experiment_definitions(running) == (EXPERIMENT,)

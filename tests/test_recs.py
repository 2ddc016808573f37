"""Recommendations: each candidate source, each business rule, cold start, memory bounds, re-emission."""

from __future__ import annotations

import dataclasses
import doctest
import json
import math
import pickle
import random
from typing import Any

import pytest

from operators.events import Event
from operators.recs import model as model_module
from operators.recs import recommender as recommender_module
from operators.recs import trending as trending_module
from operators.recs.config import DAY_MS, RecConfig, rec_config
from operators.recs.model import ItemModel
from operators.recs.recommender import Ranking, Recommender, blend
from operators.recs.rules import cap_per_category, changed_meaningfully, in_checkout, promoted
from operators.recs.similarity import cosine, jaccard, lift
from operators.recs.trending import REBASE_HALF_LIVES, Trending
from operators.recs.user import UserRecState
from personalize.settings import load

T0 = 1_767_225_600_000
MINUTE = 60_000
NO_CAP = RecConfig(max_per_category=0)


def ev(user: str, event_type: str, ts: int, item: str = "", category: str = "", **properties: Any) -> Event:
    attributes = json.dumps({"properties": properties}) if properties else ""
    return Event(f"{user}-{event_type}-{item}-{ts}", event_type, user, user, "", ts, item, category, 0.0, 1, "",
                 attributes)


class World:
    """A recommender and its users, fed with (user, type, item, category) steps a minute apart."""

    def __init__(self, config: RecConfig = NO_CAP) -> None:
        self.recommender = Recommender(config)
        self.users: dict[str, UserRecState] = {}
        self.ts = T0

    def user(self, name: str) -> UserRecState:
        return self.users.setdefault(name, UserRecState())

    def do(self, user: str, event_type: str, item: str = "", category: str = "", segments: tuple[str, ...] = (),
           **properties: Any) -> None:
        self.ts += MINUTE
        self.recommender.observe(self.user(user), ev(user, event_type, self.ts, item, category, **properties),
                                 segments)

    def views(self, user: str, *items: str, category: str = "") -> None:
        for item in items:
            self.do(user, "product_view", item, category)

    def background(self, interactions: int, item: str = "background") -> None:
        """Advance the model's interaction clock: one-off users viewing one item pair with nothing."""
        for index in range(interactions):
            self.views(f"passer-by-{self.ts}-{index}", item)

    def rank(self, user: str, segments: tuple[str, ...] = (), **kwargs: Any) -> Ranking:
        return self.recommender.rank(self.user(user), segments, self.ts, **kwargs)

    def ids(self, user: str, segments: tuple[str, ...] = (), **kwargs: Any) -> list[str]:
        return self.rank(user, segments, **kwargs).item_ids()


def only(*sources: str, **overrides: Any) -> RecConfig:
    """A config where only ``sources`` contribute (weight 1 each)."""
    return RecConfig(weights={name: 1.0 for name in sources}, max_per_category=0, **overrides)


@pytest.mark.parametrize("module", [recommender_module, trending_module], ids=lambda m: m.__name__)
def test_docstring_examples(module: Any) -> None:
    assert doctest.testmod(module).failed == 0


def test_defaults_yaml_matches_rec_config_defaults() -> None:
    section = dataclasses.asdict(load(environ={}).recommendations)
    assert rec_config(section) == RecConfig()
    assert section["redis_ttl_s"] > 0 and 0 < section["min_change"] <= 1


def test_config_rejects_unknown_sources_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown recommendation sources"):
        RecConfig(weights={"covisit": 1.0, "magic": 1.0})
    with pytest.raises(ValueError, match="scored_neighbours"):
        RecConfig(max_neighbours=10, scored_neighbours=20)
    with pytest.raises(ValueError, match="position_decay"):
        RecConfig(position_decay=0.0)
    with pytest.raises(ValueError, match="similarity must be one of"):
        RecConfig(similarity="pearson")
    with pytest.raises(ValueError, match="pair_decay"):
        RecConfig(pair_decay=-1.0)
    with pytest.raises(ValueError, match="half_life"):
        RecConfig(covisit_half_life=0)


def test_pairs_weigh_by_their_distance_in_the_users_sequence() -> None:
    """``pair_decay`` 1: the item right before counts 1, two steps before 1/2, three 1/3."""
    world = World(only("covisit", pair_decay=1.0))
    world.views("u", "a", "b", "c", "d")
    rows = {item: world.recommender.model.items[item].neighbours for item in "abcd"}
    assert rows["d"] == pytest.approx({"c": 1.0, "b": 0.5, "a": 1 / 3}, rel=1e-4)  # decay over 4 interactions
    assert rows["a"] == pytest.approx({"b": 1.0, "c": 0.5, "d": 1 / 3}, rel=1e-4)
    assert RecConfig(pair_decay=0.0).pair_weights == (1.0,) * RecConfig().recent_items


# --- co-visitation ---------------------------------------------------------------------------------

def test_covisit_recommends_items_seen_together_with_jaccard_scores() -> None:
    world = World(only("covisit", similarity="jaccard"))
    world.views("a", "dune", "foundation")
    world.views("b", "dune", "foundation")
    world.views("c", "dune", "hyperion")
    world.views("new", "dune")
    ranking = world.rank("new")
    assert ranking.item_ids() == ["foundation", "hyperion"]
    model = world.recommender.model
    # C(dune, foundation) = 2, N(dune) = 4 (incl. "new"'s view), N(foundation) = 2: 2 / (4 + 2 - 2)
    raw = model.covisit_scores([("dune", 1.0)], world.recommender.config)
    assert raw["foundation"] == pytest.approx(2 / 4, rel=1e-4)  # events a minute apart: decay is negligible
    assert raw["hyperion"] == pytest.approx(1 / 4, rel=1e-4)
    assert ranking.candidates[0].reasons == {"covisit": 1.0}
    assert ranking.candidates[1].reasons == {"covisit": pytest.approx(0.5, rel=1e-3)}


def test_jaccard_does_not_let_a_blockbuster_dominate() -> None:
    world = World(only("covisit"))
    for user in range(30):  # everybody looks at the blockbuster
        world.views(f"crowd-{user}", "blockbuster")
    for user in range(3):
        world.views(f"fan-{user}", "niche", "sequel")
        world.views(f"casual-{user}", "niche", "blockbuster")
    world.views("new", "niche")
    assert world.ids("new") == ["sequel", "blockbuster"]


def test_similarity_measures() -> None:
    assert jaccard(2.0, 4.0, 2.0) == 0.5 and cosine(2.0, 4.0, 1.0) == 1.0 and lift(2.0, 4.0, 1.0) == 0.5
    assert jaccard(5.0, 3.0, 3.0) == 1.0  # bounded even when a weight outlives the masses it came with


@pytest.mark.parametrize(("similarity", "first"), [("jaccard", "sequel"), ("lift", "rarity")])
def test_lift_favours_rare_neighbours_where_jaccard_does_not(similarity: str, first: str) -> None:
    world = World(only("covisit", similarity=similarity))
    for user in range(4):
        world.views(f"fan-{user}", "film", "sequel")
    world.views("binger", "sequel")
    world.views("binger2", "sequel")
    world.views("collector", "film", "rarity")
    world.views("new", "film")
    assert world.ids("new")[0] == first


def test_recent_covisits_outweigh_equal_old_ones() -> None:
    world = World(only("covisit", covisit_half_life=10))
    for user in range(3):
        world.views(f"old-{user}", "phone", "old-case")
    world.background(30)  # three co-visitation half-lives later, counted in interactions
    for user in range(3):
        world.views(f"new-{user}", "phone", "new-case")
    world.views("shopper", "phone")
    assert world.ids("shopper") == ["new-case", "old-case"]


def test_newest_items_of_the_user_weigh_most() -> None:
    world = World(only("covisit"))
    world.views("a", "tent", "stove")
    world.views("b", "novel", "bookmark")
    world.views("me", "novel", "tent")  # tent is the newest
    assert world.ids("me") == ["stove", "bookmark"]


def test_neighbour_lists_and_catalogue_are_bounded_least_recent_item_forgotten() -> None:
    config = RecConfig(max_neighbours=4, scored_neighbours=2, max_items=30, recent_items=20, max_per_category=0)
    world = World(config)
    rng = random.Random(7)
    for step in range(600):
        world.views(f"u{step % 13}", f"i{rng.randrange(60)}")
    model = world.recommender.model
    assert len(model.items) == 30
    assert max(len(entry.neighbours) for entry in model.items.values()) <= 4 + 4 // 2
    assert all(len(entry.top) <= 2 for entry in model.items.values())
    world.views("fresh", "newest")
    assert "newest" in model.items and len(model.items) == 30
    assert list(model.items)[-1] == "newest"


def test_evicted_items_leave_every_trending_list_and_are_never_recommended() -> None:
    world = World(RecConfig(max_items=2, max_per_category=0))
    world.do("a", "product_view", "x", "cat", segments=("vip",))
    world.do("a", "product_view", "y", "cat", segments=("vip",))
    world.do("b", "product_view", "z", "cat", segments=("vip",))  # x is the least recently seen: evicted
    model = world.recommender.model
    assert set(model.items) == {"y", "z"}
    lists = [model.trending, model.segments["vip"], model.categories["cat"]]
    assert all("x" not in trending.counts for trending in lists if trending is not None)
    assert "x" not in world.ids("b", ("vip",))


# --- trending --------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_trending_top_is_exact_against_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    trending = Trending(size=5, capacity=1000)
    truth: dict[str, float] = {}
    for _ in range(2000):
        key = f"k{int(rng.paretovariate(1.2)) % 200}"
        amount = rng.uniform(0.5, 2.0)
        trending.add(key, amount)
        truth[key] = truth.get(key, 0.0) + amount
        if rng.random() < 0.01:
            removed = rng.choice(sorted(truth))
            trending.remove(removed)
            del truth[removed]
    expected = sorted(truth.items(), key=lambda pair: -pair[1])[:5]
    assert [key for key, _ in trending.top()] == [key for key, _ in expected]
    assert len(trending.pool) < 10


def test_trending_shares_are_rebuilt_after_two_percent_growth() -> None:
    trending = Trending(size=3, capacity=6)
    trending.add("a", 50.0)
    trending.add("b", 50.0)
    assert trending.shares() == [("a", 1.0), ("b", 1.0)]
    trending.add("b", 1.0)  # 1% more weight: the cached view stands
    assert trending.shares() == [("a", 1.0), ("b", 1.0)]
    trending.add("b", 2.0)  # 3% since the view was built: rebuilt, exact again
    assert trending.shares() == [("b", 1.0), ("a", pytest.approx(50 / 53))]
    trending.rescale(0.5)
    assert trending.shares() == [("b", 1.0), ("a", pytest.approx(50 / 53))]


def test_trending_counts_are_bounded_and_dropped_tail_restarts() -> None:
    trending = Trending(size=2, capacity=4)
    for index in range(100):
        trending.add(f"k{index}", 1.0 + index / 1000)
        assert len(trending.counts) <= 8
    assert [key for key, _ in trending.top()] == ["k99", "k98"]


def test_trending_decays_so_recent_interest_wins() -> None:
    world = World(only("trending", trending_half_life=10))
    for user in range(5):
        world.views(f"u{user}", "last-season")
    world.background(40)  # four trending half-lives
    for user in range(2):
        world.views(f"v{user}", "this-season")
    world.views("new", "something")
    assert world.ids("new") == ["background", "this-season", "last-season"]


def test_decay_counts_interactions_so_the_time_scale_does_not_matter() -> None:
    """The same log with every gap 40x longer (or a day instead of a minute) ranks identically."""
    rankings = []
    for gap in (MINUTE, 40 * MINUTE, DAY_MS):
        world = World(RecConfig(covisit_half_life=20, trending_half_life=5, max_per_category=0))
        rng = random.Random(7)
        for _ in range(300):
            world.ts += gap
            world.views(f"u{rng.randrange(30)}", f"i{rng.randrange(40)}")
        rankings.append([(c.item_id, c.score) for c in world.rank("u1").candidates])
    assert rankings[0] and rankings[0] == rankings[1] == rankings[2]


def test_rebase_keeps_counts_finite_and_rankings_unchanged() -> None:
    config = RecConfig(covisit_half_life=1, trending_half_life=1, max_per_category=0)
    world = World(config)
    world.views("a", "p", "q")
    world.background(3 * REBASE_HALF_LIVES)  # far beyond the rebase point
    world.views("b", "p", "r")
    world.views("c", "p", "r")
    world.views("me", "p")
    model = world.recommender.model
    assert model.covisit_origin > 0 and model.trending_origin > 0
    assert all(math.isfinite(entry.mass) and entry.mass < 2.0 ** REBASE_HALF_LIVES for entry in model.items.values())
    assert world.ids("me")[0] == "r"


# --- category affinity x category popularity, cold start ---------------------------------------------

def test_a_new_item_reaches_users_through_its_category() -> None:
    world = World(only("affinity"))
    world.views("reader", "old-book", "older-book", category="books")
    world.views("gamer", "console", category="games")
    world.do("editor", "product_view", "brand-new-book", "books")  # no co-visits at all
    assert "brand-new-book" in world.ids("reader")
    assert "brand-new-book" not in world.ids("gamer")
    reasons = world.rank("reader").candidates[0].reasons
    assert set(reasons) == {"affinity"}


def test_cold_start_user_gets_global_then_segment_trending() -> None:
    world = World(RecConfig(max_per_category=0))
    for user in range(4):
        world.do(f"g{user}", "product_view", "bestseller", segments=())
    for user in range(2):
        world.do(f"s{user}", "product_view", "vip-favourite", segments=("vip",))
    assert world.ids("stranger")[0] == "bestseller"
    vip = world.rank("stranger", ("vip",))
    assert vip.item_ids()[0] == "vip-favourite"  # first in the segment, second globally
    assert set(vip.candidates[0].reasons) == {"trending"}


def test_segment_trending_lists_are_bounded() -> None:
    world = World(RecConfig(max_segments=3, max_per_category=0))
    for index in range(10):
        world.do("u", "product_view", f"i{index}", segments=(f"seg{index}",))
    assert list(world.recommender.model.segments) == ["seg7", "seg8", "seg9"]


# --- reminders ---------------------------------------------------------------------------------------

def test_recently_viewed_and_cart_reminders() -> None:
    world = World(only("recent", "cart"))
    world.views("me", "a", "b")
    world.do("me", "add_to_cart", "c")
    world.do("me", "add_to_cart", "d")
    world.do("me", "remove_from_cart", "d")
    ranking = world.rank("me")
    assert ranking.item_ids()[0] == "c"  # in the cart and the second newest item (add_to_cart of d is newer)
    assert ranking.candidates[0].reasons == {"recent": 0.8, "cart": 1.0}
    assert set(ranking.item_ids()) == {"a", "b", "c", "d"}  # d is still recently viewed, no longer a cart reminder
    assert "cart" not in next(c for c in ranking.candidates if c.item_id == "d").reasons


def test_discovery_sources_leave_recent_items_to_the_reminders() -> None:
    world = World(RecConfig(weights={"covisit": 1.0, "trending": 1.0}, max_per_category=0))
    world.views("a", "x", "y")
    world.views("me", "x", "y")
    assert world.ids("me") == []


# --- business rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("exclude_purchased", [True, False])
def test_exclude_purchased_is_configurable(exclude_purchased: bool) -> None:
    world = World(RecConfig(weights={"cart": 1.0, "recent": 1.0}, exclude_purchased=exclude_purchased))
    world.do("me", "add_to_cart", "kettle")
    world.do("me", "purchase", "kettle")
    assert world.user("me").cart == {}
    assert ("kettle" in world.ids("me")) is not exclude_purchased


def test_checkout_suppresses_recommendations_until_purchase_or_timeout() -> None:
    world = World(RecConfig(weights={"recent": 1.0}, checkout_timeout_ms=30 * MINUTE))
    world.views("me", "lamp")
    world.do("me", "checkout_start")
    suppressed = world.rank("me")
    assert suppressed.candidates == [] and suppressed.suppressed == "checkout"
    assert world.recommender.rank(world.user("me"), (), world.ts + 31 * MINUTE).item_ids() == ["lamp"]
    world.do("me", "purchase", "lamp")
    assert world.rank("me").suppressed == ""
    assert not in_checkout(world.user("me"), world.ts, 30 * MINUTE)


def test_unavailable_items_are_excluded_until_available_again() -> None:
    world = World(only("trending"))
    world.views("a", "sold-out", "other")
    world.do("a", "product_view", "sold-out", available=False)
    assert world.ids("new") == ["other"]
    world.do("b", "product_view", "sold-out", available=True)
    assert "sold-out" in world.ids("new")
    assert world.recommender.model.is_available("sold-out")


def test_cap_per_category() -> None:
    categories = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "x": ""}
    ranked = ["a1", "a2", "a3", "b1", "x"]
    assert cap_per_category(ranked, categories.__getitem__, 2, 4) == ["a1", "a2", "b1", "x"]
    assert cap_per_category(ranked, categories.__getitem__, 1, 10) == ["a1", "b1", "x"]
    assert cap_per_category(ranked, categories.__getitem__, 0, 3) == ["a1", "a2", "a3"]
    assert cap_per_category(ranked, categories.__getitem__, 2, 0) == []  # pinned items took every slot


def test_diversity_cap_applies_in_the_ranking() -> None:
    world = World(RecConfig(weights={"trending": 1.0}, max_per_category=2))
    for index in range(5):
        world.do(f"u{index}", "product_view", f"shoe{index}", "shoes")
    world.do("u", "product_view", "hat", "hats")
    ids = world.ids("new")
    assert len([item for item in ids if item.startswith("shoe")]) == 2 and "hat" in ids


def test_pinned_items_go_on_top_in_order_unless_not_allowed() -> None:
    config = RecConfig(weights={"trending": 1.0}, pinned_items=("promo", "gone", "bought", "never-seen"),
                       max_per_category=0)
    world = World(config)
    world.views("a", "promo", "gone", "popular", "popular2")
    world.do("a", "product_view", "gone", available=False)
    world.do("me", "purchase", "bought")
    ranking = world.rank("me", k=4)
    assert ranking.item_ids() == ["promo", "never-seen", "popular2", "popular"]  # equal counts: newer first
    assert ranking.candidates[0].reasons == {"pinned": 1.0}
    scores = [candidate.score for candidate in ranking.candidates]
    assert scores == sorted(scores, reverse=True)
    assert promoted(["x", "y", "x"], lambda item: item != "y", 5) == ["x"]
    assert world.ids("me", k=1) == ["promo"]


def test_reasons_sum_to_the_score_and_zero_weight_turns_a_source_off() -> None:
    world = World()
    world.views("a", "x", "y", category="c")
    world.views("b", "x", "z", category="c")
    world.views("me", "x", category="c")
    for candidate in world.rank("me").candidates:
        assert sum(candidate.reasons.values()) == pytest.approx(candidate.score, abs=1e-5)
    off = World(RecConfig(weights={"covisit": 1.0, "trending": 0.0}))
    off.views("a", "x", "y")
    assert set(off.recommender.sources(off.user("a"), ())) == {"covisit"}


def test_blend_scales_each_source_to_its_weight() -> None:
    scores, scales = blend({"covisit": {"a": 4.0, "b": 2.0}, "trending": {"b": 10.0}},
                           {"covisit": 1.0, "trending": 0.5})
    assert scores == {"a": 1.0, "b": 1.0} and scales == {"covisit": 0.25, "trending": 0.05}


def test_caller_exclusions_apply() -> None:
    world = World(only("trending"))
    world.views("a", "x", "y", "z")
    assert world.ids("new", exclude={"x", "z"}) == ["y"]


# --- per-user state ----------------------------------------------------------------------------------

def test_user_state_is_bounded() -> None:
    config = RecConfig(recent_items=5, max_cart=3, max_purchased=4, max_categories=2)
    world = World(config)
    for index in range(50):
        world.do("me", "add_to_cart", f"i{index}", f"c{index % 7}")
        world.do("me", "purchase", f"p{index}", f"c{index % 7}")
    user = world.user("me")
    assert len(user.recent) == 5 and len(user.cart) == 3 and len(user.purchased) == 4
    assert len(user.affinity.scores) == 2
    assert list(user.cart) == ["i47", "i48", "i49"]


def test_interaction_pairs_with_previous_items_newest_first() -> None:
    config = RecConfig()
    user = UserRecState()
    for ts, item in enumerate(["a", "b", "c", "b"], 1):
        interaction = user.remember(ev("u", "product_view", ts, item, "cat"), config)
    assert interaction is not None
    assert interaction.previous == ("c", "a") and interaction.weight == 1.0 and interaction.category == "cat"
    assert user.remember(ev("u", "page_view", 9), config) is None
    assert user.query(config)[0] == ("b", 1.0)


def test_category_comes_from_the_catalogue_when_the_event_has_none() -> None:
    world = World()
    world.do("a", "product_view", "x", "garden")
    world.do("b", "add_to_cart", "x")
    assert world.user("b").affinity.scores["garden"][0] == 2.0
    assert world.recommender.model.category_of("x") == "garden"


def test_an_item_moving_category_leaves_the_old_category_list() -> None:
    world = World()
    world.do("a", "product_view", "x", "old")
    world.do("a", "product_view", "x", "new")
    model: ItemModel = world.recommender.model
    assert "old" not in model.categories and "x" in model.categories["new"].counts


def test_model_learning_is_deterministic() -> None:
    def replay() -> list[str]:
        world = World(RecConfig())
        rng = random.Random(3)
        for _ in range(400):
            world.views(f"u{rng.randrange(20)}", f"i{rng.randrange(40)}", category=f"c{rng.randrange(4)}")
        return world.ids("u1")

    assert replay() == replay()
    assert model_module.RESORT_GROWTH > 0


# --- re-emission ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("previous", "current", "changed"), [
    ([], [], False),
    ([], ["a"], True),
    (["a", "b", "c"], [], True),
    (list("abcdefghij"), list("abcdefghij"), False),
    (list("abcdefghij"), list("abcdefghxy"), False),  # 20% new, same top 3
    (list("abcdefghij"), list("abcdefgxyz"), True),  # 30% new
    (list("abcdefghij"), list("bacdefghij"), True),  # top 3 reordered
    (list("abcdefghij"), list("abcdefgh"), False),  # two dropped from the tail
])
def test_changed_meaningfully(previous: list[str], current: list[str], changed: bool) -> None:
    assert changed_meaningfully(previous, current, 0.3) is changed


def test_state_is_plain_data() -> None:
    """Both state objects are dataclasses of dicts, lists and numbers: a codec can write them as JSON."""
    world = World()
    world.do("a", "product_view", "x", "c", segments=("vip",))
    world.do("a", "add_to_cart", "y", "c", segments=("vip",))
    world.do("a", "checkout_start")
    json.dumps(dataclasses.asdict(world.recommender.model))
    json.dumps(dataclasses.asdict(world.user("a")))
    restored = Recommender(world.recommender.config, pickle.loads(pickle.dumps(world.recommender.model)))
    assert restored.rank(UserRecState(), ("vip",), world.ts) == world.rank("b", ("vip",))

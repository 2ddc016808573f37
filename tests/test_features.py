"""FeatureOperator: exact values of every feature of docs/features.md on hand-built event sequences."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from operators.events import Event
from operators.features.config import DAY_MS, HOUR_MS, FeatureConfig
from operators.features.operator import FEATURES_SCHEMA, KEY_FIELDS, FeatureOperator, FeatureVector, UserFeatures
from operators.features.rfm import LocalPopulation
from operators.features.windows import SlidingCount
from state.codecs import CodecError, decode_features, encode_features
from tests.test_state_codecs import older_versions

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a multiple of every bucket width
MINUTE = 60_000
HALF_LIFE = 7 * DAY_MS
USER = "u-1"
CONFIG = FeatureConfig()
COUNT_KEYS = [f"{t}_{w.name}" for t in CONFIG.counted_types for w in CONFIG.windows]


def ev(event_type: str, ts: int, item: str = "", category: str = "", price: float = 0.0, quantity: int = 1,
       user: str = USER) -> Event:
    return Event(event_id=f"{user}-{event_type}-{ts}", type=event_type, user_key=user, user_id=user,
                 anonymous_id="", ts=ts, item_id=item, category=category, price=price, quantity=quantity,
                 session_id="", attributes="{}")


def new_operator(config: FeatureConfig = CONFIG) -> FeatureOperator:
    return FeatureOperator(config, LocalPopulation())


def run(operator: FeatureOperator, events: list[Event],
        features: UserFeatures | None = None) -> tuple[UserFeatures, list[FeatureVector | None]]:
    vectors = []
    for event in events:
        features, vector = operator.process(features, event)
        vectors.append(vector)
    assert features is not None
    return features, vectors


def final(operator: FeatureOperator, events: list[Event]) -> dict[str, Any]:
    features, _ = run(operator, events)
    return operator.vector(features)


def counts(**nonzero: int) -> dict[str, int]:
    """All 36 count features, zero unless given."""
    unknown = set(nonzero) - set(COUNT_KEYS)
    assert not unknown, unknown
    return {key: nonzero.get(key, 0) for key in COUNT_KEYS}


def only_counts(values: dict[str, Any]) -> dict[str, Any]:
    return {key: values[key] for key in COUNT_KEYS}


def decayed(*weighted: tuple[float, int], reference: int) -> float:
    """sum(w * 2^(-(reference - ts) / half_life)): the affinity formula of docs/features.md."""
    return sum(weight * 2 ** (-(reference - ts) / HALF_LIFE) for weight, ts in weighted)


def engagement(gap_days: float | None, sessions: int, avg_depth: float, clicks: int, purchases: int,
               carts: int) -> float:
    """The engagement formula of docs/features.md, written out independently of the operator."""
    recency = 0.5 if gap_days is None else 0.5 ** (gap_days / 7)
    frequency = min(sessions / 8, 1.0)
    depth = min(avg_depth / 10, 1.0)
    explicit = min((clicks + 2 * purchases + 0.5 * carts) / 6, 1.0)
    return round(100 * (0.25 * recency + 0.25 * frequency + 0.2 * depth + 0.3 * explicit), 1)


# --- one user, every feature --------------------------------------------------------------------------------

#: Session 1 two days before T0 (ends with a purchase); session 2 from T0 to T0+70 min.
SCENARIO = [
    ev("page_view", T0 - 2 * DAY_MS),
    ev("product_view", T0 - 2 * DAY_MS + 10 * MINUTE, "item-1", "books"),
    ev("purchase", T0 - 2 * DAY_MS + 20 * MINUTE, "item-1", "books", price=25.0, quantity=2),
    ev("page_view", T0),
    ev("product_view", T0 + 5 * MINUTE, "item-2", "toys"),
    ev("product_view", T0 + 15 * MINUTE, "item-2", "toys"),
    ev("product_view", T0 + 20 * MINUTE, "item-1", "books"),
    ev("product_view", T0 + 25 * MINUTE, "item-2", "toys"),
    ev("email_click", T0 + 30 * MINUTE),
    ev("search", T0 + 40 * MINUTE),
    ev("add_to_cart", T0 + 50 * MINUTE, "item-2", "toys", price=10.0),
    ev("page_view", T0 + 70 * MINUTE),
]


def test_every_feature_of_the_vector_is_exact() -> None:
    values = final(new_operator(), SCENARIO)
    reference = T0 + 70 * MINUTE
    gap_days = round((2 * DAY_MS - 20 * MINUTE) / DAY_MS, 3)  # session 2 start - session 1 end
    expected: dict[str, Any] = counts(
        # 1h = the 12 five-minute buckets ending with T0+70m's: [T0+15m, T0+75m)
        page_view_1h=1, product_view_1h=3, email_click_1h=1, search_1h=1, add_to_cart_1h=1,
        # 24h = the 24 hour buckets ending with T0+1h's: [T0-22h, T0+2h)
        page_view_24h=2, product_view_24h=4, email_click_24h=1, search_24h=1, add_to_cart_24h=1,
        page_view_7d=3, product_view_7d=5, email_click_7d=1, search_7d=1, add_to_cart_7d=1, purchase_7d=1,
        page_view_30d=3, product_view_30d=5, email_click_30d=1, search_30d=1, add_to_cart_30d=1, purchase_30d=1,
    )
    expected.update({
        "max_item_views_24h": 3, "top_item_24h": "item-2", "max_category_views_24h": 3,
        "sessions_30d": 2, "avg_session_minutes_30d": 20.0, "avg_session_depth_30d": 2.0,
        "session_depth": 6, "session_minutes": 70.0, "days_since_previous_session": gap_days,
        "cart_abandoned": False, "returned_after_abandon": False,
        "recency_days": 2.0,  # (2 d + 50 min) / 1 d, one decimal
        "frequency_180d": 1, "monetary_180d": 50.0, "aov_180d": 50.0,
        # A lone purchaser's rank is its position inside its own histogram bin: recency 2.0 sits at ~82%
        # of its bin (score 5, so r = 1); frequency 1 and monetary 50 near the bottom of theirs (score 1).
        "r_score": 1, "f_score": 1, "m_score": 1,
        "top_categories": [
            ["toys", round(decayed((1, T0 + 5 * MINUTE), (1, T0 + 15 * MINUTE), (1, T0 + 25 * MINUTE),
                                   (3, T0 + 50 * MINUTE), reference=reference), 3)],
            ["books", round(decayed((1, T0 - 2 * DAY_MS + 10 * MINUTE), (5, T0 - 2 * DAY_MS + 20 * MINUTE),
                                    (1, T0 + 20 * MINUTE), reference=reference), 3)],
        ],
        "top_category": "toys",
        "engagement": engagement(gap_days, sessions=2, avg_depth=2.0, clicks=1, purchases=1, carts=1),
    })
    assert values == expected
    assert expected["top_categories"] == [["toys", 5.985], ["books", 5.901]]
    assert expected["engagement"] == 48.3


def test_counts_at_several_reference_times() -> None:
    operator = new_operator()
    features, _ = run(operator, SCENARIO[:3])
    assert only_counts(operator.vector(features)) == counts(
        page_view_1h=1, page_view_24h=1, page_view_7d=1, page_view_30d=1,
        product_view_1h=1, product_view_24h=1, product_view_7d=1, product_view_30d=1,
        purchase_1h=1, purchase_24h=1, purchase_7d=1, purchase_30d=1)
    features, _ = run(operator, SCENARIO[3:8], features)  # reference T0+25m: session 1 is out of 1h and 24h
    assert only_counts(operator.vector(features)) == counts(
        page_view_1h=1, page_view_24h=1, page_view_7d=2, page_view_30d=2,
        product_view_1h=4, product_view_24h=4, product_view_7d=5, product_view_30d=5,
        purchase_7d=1, purchase_30d=1)
    features, _ = run(operator, SCENARIO[8:], features)  # reference T0+70m: T0..T0+14m left the 1h window
    values = operator.vector(features)
    assert (values["page_view_1h"], values["product_view_1h"], values["page_view_24h"]) == (1, 3, 2)
    # a day later: only the 7d and 30d windows still hold the first two sessions
    features, _ = run(operator, [ev("page_view", T0 + DAY_MS + HOUR_MS)], features)
    values = operator.vector(features)
    assert only_counts(values) == counts(
        page_view_1h=1, page_view_24h=1, page_view_7d=4, page_view_30d=4,
        product_view_7d=5, product_view_30d=5, email_click_7d=1, email_click_30d=1, search_7d=1, search_30d=1,
        add_to_cart_7d=1, add_to_cart_30d=1, purchase_7d=1, purchase_30d=1)
    assert (values["max_item_views_24h"], values["top_item_24h"], values["max_category_views_24h"]) == (0, "", 0)
    assert features.items == {} and features.categories == {}  # emptied counters are dropped


def test_one_hour_window_after_seventy_minutes() -> None:
    events = [ev("page_view", T0 + minute * MINUTE) for minute in (0, 10, 14, 15, 40, 70)]
    values = final(new_operator(), events)
    # bucket of T0+70m is the 15th five-minute bucket: the window is [T0+15m, T0+75m)
    assert (values["page_view_1h"], values["page_view_24h"]) == (3, 6)


def test_event_older_than_a_window_is_counted_only_in_the_longer_windows() -> None:
    events = [ev("page_view", T0 + 3 * DAY_MS), ev("search", T0 + 3 * DAY_MS - 2 * HOUR_MS),
              ev("search", T0)]  # the last is out of order by three days
    values = final(new_operator(), events)
    assert [values[f"search_{w}"] for w in ("1h", "24h", "7d", "30d")] == [0, 1, 2, 2]


def test_uncounted_types_are_ignored_by_the_count_features() -> None:
    values = final(new_operator(), [ev("profile_update", T0), ev("consent_change", T0)])
    assert only_counts(values) == counts()
    assert not any(key.startswith(("profile_update", "consent_change")) for key in values)


# --- items and categories ---------------------------------------------------------------------------------


def test_same_product_viewed_three_times_in_24h() -> None:
    events = [
        ev("product_view", T0, "item-a", "books"),
        ev("product_view", T0 + 2 * HOUR_MS, "item-b", "books"),
        ev("product_view", T0 + 5 * HOUR_MS, "item-a", "books"),
        ev("product_view", T0 + 9 * HOUR_MS, "item-c", "toys"),
        ev("product_view", T0 + 20 * HOUR_MS, "item-a", "books"),
        ev("add_to_cart", T0 + 21 * HOUR_MS, "item-c", "toys"),  # only product views count per item
    ]
    values = final(new_operator(), events)
    assert (values["max_item_views_24h"], values["top_item_24h"], values["max_category_views_24h"]) == (3, "item-a", 4)


def test_item_views_leave_the_24h_window() -> None:
    events = [ev("product_view", T0 + hours * HOUR_MS, "item-a", "books") for hours in (0, 1, 2, 3)]
    events += [ev("product_view", T0 + hours * HOUR_MS, "item-b", "toys") for hours in (24, 25, 25)]
    values = final(new_operator(), events)  # the window at hour 25 holds hours 2..25: two views of item-a left
    assert (values["max_item_views_24h"], values["top_item_24h"], values["max_category_views_24h"]) == (
        3, "item-b", 3)


def test_top_item_ties_go_to_the_smallest_id() -> None:
    events = [ev("product_view", T0, "item-b"), ev("product_view", T0 + MINUTE, "item-a")]
    assert final(new_operator(), events)["top_item_24h"] == "item-a"


def test_tracked_items_are_bounded_and_the_least_recently_viewed_goes() -> None:
    operator = new_operator()
    events = [ev("product_view", T0 + n * HOUR_MS, f"item-{n:02d}") for n in range(20)]
    events += [ev("product_view", T0 + 20 * HOUR_MS, "item-00"),  # item-00 becomes recent again
               ev("product_view", T0 + 21 * HOUR_MS, "item-20")]
    features, _ = run(operator, events)
    assert len(features.items) == CONFIG.max_items
    assert "item-01" not in features.items  # the least recently viewed
    assert {"item-00", "item-20"} <= set(features.items)
    values = operator.vector(features)
    assert (values["max_item_views_24h"], values["top_item_24h"]) == (2, "item-00")


def test_just_viewed_item_is_not_evicted_on_a_tie_of_recency() -> None:
    operator = new_operator()
    events = [ev("product_view", T0 + n * MINUTE, f"item-{n:02d}") for n in range(20)]  # all in one hour bucket
    features, _ = run(operator, [*events, ev("product_view", T0 + 30 * MINUTE, "a-new-item")])
    assert len(features.items) == CONFIG.max_items
    assert "a-new-item" in features.items


def test_tracked_categories_are_bounded() -> None:
    operator = new_operator()
    events = [ev("product_view", T0 + n * HOUR_MS, f"item-{n}", f"cat-{n:02d}") for n in range(11)]
    features, _ = run(operator, events)
    assert len(features.categories) == CONFIG.max_categories
    assert "cat-00" not in features.categories and "cat-10" in features.categories
    assert operator.vector(features)["max_category_views_24h"] == 1


# --- sessions ----------------------------------------------------------------------------------------------


def test_gap_splits_sessions() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0), ev("product_view", T0 + 29 * MINUTE, "i"),
                                 ev("page_view", T0 + 60 * MINUTE)])  # 31 min after the last: a new session
    values = operator.vector(features)
    assert (values["sessions_30d"], values["session_depth"], values["session_minutes"]) == (2, 1, 0.0)
    assert (values["avg_session_minutes_30d"], values["avg_session_depth_30d"]) == (29.0, 2.0)
    assert values["days_since_previous_session"] == round(31 / (24 * 60), 3)


def test_event_exactly_one_gap_after_joins_the_session() -> None:
    values = final(new_operator(), [ev("page_view", T0), ev("page_view", T0 + 30 * MINUTE)])
    assert (values["sessions_30d"], values["session_depth"], values["session_minutes"]) == (1, 2, 30.0)
    assert values["days_since_previous_session"] is None


def test_out_of_order_event_within_the_gap_extends_the_session_start() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0 + 60 * MINUTE), ev("page_view", T0 + 70 * MINUTE),
                                 ev("page_view", T0 + 40 * MINUTE)])
    assert features.sessions.current is not None and features.sessions.current.start == T0 + 40 * MINUTE
    values = operator.vector(features)
    assert (values["sessions_30d"], values["session_depth"], values["session_minutes"]) == (1, 3, 30.0)
    assert features.sessions.out_of_order == 0


def test_event_more_than_a_gap_before_the_open_session_is_only_counted() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0 + 60 * MINUTE), ev("page_view", T0 + 29 * MINUTE)])
    assert features.sessions.out_of_order == 1
    assert features.sessions.current is not None and features.sessions.current.start == T0 + 60 * MINUTE
    values = operator.vector(features)
    assert (values["sessions_30d"], values["session_depth"], values["session_minutes"]) == (1, 1, 0.0)
    assert values["page_view_1h"] == 2  # still in the counts


def test_session_averages_over_closed_sessions_in_30_days() -> None:
    events = [ev("page_view", T0), ev("product_view", T0 + 20 * MINUTE, "i"),  # 20 min, depth 2
              ev("page_view", T0 + DAY_MS), ev("search", T0 + DAY_MS + 20 * MINUTE),  # 40 min, depth 1
              ev("page_view", T0 + DAY_MS + 40 * MINUTE),
              ev("email_open", T0 + 2 * DAY_MS)]  # open session: depth 0, not averaged
    values = final(new_operator(), events)
    assert values["sessions_30d"] == 3
    assert (values["avg_session_minutes_30d"], values["avg_session_depth_30d"]) == (30.0, 2.0)
    assert (values["session_depth"], values["session_minutes"]) == (0, 0.0)
    assert values["days_since_previous_session"] == round((DAY_MS - 40 * MINUTE) / DAY_MS, 3)


def test_sessions_leave_the_30_day_window() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0 + n * DAY_MS) for n in range(5)])
    assert operator.vector(features)["sessions_30d"] == 5
    features, _ = run(operator, [ev("page_view", T0 + 32 * DAY_MS)], features)
    values = operator.vector(features)  # day buckets 3..32: the sessions of days 0..2 left
    assert (values["sessions_30d"], values["avg_session_depth_30d"]) == (3, 1.0)
    assert values["days_since_previous_session"] == 28.0


def test_close_session_only_when_the_gap_has_passed() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0), ev("page_view", T0 + 10 * MINUTE)])
    end = T0 + 10 * MINUTE
    assert operator.close_session(features, USER, end + CONFIG.session_gap_ms - 1) is None
    assert features.sessions.current is not None
    # closing moves engagement by 4 points (depth 2/10 * 0.2) and no key field: no vector
    assert operator.close_session(features, USER, end + CONFIG.session_gap_ms) is None
    assert features.sessions.current is None
    values = operator.vector(features)
    assert (values["sessions_30d"], values["session_depth"], values["session_minutes"]) == (1, 0, 0.0)
    assert (values["avg_session_minutes_30d"], values["avg_session_depth_30d"]) == (10.0, 2.0)
    assert features.reference_ts == end + CONFIG.session_gap_ms
    assert operator.close_session(features, USER, end + 2 * CONFIG.session_gap_ms) is None  # nothing open


def test_close_session_without_state_change_emits_nothing() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0)])
    # closed at T0+30m: no key field changes (sessions_30d stays 1), engagement moves by 0, silence < 1h
    assert operator.close_session(features, USER, T0 + CONFIG.session_gap_ms) is None
    assert features.sessions.current is None


def test_timer_bookkeeping_keeps_one_pending_timer() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0)])
    assert features.sessions.needs_timer(CONFIG.session_gap_ms) == T0 + CONFIG.session_gap_ms
    features, _ = run(operator, [ev("page_view", T0 + 10 * MINUTE)], features)
    assert features.sessions.needs_timer(CONFIG.session_gap_ms) is None  # one is pending
    features.sessions.timer_fired(T0 + CONFIG.session_gap_ms)
    assert operator.close_session(features, USER, T0 + CONFIG.session_gap_ms) is None  # extended: not yet
    assert features.sessions.needs_timer(CONFIG.session_gap_ms) == T0 + 40 * MINUTE


# --- abandoned carts -----------------------------------------------------------------------------------------


def abandoned(operator: FeatureOperator) -> UserFeatures:
    """A session with an add_to_cart and no purchase, closed by its timer at T0+40m."""
    features, _ = run(operator, [ev("page_view", T0), ev("add_to_cart", T0 + 10 * MINUTE, "i", "c", 5.0)])
    operator.close_session(features, USER, T0 + 40 * MINUTE)
    return features


def flags(operator: FeatureOperator, features: UserFeatures) -> tuple[bool, bool]:
    values = operator.vector(features)
    return values["cart_abandoned"], values["returned_after_abandon"]


def test_open_session_with_a_cart_is_not_abandoned_yet() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("add_to_cart", T0, "i", "c", 5.0)])
    assert flags(operator, features) == (False, False)


def test_timer_closing_an_abandoned_cart_emits() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("page_view", T0), ev("add_to_cart", T0 + 10 * MINUTE, "i", "c", 5.0)])
    vector = operator.close_session(features, USER, T0 + 40 * MINUTE)
    assert vector is not None and vector.version == 3 and vector.ts == T0 + 40 * MINUTE
    assert (vector.values["cart_abandoned"], vector.values["returned_after_abandon"]) == (True, False)


def test_abandoned_cart_then_return_within_48h() -> None:
    operator = new_operator()
    features = abandoned(operator)
    assert flags(operator, features) == (True, False)
    features, _ = run(operator, [ev("page_view", T0 + 10 * MINUTE + 47 * HOUR_MS)], features)
    assert flags(operator, features) == (False, True)
    # a neutral session in between does not clear the return signal
    features, _ = run(operator, [ev("page_view", T0 + 60 * HOUR_MS)], features)
    assert flags(operator, features) == (False, True)


def test_return_after_50h_is_not_a_return_and_the_cart_is_no_longer_abandoned() -> None:
    operator = new_operator()
    features = abandoned(operator)
    features, _ = run(operator, [ev("page_view", T0 + 10 * MINUTE + 50 * HOUR_MS)], features)
    # docs/features.md: cart_abandoned holds only while "the user has not come back since"
    assert flags(operator, features) == (False, False)
    operator.close_session(features, USER, T0 + 51 * HOUR_MS)
    assert flags(operator, features) == (False, False)


def test_abandoned_cart_closed_by_the_next_event() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("add_to_cart", T0, "i", "c", 5.0), ev("page_view", T0 + 2 * HOUR_MS)])
    assert flags(operator, features) == (False, True)  # the closing event is itself the return


def test_purchase_session_clears_the_return_signal() -> None:
    operator = new_operator()
    features = abandoned(operator)
    features, _ = run(operator, [ev("page_view", T0 + 5 * HOUR_MS),
                                 ev("purchase", T0 + 5 * HOUR_MS + MINUTE, "i", "c", 5.0)], features)
    assert flags(operator, features) == (False, True)
    operator.close_session(features, USER, T0 + 6 * HOUR_MS)
    assert flags(operator, features) == (False, False)


def test_abandoning_again_clears_the_return_signal() -> None:
    operator = new_operator()
    features = abandoned(operator)
    features, _ = run(operator, [ev("add_to_cart", T0 + 5 * HOUR_MS, "i", "c", 5.0)], features)
    assert flags(operator, features) == (False, True)
    operator.close_session(features, USER, T0 + 6 * HOUR_MS)
    assert flags(operator, features) == (True, False)


# --- RFM -------------------------------------------------------------------------------------------------------


def purchases_of(user: str, n: int) -> list[Event]:
    """User n buys n times, ending (6 - n) days before T0, each time 2 x (20 * n)."""
    last = T0 - (6 - n) * DAY_MS
    return [ev("purchase", last - k * HOUR_MS, "i", "c", price=20.0 * n, quantity=2, user=user) for k in range(n)]


def test_rfm_values_and_scores_across_a_population() -> None:
    operator = new_operator()
    states: dict[str, UserFeatures] = {}
    for n in range(1, 6):
        user = f"buyer-{n}"
        states[user], _ = run(operator, [*purchases_of(user, n), ev("page_view", T0, user=user)])
    states["browser"], _ = run(operator, [ev("page_view", T0, user="browser")])
    vectors = {user: operator.vector(features) for user, features in states.items()}  # all in the population
    for n in range(1, 6):
        values = vectors[f"buyer-{n}"]
        monetary = n * 2 * 20.0 * n
        assert values["recency_days"] == 6 - n
        assert (values["frequency_180d"], values["monetary_180d"], values["aov_180d"]) == (n, monetary, monetary / n)
        # buyer-5 is the most recent, most frequent and biggest spender; buyer-1 the least of each
        assert (values["r_score"], values["f_score"], values["m_score"]) == (n, n, n)
    browser = vectors["browser"]
    assert (browser["recency_days"], browser["frequency_180d"], browser["monetary_180d"], browser["aov_180d"]) == (
        None, 0, 0.0, 0.0)
    assert (browser["r_score"], browser["f_score"], browser["m_score"]) == (1, 1, 1)
    population = operator.population
    assert isinstance(population, LocalPopulation)
    assert population.histograms["monetary"].count == 5  # each purchaser once, however often re-scored


def test_monetary_includes_quantity_and_recency_has_one_decimal() -> None:
    events = [ev("purchase", T0, "i", "c", price=12.5, quantity=3), ev("purchase", T0 + HOUR_MS, "j", "c", 4.99),
              ev("page_view", T0 + HOUR_MS + 3 * DAY_MS + 5 * HOUR_MS)]
    values = final(new_operator(), events)
    assert (values["frequency_180d"], values["monetary_180d"], values["aov_180d"]) == (2, 42.49, 21.25)
    assert values["recency_days"] == 3.2  # 3 d 5 h = 3.208 d


def test_purchases_older_than_180_days_drop_out() -> None:
    operator = new_operator()
    features, _ = run(operator, [ev("purchase", T0, "i", "c", 30.0), ev("page_view", T0 + 179 * DAY_MS)])
    values = operator.vector(features)
    assert (values["frequency_180d"], values["monetary_180d"], values["recency_days"]) == (1, 30.0, 179.0)
    population = operator.population
    assert isinstance(population, LocalPopulation)
    assert population.histograms["monetary"].count == 1
    features, _ = run(operator, [ev("page_view", T0 + 180 * DAY_MS)], features)
    values = operator.vector(features)
    assert (values["frequency_180d"], values["monetary_180d"], values["aov_180d"]) == (0, 0.0, 0.0)
    assert values["recency_days"] == 180.0  # the last purchase is still known
    assert (values["r_score"], values["f_score"], values["m_score"]) == (1, 1, 1)
    assert population.histograms["monetary"].count == 0  # left the scored population
    assert len(features.purchases.count) == 0 and len(features.purchases.spend) == 0


def test_purchase_already_outside_the_rfm_window_is_not_counted() -> None:
    events = [ev("page_view", T0 + 200 * DAY_MS), ev("purchase", T0, "i", "c", 30.0)]
    values = final(new_operator(), events)
    assert (values["frequency_180d"], values["monetary_180d"]) == (0, 0.0)


# --- affinity ------------------------------------------------------------------------------------------------


def test_affinity_halves_after_one_half_life() -> None:
    values = final(new_operator(), [ev("product_view", T0, "i", "books"), ev("page_view", T0 + HALF_LIFE)])
    assert values["top_categories"] == [["books", 0.5]]
    assert values["top_category"] == "books"


def test_out_of_order_event_adds_its_decayed_weight() -> None:
    late_first = final(new_operator(), [ev("product_view", T0 + HALF_LIFE, "i", "books"),
                                        ev("add_to_cart", T0, "i", "books")])
    assert late_first["top_categories"] == [["books", 1 + 3 * 0.5]]
    in_order = final(new_operator(), [ev("add_to_cart", T0, "i", "books"),
                                      ev("product_view", T0 + HALF_LIFE, "i", "books")])
    assert in_order["top_categories"] == late_first["top_categories"]


def test_top_categories_order_weights_and_cap() -> None:
    events = [ev("page_view", T0, category="d-pages"),  # 0.5
              ev("product_view", T0, "i", "a-views"),  # 1
              ev("email_click", T0, category="b-clicks"),  # 1
              ev("add_to_cart", T0, "i", "c-carts"),  # 3
              ev("checkout_start", T0, category="e-checkout"),  # 2
              ev("purchase", T0, "i", "f-buys", 1.0),  # 5
              ev("search", T0, category="g-search"),  # no weight
              ev("product_view", T0, "i", "")]  # no category
    values = final(new_operator(), events)
    assert values["top_categories"] == [["f-buys", 5.0], ["c-carts", 3.0], ["e-checkout", 2.0]]
    assert values["top_category"] == "f-buys"
    operator = new_operator(FeatureConfig(top_categories=5))
    assert final(operator, events)["top_categories"] == [
        ["f-buys", 5.0], ["c-carts", 3.0], ["e-checkout", 2.0], ["a-views", 1.0], ["b-clicks", 1.0]]


def test_affinity_keeps_at_most_max_categories_and_drops_the_weakest() -> None:
    operator = new_operator()
    events = [ev("add_to_cart", T0 + n * HOUR_MS, "i", f"cat-{n:02d}") for n in range(10)]
    events.append(ev("page_view", T0 + 10 * HOUR_MS, category="weak"))
    features, _ = run(operator, events)
    assert len(features.affinity.scores) == CONFIG.max_categories
    assert "weak" not in features.affinity.scores
    features, _ = run(operator, [ev("purchase", T0 + 11 * HOUR_MS, "i", "strong", 1.0)], features)
    assert "strong" in features.affinity.scores and "cat-00" not in features.affinity.scores
    assert operator.vector(features)["top_category"] == "strong"


def test_no_category_means_no_top_category() -> None:
    values = final(new_operator(), [ev("page_view", T0)])
    assert (values["top_categories"], values["top_category"]) == ([], "")


# --- engagement ----------------------------------------------------------------------------------------------


def test_engagement_of_a_first_visit() -> None:
    values = final(new_operator(), [ev("page_view", T0)])
    assert values["engagement"] == engagement(None, sessions=1, avg_depth=0.0, clicks=0, purchases=0, carts=0)
    assert values["engagement"] == 15.6  # 100 * (0.25 * 0.5 + 0.25 / 8)


def test_engagement_of_a_regular_visitor() -> None:
    events = []
    for day in range(9):  # nine daily sessions of three page views
        events += [ev("page_view", T0 + day * DAY_MS + k * MINUTE) for k in range(3)]
    events += [ev("email_click", T0 + 8 * DAY_MS + 5 * MINUTE), ev("email_click", T0 + 8 * DAY_MS + 6 * MINUTE)]
    values = final(new_operator(), events)
    gap_days = round((DAY_MS - 2 * MINUTE) / DAY_MS, 3)
    assert (values["sessions_30d"], values["avg_session_depth_30d"], values["days_since_previous_session"]) == (
        9, 3.0, gap_days)
    expected = engagement(gap_days, sessions=9, avg_depth=3.0, clicks=2, purchases=0, carts=0)
    assert values["engagement"] == expected
    # 100 * (0.25 * 0.5^(0.999/7) + 0.25 * 1 + 0.2 * 0.3 + 0.3 * 2/6)
    assert expected == round(100 * (0.25 * 0.5 ** (0.999 / 7) + 0.25 + 0.06 + 0.1), 1) == 63.6


def test_engagement_explicit_part_is_capped() -> None:
    events = [ev("purchase", T0 + k * MINUTE, "i", "c", 1.0) for k in range(4)]  # 8 / 6 > 1
    values = final(new_operator(), events)
    assert values["engagement"] == engagement(None, sessions=1, avg_depth=0.0, clicks=0, purchases=4, carts=0)
    assert values["engagement"] == round(100 * (0.125 + 0.25 / 8 + 0.3), 1)


# --- emission policy -----------------------------------------------------------------------------------------


def test_emission_policy() -> None:
    operator = new_operator()
    features, vectors = run(operator, [
        ev("page_view", T0),  # first event: emits
        ev("page_view", T0 + 10 * MINUTE),  # nothing key changed: quiet
        ev("email_open", T0 + 20 * MINUTE),  # still quiet (engagement unchanged)
        ev("add_to_cart", T0 + 25 * MINUTE, "i", "books", 5.0),  # add_to_cart_24h and top_category: emits
        ev("page_view", T0 + 50 * MINUTE),  # quiet
        ev("page_view", T0 + 75 * MINUTE),  # 50 min since the last vector: quiet
        ev("page_view", T0 + 86 * MINUTE),  # 61 min of silence: emits
        ev("page_view", T0 + 87 * MINUTE),  # quiet again
        ev("page_view", T0 + 130 * MINUTE),  # a new session (sessions_30d): emits
    ])
    assert [v is not None for v in vectors] == [True, False, False, True, False, False, True, False, True]
    emitted = [v for v in vectors if v is not None]
    assert [v.version for v in emitted] == [1, 2, 3, 4]
    assert [v.ts for v in emitted] == [T0, T0 + 25 * MINUTE, T0 + 86 * MINUTE, T0 + 130 * MINUTE]
    assert features.version == 4 and features.emitted_at == T0 + 130 * MINUTE
    assert set(features.emitted) == {*KEY_FIELDS, "engagement"}
    last = emitted[-1]
    assert last.values == operator.vector(features)
    assert last.vector_id == f"{USER}:f4"
    document = json.loads(last.to_json())
    assert (document["id"], document["schema"], document["user"], document["version"], document["ts"]) == (
        f"{USER}:f4", FEATURES_SCHEMA, USER, 4, T0 + 130 * MINUTE)
    assert document["features"]["sessions_30d"] == 2


@pytest.mark.parametrize(("threshold", "emits"), [(4.0, True), (6.0, False)])
def test_engagement_change_alone_emits_above_the_threshold(threshold: float, emits: bool) -> None:
    operator = new_operator(FeatureConfig(emit_min_engagement_change=threshold))
    features, vectors = run(operator, [ev("page_view", T0), ev("email_click", T0 + MINUTE)])
    before, after = 15.6, operator.vector(features)["engagement"]
    assert after == 20.6  # one click: 0.3 * 1/6 = +5 points, no key field
    assert (vectors[1] is not None) == emits
    assert features.version == (2 if emits else 1)
    assert features.emitted["engagement"] == (after if emits else before)


def test_each_key_field_change_emits() -> None:
    changes = {  # checkout_start, product_view and a categorised page_view leave engagement unchanged
        "add_to_cart_24h": ev("add_to_cart", T0 + MINUTE, "i"),
        "checkout_start_24h": ev("checkout_start", T0 + MINUTE),
        "purchase_24h": ev("purchase", T0 + MINUTE, "i", "", 3.0),
        "max_item_views_24h": ev("product_view", T0 + MINUTE, "i"),
        "top_category": ev("page_view", T0 + MINUTE, category="x"),
        "sessions_30d": ev("search", T0 + 40 * MINUTE),
    }
    for field_name, event in changes.items():
        _, vectors = run(new_operator(), [ev("page_view", T0), event])
        first, second = vectors
        assert first is not None and second is not None, field_name
        assert second.values[field_name] != first.values[field_name], field_name
        assert second.version == 2


# --- bounded state -------------------------------------------------------------------------------------------


def counters_of(features: UserFeatures) -> list[SlidingCount]:
    per_type = [counter for per in features.counts.values() for counter in per.values()]
    return [*per_type, *features.items.values(), *features.categories.values(), features.session_starts,
            features.session_lengths, features.session_depths, features.purchases.count, features.purchases.spend]


def bucket_bound(config: FeatureConfig) -> int:
    """The most buckets a user's feature state can hold, whatever the number of events."""
    return (len(config.counted_types) * sum(w.buckets for w in config.windows)
            + (config.max_items + config.max_categories) * config.item_window.buckets
            + 3 * config.session_window.buckets + 2 * config.rfm_window.buckets)


def test_state_stays_bounded_for_a_very_busy_user() -> None:
    rng = random.Random(7)
    operator = new_operator()
    types = [*CONFIG.counted_types, "profile_update"]
    features: UserFeatures | None = None
    peak = 0
    span = 60 * DAY_MS
    for n in range(10_000):
        ts = T0 + n * span // 10_000 - rng.randrange(0, 30 * MINUTE)  # slightly out of order
        event_type = rng.choice(types)
        features, _ = operator.process(features, ev(event_type, ts, f"item-{rng.randrange(60)}",
                                                    f"cat-{rng.randrange(25)}", price=rng.uniform(1, 100)))
        if n % 50 == 0:
            assert all(len(c) <= CONFIG.rfm_window.buckets for c in counters_of(features))
            peak = max(peak, sum(len(c) for c in counters_of(features)))
    assert features is not None
    assert len(features.items) <= CONFIG.max_items and len(features.categories) <= CONFIG.max_categories
    assert len(features.affinity.scores) <= CONFIG.max_categories
    for per in features.counts.values():
        for window in CONFIG.windows:
            assert len(per[window.name]) <= window.buckets
    assert peak < bucket_bound(CONFIG) == 2016
    assert len(encode_features(features)) < 16_384


# --- codec ---------------------------------------------------------------------------------------------------


def busy_user(operator: FeatureOperator) -> UserFeatures:
    """200 events over 30 days: 25 visits of 8 events across 5 categories and 20 items, a few purchases."""
    rng = random.Random(11)
    types = ["page_view", "product_view", "search", "add_to_cart", "purchase", "email_open", "email_click"]
    events = []
    for day in sorted(rng.sample(range(30), 25)):
        ts = T0 + day * DAY_MS + rng.randrange(8, 22) * HOUR_MS
        for _ in range(8):
            ts += rng.randrange(1, 5) * MINUTE
            item = rng.randrange(20)
            events.append(ev(rng.choices(types, [3, 6, 2, 1, 0.3, 0.5, 0.3])[0], ts, f"item-{item:02d}",
                             f"category-{item % 5}", price=round(rng.uniform(5, 80), 2), quantity=rng.randint(1, 3)))
    features, _ = run(operator, events)
    return features


def test_codec_round_trip_gives_the_same_vector_and_encoding() -> None:
    for operator, features in [(op := new_operator(), run(op, SCENARIO)[0]),
                               (op2 := new_operator(), busy_user(op2)),
                               (op3 := new_operator(), abandoned(op3))]:
        encoded = encode_features(features)
        decoded = decode_features(encoded)
        assert operator.vector(decoded) == operator.vector(features)
        assert encode_features(decoded) == encoded
        assert (decoded.version, decoded.emitted, decoded.emitted_at) == (
            features.version, features.emitted, features.emitted_at)
        assert decoded.sessions == features.sessions


def test_decoded_state_keeps_processing_like_the_original() -> None:
    operator = new_operator()
    features, _ = run(operator, SCENARIO)
    twin_operator = new_operator()
    twin, _ = run(twin_operator, SCENARIO)
    restored = decode_features(encode_features(twin))
    later = [ev("purchase", T0 + 80 * MINUTE, "item-2", "toys", 10.0), ev("page_view", T0 + 3 * HOUR_MS)]
    features, vectors = run(operator, later, features)
    restored, restored_vectors = run(twin_operator, later, restored)
    assert [v and (v.version, v.values) for v in vectors] == [v and (v.version, v.values) for v in restored_vectors]


@pytest.mark.parametrize("data", [b"", b"not json", b"[1, 2]", b'{"v": 2}', b'{"r": 0}'])
def test_codec_refuses_unknown_or_unreadable_state(data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_features(data)


def test_codec_refuses_a_newer_version_of_real_state() -> None:
    encoded = encode_features(run(new_operator(), SCENARIO)[0])
    with pytest.raises(CodecError, match="version"):
        decode_features(bytes([99]) + encoded[1:])
    with pytest.raises(CodecError, match="not readable"):
        decode_features(encoded[:1] + b"not zlib")
    with pytest.raises(CodecError, match="not readable"):
        decode_features(encoded[:1] + b"{not json")


def test_codec_still_reads_versions_1_and_2() -> None:
    """Version 1 stored the same document as bare JSON, version 2 always compressed; version 3 compresses only
    long ones."""
    for features in (run(new_operator(), SCENARIO)[0], busy_user(new_operator())):
        encoded = encode_features(features)
        for older in older_versions(encoded):
            assert encode_features(decode_features(older)) == encoded


def test_encoded_size_of_a_typical_user() -> None:
    size = len(encode_features(run(new_operator(), SCENARIO)[0]))  # 12 events, 2 sessions: ~1.1 KB measured
    assert size < 2048


def test_encoded_size_of_a_busy_user_is_below_2_kb() -> None:
    """Was 2970 B with absolute bucket ids and the emitted record by name; delta-coded now."""
    size = len(encode_features(busy_user(new_operator())))
    assert size < 2048, f"busy user's feature state is {size} bytes"


def test_forgetting_a_user_removes_them_from_the_population() -> None:
    operator = new_operator()
    population = operator.population
    assert isinstance(population, LocalPopulation)
    features, _ = run(operator, [ev("purchase", T0, item="i", category="c", price=30.0)])
    assert population.histograms["monetary"].count == 1
    operator.forget(features)
    assert all(histogram.count == 0 for histogram in population.histograms.values())
    assert features.purchases.scored is None

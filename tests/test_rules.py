"""The segment rule engine as executable scenarios: every default segment, expiry, conflicts, hysteresis."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from operators.events import Event
from operators.features.config import FeatureConfig
from operators.features.operator import DECISION_FIELDS, FeatureOperator, UserFeatures
from operators.features.rfm import LocalPopulation
from operators.models.user import MODEL_FIELDS
from operators.rules.catalog import RuleCatalog, RuleSet
from operators.rules.engine import RuleState, SegmentChange, SegmentEngine
from operators.rules.language import Compiler
from personalize.paths import CONFIG_DIR
from state.codecs import decode_rules, encode_rules
from tests.test_state_codecs import older_versions

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
COMPILER = Compiler(DECISION_FIELDS + MODEL_FIELDS)
DEFAULT_RULES = yaml.safe_load((CONFIG_DIR / "rules.yaml").read_text())["segments"]


def rule_set(definitions: list[dict[str, Any]]) -> RuleSet:
    return RuleCatalog.from_definitions(definitions, COMPILER).rule_set(COMPILER)


class User:
    """One user's rule state driven like the job drives it: events, and timers as the watermark passes."""

    def __init__(self, definitions: list[dict[str, Any]] | None = None, key: str = "u1") -> None:
        self.engine = SegmentEngine(rule_set(DEFAULT_RULES if definitions is None else definitions))
        self.state = RuleState()
        self.key = key
        self.first_seen: int | None = None
        self.count = 0
        self.log: list[SegmentChange] = []

    def event(self, event_type: str, at: int, item: str = "", category: str = "",
              features: dict[str, Any] | None = None, attributes: str = "") -> list[tuple[str, str, int]]:
        self.count += 1
        self.first_seen = at if self.first_seen is None else min(self.first_seen, at)
        event = Event(f"e{self.count}", event_type, self.key, self.key, "", at, item, category, 0.0, 1, "",
                      attributes)
        changes = self.engine.observe(self.state, event, self.first_seen, features or {})
        return self._record(changes)

    def until(self, at: int) -> list[tuple[str, str, int]]:
        """The watermark reaches ``at``: every timer up to it fires."""
        return self._record(self.engine.advance(self.state, self.key, at))

    def _record(self, changes: list[SegmentChange]) -> list[tuple[str, str, int]]:
        self.log += changes
        return [(change.action, change.segment, change.event_time) for change in changes]

    @property
    def segments(self) -> set[str]:
        return set(self.state.members)


def test_new_visitor_enters_at_first_event_and_leaves_exactly_after_seven_days() -> None:
    user = User()
    assert user.event("page_view", T0) == [("enter", "new_visitor", T0)]
    assert user.until(T0 + 7 * DAY - 1) == []
    assert user.until(T0 + 7 * DAY) == [("exit", "new_visitor", T0 + 7 * DAY)]
    assert user.log[-1].cause == {"kind": "expiry", "rule": "new_visitor", "version": 1}


def test_new_visitor_leaves_on_first_purchase() -> None:
    user = User()
    user.event("page_view", T0)
    changes = user.event("purchase", T0 + HOUR, item="i1")
    assert ("exit", "new_visitor", T0 + HOUR) in changes
    assert user.log[-1].cause["event"] == {"id": "e2", "type": "purchase"}


def test_loyal_customer_after_the_sixth_purchase_in_180_days_until_the_oldest_leaves_the_window() -> None:
    user = User()
    for day in range(5):
        user.event("purchase", T0 + day * DAY, item=f"i{day}")
    assert "loyal_customer" not in user.segments
    assert ("enter", "loyal_customer", T0 + 10 * DAY) in user.event("purchase", T0 + 10 * DAY, item="i9")
    # Six purchases at days 0,1,2,3,4,10: the 6th newest (day 0) leaves the 180-day window first.
    user.event("page_view", T0 + 170 * DAY)  # stay active so Dormant does not take over
    assert ("exit", "loyal_customer", T0 + 180 * DAY) in user.until(T0 + 180 * DAY)


def test_dormant_exactly_thirty_days_after_the_last_visit_preempting_loyal_and_back_on_return() -> None:
    user = User()
    for day in range(6):
        user.event("purchase", T0 + day * DAY, item=f"i{day}")
    assert user.segments == {"loyal_customer"}
    last_visit = T0 + 5 * DAY
    changes = user.until(last_visit + 30 * DAY)
    assert changes == [("exit", "loyal_customer", last_visit + 30 * DAY), ("enter", "dormant", last_visit + 30 * DAY)]
    assert user.log[-2].cause == {"kind": "preempted", "by": "dormant", "rule": "loyal_customer", "version": 1}
    back = last_visit + 40 * DAY
    assert user.event("page_view", back) == [("exit", "dormant", back), ("enter", "loyal_customer", back)]


def test_dormant_ends_when_the_last_visit_is_ninety_days_old() -> None:
    user = User()
    user.event("page_view", T0)
    user.until(T0 + 30 * DAY)
    assert user.segments == {"dormant"}
    assert user.until(T0 + 90 * DAY) == [("exit", "dormant", T0 + 90 * DAY)]


def test_high_intent_same_product_three_times_in_24h_leaves_when_the_first_view_expires() -> None:
    user = User()
    user.event("product_view", T0, item="a")
    user.event("product_view", T0 + HOUR, item="b")
    user.event("product_view", T0 + 2 * HOUR, item="a")
    assert "high_intent_browser" not in user.segments
    assert ("enter", "high_intent_browser", T0 + 3 * HOUR) in user.event("product_view", T0 + 3 * HOUR, item="a")
    assert user.until(T0 + DAY - 1) == []
    assert user.until(T0 + DAY) == [("exit", "high_intent_browser", T0 + DAY)]


def test_high_intent_browse_and_cart_branch_and_min_dwell_prevents_flapping() -> None:
    user = User()
    for minute in range(5):
        user.event("product_view", T0 + minute * MINUTE, item=f"i{minute}")
    assert ("enter", "high_intent_browser", T0 + 10 * MINUTE) in user.event("add_to_cart", T0 + 10 * MINUTE,
                                                                            item="i1")
    # A purchase breaks the condition at once, but members stay for the 30 min minimum dwell.
    assert user.event("purchase", T0 + 12 * MINUTE, item="i1") == [("exit", "new_visitor", T0 + 12 * MINUTE)]
    assert user.until(T0 + 40 * MINUTE - 1) == []
    assert user.until(T0 + 40 * MINUTE) == [("exit", "high_intent_browser", T0 + 40 * MINUTE)]


def test_potential_buyer_abandoned_cart_then_a_visit_within_48h() -> None:
    user = User()
    user.event("add_to_cart", T0, item="a")
    assert user.until(T0 + HOUR) == []  # abandoned now, but has not come back yet
    back = T0 + 20 * HOUR
    assert ("enter", "potential_buyer", back) in user.event("page_view", back)
    assert user.until(back + DAY) == [("exit", "potential_buyer", back + DAY)]  # held for 24 h


def test_potential_buyer_not_when_checkout_follows_within_the_hour_or_the_visit_comes_too_late() -> None:
    quick = User()
    quick.event("add_to_cart", T0, item="a")
    quick.event("checkout_start", T0 + 30 * MINUTE)
    quick.event("page_view", T0 + 5 * HOUR)
    assert "potential_buyer" not in quick.segments
    late = User()
    late.event("add_to_cart", T0, item="a")
    late.event("page_view", T0 + HOUR + 49 * HOUR)
    assert "potential_buyer" not in late.segments


def test_potential_buyer_cancelled_by_a_purchase() -> None:
    user = User()
    user.event("add_to_cart", T0, item="a")
    user.event("page_view", T0 + 3 * HOUR)
    assert "potential_buyer" in user.segments
    assert ("exit", "potential_buyer", T0 + 4 * HOUR) in user.event("purchase", T0 + 4 * HOUR, item="a")


def test_checkout_in_progress_until_purchase_or_thirty_minutes() -> None:
    paid = User()
    assert ("enter", "checkout_in_progress", T0) in paid.event("checkout_start", T0)
    assert ("exit", "checkout_in_progress", T0 + 5 * MINUTE) in paid.event("purchase", T0 + 5 * MINUTE, item="a")
    stalled = User()
    stalled.event("checkout_start", T0)
    assert ("exit", "checkout_in_progress", T0 + 30 * MINUTE) in stalled.until(T0 + 30 * MINUTE)


def test_an_exit_due_before_the_next_event_carries_its_exact_time_even_without_a_timer() -> None:
    user = User()
    user.event("checkout_start", T0)
    changes = user.event("page_view", T0 + 2 * HOUR)  # the watermark never reached T0 + 30 min
    assert changes[0] == ("exit", "checkout_in_progress", T0 + 30 * MINUTE)
    assert next(change for change in user.log if change.action == "exit").cause["kind"] == "expiry"


def test_high_value_uses_rfm_features_with_hysteresis() -> None:
    user = User()
    high = {"m_score": 5, "f_score": 4, "r_score": 3}
    assert ("enter", "high_value", T0) in user.event("purchase", T0, item="a", features=high)
    assert user.event("page_view", T0 + HOUR, features={**high, "m_score": 3}) == []  # between the thresholds
    assert user.event("page_view", T0 + 2 * HOUR, features={**high, "m_score": 2}) == [
        ("exit", "high_value", T0 + 2 * HOUR)]


def test_checkout_preempts_high_intent_in_the_intent_group_and_high_intent_returns_after() -> None:
    user = User()
    for minute in range(3):
        user.event("product_view", T0 + minute * MINUTE, item="a")
    assert "high_intent_browser" in user.segments
    start = T0 + 40 * MINUTE
    assert user.event("checkout_start", start) == [("exit", "high_intent_browser", start),
                                                   ("enter", "checkout_in_progress", start)]
    assert user.log[-2].cause["kind"] == "preempted" and user.log[-2].cause["by"] == "checkout_in_progress"
    assert user.log[-1].previous == ("new_visitor",) and "high_intent_browser" not in user.log[-1].current
    assert user.until(start + 30 * MINUTE) == [("exit", "checkout_in_progress", start + 30 * MINUTE),
                                               ("enter", "high_intent_browser", start + 30 * MINUTE)]


def _tie_rules() -> list[dict[str, Any]]:
    return [{"id": name, "version": 1, "group": "g", "priority": 5,
             "when": {"count": {"event": event_type, "within": "1h", "at_least": 1}}}
            for name, event_type in (("viewer", "page_view"), ("searcher", "search"))]


def test_equal_priority_in_a_group_goes_to_the_most_recent() -> None:
    user = User(_tie_rules())
    assert user.event("page_view", T0) == [("enter", "viewer", T0)]
    assert user.event("search", T0 + MINUTE) == [("exit", "viewer", T0 + MINUTE), ("enter", "searcher", T0 + MINUTE)]
    assert user.event("page_view", T0 + 2 * MINUTE) == []  # viewer qualifies since T0: searcher is more recent
    assert user.until(T0 + MINUTE + HOUR) == [("exit", "searcher", T0 + MINUTE + HOUR),
                                              ("enter", "viewer", T0 + MINUTE + HOUR)]


def test_threshold_hysteresis_does_not_flap() -> None:
    rules = [{"id": "engaged", "version": 1,
              "when": {"feature": {"name": "engagement", "op": ">=", "value": 70}},
              "exit_when": {"feature": {"name": "engagement", "op": "<", "value": 60}}}]
    user = User(rules)
    actions = [user.event("page_view", T0 + i * MINUTE, features={"engagement": value})
               for i, value in enumerate([69.9, 70.0, 69.9, 70.1, 60.0, 59.9, 69.0])]
    assert actions == [[], [("enter", "engaged", T0 + MINUTE)], [], [], [], [("exit", "engaged", T0 + 5 * MINUTE)],
                       []]


def test_out_of_order_events_count_in_event_time() -> None:
    user = User([{"id": "three", "version": 1,
                  "when": {"count": {"event": "product_view", "within": "1h", "at_least": 3}}}])
    user.event("product_view", T0 + 50 * MINUTE, item="a")
    user.event("product_view", T0, item="a")  # late, but within the allowed lateness
    assert user.event("product_view", T0 + 20 * MINUTE, item="a") == [("enter", "three", T0 + 50 * MINUTE)]
    # The oldest of the three (T0) leaves the hour first.
    assert user.until(T0 + HOUR) == [("exit", "three", T0 + HOUR)]


def test_attributes_from_context_and_traits() -> None:
    rules = [{"id": "german_mobile", "version": 1,
              "when": {"all": [{"attribute": {"name": "country", "op": "in", "value": ["DE", "AT"]}},
                               {"attribute": {"name": "device", "op": "==", "value": "mobile"}}]}}]
    user = User(rules)
    assert user.event("page_view", T0, attributes=json.dumps({"context": {"device": "mobile"}})) == []
    changes = user.event("profile_update", T0 + 1, attributes=json.dumps({"traits": {"country": "DE"}}))
    assert changes == [("enter", "german_mobile", T0 + 1)]
    assert user.state.attributes == {"device": "mobile", "country": "DE"}


def test_only_referenced_attributes_are_kept() -> None:
    user = User()
    user.event("profile_update", T0, attributes=json.dumps({"traits": {"email": "a@example.com", "plan": "pro"}}))
    assert user.state.attributes == {}


def test_rule_state_stays_bounded_and_round_trips() -> None:
    user = User()
    for i in range(3000):
        kind = ("product_view", "add_to_cart", "page_view", "purchase", "checkout_start")[i % 5]
        user.event(kind, T0 + i * 7 * MINUTE, item=f"i{i % 50}")
    sizes = {key: sum(len(times) for times in log.entities.values()) for key, log in user.state.logs.items()}
    assert max(sizes.values()) <= 60, sizes  # 20 items x 3 for the same-product signal
    encoded = encode_rules(user.state)
    assert len(encoded) < 2048
    restored = decode_rules(encoded)
    assert restored == user.state
    for older in older_versions(encoded):  # versions 1 (bare JSON) and 2 (always compressed) are still read
        assert decode_rules(older) == user.state


def test_decision_fields_match_what_the_feature_operator_computes() -> None:
    values = FeatureOperator(FeatureConfig(), LocalPopulation()).decision_values(UserFeatures())
    assert tuple(values) == DECISION_FIELDS


def test_default_rules_file_is_the_documented_rule_set() -> None:
    ids = [definition["id"] for definition in DEFAULT_RULES]
    assert ids == ["new_visitor", "loyal_customer", "dormant", "high_intent_browser", "potential_buyer",
                   "checkout_in_progress", "high_value", "high_purchase_intent"]
    assert Path(CONFIG_DIR / "rules.schema.json").exists()


@pytest.mark.parametrize("user_count", [1, 3])
def test_changes_have_deterministic_per_user_ids(user_count: int) -> None:
    for n in range(user_count):
        user = User(key=f"user-{n}")
        user.event("checkout_start", T0)
        user.until(T0 + HOUR)
        assert [change.change_id for change in user.log] == [f"user-{n}:s{i}" for i in range(1, len(user.log) + 1)]


def test_forgetting_a_user_exits_every_segment_with_the_cause() -> None:
    user = User()
    user.event("checkout_start", T0)
    changes = user.engine.forget(user.state, user.key, T0 + MINUTE, "retention")
    assert [(c.action, c.segment, c.cause) for c in changes] == [
        ("exit", "checkout_in_progress", {"kind": "retention"}), ("exit", "new_visitor", {"kind": "retention"})]
    assert changes[-1].current == () and user.segments == set()


def test_a_deleted_rule_exits_its_members_at_their_next_event() -> None:
    book_rules = [*DEFAULT_RULES]
    user = User(book_rules)
    user.event("checkout_start", T0)
    catalog = RuleCatalog.from_definitions(book_rules, COMPILER)
    catalog.entries["checkout_in_progress"] = replace(catalog.entries["checkout_in_progress"], status="deleted",
                                                      version=2)
    user.engine = SegmentEngine(catalog.rule_set(COMPILER))
    assert user.event("page_view", T0 + MINUTE) == [("exit", "checkout_in_progress", T0 + MINUTE)]
    assert user.log[-1].cause == {"kind": "rule_deleted", "rule": "checkout_in_progress", "version": 2}

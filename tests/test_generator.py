"""The generator's contract: deterministic, exact counts, valid events, planted behaviour, planted faults."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from operators.validation import Rejection, parse_event
from personalize import settings
from personalize.generator import (
    HELD_OUT_PERSONAS,
    PERSONA_MIXES,
    PERSONAS,
    EventGenerator,
    GeneratedRecord,
    topic_role,
)
from personalize.paths import CONFIG_DIR
from personalize.publish import read_jsonl, write_jsonl, write_personas

SMALL = replace(settings.load(environ={}).generator, users=300, events=20_000)


@pytest.fixture(scope="module")
def generator() -> EventGenerator:
    return EventGenerator(SMALL)


@pytest.fixture(scope="module")
def records(generator: EventGenerator) -> list[GeneratedRecord]:
    return list(generator.records())


@pytest.fixture(scope="module")
def docs(records: list[GeneratedRecord]) -> list[dict[str, Any]]:
    """Payloads of the valid records, in emission order."""
    return [json.loads(r.value) for r in records if r.kind == "valid"]


@pytest.fixture(scope="module")
def owners(docs: list[dict[str, Any]], generator: EventGenerator) -> list[str]:
    """Planted persona of each valid doc's user (anonymous visitors resolved through identify)."""
    known = {d["anonymous_id"]: d["user_id"] for d in docs if d["type"] == "identify"}
    personas = generator.personas()
    return [personas.get(d.get("user_id") or known.get(d.get("anonymous_id", ""), ""), "") for d in docs]


def test_same_seed_same_bytes_and_other_seed_differs(records: list[GeneratedRecord]) -> None:
    again = EventGenerator(SMALL)
    assert list(again.records()) == records
    assert again.personas() == EventGenerator(SMALL).personas()
    other = EventGenerator(replace(SMALL, seed=SMALL.seed + 1))
    assert [r.value for r in other.records()] != [r.value for r in records]


def test_exact_total_and_shares(records: list[GeneratedRecord]) -> None:
    kinds = Counter(r.kind for r in records)
    assert len(records) == SMALL.events
    assert kinds["malformed"] == round(SMALL.events * SMALL.malformed_share)
    assert kinds["duplicate"] == round(SMALL.events * SMALL.duplicate_share)
    odd = replace(SMALL, users=37, events=1_234, malformed_share=0.1, duplicate_share=0.05)
    kinds = Counter(r.kind for r in EventGenerator(odd).records())
    assert kinds == {"valid": 1049, "malformed": 123, "duplicate": 62}


def test_valid_records_pass_the_validator_and_the_schema(records: list[GeneratedRecord]) -> None:
    schema = json.loads((CONFIG_DIR / "event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    checked_per_type: Counter[str] = Counter()
    for record in records:
        if record.kind == "malformed":
            continue
        event = parse_event(record.value, record.ts)
        assert not isinstance(event, Rejection), (event, record)
        doc = json.loads(record.value)
        assert doc["schema_version"] == 1 and event.ts == record.ts
        assert record.topic_role == topic_role(event.type)
        assert record.key == (event.user_id or event.anonymous_id).encode()
        if checked_per_type[event.type] < 150:  # the full schema check is slow; every shape is covered
            checked_per_type[event.type] += 1
            validator.validate(doc)
    # A recommendation_view reports a list the job emitted; the generator plays users, not the job.
    assert set(checked_per_type) == set(schema["properties"]["type"]["enum"]) - {"recommendation_view"}


def test_malformed_records_are_rejected_for_varied_reasons(records: list[GeneratedRecord]) -> None:
    malformed = [r for r in records if r.kind == "malformed"]
    reasons: Counter[str] = Counter()
    for record in malformed:
        result = parse_event(record.value, record.ts)
        assert isinstance(result, Rejection), record
        reasons[result.reason] += 1
        assert SMALL.start_ms <= record.ts <= SMALL.start_ms + 40 * 86_400_000  # a plausible record time
    assert {"invalid_json", "not_utf8", "missing_field", "unknown_type", "invalid_field", "missing_user",
            "timestamp_out_of_range"} <= set(reasons)
    assert any(r.key is None for r in malformed)


def test_event_ids_are_unique_and_duplicates_resend_an_earlier_record(records: list[GeneratedRecord]) -> None:
    sent: dict[str, GeneratedRecord] = {}
    for record in records:
        if record.kind == "valid":
            event_id = json.loads(record.value)["event_id"]
            assert event_id not in sent
            sent[event_id] = record
        elif record.kind == "duplicate":
            original = sent[json.loads(record.value)["event_id"]]
            assert replace(original, kind="duplicate") == record


def test_out_of_order_share_and_disorder_bound(records: list[GeneratedRecord]) -> None:
    running_max = behind = valid = 0
    for record in records:
        assert running_max - record.ts <= SMALL.max_disorder_ms  # never late for a watermark with that bound
        if record.kind == "valid":
            valid += 1
            behind += record.ts < running_max
        running_max = max(running_max, record.ts)
    assert 0.7 * SMALL.out_of_order_share <= behind / valid <= 1.2 * SMALL.out_of_order_share
    ordered = EventGenerator(replace(SMALL, events=3_000, out_of_order_share=0.0, duplicate_share=0.0))
    stamps = [r.ts for r in ordered.records()]
    assert stamps == sorted(stamps)


def test_every_user_has_a_persona(generator: EventGenerator, docs: list[dict[str, Any]]) -> None:
    personas = generator.personas()
    assert len(personas) == SMALL.users and set(personas.values()) == set(PERSONAS)
    assert {d["user_id"] for d in docs if "user_id" in d} <= set(personas)


def test_personas_behave_differently(generator: EventGenerator, docs: list[dict[str, Any]],
                                     owners: list[str]) -> None:
    population = Counter(generator.personas().values())
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, list[float]] = defaultdict(list)
    orders: dict[str, set[str]] = defaultdict(set)
    for doc, persona in zip(docs, owners, strict=True):
        counts[persona][doc["type"]] += 1
        if doc["type"] == "purchase":
            prices[persona].append(doc["price"])
            orders[persona].add(doc["order_id"])

    def per_user(persona: str, event_type: str) -> float:
        return counts[persona][event_type] / population[persona]

    assert per_user("loyal_buyer", "purchase") > 20 * per_user("window_shopper", "purchase")
    assert per_user("window_shopper", "product_view") > per_user("bargain_hunter", "product_view")
    def completed(persona: str) -> float:
        return len(orders[persona]) / counts[persona]["checkout_start"]

    assert completed("cart_abandoner") < 0.4 < 0.7 < completed("loyal_buyer")
    assert per_user("bargain_hunter", "search") > 1.5 * per_user("loyal_buyer", "search")
    assert per_user("bargain_hunter", "email_click") > 2 * per_user("window_shopper", "email_click")
    assert sum(prices["bargain_hunter"]) / len(prices["bargain_hunter"]) < \
        0.6 * sum(prices["loyal_buyer"]) / len(prices["loyal_buyer"])
    assert per_user("one_time_visitor", "page_view") + per_user("one_time_visitor", "product_view") < 10


def test_identity_profile_and_consent_events_are_present(docs: list[dict[str, Any]]) -> None:
    identifies = [d for d in docs if d["type"] == "identify"]
    assert identifies and all(d["anonymous_id"].startswith("anon-") for d in identifies)
    first_anonymous = {d["anonymous_id"] for d in docs if "user_id" not in d}
    assert len(first_anonymous) > 0.1 * SMALL.users
    traits = [d["traits"] for d in docs if d["type"] == "profile_update"]
    assert any(t.get("email", "").endswith("@example.com") for t in traits)
    withdrawn = {d.get("user_id") for d in docs
                 if d["type"] == "consent_change" and d["consent"].get("personalization") is False}
    assert 1 <= len(withdrawn) <= 0.05 * SMALL.users


def test_popularity_is_zipf_like(generator: EventGenerator, docs: list[dict[str, Any]]) -> None:
    views = Counter(d["item_id"] for d in docs if d["type"] == "product_view")
    top = sorted(views.values(), reverse=True)[:SMALL.items // 10]
    assert sum(top) > 0.5 * sum(views.values())
    catalogue = generator.catalogue()
    assert len(catalogue) == SMALL.items and catalogue[0].item_id == "item-00001"
    assert {i.category for i in catalogue} == set(SMALL.categories) and min(i.price for i in catalogue) > 0


def test_persona_weights_plant_the_mix() -> None:
    only_loyal = EventGenerator(replace(SMALL, events=2_000), {"loyal_buyer": 1.0})
    assert set(only_loyal.personas().values()) == {"loyal_buyer"}
    with pytest.raises(ValueError, match="unknown personas"):
        EventGenerator(SMALL, {"bot": 1.0})


def test_the_held_out_mix_plants_only_held_out_personas() -> None:
    held_out = EventGenerator(replace(SMALL, events=3_000), PERSONA_MIXES["heldout"])
    assert set(held_out.personas().values()) == set(HELD_OUT_PERSONAS)
    assert not set(HELD_OUT_PERSONAS) & set(PERSONAS)
    assert sum(1 for r in held_out.records() if r.kind == "valid") == held_out.valid_count


def test_jsonl_round_trip_is_byte_exact(records: list[GeneratedRecord], generator: EventGenerator,
                                        tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    assert write_jsonl(records, path) == len(records)
    assert list(read_jsonl(path)) == records
    assert "value_b64" in path.read_text()  # non-UTF-8 payloads took the base64 path
    write_personas(generator.personas(), tmp_path / "personas.json")
    assert json.loads((tmp_path / "personas.json").read_text()) == generator.personas()

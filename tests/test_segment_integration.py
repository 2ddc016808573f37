"""The job on Segment-spec input: the demo's events as `produce --format segment` publishes them, plus
messages written after the spec's examples, through the real broker, Redis and a MiniCluster. Profiles
count the mapped events exactly; everything that does not map is dead-lettered with its reason."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from connectors.redis_keys import deadletter_counts_key, user_profile_key, user_profile_pattern
from jobs.personalize_job import run_job, source_spec
from operators.events import Event
from operators.segment_spec import SegmentSpec, parse_segment
from operators.validation import UNMAPPED_SPEC_EVENT, Limits, Rejection
from personalize import stack
from personalize.generator import EventGenerator, GeneratedRecord
from personalize.kafka_tools import read_topic
from personalize.publish import publish
from personalize.segment_format import TRACKING_ROLE, segment_records, segment_spec
from personalize.settings import Settings
from tests.conftest import isolated
from tests.test_segment_spec import COMMON, PRODUCT, consent, message, track

pytestmark = pytest.mark.integration
USER = COMMON["userId"]


def spec_examples(ts: int) -> list[GeneratedRecord]:
    """Messages after Segment's published examples, from one user of their own, after the demo's events:
    a three-product order (three purchases), a consent change, and four messages that map to nothing."""
    second, third = {**PRODUCT, "product_id": "505bd76785ebb509fc183733"}, {**PRODUCT, "product_id": "p-3"}
    documents = [
        track("Product Viewed", PRODUCT),
        track("Order Completed", {"order_id": "50314b8e9bcf000000000000", "revenue": 40.97, "currency": "USD",
                                  "products": [PRODUCT, second, third]}),
        consent({"Advertising": False, "Analytics": True, "Functional": True}),
        message("group", groupId="0e8c78ea9d97a7b8185e8632", traits={"name": "Initech", "employees": 329}),
        message("alias", previousId="39239-239239"),
        track("Product Clicked", PRODUCT),
        consent({"Functional": True}),
    ]
    records = []
    for index, document in enumerate(documents, start=1):
        at = ts + index * 1000
        timestamp = datetime.fromtimestamp(at / 1000, UTC).isoformat(timespec="milliseconds")
        document.update(messageId=f"spec-{index}", timestamp=timestamp)
        records.append(GeneratedRecord(TRACKING_ROLE, USER.encode(), json.dumps(document).encode(), at, "valid"))
    return records


@dataclass
class Expected:
    """What the job must produce, from the pure mapper and validator."""

    events: dict[str, list[Event]]
    rejections: Counter[str]


def expected_from(records: list[GeneratedRecord], limits: Limits, spec: SegmentSpec) -> Expected:
    events: dict[str, list[Event]] = defaultdict(list)
    rejections: Counter[str] = Counter()
    seen: set[str] = set()
    for record in records:
        result = parse_segment(record.value, record.ts, limits, spec)
        if isinstance(result, Rejection):
            rejections[result.reason] += 1
            continue
        for event in result:
            if event.event_id not in seen:
                seen.add(event.event_id)
                events[event.user_key].append(event)
    return Expected(events, rejections)


@pytest.fixture(scope="module")
def job_run(stack_settings: Settings) -> dict[str, Any]:
    settings = isolated(stack_settings)
    # As tests/test_job_integration.py: one transactional producer, and consent gating off so every mapped
    # event has an exact count whatever the read order.
    settings = replace(settings, job=replace(settings.job, parallelism=1),
                       privacy=replace(settings.privacy, enabled=False),
                       generator=replace(settings.generator, users=80, events=2000, seed=23,
                                         malformed_share=0.03, duplicate_share=0.03))
    stack.up(settings)
    spec = segment_spec(settings)
    demo = list(segment_records(EventGenerator(settings.generator).records(), spec))
    records = demo + spec_examples(max(record.ts for record in demo))
    published = publish(records, settings.kafka, progress=False)
    assert set(published.end_offsets) == {settings.kafka.topics.tracking.name}
    run_job(settings, source_spec(settings, "earliest", published.end_offsets))
    limits = Limits(settings.validation.max_payload_bytes, settings.validation.min_event_time_ms,
                    settings.validation.max_future_skew_ms)
    expected = expected_from(records, limits, spec)
    topics, servers = settings.kafka.topics, settings.kafka.bootstrap_servers
    letters = list(read_topic(servers, topics.deadletter.name, topics.deadletter.partitions,
                              expected=sum(expected.rejections.values())))
    return {"settings": settings, "expected": expected, "letters": letters}


def test_the_input_has_every_kind_of_message(job_run: dict[str, Any]) -> None:
    expected: Expected = job_run["expected"]
    types = Counter(event.type for events in expected.events.values() for event in events)
    assert {"page_view", "product_view", "add_to_cart", "search", "purchase", "consent_change", "identify",
            "profile_update", "email_open"} <= set(types)
    assert expected.rejections[UNMAPPED_SPEC_EVENT] >= 4 and len(expected.rejections) >= 4


def test_redis_profiles_count_the_mapped_events_exactly(job_run: dict[str, Any]) -> None:
    settings: Settings = job_run["settings"]
    expected: Expected = job_run["expected"]
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    prefix = settings.redis.key_prefix
    assert len(list(client.scan_iter(user_profile_pattern(prefix), count=1000))) == len(expected.events)
    for user, events in expected.events.items():
        stored = client.hgetall(user_profile_key(prefix, user))
        assert int(stored["total"]) == len(events), user
        assert {key[2:]: int(n) for key, n in stored.items() if key.startswith("n:")} == Counter(e.type for e in events)
        assert (int(stored["first_seen"]), int(stored["last_seen"])) == (min(e.ts for e in events),
                                                                         max(e.ts for e in events))


def test_an_order_of_three_products_is_three_purchases(job_run: dict[str, Any]) -> None:
    settings: Settings = job_run["settings"]
    stored = redis.Redis.from_url(settings.redis.url, decode_responses=True).hgetall(
        user_profile_key(settings.redis.key_prefix, USER))
    assert (int(stored["n:purchase"]), int(stored["n:product_view"]), int(stored["n:consent_change"])) == (3, 1, 1)


def test_what_does_not_map_is_dead_lettered_with_its_reason(job_run: dict[str, Any]) -> None:
    settings: Settings = job_run["settings"]
    expected: Expected = job_run["expected"]
    letters = [json.loads(record.value) for record in job_run["letters"]]
    assert Counter(letter["reason"] for letter in letters) == expected.rejections
    assert {letter["source"]["topic"] for letter in letters} == {settings.kafka.topics.tracking.name}
    details = {letter["detail"] for letter in letters if letter["reason"] == UNMAPPED_SPEC_EVENT}
    assert {"Segment call 'group' has no contract type (docs/events.md)",
            "Segment call 'alias' has no contract type (docs/events.md)",
            "track event 'Product Clicked' has no contract type (docs/events.md)"} <= details
    counts = redis.Redis.from_url(settings.redis.url, decode_responses=True).hgetall(
        deadletter_counts_key(settings.redis.key_prefix))
    assert Counter({reason: int(n) for reason, n in counts.items()}) == expected.rejections


"""Features on the MiniCluster: out-of-order and late events, through the real broker and Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from kafka import KafkaProducer

from connectors.redis_keys import user_features_key, user_profile_key
from jobs.personalize_job import run_job, source_spec
from personalize import stack
from personalize.kafka_tools import read_topic
from personalize.settings import Settings
from tests.conftest import isolated

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
LATE_EVENT_ID = "late-a-view"


def event(event_id: str, user: str, event_type: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": event_type, "ts": ts, **fields}


def scenario() -> Iterator[dict[str, Any]]:
    """One partition, so the job sees exactly this order (including the late event)."""
    yield event("e1", "erin", "page_view", T0 - 20 * DAY)  # idle past the 10-day test retention
    yield event("a1", "alice", "product_view", T0, item_id="item-x", category="books")
    # Records validation refuses, stamped three days ahead: they must not move event time (dead letters).
    yield {"raw": b"{not json", "record_ts": T0 + 3 * DAY}
    yield {"raw": json.dumps(event("g1", "zed", "page_view", "soon")).encode(), "record_ts": T0 + 3 * DAY}
    too_far_ahead = event("g2", "zed", "page_view", T0 + 3 * DAY)
    yield {"raw": json.dumps(too_far_ahead).encode(), "record_ts": T0}
    yield event("a2", "alice", "product_view", T0 + 10 * MINUTE + 30_000, item_id="item-x", category="books")
    yield event("a0", "alice", "page_view", T0 + 10 * MINUTE)  # out of order by 30 s: within the bound
    yield event("a3", "alice", "product_view", T0 + 20 * MINUTE, item_id="item-x", category="books")
    yield event("a4", "alice", "add_to_cart", T0 + 25 * MINUTE, item_id="item-x", category="books", price=20.0)
    yield event("b1", "bob", "purchase", T0 + 30 * MINUTE, item_id="item-y", category="toys", price=50.0,
                quantity=2)
    for minute in range(60, 240):  # carol browses for three hours: event time moves on
        yield event(f"c{minute}", "carol", "page_view", T0 + minute * MINUTE)
    for n in range(6000):  # processing time for a periodic watermark to pass before the late event
        yield event(f"d{n}", "dave", "page_view", T0 + 4 * HOUR)
    yield event("e2", "erin", "page_view", T0 + 4 * HOUR)  # erin is back: a fresh profile
    yield event(LATE_EVENT_ID, "alice", "product_view", T0 + 30 * MINUTE, item_id="item-x", category="books")
    yield event("a5", "alice", "page_view", T0 + 5 * HOUR)  # alice returns after the abandoned cart


@pytest.fixture(scope="module")
def features_run(stack_settings: Settings) -> dict[str, Any]:
    # Watermarks every 10 ms: the late event must find the watermark already past it, which takes
    # a periodic watermark emission between carol's/dave's events and it.
    settings = isolated(stack_settings)
    settings = replace(settings, job=replace(settings.job, watermark_interval_ms=10),
                       features=replace(settings.features, retention_ms=10 * DAY))
    stack.up(settings)
    topic = settings.kafka.topics.behavior.name
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    last = None
    for payload in scenario():
        value, record_ts = (payload["raw"], payload["record_ts"]) if "raw" in payload else (
            json.dumps(payload).encode(), payload["ts"])
        last = producer.send(topic, value=value, partition=0, timestamp_ms=record_ts)
    assert last is not None
    end = last.get(timeout=30).offset + 1
    producer.close()
    run_job(settings, source_spec(settings, "earliest", {topic: {0: end}}))
    topics = settings.kafka.topics
    # Vectors are identified by user and version.
    vectors = [json.loads(r.value) for r in read_topic(settings.kafka.bootstrap_servers, topics.features.name,
                                                        topics.features.partitions)]
    profiles = [json.loads(r.value) for r in read_topic(settings.kafka.bootstrap_servers, topics.profiles.name,
                                                         topics.profiles.partitions)]
    late = [json.loads(r.value) for r in read_topic(settings.kafka.bootstrap_servers, topics.late.name,
                                                     topics.late.partitions, expected=1)]
    return {"settings": settings, "vectors": vectors, "late": late, "profiles": profiles}


def last_vector(vectors: list[dict[str, Any]], user: str) -> dict[str, Any]:
    return max((v for v in vectors if v["user"] == user), key=lambda v: v["version"])


def test_the_late_event_goes_to_the_late_topic_and_nowhere_else(features_run: dict[str, Any]) -> None:
    assert [record["id"] for record in features_run["late"]] == [LATE_EVENT_ID]
    alice = last_vector(features_run["vectors"], "alice")["features"]
    assert alice["product_view_24h"] == 3  # the late view is not in the windows...
    settings: Settings = features_run["settings"]
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    assert client.hget(user_profile_key(settings.redis.key_prefix, "alice"), "n:product_view") == "4"  # ...but counted


def test_windowed_counts_and_sessions_of_alice(features_run: dict[str, Any]) -> None:
    alice = last_vector(features_run["vectors"], "alice")["features"]
    assert alice["max_item_views_24h"] == 3 and alice["top_item_24h"] == "item-x"
    assert alice["add_to_cart_24h"] == 1 and alice["page_view_24h"] == 2
    assert alice["sessions_30d"] == 2
    assert alice["returned_after_abandon"] is True and alice["cart_abandoned"] is False
    assert alice["top_category"] == "books"


def test_rfm_of_bob(features_run: dict[str, Any]) -> None:
    bob = last_vector(features_run["vectors"], "bob")["features"]
    assert bob["frequency_180d"] == 1 and bob["monetary_180d"] == 100.0 and bob["aov_180d"] == 100.0
    assert bob["recency_days"] == 0.0


def test_redis_holds_the_newest_vector(features_run: dict[str, Any]) -> None:
    settings: Settings = features_run["settings"]
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    for user in ("alice", "bob", "carol", "dave", "erin"):
        stored = client.hgetall(user_features_key(settings.redis.key_prefix, user))
        newest = last_vector(features_run["vectors"], user)
        assert int(stored["version"]) == newest["version"]
        assert int(stored["sessions_30d"]) == newest["features"]["sessions_30d"]


def test_a_user_idle_past_retention_leaves_no_state(features_run: dict[str, Any]) -> None:
    """Erin's state was cleared by her retention timer: her return starts a new profile at seq 1."""
    erin_updates = [p["id"] for p in features_run["profiles"] if p["user"] == "erin"]
    assert sorted(set(erin_updates)) == ["erin:1"] and len(erin_updates) >= 2
    settings: Settings = features_run["settings"]
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    profile = client.hgetall(user_profile_key(settings.redis.key_prefix, "erin"))
    assert profile["seq"] == "1" and profile["first_seen"] == str(T0 + 4 * HOUR)
    assert client.hget(user_features_key(settings.redis.key_prefix, "erin"), "version") == "1"

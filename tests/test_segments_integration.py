"""Segments on the MiniCluster through the real broker and Redis: exact expiry, Redis layout, rule commands."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from kafka import KafkaProducer

from connectors.redis_keys import (
    rule_instances_key,
    rules_key,
    segment_changes_key,
    segment_counts_key,
    segment_members_key,
    user_segments_key,
)
from jobs.personalize_job import run_job, source_spec, start_job
from operators.rules.catalog import RuleCommand
from personalize import stack
from personalize.demo import distinct_records
from personalize.settings import Settings
from tests.conftest import isolated

pytestmark = pytest.mark.integration

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
SEARCHER = {"id": "searcher", "name": "Searcher", "version": 1,
            "when": {"count": {"event": "search", "within": "1h", "at_least": 2}}}


def event(event_id: str, user: str, event_type: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": event_type, "ts": ts, **fields}


def publish(settings: Settings, topic: str, payloads: Iterable[bytes], partition: int = 0) -> int:
    """Send in order to one partition; returns the end offset."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all")
    last = None
    for payload in payloads:
        last = producer.send(topic, value=payload, partition=partition)
    assert last is not None
    end = last.get(timeout=30).offset + 1
    producer.close()
    return end


def changes_of(settings: Settings, **read_options: Any) -> list[dict[str, Any]]:
    """Distinct committed change records, in per-user order."""
    unique = distinct_records(settings, settings.kafka.topics.segments, **read_options)
    return sorted(unique.values(), key=lambda c: (c["user"], c["seq"]))


def scenario() -> Iterator[dict[str, Any]]:
    yield event("f1", "frank", "checkout_start", T0)
    for n in range(3):
        yield event(f"g{n}", "gina", "product_view", T0 + n * MINUTE, item_id="item-z", category="books")
    for minute in range(60, 180):  # carol's browsing moves the watermark past frank's checkout timeout
        yield event(f"c{minute}", "carol", "page_view", T0 + minute * MINUTE)
    for n in range(6000):  # processing time for periodic watermarks before the input ends
        yield event(f"d{n}", "dave", "page_view", T0 + 3 * HOUR)


@pytest.fixture(scope="module")
def segments_run(stack_settings: Settings) -> dict[str, Any]:
    settings = isolated(stack_settings)
    settings = replace(settings, job=replace(settings.job, watermark_interval_ms=10))
    stack.up(settings)
    topics = settings.kafka.topics
    events_end = publish(settings, topics.behavior.name, (json.dumps(e).encode() for e in scenario()))
    rules_end = publish(settings, topics.rules.name, [b'{"command": "add", "segment": {"id": "Bad Id"}}'])
    run_job(settings, source_spec(settings, "earliest", {topics.behavior.name: {0: events_end},
                                                         topics.rules.name: {0: rules_end}}))
    dead = list(distinct_records(settings, topics.deadletter, expected=1).values())
    return {"settings": settings, "changes": changes_of(settings), "dead": dead}


def of(changes: list[dict[str, Any]], user: str) -> list[tuple[str, str, int, str]]:
    return [(c["action"], c["segment"], c["event_time"], c["cause"]["kind"]) for c in changes if c["user"] == user]


def test_checkout_exit_happens_exactly_at_the_timeout_in_event_time(segments_run: dict[str, Any]) -> None:
    assert of(segments_run["changes"], "frank") == [  # higher priority first
        ("enter", "checkout_in_progress", T0, "event"),
        ("enter", "new_visitor", T0, "event"),
        ("exit", "checkout_in_progress", T0 + 30 * MINUTE, "expiry"),
    ]


def test_change_records_carry_the_contract(segments_run: dict[str, Any]) -> None:
    change = next(c for c in segments_run["changes"] if c["user"] == "gina" and c["segment"] == "high_intent_browser")
    assert change["id"] == f"gina:s{change['seq']}" and change["schema"] == "segments.v1"
    assert change["cause"] == {"kind": "event", "event": {"id": "g2", "type": "product_view"},
                               "rule": "high_intent_browser", "version": 1}
    assert change["previous"] == ["new_visitor"]
    assert change["segments"] == ["high_intent_browser", "new_visitor"]
    assert change["event_time"] == T0 + 2 * MINUTE and change["processing_time"] > T0


def test_redis_holds_memberships_counts_stream_and_rules(segments_run: dict[str, Any]) -> None:
    settings = segments_run["settings"]
    prefix = settings.redis.key_prefix
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    frank = client.hgetall(user_segments_key(prefix, "frank"))
    assert int(frank.pop("_epoch")) > 0  # the writer's start time (connectors/redis_writer.py)
    assert frank == {"_seq": "3", "new_visitor": str(T0)}
    assert client.zscore(segment_members_key(prefix, "high_intent_browser"), "gina") == T0 + 2 * MINUTE
    assert client.zcard(segment_members_key(prefix, "checkout_in_progress")) == 0
    counts = client.hgetall(segment_counts_key(prefix))
    assert counts["checkout_in_progress"] == "0" and counts["high_intent_browser"] == "1"
    assert counts["new_visitor"] == str(client.zcard(segment_members_key(prefix, "new_visitor")))
    stream = client.xrange(segment_changes_key(prefix))
    assert len(stream) == len(segments_run["changes"])  # replay-guarded: each change once
    rules = {rule_id: json.loads(entry) for rule_id, entry in client.hgetall(rules_key(prefix)).items()}
    assert len(rules) == 8 and rules["dormant"]["status"] == "active"
    assert len(set(client.hgetall(rule_instances_key(prefix)).values())) == 1


def test_a_malformed_rule_command_gives_one_error_record(segments_run: dict[str, Any]) -> None:
    [letter] = segments_run["dead"]
    assert letter["reason"] == "invalid_rule" and "missing required field" in letter["detail"]
    assert letter["source"]["topic"] == segments_run["settings"].kafka.topics.rules.name


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_control_topics_never_hold_back_the_users_event_time(stack_settings: Settings) -> None:
    """Rule commands and model snapshots are broadcast without event time: with an idleness timeout
    longer than the test, the rules topic's source (its table watermark pinned at the epoch) is never
    marked idle after a command, and the user operator's event time and timers used to stay there."""
    settings = isolated(stack_settings)
    settings = replace(settings, job=replace(settings.job, idleness_ms=3_600_000, parallelism=1),
                       privacy=replace(settings.privacy, stitch_identities=False))
    stack.up(settings)
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    job = start_job(settings, source_spec(settings, "earliest", None))
    try:
        publish(settings, settings.kafka.topics.rules.name, [b'{"command": "delete"}'])
        nora = json.dumps(event("n1", "nora", "page_view", T0)).encode()
        publish(settings, settings.kafka.topics.behavior.name, [nora])
        # A later event on every partition of every input topic (none stays empty, so none waits for the
        # idleness timeout): the watermark moves 31 days on and nora turns dormant, if the control topics
        # let it.
        for topic in settings.kafka.topics.inputs():
            for partition in range(topic.partitions):
                later = event(f"later-{topic.name}-{partition}", f"walker-{partition}", "page_view",
                              T0 + 31 * 24 * HOUR)
                publish(settings, topic.name, [json.dumps(later).encode()], partition=partition)
        dormant = wait_for("nora dormant in Redis", lambda: client.hget(
            user_segments_key(settings.redis.key_prefix, "nora"), "dormant"))
        assert int(dormant) == T0 + 30 * 24 * HOUR
    finally:
        job.cancel().result()


def test_rule_commands_apply_mid_stream_without_a_restart(stack_settings: Settings) -> None:
    settings = isolated(stack_settings)
    stack.up(settings)
    topics = settings.kafka.topics
    prefix = settings.redis.key_prefix
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    client_job = start_job(settings, source_spec(settings, "earliest", None))

    def send(*events: dict[str, Any]) -> None:
        publish(settings, topics.behavior.name, (json.dumps(e).encode() for e in events))

    def command(*commands: RuleCommand | bytes) -> None:
        publish(settings, topics.rules.name, (c if isinstance(c, bytes) else c.to_json() for c in commands))

    def rules_everywhere(replacing: set[str]) -> Callable[[], bool]:
        """Every instance runs one and the same rule set, a new one."""
        def check() -> bool:
            instances = client.hgetall(rule_instances_key(prefix))
            running = set(instances.values())
            return len(instances) == settings.job.parallelism and len(running) == 1 and not running & replacing
        return check

    def segment_changes(count: int) -> Callable[[], list[dict[str, Any]]]:
        def check() -> list[dict[str, Any]]:
            changes = [c for c in changes_of(settings, idle_timeout_s=2) if c["segment"] == "searcher"]
            return changes if len(changes) >= count else []
        return check

    try:
        send(event("h1", "hank", "search", T0, query="shoes"), event("h2", "hank", "search", T0 + MINUTE, query="red"))
        # An instance loads its rules at its first record: hank's reach one of them.
        wait_for("the job to run", lambda: client.hgetall(rule_instances_key(prefix)))
        initial = set(client.hgetall(rule_instances_key(prefix)).values())
        assert not segment_changes(1)()  # no such rule yet: hank's two searches make nothing

        command(RuleCommand("add", "searcher", 1, SEARCHER), b"not a rule")
        wait_for("the new rule on every instance", rules_everywhere(initial))
        send(event("h3", "hank", "search", T0 + 2 * MINUTE, query="boots"),
             event("h4", "hank", "search", T0 + 3 * MINUTE, query="blue"),
             event("i1", "ivy", "search", T0, query="tea"), event("i2", "ivy", "search", T0 + MINUTE, query="cup"))
        entered = wait_for("searcher entries", segment_changes(2))
        assert {(c["user"], c["action"], c["cause"]["version"]) for c in entered} == {
            ("hank", "enter", 1), ("ivy", "enter", 1)}
        hank_entry = next(c for c in entered if c["user"] == "hank")
        assert hank_entry["event_time"] == T0 + 3 * MINUTE  # a new rule counts events from when it applies

        current = set(client.hgetall(rule_instances_key(prefix)).values())
        stricter = {**SEARCHER, "version": 2, "when": {"count": {"event": "search", "within": "1h", "at_least": 5}}}
        command(RuleCommand("update", "searcher", 2, stricter), RuleCommand("delete", "ghost", 1))
        wait_for("the update on every instance", rules_everywhere(current))
        send(event("h5", "hank", "page_view", T0 + 4 * MINUTE))
        wait_for("hank's exit under the stricter rule", segment_changes(3))
        current = set(client.hgetall(rule_instances_key(prefix)).values())
        command(RuleCommand("delete", "searcher", 3))
        wait_for("the delete on every instance", rules_everywhere(current))
        send(event("i3", "ivy", "page_view", T0 + 2 * MINUTE))
        changes = wait_for("searcher exits", segment_changes(4))
        exits = {c["user"]: c["cause"] for c in changes if c["action"] == "exit"}
        assert exits["hank"]["version"] == 2 and exits["hank"]["kind"] == "event"
        assert exits["ivy"] == {"kind": "rule_deleted", "rule": "searcher", "version": 3}
        assert client.zcard(segment_members_key(prefix, "searcher")) == 0
        letters = wait_for("two error records", lambda: _dead_letters(settings, 2))
        assert sorted(letter["reason"] for letter in letters) == ["invalid_rule", "invalid_rule"]
        assert any("not newer" in letter["detail"] or "unknown" in letter["detail"] for letter in letters)
    finally:
        client_job.cancel().result()


def _dead_letters(settings: Settings, count: int) -> list[dict[str, Any]]:
    letters = list(distinct_records(settings, settings.kafka.topics.deadletter, idle_timeout_s=2).values())
    return letters if len(letters) >= count else []


def test_changes_event_time_makes_reach_redis_without_a_later_event(stack_settings: Settings) -> None:
    """Dormancy is made by a watermark alone (no event of the user): once no event follows, it must
    still reach Redis while the job runs, not wait in the writer's buffer until the job stops."""
    settings = isolated(stack_settings)
    stack.up(settings)
    behavior = settings.kafka.topics.behavior
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    job = start_job(settings, source_spec(settings, "earliest", None))
    try:
        publish(settings, behavior.name, [json.dumps(event("n1", "nora", "page_view", T0)).encode()])
        # One later event on every partition moves the watermark 31 days on: nora turns dormant.
        for partition in range(behavior.partitions):
            later = event(f"late-{partition}", f"walker-{partition}", "page_view", T0 + 31 * 24 * HOUR)
            publish(settings, behavior.name, [json.dumps(later).encode()], partition=partition)
        dormant = wait_for("nora dormant in Redis", lambda: client.hget(
            user_segments_key(settings.redis.key_prefix, "nora"), "dormant"))
        assert int(dormant) == T0 + 30 * 24 * HOUR
        assert client.zscore(segment_members_key(settings.redis.key_prefix, "dormant"), "nora") is not None
    finally:
        job.cancel().result()

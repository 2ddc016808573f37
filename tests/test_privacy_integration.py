"""Consent, erasure and PII protection in the running job, on the MiniCluster with the real broker and Redis.

One unbounded job with identifier hashing on, once per delivery guarantee of the identity loop.
Phases are published one after another and each is awaited (consent and behaviour travel on
different topics, read at their own speeds):

1. ann, bob, cid and dan browse: all four get profiles, features, segments, recommendations;
2. ann withdraws consent, bob asks for erasure, cid withdraws: their keyed state and Redis keys go,
   tombstones and confirmations appear, their segment exits carry cause ``erasure``;
3. ann and bob go on browsing: nothing of theirs is written anywhere; cid consents again;
4. cid browses: a fresh profile whose counters start above every erased id;
5. an anonymous visitor browses and puts an item in the cart, logs in as eve (the anonymous history
   merges into eve's profile), browses on under the cookie alone (the event lands on eve), and eve
   asks for erasure (which cascades to the anonymous key).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from connectors.redis_keys import (
    segment_changes_key,
    segment_members_key,
    user_profile_key,
    user_recs_info_key,
    user_segments_key,
)
from jobs.personalize_job import source_spec, start_job
from operators.privacy.consent import COUNTER_STRIDE
from operators.privacy.pii import PiiHasher
from personalize import stack
from personalize.kafka_tools import read_topic
from personalize.settings import Settings
from tests.conftest import isolated
from tests.test_segments_integration import publish, wait_for

pytestmark = pytest.mark.integration
SECRET = "integration-test-secret-0123456789"
MINUTE = 60_000
#: Near the wall clock: the malformed record has no ``ts``, so its Kafka timestamp (now) is its event
#: time, and a watermark months ahead of the events would expire every user by retention.
T0 = (int(time.time() * 1000) // MINUTE - 24 * 60) * MINUTE


def event(event_id: str, user: str, event_type: str, ts: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": user, "type": event_type, "ts": ts, **fields}


def browsing(user: str, start: int, n: int = 4) -> list[dict[str, Any]]:
    return [event(f"{user}-{start}-{i}", user, "product_view", start + i * MINUTE, item_id=f"item-{i % 3}",
                  category="books") for i in range(n)] + \
           [event(f"{user}-{start}-cart", user, "add_to_cart", start + n * MINUTE, item_id="item-1", category="books")]


def anonymous(events: list[dict[str, Any]], cookie: str) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in e.items() if k != "user_id"}, "anonymous_id": cookie} for e in events]


def consent(event_id: str, user: str, ts: int, personalization: bool, erase: bool = False) -> dict[str, Any]:
    fields: dict[str, Any] = {"consent": {"personalization": personalization}}
    if erase:
        fields = {"consent": {"personalization": False, "analytics": False, "marketing": False},
                  "properties": {"erase": True}}
    return event(event_id, user, "consent_change", ts, **fields)


def encoded(events: Iterable[dict[str, Any]]) -> Iterable[bytes]:
    return (json.dumps(e).encode() for e in events)


@pytest.fixture(scope="module", params=["at-least-once", "exactly-once"])
def privacy_run(stack_settings: Settings, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """The run, with the identity loop at either delivery guarantee (``privacy.handover_delivery``)."""
    settings = isolated(stack_settings)
    settings = replace(settings, privacy=replace(settings.privacy, secret=SECRET, hash_identifiers=True,
                                                 handover_delivery=request.param))
    stack.up(settings)
    topics, prefix = settings.kafka.topics, settings.redis.key_prefix
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    hasher = PiiHasher(SECRET.encode())
    key = {user: hasher.user_id(user) for user in ("ann", "bob", "cid", "dan", "eve")}
    key["cookie"] = "anon:" + hasher.anonymous_id("eve-cookie")

    def keys_of(user: str) -> list[str]:
        return list(client.scan_iter(f"{prefix}*{key[user]}*"))

    def profile(user: str) -> dict[str, str]:
        return client.hgetall(user_profile_key(prefix, key[user]))  # type: ignore[return-value]

    job = start_job(settings, source_spec(settings, "earliest", None))
    try:
        publish(settings, topics.behavior.name, encoded(
            [e for user in ("ann", "bob", "cid", "dan") for e in browsing(user, T0)]))
        bad = b'{"type": "page_view", "user_id": "ann", "email": "ann@example.com"}'  # no event_id, no ts
        publish(settings, topics.behavior.name, [bad])
        wait_for("four profiles", lambda: all(profile(u).get("total") == "5" for u in ("ann", "bob", "cid", "dan")))
        before = {u: keys_of(u) for u in key}
        publish(settings, topics.consent.name, encoded([
            consent("ann-withdraw", "ann", T0 + 10 * MINUTE, personalization=False),
            consent("bob-erase", "bob", T0 + 10 * MINUTE, personalization=False, erase=True),
            consent("cid-withdraw", "cid", T0 + 10 * MINUTE, personalization=False)]))
        wait_for("three users erased from Redis", lambda: not any(keys_of(u) for u in ("ann", "bob", "cid")))
        publish(settings, topics.behavior.name, encoded(browsing("ann", T0 + 20 * MINUTE) +
                                                        browsing("bob", T0 + 20 * MINUTE)))
        publish(settings, topics.consent.name, encoded([consent("cid-again", "cid", T0 + 30 * MINUTE, True)]))
        wait_for("cid's fresh start", lambda: profile("cid").get("total") == "1")
        publish(settings, topics.behavior.name, encoded(browsing("cid", T0 + 40 * MINUTE)))
        wait_for("cid's new events", lambda: profile("cid").get("total") == "6")
        wait_for("dan's recommendations", lambda: any("recs" in k for k in keys_of("dan")))
        publish(settings, topics.behavior.name, encoded(anonymous(browsing("eve", T0 + 50 * MINUTE), "eve-cookie")))
        wait_for("the anonymous visitor's profile", lambda: profile("cookie").get("total") == "5")
        cookie_keys = keys_of("cookie")
        publish(settings, topics.behavior.name, encoded([event("eve-login", "eve", "identify", T0 + 60 * MINUTE,
                                                               anonymous_id="eve-cookie")]))
        wait_for("the merge into eve", lambda: profile("eve").get("total") == "6")
        merged = {"cookie_keys_after_merge": keys_of("cookie"),
                  "segments": client.hgetall(user_segments_key(prefix, key["eve"]))}
        publish(settings, topics.behavior.name, encoded(anonymous([event(
            "eve-later", "eve", "product_view", T0 + 61 * MINUTE, item_id="item-2", category="books")], "eve-cookie")))
        wait_for("the cookie's later event at eve", lambda: profile("eve").get("total") == "7")
        wait_for("eve's list with her cart", lambda: "cart" in (client.hget(
            user_recs_info_key(prefix, key["eve"]), "items") or ""))
        merged["recs"] = json.loads(client.hget(user_recs_info_key(prefix, key["eve"]), "items"))
        publish(settings, topics.consent.name, encoded([consent("eve-erase", "eve", T0 + 70 * MINUTE, False, True)]))
        wait_for("eve erased", lambda: not keys_of("eve"))
        confirmations = list(read_topic(settings.kafka.bootstrap_servers, topics.erasures.name,
                                        topics.erasures.partitions, expected=5))
        outputs = {name: list(read_topic(settings.kafka.bootstrap_servers, getattr(topics, name).name,
                                         getattr(topics, name).partitions, tombstones=True))
                   for name in ("profiles", "features", "segments", "recommendations", "deadletter", "merges")}
        yield {"settings": settings, "client": client, "key": key, "before": before, "keys_of": keys_of,
               "profile": profile, "confirmations": [json.loads(r.value) for r in confirmations],
               "outputs": outputs, "hasher": hasher, "cookie_keys": cookie_keys, "merged": merged}
    finally:
        job.cancel().result()


def records_of(outputs: list[Any], user_key: str) -> list[dict[str, Any] | None]:
    return [json.loads(r.value) if r.value is not None else None for r in outputs if r.key == user_key.encode()]


def test_erased_users_leave_no_redis_keys_and_no_trace_in_segment_sets_or_the_change_stream(
        privacy_run: dict[str, Any]) -> None:
    client, key, prefix = privacy_run["client"], privacy_run["key"], privacy_run["settings"].redis.key_prefix
    for user in ("ann", "bob"):
        assert privacy_run["before"][user] and not privacy_run["keys_of"](user)
    members = {member for name in client.scan_iter(segment_members_key(prefix, "*"))
               for member in client.zrange(name, 0, -1)}
    stream = [json.loads(fields["change"]) for _, fields in client.xrange(segment_changes_key(prefix))]
    assert key["dan"] in members and not members & {key["ann"], key["bob"]}
    assert {c["user"] for c in stream} & {key["dan"], key["cid"]} and not {c["user"] for c in stream} & {
        key["ann"], key["bob"]}
    assert privacy_run["keys_of"]("dan") and privacy_run["profile"]("dan")["total"] == "5"


def test_after_a_withdrawal_nothing_more_is_emitted_for_the_user(privacy_run: dict[str, Any]) -> None:
    outputs, key = privacy_run["outputs"], privacy_run["key"]
    for user in ("ann", "bob"):
        profiles = [r for r in records_of(outputs["profiles"], key[user]) if r is not None]
        assert sorted(r["seq"] for r in profiles) == [1, 2, 3, 4, 5]  # the 5 events before; none of the 5 after
        changes = [r for r in records_of(outputs["segments"], key[user]) if r is not None]
        assert changes and changes[-1]["action"] == "exit" and changes[-1]["cause"]["kind"] == "erasure"


def test_erasure_writes_tombstones_on_every_user_keyed_topic(privacy_run: dict[str, Any]) -> None:
    outputs, key = privacy_run["outputs"], privacy_run["key"]
    for user in ("ann", "bob", "cid"):
        for topic in ("profiles", "features", "segments", "recommendations"):
            records = records_of(outputs[topic], key[user])
            assert None in records, (user, topic)
    assert None not in records_of(outputs["profiles"], key["dan"])


def test_confirmations_are_auditable_and_carry_no_personal_data(privacy_run: dict[str, Any]) -> None:
    hasher: PiiHasher = privacy_run["hasher"]
    key = privacy_run["key"]
    by_subject = {c["subject"]: c for c in privacy_run["confirmations"]}
    expected = {hasher.hash("erasure_subject", key[u]): reason for u, reason in
                (("ann", "consent_withdrawn"), ("bob", "erasure_request"), ("cid", "consent_withdrawn"),
                 ("eve", "erasure_request"), ("cookie", "erasure_request"))}
    assert {s: c["reason"] for s, c in by_subject.items()} == expected
    text = json.dumps(privacy_run["confirmations"])
    leaks = [n for n in ("ann", "bob", "cid", "eve") if f'"{n}"' in text] + [k for k in key.values() if k in text]
    assert not leaks, (leaks, text[:600])
    assert all(c["schema"] == "privacy.erasure.v1" for c in by_subject.values())
    assert by_subject[hasher.hash("erasure_subject", key["eve"])]["cascaded"] == 1  # to the merged cookie
    assert by_subject[hasher.hash("erasure_subject", key["cookie"])]["cascaded"] == 0  # not back again


def test_a_reconsent_starts_fresh_with_counters_above_every_erased_id(privacy_run: dict[str, Any]) -> None:
    profile = privacy_run["profile"]("cid")
    assert profile["total"] == "6" and int(profile["seq"]) == COUNTER_STRIDE + 6
    outputs, key = privacy_run["outputs"], privacy_run["key"]
    seqs = [r["seq"] for r in records_of(outputs["profiles"], key["cid"]) if r is not None]
    assert sorted(seqs) == [1, 2, 3, 4, 5] + [COUNTER_STRIDE + n for n in range(1, 7)]


def test_identifiers_are_hashed_and_dead_letters_redacted(privacy_run: dict[str, Any]) -> None:
    outputs = privacy_run["outputs"]
    for topic in ("profiles", "features", "segments", "recommendations"):
        assert all(b"ann" not in (r.key or b"") and b'"ann"' not in (r.value or b"") for r in outputs[topic])
    letters = [json.loads(r.value) for r in outputs["deadletter"]]
    assert len(letters) == 1 and "ann@example.com" not in letters[0]["payload"]
    assert set(letters[0]["redacted"]) == {"email", "user_id"}
    assert privacy_run["hasher"].user_id("ann") in letters[0]["payload"]


def test_an_anonymous_visitors_history_merges_into_the_known_user(privacy_run: dict[str, Any]) -> None:
    key, outputs, merged = privacy_run["key"], privacy_run["outputs"], privacy_run["merged"]
    assert privacy_run["cookie_keys"] and not merged["cookie_keys_after_merge"]  # the cookie's keys moved
    assert any(name != "_seq" for name in merged["segments"])  # segments re-derived on the merged history
    assert any("cart" in item["reasons"] and item["item"] == "item-1" for item in merged["recs"])  # cart kept
    merges = [json.loads(r.value) for r in outputs["merges"]]
    assert [(m["user"], m["anonymous"]) for m in merges] == [(key["eve"], key["cookie"])]
    assert {"profile", "features", "rules", "recs"} <= set(merges[0]["merged"])
    exits = [r for r in records_of(outputs["segments"], key["cookie"]) if r is not None and r["action"] == "exit"]
    assert exits and {r["cause"]["kind"] for r in exits} == {"merge"}
    eve = sorted(r["seq"] for r in records_of(outputs["profiles"], key["eve"]) if r is not None)
    assert eve == [1, 2]  # eve's own updates: the identify (after the merge) and the forwarded event

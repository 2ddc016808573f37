"""The dashboard: history reconstruction and causes as pure functions, then the page end to end in
headless Chromium over the Redis state of a real demo run (broker, Redis, MiniCluster)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from connectors.redis_keys import (
    deadletter_counts_key,
    models_current_key,
    models_drift_key,
    rules_key,
    segment_changes_key,
    segment_counts_key,
    user_model_key,
    user_recs_info_key,
    user_segments_key,
    users_hll_key,
)
from personalize import settings as settings_module
from personalize.bootstrap import CHROMIUM
from personalize.dashboard import create_app, make_server
from personalize.dashboard.data import FEED_SIZE, describe_cause, public_url, segment_history
from personalize.settings import Settings
from tests.conftest import free_ports

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_SCREENSHOT = "PERSONALIZE_DOCS_SCREENSHOT"
"""Set to a path (docs/img/dashboard.png) to also save the screenshot there."""


def change(segment: str, action: str, event_time: int) -> dict[str, Any]:
    return {"segment": segment, "action": action, "event_time": event_time}


def test_history_undoes_later_changes_from_the_counts_now() -> None:
    changes = [change("a", "enter", 10), change("a", "enter", 20), change("b", "enter", 20),
               change("a", "exit", 30), change("a", "enter", 40)]
    history = segment_history(reversed(changes), {"a": 2, "b": 1}, buckets=3)  # arrival order does not matter
    assert history["times"] == [10, 20, 30, 40]
    assert history["series"] == {"a": [1, 2, 1, 2], "b": [0, 1, 1, 1]}
    assert history["changes"] == 5


def test_history_of_a_capped_stream_starts_from_the_reconstructed_level() -> None:
    # Members entered before the stream's window are still counted: 5 now, one exit kept.
    history = segment_history([change("a", "exit", 100)], {"a": 5, "idle": 3}, buckets=1)
    assert history["series"] == {"a": [5], "idle": [3]} and history["times"] == [100]


def test_history_without_changes_is_empty() -> None:
    assert segment_history([], {"a": 1})["times"] == []


@pytest.mark.parametrize(("cause", "text"), [
    ({"kind": "event", "event": {"id": "g2", "type": "product_view"}, "rule": "hib", "version": 1},
     "event product_view (g2) · rule hib v1"),
    ({"kind": "expiry", "rule": "checkout", "version": 2}, "expiry · rule checkout v2"),
    ({"kind": "preempted", "by": "vip", "rule": "loyal", "version": 1}, "preempted by vip · rule loyal v1"),
    ({"kind": "rule_deleted", "rule": "x", "version": 3}, "rule deleted · rule x v3"),
    ({"kind": "model", "model_version": 7}, "model · model_version 7"),
    (None, "unknown"),
])
def test_causes_read_as_one_line(cause: dict[str, Any] | None, text: str) -> None:
    assert describe_cause(cause) == text


def test_urls_shown_on_the_page_hide_passwords() -> None:
    assert public_url("redis://:secret@db:6379/0") == "redis://:***@db:6379/0"
    assert public_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def settings_with_redis(settings: Settings, url: str, prefix: str) -> Settings:
    return replace(settings, redis=replace(settings.redis, url=url, key_prefix=prefix))


def test_a_redis_that_is_down_is_reported_not_raised() -> None:
    [port] = free_ports(1)
    settings = settings_with_redis(settings_module.load(environ={}), f"redis://127.0.0.1:{port}/0", "x:")
    client = create_app(settings).test_client()
    for path in ("/api/overview", "/api/history", "/api/user?key=u1"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json["redis"]["ok"] is False and response.json["redis"]["error"]
    assert client.get("/").status_code == 200
    assert client.get("/api/user").status_code == 400


# --- end to end in the browser ---------------------------------------------------------------------------


class Served:
    """A dashboard server on a free port in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.server = make_server(settings, "127.0.0.1", 0, refresh_ms=500)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's chromium with apt-get "
                    "(needs root and apt); the browser tests cannot run without it")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


def texts(page: Any, selector: str, attribute: str = "") -> list[tuple[str, str]]:
    """(data attribute, visible text) of every match, read in one step: the page redraws as it polls."""
    return [tuple(pair) for pair in page.evaluate(
        "([selector, attribute]) => [...document.querySelectorAll(selector)]"
        ".map(node => [attribute ? node.dataset[attribute] : '', node.innerText ?? node.textContent])",
        [selector, attribute])]


def number(text: str) -> int:
    return int(re.sub(r"[^\d]", "", text))


@pytest.mark.integration
def test_the_page_shows_what_redis_holds(demo_settings: Settings, browser: Any, tmp_path: Path) -> None:
    prefix = demo_settings.redis.key_prefix
    client = redis.Redis.from_url(demo_settings.redis.url, decode_responses=True)
    served = Served(demo_settings)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(served.url)
        # "attached", not "visible": a segment that stayed at 0 is a flat line with no height.
        page.wait_for_selector("#history-chart polyline", state="attached", timeout=20_000)

        counts = {segment: int(n) for segment, n in client.hgetall(segment_counts_key(prefix)).items()}
        assert counts, "the demo run left no segment counts in Redis"
        shown = {segment: number(text) for segment, text in texts(page, "#segments td.count", "segment")}
        assert shown == counts
        assert number(page.inner_text("#memberships")) == sum(counts.values())
        assert number(page.inner_text("#users-seen")) == client.pfcount(users_hll_key(prefix))
        assert "Redis up" in page.inner_text("#redis-status") and page.is_hidden("#banner")

        # The chart draws one line per segment and ends at the counts now.
        assert {segment for segment, _ in texts(page, "#history-chart polyline", "segment")} == set(counts)
        history = page.evaluate("fetch('api/history').then(r => r.json())")
        assert {segment: series[-1] for segment, series in history["series"].items()} == counts

        # The feed shows the newest stream entries, newest first, with their causes.
        newest = client.xrevrange(segment_changes_key(prefix), count=FEED_SIZE)
        rows = [text for _, text in texts(page, "#feed tbody tr")]  # the page redraws: read all at once
        assert len(rows) == min(FEED_SIZE, client.xlen(segment_changes_key(prefix)))
        first = json.loads(newest[0][1]["change"])
        assert rows[0].split("\t")[1] == first["user"]
        assert first["segment"] in rows[0] and first["cause"]["kind"] in rows[0]

        # Keys other parts of the job may not write yet: their numbers, or "not available yet".
        deadletters = client.hgetall(deadletter_counts_key(prefix))
        if deadletters:
            assert number(page.inner_text("#deadletters-total")) == sum(int(n) for n in deadletters.values())
        else:
            assert "not available yet" in page.inner_text("#deadletters")
        model = client.hgetall(models_current_key(prefix))
        if model:
            shown_model = dict(pair.split("\n", 1) for pair in
                               page.evaluate("[...document.querySelectorAll('#model dt')]"
                                             ".map(dt => dt.innerText + '\\n' + dt.nextElementSibling.innerText)"))
            assert shown_model["version"] == model["version"] and shown_model["lineage"] == model["lineage"]
            drift_length = client.xlen(models_drift_key(prefix))
            assert (len(texts(page, "#drift-alerts tr")) == min(drift_length, 20)) if drift_length \
                else page.is_visible("#no-drift")
        else:
            assert "not available yet" in page.inner_text("#model")
        assert len(texts(page, "#rules tbody tr")) == len(client.hkeys(rules_key(prefix)))

        # User lookup from the feed: the user's segments as Redis holds them.
        user = first["user"]
        page.locator("#feed a.user", has_text=user).first.click()
        page.wait_for_selector(f".user-grid[data-user='{user}']", timeout=10_000)
        memberships = {s for s in client.hkeys(user_segments_key(prefix, user)) if not s.startswith("_")}
        assert {segment for segment, _ in texts(page, "#user-segments li", "segment")} == memberships
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        # A user with recommendations (one with an intent score if any): items in ranked order with
        # their reasons, and the model's scores.
        with_recs = sorted(key[len(prefix) + len("user:"):-len(":recs:info")]
                           for key in client.scan_iter(user_recs_info_key(prefix, "*"), count=1000)
                           if json.loads(client.hget(key, "items") or "[]"))
        scored = [user for user in with_recs if client.hget(user_model_key(prefix, user), "intent")]
        recs_user = (scored or with_recs or [None])[0]
        if recs_user is not None:
            page.fill("#user-key", recs_user)
            page.press("#user-key", "Enter")
            page.wait_for_selector(f".user-grid[data-user='{recs_user}'] #user-recs", timeout=10_000)
            items = json.loads(client.hget(user_recs_info_key(prefix, recs_user), "items") or "[]")
            shown_recs = texts(page, "#user-recs li", "item")
            assert [item for item, _ in shown_recs] == [entry["item"] for entry in items]
            top_reason = max(items[0]["reasons"], key=items[0]["reasons"].get)
            assert top_reason in shown_recs[0][1]
            scores = client.hgetall(user_model_key(prefix, recs_user))
            model_text = page.inner_text(f".user-grid[data-user='{recs_user}']")
            intent = scores.get("intent", "")
            assert (f"{float(intent):.3f}" in model_text) if intent else "not scored yet" in model_text
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        if os.environ.get(DOCS_SCREENSHOT):
            shutil.copy(tmp_path / "dashboard.png", os.environ[DOCS_SCREENSHOT])

        # A user the job never saw.
        page.fill("#user-key", "nobody-at-all")
        page.press("#user-key", "Enter")
        page.wait_for_selector("#user-missing", timeout=10_000)
    finally:
        page.close()
        served.stop()


@pytest.mark.integration
@pytest.mark.parametrize(("redis_up", "banner"), [(False, "Redis is unreachable"), (True, "holds no data")])
def test_the_page_says_when_redis_is_down_or_empty(stack_settings: Settings, browser: Any, tmp_path: Path,
                                                    redis_up: bool, banner: str) -> None:
    url = stack_settings.redis.url if redis_up else f"redis://127.0.0.1:{free_ports(1)[0]}/0"
    served = Served(settings_with_redis(stack_settings, url, "nothing-here:"))
    page = browser.new_page()
    try:
        page.goto(served.url)
        page.wait_for_selector("#banner:not([hidden])", timeout=10_000)
        assert banner in page.inner_text("#banner")
        assert ("Redis down" in page.inner_text("#redis-status")) is not redis_up
        page.screenshot(path=str(tmp_path / f"redis-{'empty' if redis_up else 'down'}.png"))
    finally:
        page.close()
        served.stop()

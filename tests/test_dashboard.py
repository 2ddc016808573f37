"""The dashboard: history reconstruction and causes as pure functions, then the page end to end in
headless Chromium over the Redis state of a real demo run (broker, Redis, MiniCluster)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from connectors.redis_keys import (
    deadletter_counts_key,
    experiment_metrics_key,
    models_clusters_key,
    models_current_key,
    models_drift_key,
    rules_key,
    segment_changes_key,
    segment_counts_key,
    segment_members_key,
    user_model_key,
    user_recs_info_key,
    user_segments_key,
    users_hll_key,
)
from personalize import settings as settings_module
from personalize.bootstrap import CHROMIUM, read_sha256sums
from personalize.dashboard import create_app, make_server, vendor
from personalize.dashboard.app import AccessError, access_warning, allowed_hosts
from personalize.dashboard.data import (
    FEED_SIZE,
    TOP_CAUSES,
    RangeError,
    TimeRange,
    csv_cell,
    daily_changes,
    describe_cause,
    describe_reasons,
    feature_group,
    parse_range,
    public_url,
    segment_catalog,
    segment_history,
    top_causes,
)
from personalize.demo import DEMO_EXPERIMENT
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


def test_top_causes_count_entries_and_exits_by_their_reason_inside_the_range() -> None:
    def caused(action: str, event_time: int, cause: dict[str, Any] | None) -> dict[str, Any]:
        return {**change("a", action, event_time), "cause": cause}

    checkout = {"kind": "event", "event": {"id": "e1", "type": "checkout_start"}, "rule": "checkout", "version": 2}
    other_checkout = {**checkout, "event": {"id": "e2", "type": "checkout_start"}}  # same reason, another event
    changes = [caused("enter", 10, checkout), caused("enter", 11, other_checkout),
               caused("enter", 12, {"kind": "model", "model_version": 7}),
               caused("enter", 13, {"kind": "model", "model_version": 8}),
               caused("enter", 14, {"kind": "preempted", "by": "vip", "rule": "checkout", "version": 2}),
               caused("exit", 15, {"kind": "expiry", "rule": "checkout", "version": 2}), caused("exit", 16, None),
               caused("exit", 99, {"kind": "expiry", "rule": "checkout", "version": 2}),  # outside the range
               {**caused("exit", 15, {"kind": "expiry"}), "segment": "b"}]  # another segment
    causes = top_causes(changes, "a", TimeRange(None, 50))
    assert causes == {
        "enter": [{"cause": "event checkout_start · rule checkout v2", "count": 2}, {"cause": "model", "count": 2},
                  {"cause": "preempted by vip · rule checkout v2", "count": 1}],
        "exit": [{"cause": "expiry · rule checkout v2", "count": 1}, {"cause": "unknown", "count": 1}],
    }
    assert top_causes(changes, "a", limit=1)["exit"] == [{"cause": "expiry · rule checkout v2", "count": 2}]
    assert top_causes(changes, "nothing") == {"enter": [], "exit": []}


def test_recommendation_reasons_read_in_words_largest_share_first() -> None:
    assert describe_reasons({"trending": 0.01, "covisit": 0.98}) \
        == "viewed with this user's items 0.98, trending now 0.01"
    assert describe_reasons({"pinned": 1.0}) == "pinned by the business rules 1.00"
    # An unknown source reads as its name; a share that is not a number is left out.
    assert describe_reasons({"new_source": 0.5, "x": "bad"}) == "new source 0.50"
    assert describe_reasons(["legacy", "list"]) == "legacy, list" and describe_reasons(None) == ""


def test_urls_shown_on_the_page_hide_passwords() -> None:
    assert public_url("redis://:secret@db:6379/0") == "redis://:***@db:6379/0"
    assert public_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def settings_with_redis(settings: Settings, url: str, prefix: str) -> Settings:
    return replace(settings, redis=replace(settings.redis, url=url, key_prefix=prefix))


def with_access(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, dashboard=replace(settings.dashboard, **changes))


def down_settings() -> Settings:
    """Settings whose Redis is a free port: nothing answers."""
    return settings_with_redis(settings_module.load(environ={}), f"redis://127.0.0.1:{free_ports(1)[0]}/0", "x:")


SECRET = {"PERSONALIZE_DASHBOARD_SECRET": "s3cret-for-tests"}


def rule(rule_id: str, name: str, group: str | None = None, priority: int = 10, status: str = "active",
         description: str = "") -> str:
    definition = {"id": rule_id, "name": name, "group": group, "priority": priority, "description": description}
    return json.dumps({"id": rule_id, "version": 1, "status": status, "definition": definition})


def test_the_catalog_lists_every_defined_segment_grouped_zeros_included() -> None:
    rules = {r: json.loads(text) for r, text in {
        "new_visitor": rule("new_visitor", "New Visitor", "lifecycle", 10, description="First seen lately."),
        "dormant": rule("dormant", "Dormant", "lifecycle", 30),
        "high_value": rule("high_value", "High Value", None, 40),
        "gone": rule("gone", "Gone", None, 50, status="deleted"),
        "paused_one": rule("paused_one", "Paused", None, 5, status="paused"),
    }.items()}
    catalog = segment_catalog(rules, {"dormant": 3, "gone": 0, "cluster:1": 2, "stray": 1},
                              {"0": {"description": "browsers"}, "1": {"description": "buyers"}})
    assert [(g["group"], g["exclusive"], [s["id"] for s in g["segments"]]) for g in catalog] == [
        ("lifecycle", True, ["new_visitor", "dormant"]),
        (None, False, ["paused_one", "high_value"]),
        ("model clusters", True, ["cluster:0", "cluster:1"]),
        ("other", False, ["stray"]),
    ]
    segments = {s["id"]: s for g in catalog for s in g["segments"]}
    assert segments["new_visitor"]["count"] == 0 and segments["new_visitor"]["name"] == "New Visitor"
    assert segments["new_visitor"]["description"] == "First seen lately."
    assert segments["cluster:0"] == {**segments["cluster:0"], "count": 0, "description": "browsers"}
    assert segments["paused_one"]["status"] == "paused" and "gone" not in segments


def test_features_are_grouped_for_people() -> None:
    assert [feature_group(name) for name in ("product_view_24h", "sessions_30d", "r_score", "monetary_180d",
                                             "top_categories", "engagement", "cart_abandoned", "version", "ts")] \
        == ["activity", "activity", "RFM", "RFM", "affinity", "affinity", "intent", "engineering", "engineering"]


def test_daily_changes_count_one_segment_per_utc_day() -> None:
    day = 86_400_000
    changes = [change("a", "enter", 10), change("a", "exit", 20), change("a", "enter", day + 1),
               change("b", "enter", 5)]
    assert daily_changes(changes, "a") == [{"day": "1970-01-01", "enter": 1, "exit": 1},
                                           {"day": "1970-01-02", "enter": 1, "exit": 0}]


JAN5 = 1_767_571_200_000  # 2026-01-05T00:00:00Z
DAY = 86_400_000


def test_a_range_takes_utc_dates_whole_days_or_iso_datetimes() -> None:
    assert parse_range("2026-01-05", "2026-01-06") == TimeRange(JAN5, JAN5 + 2 * DAY - 1)
    assert parse_range("2026-01-05T10:00:00Z", None) == TimeRange(JAN5 + 10 * 3_600_000, None)
    assert parse_range("2026-01-05T10:00:00.250", "") == TimeRange(JAN5 + 10 * 3_600_000 + 250, None)  # naive: UTC
    assert parse_range(None, "2026-01-05T12:00:00+02:00") == TimeRange(None, JAN5 + 10 * 3_600_000)
    assert parse_range(None, None) == TimeRange() and not TimeRange().bounded
    window = parse_range("2026-01-05", "2026-01-05")
    assert JAN5 in window and JAN5 + DAY - 1 in window and JAN5 + DAY not in window and JAN5 - 1 not in window
    assert "x" not in window and None not in window


@pytest.mark.parametrize(("start", "end", "message"), [
    ("yesterday", None, "from='yesterday' is not a UTC date"),
    ("2026-13-01", None, "from='2026-13-01'"),
    (None, "2026-01-05\n<script>" + "x" * 60, "to='2026-01-05\\n<script>xxx"),
    ("2026-01-06", "2026-01-05", "from=2026-01-06 is after to=2026-01-05"),
])
def test_a_bad_range_is_one_line_that_says_what_is_wrong(start: str | None, end: str | None, message: str) -> None:
    with pytest.raises(RangeError) as raised:
        parse_range(start, end)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_range_filters_daily_counts_and_the_chart_but_levels_stay_exact() -> None:
    changes = [change("a", "enter", JAN5 + 1), change("a", "enter", JAN5 + DAY + 1),
               change("a", "exit", JAN5 + DAY + 2), change("a", "enter", JAN5 + 2 * DAY + 1)]
    jan6 = parse_range("2026-01-06", "2026-01-06")
    assert daily_changes(changes, "a", jan6) == [{"day": "2026-01-06", "enter": 1, "exit": 1}]
    history = segment_history(changes, {"a": 2}, buckets=1, window=jan6)
    # Inside the range only, but the enter of Jan 7 is still undone: 1 at the end of Jan 6, not 2.
    assert history["times"] == [JAN5 + DAY + 1, JAN5 + DAY + 2] and history["series"] == {"a": [2, 1]}
    assert history["changes"] == 2 and (history["first"], history["last"]) == (JAN5 + 1, JAN5 + 2 * DAY + 1)
    empty = segment_history(changes, {"a": 2}, window=parse_range("2026-02-01", None))
    assert empty["times"] == [] and empty["last"] == JAN5 + 2 * DAY + 1


def test_the_api_refuses_a_bad_range_with_400_and_one_line() -> None:
    client = create_app(down_settings()).test_client()
    for path in ("/api/overview?from=nope", "/api/history?to=2026-02-30",
                 "/api/segment/x?from=2026-01-06&to=2026-01-05"):
        response = client.get(path)
        assert response.status_code == 400 and "\n" not in response.json["error"], path
    assert client.get("/api/segment/no%20such?from=nope").status_code == 404
    assert client.get("/api/overview?from=2026-01-05&to=2026-01-06").status_code == 200  # Redis down: ok false


def test_csv_cells_never_start_a_formula() -> None:
    assert [csv_cell(v) for v in ("=1+1", "@x", "user-1", "anon:a")] == ["'=1+1", "'@x", "user-1", "anon:a"]


def test_the_charting_library_is_vendored_pinned_and_served_from_the_package() -> None:
    pins = read_sha256sums(vendor.VENDOR_DIR / "sha256sums")
    assert set(pins) == set(vendor.MEMBERS.values()) and vendor.mismatches(vendor.committed(), pins) == []
    script = (vendor.VENDOR_DIR / "uPlot.iife.min.js").read_text()
    assert script.startswith(f"/*! https://github.com/leeoniya/uPlot (v{vendor.pinned_version()}) */")
    assert "MIT License" in (vendor.VENDOR_DIR / "LICENSE").read_text()
    # The page loads it from the dashboard itself, never from a CDN: it works offline.
    client = create_app(down_settings()).test_client()
    page = client.get("/").get_data(as_text=True)
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)
    for name in ("uPlot.iife.min.js", "uPlot.min.css"):
        assert f"/static/vendor/uplot/{name}" in page
        served = client.get(f"/static/vendor/uplot/{name}")
        assert served.status_code == 200 and served.data == (vendor.VENDOR_DIR / name).read_bytes()
        served.close()


def npm_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_a_fetched_package_is_read_by_member_and_checked_against_the_pins(tmp_path: Path) -> None:
    files = {member: f"content of {name}".encode() for member, name in vendor.MEMBERS.items()}
    unpacked = vendor.unpack(npm_tarball(tmp_path / "ok.tgz", {**files, "package/../../evil": b"x"}))
    assert unpacked == {name: f"content of {name}".encode() for name in vendor.MEMBERS.values()}
    pins = vendor.digests(unpacked)
    assert vendor.mismatches(unpacked, pins) == []
    assert vendor.mismatches({**unpacked, "LICENSE": b"changed"}, pins) == ["LICENSE"]
    assert vendor.mismatches({"extra": b""}, {}) == ["extra"]
    with pytest.raises(vendor.VendorError, match="has no package/LICENSE"):
        vendor.unpack(npm_tarball(tmp_path / "short.tgz", {m: b"" for m in files if m != "package/LICENSE"}))
    with pytest.raises(vendor.VendorError, match="not an exact version"):
        vendor.fetch("^1.6")


def test_healthz_is_503_when_redis_is_down() -> None:
    response = create_app(down_settings()).test_client().get("/healthz")
    assert response.status_code == 503 and response.json["ok"] is False and response.json["redis"]["error"]


def test_a_foreign_host_header_is_refused() -> None:
    client = create_app(down_settings()).test_client()
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"Host": "evil.example:8050"}).status_code == 400
    for host in ("localhost:8050", "127.0.0.1", "[::1]:8050"):
        assert client.get("/", headers={"Host": host}).status_code == 200
    configured = create_app(with_access(down_settings(), allowed_hosts=("dash.example",))).test_client()
    assert configured.get("/", headers={"Host": "dash.example"}).status_code == 200
    assert configured.get("/", headers={"Host": "localhost"}).status_code == 400


def test_the_default_hosts_are_the_bind_name_and_loopback() -> None:
    access = settings_module.load(environ={}).dashboard
    assert allowed_hosts(access, "dash.internal") == {"dash.internal", "localhost", "127.0.0.1", "::1"}
    assert "0.0.0.0" not in allowed_hosts(access, "0.0.0.0")


def test_basic_auth_is_required_when_configured() -> None:
    client = create_app(with_access(down_settings(), auth="basic"), environ=SECRET).test_client()
    for path in ("/", "/api/overview", "/users/u1", "/segments/x/members.csv"):
        refused = client.get(path)
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/", auth=("analyst", "wrong")).status_code == 401
    assert client.get("/", auth=("someone", SECRET["PERSONALIZE_DASHBOARD_SECRET"])).status_code == 401
    assert client.get("/", auth=("analyst", SECRET["PERSONALIZE_DASHBOARD_SECRET"])).status_code == 200
    assert client.get("/healthz").status_code == 503  # open to probes: it says only up or down


def test_token_auth_takes_a_bearer_header_or_a_link_that_sets_a_cookie() -> None:
    token = SECRET["PERSONALIZE_DASHBOARD_SECRET"]
    client = create_app(with_access(down_settings(), auth="token"), environ=SECRET).test_client()
    assert client.get("/api/overview").status_code == 401
    assert client.get("/api/overview", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get("/api/overview", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    link = client.get(f"/segments/x?token={token}&page=2")
    assert link.status_code == 303 and link.headers["Location"] == "/segments/x?page=2"
    assert "HttpOnly" in link.headers["Set-Cookie"] and "SameSite=Strict" in link.headers["Set-Cookie"]
    assert client.get("/api/overview").status_code == 200  # the cookie now


def test_auth_without_its_secret_refuses_to_start() -> None:
    with pytest.raises(AccessError, match="PERSONALIZE_DASHBOARD_SECRET"):
        create_app(with_access(down_settings(), auth="basic"), environ={})


def test_an_open_dashboard_beyond_loopback_is_warned_about() -> None:
    access = settings_module.load(environ={}).dashboard
    assert access_warning(access, "127.0.0.1") is None and access_warning(access, "localhost") is None
    assert "without authentication" in (access_warning(access, "0.0.0.0") or "")
    assert access_warning(replace(access, auth="token"), "0.0.0.0") is None


def test_a_redis_that_is_down_is_reported_not_raised() -> None:
    client = create_app(down_settings()).test_client()
    for path in ("/api/overview", "/api/history", "/api/user?key=u1", "/api/segment/x"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json["redis"]["ok"] is False and response.json["redis"]["error"]
    assert client.get("/").status_code == 200
    assert client.get("/api/user").status_code == 400
    assert client.get("/segments/x/members.csv").status_code == 503
    assert client.get("/api/segment/no%20such").status_code == 404  # not a segment id: never a Redis key


@pytest.mark.integration
def test_healthz_zero_member_segments_and_the_csv_export_against_redis(stack_settings: Settings) -> None:
    prefix = "dash-unit:"
    settings = settings_with_redis(stack_settings, stack_settings.redis.url, prefix)
    client = redis.Redis.from_url(settings.redis.url, decode_responses=True)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.hset(rules_key(prefix), mapping={"loyal": rule("loyal", "Loyal Customer", "lifecycle"),
                                            "quiet": rule("quiet", "Quiet One", "lifecycle", 20)})
    members = {f"user-{n}": 1_767_225_600_000 + n * 1000 for n in range(12)} | {"=cmd": 1_767_225_600_500}
    client.zadd(segment_members_key(prefix, "loyal"), members)
    client.hset(segment_counts_key(prefix), mapping={"loyal": len(members)})
    client.hset(models_clusters_key(prefix), mapping={"0": json.dumps({"description": "window shoppers"})})
    app = create_app(settings).test_client()
    try:
        health = app.get("/healthz")
        assert health.status_code == 200 and health.json["ok"] is True

        catalog = app.get("/api/overview").json["catalog"]
        listed = {s["id"]: (s["name"], s["count"]) for group in catalog for s in group["segments"]}
        assert listed == {"loyal": ("Loyal Customer", 13), "quiet": ("Quiet One", 0),
                          "cluster:0": ("Cluster 0", 0)}

        page = app.get("/api/segment/loyal?page=1&size=5").json
        newest_first = sorted(members, key=lambda user: -members[user])
        assert page["total"] == 13 and [m["user"] for m in page["members"]] == newest_first[5:10]
        assert app.get("/api/segment/quiet").json["members"] == []

        export = app.get("/segments/loyal/members.csv")
        assert export.status_code == 200 and export.mimetype == "text/csv"
        rows = list(csv.reader(io.StringIO(export.get_data(as_text=True))))
        assert rows[0] == ["user", "entered_at", "entered_at_ms"]
        assert [(user.removeprefix("'"), int(ms)) for user, _, ms in rows[1:]] == \
            [(user, ms) for user, ms in client.zrevrange(segment_members_key(prefix, "loyal"), 0, -1,
                                                          withscores=True, score_cast_func=int)]
        assert [user for user, _, _ in rows[1:] if "cmd" in user] == ["'=cmd"]
        assert rows[1][1] == "2026-01-01T00:00:11.000Z"
    finally:
        for key in client.scan_iter(f"{prefix}*"):
            client.delete(key)


# --- end to end in the browser ---------------------------------------------------------------------------


class Served:
    """A dashboard server on a free port in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.server = make_server(settings, "127.0.0.1", 0, refresh_ms=500)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.port}/"

    def stop(self) -> None:
        self.server.stop()


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


def assert_causes_shown(page: Any, changes: list[dict[str, Any]], segment: str) -> None:
    """The segment page's top causes of entry and exit are those counted from ``changes`` (the stream's, in range)."""
    for action in ("enter", "exit"):
        tally = Counter(describe_cause(c.get("cause"), detail=False) for c in changes
                        if c["segment"] == segment and c["action"] == action)
        expected = sorted(tally.items(), key=lambda pair: (-pair[1], pair[0]))[:TOP_CAUSES]
        shown = [(cause, number(text.split("\t")[-1]))
                 for cause, text in texts(page, f"#segment-causes-{action} tr", "cause")]
        assert shown == expected, action


@pytest.mark.integration
def test_the_page_shows_what_redis_holds(demo_settings: Settings, browser: Any, tmp_path: Path) -> None:
    prefix = demo_settings.redis.key_prefix
    client = redis.Redis.from_url(demo_settings.redis.url, decode_responses=True)
    served = Served(demo_settings)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(served.url)
        page.wait_for_selector("#history-chart figure .uplot", timeout=20_000)
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        counts = {segment: int(n) for segment, n in client.hgetall(segment_counts_key(prefix)).items()}
        assert counts, "the demo run left no segment counts in Redis"
        # The demo runs unbounded and is then drained, so the user operator reads the model snapshots and
        # scores users: the model's clusters have members (a bounded run scored no one).
        assert any(count > 0 for segment, count in counts.items() if segment.startswith("cluster:")), counts
        # Every defined segment (the rules and the model's clusters), zeros included, each with its count.
        rules = {rule_id: json.loads(text) for rule_id, text in client.hgetall(rules_key(prefix)).items()}
        defined = {*rules, *(f"cluster:{c}" for c in client.hkeys(models_clusters_key(prefix))), *counts}
        shown = {segment: number(text) for segment, text in texts(page, "#segments td.count", "segment")}
        assert shown == {segment: counts.get(segment, 0) for segment in defined}
        named = dict(texts(page, "#segments a.segment", "segment"))
        assert all(named[rule_id] == entry["definition"]["name"] for rule_id, entry in rules.items())
        groups = {group for group, _ in texts(page, "#segments tr.group", "group")}
        assert {entry["definition"].get("group") or "" for entry in rules.values()} <= groups
        assert number(page.inner_text("#memberships")) == sum(counts.values())
        assert number(page.inner_text("#users-seen")) == client.pfcount(users_hll_key(prefix))
        assert "Redis up" in page.inner_text("#redis-status") and page.is_hidden("#banner")

        # The chart draws one panel per segment and ends at the counts now.
        assert {segment for segment, _ in texts(page, "#history-chart figure:has(.uplot)", "segment")} == set(counts)
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
        # The demo's experiment: one row per arm, with the exposed users Redis holds.
        metrics = json.loads(client.get(experiment_metrics_key(prefix, DEMO_EXPERIMENT["id"])))
        shown_arms = {arm: number(text.split("\t")[1])
                      for arm, text in texts(page, f"[data-experiment='{DEMO_EXPERIMENT['id']}'] tbody tr", "arm")}
        assert shown_arms == {arm["arm"]: arm["exposed_users"] for arm in metrics["arms"]}
        assert all(arm["exposed_users"] > 0 for arm in metrics["arms"])

        # User lookup from the feed: the user's segments as Redis holds them.
        user = first["user"]
        page.locator("#feed a.user", has_text=user).first.click()
        page.wait_for_selector(f".user-grid[data-user='{user}']", timeout=10_000)
        memberships = {s for s in client.hkeys(user_segments_key(prefix, user)) if not s.startswith("_")}
        assert {segment for segment, _ in texts(page, "#user-segments li", "segment")} == memberships
        page.screenshot(path=str(tmp_path / "user.png"), full_page=True)

        # A user with recommendations (one with an intent score if any): items in ranked order with
        # their reasons, and the model's scores.
        with_recs = sorted(key.removeprefix(f"{prefix}user:{{").removesuffix("}:recs:info")
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
            assert describe_reasons(items[0]["reasons"]) in shown_recs[0][1]  # in words, largest share first
            assert f"{items[0]['score']:.3f}" in shown_recs[0][1]
            scores = client.hgetall(user_model_key(prefix, recs_user))
            model_text = page.inner_text(f".user-grid[data-user='{recs_user}']")
            intent = scores.get("intent", "")
            assert (f"{float(intent):.3f}" in model_text) if intent else "not scored yet" in model_text
            page.screenshot(path=str(tmp_path / "user.png"), full_page=True)

        # A user the job never saw.
        page.fill("#user-key", "nobody-at-all")
        page.press("#user-key", "Enter")
        page.wait_for_selector("#user-missing", timeout=10_000)
        assert page.url == f"{served.url}users/nobody-at-all"

        # Deep links: a user's URL opens that user, a segment's URL its members (newest first) and daily
        # changes; in-page links push the URL and Back returns.
        page.goto(f"{served.url}users/{user}")
        page.wait_for_selector(f".user-grid[data-user='{user}']", timeout=10_000)
        assert page.evaluate("document.body.dataset.view") == "user" and page.is_hidden("#card-segments")
        assert {segment for segment, _ in texts(page, "#user-segments li", "segment")} == memberships
        largest = max(counts, key=counts.__getitem__)
        page.goto(f"{served.url}segments/{largest}")
        page.wait_for_selector(f"#segment-view[data-segment='{largest}']", timeout=10_000)
        newest = client.zrevrange(segment_members_key(prefix, largest), 0, 49)
        assert [member for member, _ in texts(page, "#segment-members tbody tr", "user")] == newest
        assert number(page.inner_text("#segment-total")) == client.zcard(segment_members_key(prefix, largest))
        if largest in rules:
            assert page.inner_text("#segment-title") == rules[largest]["definition"]["name"]
        assert_causes_shown(page, [json.loads(fields["change"]) for _, fields in
                                   client.xrange(segment_changes_key(prefix))], largest)
        page.screenshot(path=str(tmp_path / "segment.png"), full_page=True)
        if os.environ.get(DOCS_SCREENSHOT):  # the overview, and the segment and user pages next to it
            docs = Path(os.environ[DOCS_SCREENSHOT])
            shutil.copy(tmp_path / "overview.png", docs)
            for view in ("segment", "user"):
                shutil.copy(tmp_path / f"{view}.png", docs.with_name(f"dashboard-{view}.png"))
        page.locator("#segment-members a.user").first.click()
        page.wait_for_selector(f".user-grid[data-user='{newest[0]}']", timeout=10_000)
        assert page.url == f"{served.url}users/{quote(newest[0], safe='')}"
        page.go_back()
        page.wait_for_selector(f"#segment-view[data-segment='{largest}']", timeout=10_000)
        assert page.evaluate("document.body.dataset.view") == "segment"
    finally:
        page.close()
        served.stop()


def hover(page: Any, panel: str, fraction: float) -> tuple[int, str]:
    """Move the mouse over a chart panel at ``fraction`` of its width: the index and text of its readout."""
    box = page.locator(f"{panel} .u-over").bounding_box()
    # Mouse events carry whole-pixel coordinates: stay on the pixels wholly inside the panel.
    inside = (math.ceil(box["x"]), math.ceil(box["x"] + box["width"]) - 1)
    x = min(max(box["x"] + fraction * box["width"], inside[0]), inside[1])
    page.mouse.move(x, box["y"] + box["height"] / 2)
    readout = page.locator(f"{panel} .readout")
    return int(readout.get_attribute("data-index") or "-1"), readout.inner_text()


def shown_time(ms: int) -> str:
    """An event time as the page writes it (UTC, to the second)."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


@pytest.mark.integration
def test_a_range_in_the_url_filters_the_views_and_panels_show_values_on_hover(demo_settings: Settings,
                                                                                 browser: Any, tmp_path: Path) -> None:
    prefix = demo_settings.redis.key_prefix
    client = redis.Redis.from_url(demo_settings.redis.url, decode_responses=True)
    changes = [json.loads(fields["change"]) for _, fields in client.xrange(segment_changes_key(prefix))]
    times = sorted(c["event_time"] for c in changes)
    start, end = times[len(times) // 3], times[2 * len(times) // 3]  # the middle third, as ISO datetimes
    iso = {ms: datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") for ms in (start, end)}
    query = f"from={quote(iso[start])}&to={quote(iso[end])}"
    inside = [c for c in changes if start <= c["event_time"] <= end]
    assert 0 < len(inside) < len(changes)
    counts = {segment: int(n) for segment, n in client.hgetall(segment_counts_key(prefix)).items()}
    largest = max(counts, key=counts.__getitem__)
    served = Served(demo_settings)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        # A segment's deep link with a range: enters and exits per day of the changes inside it only.
        page.goto(f"{served.url}segments/{largest}?{query}")
        page.wait_for_selector(f"#segment-view[data-segment='{largest}']", timeout=20_000)
        expected: dict[str, list[int]] = {}
        for c in inside:
            if c["segment"] == largest:
                tally = expected.setdefault(shown_time(c["event_time"])[:10], [0, 0])
                tally[c["action"] != "enter"] += 1
        shown_days = {day: [number(text.split("\t")[1]), number(text.split("\t")[2])]
                      for day, text in texts(page, "#segment-daily tbody tr", "day")}
        assert expected and shown_days == expected
        assert_causes_shown(page, inside, largest)  # top causes of entry and exit: the same changes
        # Its size over event time: the overview's panel for this segment, over the range's history, from its
        # first point to its last.
        in_range = page.evaluate(f"fetch('{served.url}api/history?{query}').then(r => r.json())")
        panel = f"#segment-size figure[data-segment='{largest}']"
        assert [hover(page, panel, at) for at in (0.0, 1.0)] == [
            (index, f"{shown_time(in_range['times'][index])} · {in_range['series'][largest][index]:,}")
            for index in (0, len(in_range["times"]) - 1)]
        assert page.input_value("#range-from") == iso[start][:10] and page.input_value("#range-to") == iso[end][:10]

        # The overview keeps the range: the feed holds the newest changes inside it, the chart spans it.
        page.click("#home")
        page.wait_for_function("document.body.dataset.view === 'overview'")
        assert page.url == f"{served.url}?{query}"
        rows = [text.split("\t") for _, text in texts(page, "#feed tbody tr")]
        assert [row[1] for row in rows] == [c["user"] for c in reversed(inside)][:FEED_SIZE]
        assert all(shown_time(start) <= row[0] <= shown_time(end) for row in rows)
        history = page.evaluate(f"fetch('api/history?{query}').then(r => r.json())")
        assert history["changes"] == len(inside) and start <= history["times"][0] <= history["times"][-1] <= end

        # Hover: the panel's readout gives the time and value of the point under the mouse, and the panels
        # share the cursor: every other segment's readout names the same point.
        panel = f"#history-chart figure[data-segment='{largest}']"
        page.wait_for_selector(f"{panel} .uplot", timeout=10_000)
        indexes = []
        for fraction in (0.3, 1.0):
            index, text = hover(page, panel, fraction)
            assert text == f"{shown_time(history['times'][index])} · {history['series'][largest][index]:,}"
            indexes.append(index)
        assert 0 < indexes[0] < indexes[1] == len(history["times"]) - 1
        last = shown_time(history["times"][-1])
        assert dict(texts(page, "#history-chart .readout", "segment")) == {
            segment: f"{last} · {series[-1]:,}" for segment, series in history["series"].items()}
        page.screenshot(path=str(tmp_path / "range-hover.png"))

        # The presets rewrite the URL; Back restores the range.
        page.click("#range-all")
        page.wait_for_function("!location.search.includes('from=')")
        page.go_back()
        page.wait_for_function("location.search.includes('from=')")
        assert page.input_value("#range-from") == iso[start][:10]
        page.click("#range-week")  # the 7 UTC days ending at the newest change's event time
        page.wait_for_function("new URLSearchParams(location.search).get('from')?.length === 10")
        assert page.url.endswith(f"?from={shown_time(times[-1] - 6 * DAY)[:10]}&to={shown_time(times[-1])[:10]}")

        # A bad range: the page says what the API refused, next to the range control.
        page.goto(f"{served.url}?from=someday")
        page.wait_for_selector("#range-form.bad", timeout=10_000)
        assert "from='someday' is not a UTC date" in page.inner_text("#range-shown")
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

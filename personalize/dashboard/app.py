"""The Flask app: one page (also served at the deep links ``/users/<key>`` and ``/segments/<id>``), the
JSON endpoints the page polls, a CSV export and ``/healthz``; access control; the WSGI server.

Flask because the dashboard is a handful of synchronous Redis reads: no async framework, no
build step, and the page's script and its vendored charting library (uPlot, ``vendor.py``) are plain
files served from ``static/`` (the machines reach no CDN). Waitress serves it (a production WSGI
server); werkzeug's development server only with ``--debug``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import redis
import waitress
from flask import Flask, Response, abort, jsonify, redirect, render_template, request, stream_with_context
from werkzeug.serving import make_server as werkzeug_server

from personalize.dashboard.data import (
    HISTORY_BUCKETS,
    MEMBERS_PAGE,
    SEGMENT_ID,
    RangeError,
    RedisView,
    TimeRange,
    parse_range,
)
from personalize.settings import DashboardSettings, Settings

MAX_BUCKETS = 500
MAX_PAGE_SIZE = 500
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
TOKEN_COOKIE = "personalize_dashboard_token"
OPEN_PATHS = ("/healthz",)
"""Served without credentials: says only whether Redis answers (for probes and load balancers)."""


class AccessError(ValueError):
    """The dashboard's access settings cannot be honoured (e.g. auth configured, secret variable unset)."""


def allowed_hosts(access: DashboardSettings, bind: str) -> frozenset[str]:
    """Host header names the server answers: the configured ones, or the bind address's names and loopback.

    A foreign Host is refused so a DNS-rebinding page cannot read the dashboard through a victim's browser.
    """
    if access.allowed_hosts:
        return frozenset(name.lower().strip("[]") for name in access.allowed_hosts)
    names = {bind.lower(), *LOCAL_NAMES}
    if bind in WILDCARDS:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(name for name in names if name not in WILDCARDS)


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def access_warning(access: DashboardSettings, bind: str) -> str | None:
    """What to tell the operator before serving an open dashboard beyond this machine (None: nothing)."""
    if access.auth != "none" or is_loopback(bind):
        return None
    return (f"warning: the dashboard listens on {bind or 'every address'} without authentication: anyone who "
            f"reaches the port reads segments and user data; set dashboard.auth (basic or token) and "
            f"{access.secret_env}, or bind 127.0.0.1")


def read_secret(access: DashboardSettings, environ: Mapping[str, str]) -> str | None:
    """The password or token from ``dashboard.secret_env``; None with ``auth: none``."""
    if access.auth == "none":
        return None
    secret = environ.get(access.secret_env, "")
    if not secret:
        raise AccessError(f"dashboard.auth is {access.auth} but the variable {access.secret_env} "
                          "(dashboard.secret_env) is empty or unset")
    return secret


def _host_name(header: str) -> str:
    """The name of a Host header without its port (``[::1]:8050`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _guard(access: DashboardSettings, hosts: frozenset[str], secret: str | None) -> Callable[[], Any]:
    """The check before every request: a trusted Host, then credentials when auth is on."""

    def check() -> Any:
        if _host_name(request.headers.get("Host", "")) not in hosts:
            return jsonify({"error": "unknown Host header (dashboard.allowed_hosts)"}), 400
        if secret is None or request.path in OPEN_PATHS:
            return None
        credentials = request.authorization
        if access.auth == "basic":
            if credentials is not None and credentials.type == "basic" \
                    and _same(credentials.username, access.basic_user) and _same(credentials.password, secret):
                return None
            return Response("authentication required\n", 401,
                            {"WWW-Authenticate": 'Basic realm="personalize dashboard", charset="UTF-8"'})
        # token: a bearer header (scripts), or a ?token= link that sets a cookie for the browser
        if credentials is not None and credentials.type == "bearer" and _same(credentials.token, secret):
            return None
        if _same(request.cookies.get(TOKEN_COOKIE), secret):
            return None
        if _same(request.args.get("token"), secret):
            kept = urlencode([(key, value) for key, value in request.args.items(multi=True) if key != "token"])
            response = redirect(request.script_root + request.path + (f"?{kept}" if kept else ""), 303)
            response.set_cookie(TOKEN_COOKIE, secret, httponly=True, samesite="Strict", secure=request.is_secure,
                                path=request.script_root or "/")
            return response
        return Response("authentication required: a bearer token, or open the page once with ?token=\n", 401,
                        {"WWW-Authenticate": 'Bearer realm="personalize dashboard"'})

    return check


def create_app(settings: Settings, refresh_ms: int = 2000, bind: str = "127.0.0.1",
               environ: Mapping[str, str] | None = None) -> Flask:
    """The app for a server bound to ``bind`` (its name is a trusted Host); raises :class:`AccessError`."""
    access = settings.dashboard
    secret = read_secret(access, os.environ if environ is None else environ)
    view = RedisView.connect(settings.redis)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.before_request(_guard(access, allowed_hosts(access, bind), secret))

    def page() -> str:
        return render_template("index.html", prefix=settings.redis.key_prefix, refresh_ms=refresh_ms)

    app.add_url_rule("/", "index", page)
    app.add_url_rule("/users/<path:user>", "user_page", lambda user: page())
    app.add_url_rule("/segments/<segment>", "segment_page", lambda segment: page())

    @app.get("/healthz")
    def healthz() -> Any:
        try:
            view.client.ping()
        except redis.RedisError as exc:
            return jsonify({"ok": False, "redis": view.status(str(exc) or type(exc).__name__)}), 503
        return jsonify({"ok": True, "redis": view.status()})

    def window() -> TimeRange:
        return parse_range(request.args.get("from"), request.args.get("to"))

    @app.errorhandler(RangeError)
    def bad_range(error: RangeError) -> Any:
        return jsonify({"error": str(error)}), 400

    @app.get("/api/overview")
    def overview() -> Any:
        return jsonify(view.overview(window()))

    @app.get("/api/history")
    def history() -> Any:
        buckets = request.args.get("buckets", HISTORY_BUCKETS, type=int) or HISTORY_BUCKETS
        return jsonify(view.history(max(1, min(buckets, MAX_BUCKETS)), window()))

    @app.get("/api/user")
    def user() -> Any:
        key = (request.args.get("key") or "").strip()
        if not key:
            return jsonify({"error": "give a user key: a user_id, or anon:<anonymous_id>"}), 400
        return jsonify(view.user(key))

    def segment_id(segment: str) -> str:
        if not SEGMENT_ID.fullmatch(segment):
            abort(404)
        return segment

    @app.get("/api/segment/<segment>")
    def segment(segment: str) -> Any:
        page_number = max(0, request.args.get("page", 0, type=int) or 0)
        size = max(1, min(request.args.get("size", MEMBERS_PAGE, type=int) or MEMBERS_PAGE, MAX_PAGE_SIZE))
        return jsonify(view.segment(segment_id(segment), page_number, size, window()))

    @app.get("/segments/<segment>/members.csv")
    def members_csv(segment: str) -> Any:
        rows = view.members_csv(segment_id(segment))
        try:
            first = next(rows)  # a Redis that is down fails here, before the 200 is sent
            second = next(rows, "")
        except redis.RedisError as exc:
            return Response(f"Redis is unreachable: {exc}\n", 503, mimetype="text/plain")
        body = stream_with_context(_chain(first, second, rows))
        return Response(body, mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{segment.replace(":", "_")}-members.csv"'})

    @app.after_request
    def no_cache(response: Any) -> Any:
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    return app


def _chain(first: str, second: str, rest: Any) -> Any:
    yield first
    yield second
    yield from rest


@dataclass
class DashboardServer:
    """A bound server: ``serve_forever()`` runs it, ``stop()`` (from another thread, or after) ends it."""

    port: int
    serve_forever: Callable[[], None]
    stop: Callable[[], None]


def make_server(settings: Settings, host: str, port: int, refresh_ms: int = 2000, debug: bool = False,
                environ: Mapping[str, str] | None = None) -> DashboardServer:
    """Bind ``host:port`` (port 0 picks a free one): waitress, or werkzeug's threaded server with ``debug``."""
    app = create_app(settings, refresh_ms, host, environ)
    if debug:
        app.debug = True
        dev = werkzeug_server(host, port, app, threaded=True)

        def stop_dev() -> None:
            dev.shutdown()
            dev.server_close()

        return DashboardServer(dev.server_port, dev.serve_forever, stop_dev)
    server: Any = waitress.create_server(app, host=host, port=port, threads=4, ident="personalize-dashboard")

    def stop() -> None:
        server.task_dispatcher.shutdown(timeout=2)  # let running responses finish before the sockets go
        server.close()

    return DashboardServer(int(server.effective_port), server.run, stop)

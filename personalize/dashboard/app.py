"""The Flask app: one page and three JSON endpoints that the page polls.

Flask because the dashboard is a handful of synchronous Redis reads: no async framework, no
build step, and the page's script and chart are plain files served from ``static/`` (the machines
reach no CDN).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify, render_template, request
from werkzeug.serving import BaseWSGIServer
from werkzeug.serving import make_server as werkzeug_server

from personalize.dashboard.data import HISTORY_BUCKETS, RedisView
from personalize.settings import Settings

MAX_BUCKETS = 500


def create_app(settings: Settings, refresh_ms: int = 2000) -> Flask:
    view = RedisView.connect(settings.redis.url, settings.redis.key_prefix)
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/")
    def index() -> str:
        return render_template("index.html", prefix=settings.redis.key_prefix, refresh_ms=refresh_ms)

    @app.get("/api/overview")
    def overview() -> Any:
        return jsonify(view.overview())

    @app.get("/api/history")
    def history() -> Any:
        buckets = request.args.get("buckets", HISTORY_BUCKETS, type=int) or HISTORY_BUCKETS
        return jsonify(view.history(max(1, min(buckets, MAX_BUCKETS))))

    @app.get("/api/user")
    def user() -> Any:
        key = (request.args.get("key") or "").strip()
        if not key:
            return jsonify({"error": "give a user key: a user_id, or anon:<anonymous_id>"}), 400
        return jsonify(view.user(key))

    @app.after_request
    def no_cache(response: Any) -> Any:
        response.headers["Cache-Control"] = "no-store"
        return response

    return app


def make_server(settings: Settings, host: str, port: int, refresh_ms: int = 2000) -> BaseWSGIServer:
    """A threaded WSGI server for the app (``serve_forever()`` to run; port 0 picks a free one)."""
    return werkzeug_server(host, port, create_app(settings, refresh_ms), threaded=True)

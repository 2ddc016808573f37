"""What the dashboard shows, read from Redis only (docs/redis.md) and turned into JSON-ready dicts.

Redis is the serving view, so the dashboard needs nothing else: no Kafka consumer, no Flink REST.
Keys that the job does not write (yet) come back as ``None``, which the page shows as "not
available yet"; a Redis that cannot be reached gives ``{"redis": {"ok": False, "error": ...}}``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis

from connectors.redis_client import connect, consistent_pipeline
from connectors.redis_keys import (
    deadletter_counts_key,
    experiment_metrics_key,
    models_clusters_key,
    models_current_key,
    models_drift_key,
    models_instances_key,
    rule_instances_key,
    rules_key,
    segment_changes_key,
    segment_counts_key,
    segment_members_key,
    user_features_key,
    user_model_key,
    user_profile_key,
    user_recs_info_key,
    user_recs_key,
    user_segments_key,
    users_hll_key,
)
from personalize.settings import RedisSettings

FEED_SIZE = 50
DRIFT_SIZE = 20
HISTORY_BUCKETS = 60
MEMBERS_PAGE = 50
CSV_CHUNK = 5000
TOP_CAUSES = 5
SEGMENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""Rule ids and ``cluster:<n>``; anything else is not a segment and never reaches a Redis key."""
DAY_MS = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MODEL_GROUP = "model clusters"
OTHER_GROUP = "other"
T = TypeVar("T")


def public_url(url: str) -> str:
    """The Redis URL without its password, safe to show on a page."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def describe_cause(cause: Mapping[str, Any] | None, detail: bool = True) -> str:
    """One line saying why a segment change happened (the ``cause`` of docs/rules.md), for people.

    Without ``detail`` the line leaves out what makes each change unique (the event id, a model
    version and other extras), so changes with the same reason read the same and can be counted.
    """
    if not cause:
        return "unknown"
    kind = str(cause.get("kind", "unknown"))
    rule = f"rule {cause['rule']} v{cause.get('version', '?')}" if cause.get("rule") else ""
    if kind == "event" and isinstance(cause.get("event"), Mapping):
        event = cause["event"]
        head = f"event {event.get('type', '?')}" + (f" ({event.get('id', '?')})" if detail else "")
    elif kind == "preempted":
        head = f"preempted by {cause.get('by', '?')}"
    else:
        head = kind.replace("_", " ")
    extras = [f"{key} {value}" for key, value in sorted(cause.items()) if detail
              and key not in {"kind", "event", "rule", "version", "by"} and not isinstance(value, dict | list)]
    return " · ".join(part for part in (head, rule, *extras) if part)


REASONS = {
    "covisit": "viewed with this user's items",
    "trending": "trending now",
    "affinity": "popular in this user's categories",
    "recent": "viewed lately (reminder)",
    "cart": "in the cart (reminder)",
    "pinned": "pinned by the business rules",
}
"""A recommendation source (docs/recommendations.md) in words; an unknown one is shown by its name."""


def describe_reasons(reasons: Any) -> str:
    """A recommendation's ``reasons`` ({source: share of the score}) in words, largest share first.

    A list (an older writer's form) is shown as its items; anything else as nothing.
    """
    if isinstance(reasons, list):
        return ", ".join(str(reason) for reason in reasons)
    if not isinstance(reasons, Mapping):
        return ""
    shares = [(str(source), share) for source, share in reasons.items() if isinstance(share, int | float)]
    return ", ".join(f"{REASONS.get(source, source.replace('_', ' '))} {share:.2f}"
                     for source, share in sorted(shares, key=lambda pair: (-pair[1], pair[0])))


class RangeError(ValueError):
    """A time range parameter that is not a date or ISO datetime (the API answers 400 with the message)."""


@dataclass(frozen=True)
class TimeRange:
    """An event-time window in epoch ms, both ends inclusive; ``None`` leaves that side open."""

    start: int | None = None
    end: int | None = None

    def __contains__(self, ms: object) -> bool:
        return isinstance(ms, int) and (self.start is None or ms >= self.start) \
            and (self.end is None or ms <= self.end)

    @property
    def bounded(self) -> bool:
        return self.start is not None or self.end is not None


def _instant(name: str, text: str, end: bool) -> int:
    """Epoch ms of a UTC date (its first or, for ``to``, its last millisecond) or an ISO datetime
    (naive means UTC)."""
    try:
        if DATE.fullmatch(text):
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC) + (timedelta(days=1) if end else timedelta())
            return (moment - EPOCH) // timedelta(milliseconds=1) - (1 if end else 0)
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return (moment - EPOCH) // timedelta(milliseconds=1)
    except (ValueError, OverflowError):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise RangeError(f"{name}={shown!r} is not a UTC date (2026-01-05) or an ISO datetime "
                         "(2026-01-05T10:00:00Z)") from None


def parse_range(start: str | None, end: str | None) -> TimeRange:
    """The ``?from=&to=`` of a URL (event time); an empty or missing side is open. Raises :class:`RangeError`."""
    window = TimeRange(_instant("from", start.strip(), False) if start and start.strip() else None,
                       _instant("to", end.strip(), True) if end and end.strip() else None)
    if window.start is not None and window.end is not None and window.start > window.end:
        raise RangeError(f"from={start} is after to={end}")
    return window


ALL_TIME = TimeRange()


def segment_history(changes: Iterable[Mapping[str, Any]], counts: Mapping[str, int],
                    buckets: int = HISTORY_BUCKETS, window: TimeRange = ALL_TIME) -> dict[str, Any]:
    """Segment sizes over event time, rebuilt backwards from today's counts and the recent changes.

    The count of a segment at event time ``t`` is its count now minus the net enters of the changes
    after ``t``. That is exact for every ``t`` inside the window the capped change stream still holds
    (every later change is in it), with no extra key for the job to maintain. With a ``window`` the
    times span the changes inside it, but every later change is still undone (levels stay exact);
    ``first``/``last`` give the whole stream's event times (for the page's presets).
    """
    deltas = sorted((int(c["event_time"]), str(c["segment"]), 1 if c.get("action") == "enter" else -1)
                    for c in changes if isinstance(c.get("event_time"), int) and "segment" in c)
    segments = sorted(set(counts) | {segment for _, segment, _ in deltas})
    inside = [t for t, _, _ in deltas if t in window]
    extent = {"first": deltas[0][0] if deltas else None, "last": deltas[-1][0] if deltas else None}
    if not inside:
        return {"start": None, "end": None, "changes": 0, "times": [], "series": {s: [] for s in segments},
                **extent}
    start, end = inside[0], inside[-1]
    step = max(1, -(-(end - start) // max(1, buckets)))
    times = [min(start + n * step, end) for n in range(buckets + 1)] if end > start else [end]
    level = {segment: int(counts.get(segment, 0)) for segment in segments}
    series: dict[str, list[int]] = {segment: [0] * len(times) for segment in segments}
    # Walk times from the newest back, undoing the changes later than each time.
    position = len(deltas) - 1
    for index in range(len(times) - 1, -1, -1):
        while position >= 0 and deltas[position][0] > times[index]:
            _, segment, delta = deltas[position]
            level[segment] -= delta
            position -= 1
        for segment in segments:
            series[segment][index] = level[segment]
    return {"start": start, "end": end, "changes": len(inside), "times": times, "series": series, **extent}


def _group_rank(group: Mapping[str, Any]) -> tuple[int, int, str]:
    kind = {MODEL_GROUP: 2, OTHER_GROUP: 3}.get(group["group"] or "", 1 if group["group"] is None else 0)
    return kind, min((s["priority"] or 0 for s in group["segments"]), default=0), group["group"] or ""


def segment_catalog(rules: Mapping[str, Any], counts: Mapping[str, int],
                    clusters: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every defined segment with its count (zero included), grouped for people.

    Defined means: a rule the job knows (``rules`` hash; a deleted one only while it still has members),
    a cluster of the newest model snapshot (``cluster:<id>``), or anything with a count. Exclusive rule
    groups first (a user is in at most one segment of each), then independent rules, model clusters
    (exclusive too) and ids nothing describes.
    """
    entries: dict[str, dict[str, Any]] = {}
    gone: set[str] = set()
    for rule_id, entry in rules.items():
        definition = entry.get("definition") if isinstance(entry, dict) else None
        definition = definition if isinstance(definition, dict) else {}
        status = entry.get("status") if isinstance(entry, dict) else None
        if status == "deleted" and not counts.get(rule_id):
            gone.add(rule_id)
            continue
        entries[rule_id] = {"id": rule_id, "name": definition.get("name") or rule_id,
                            "description": definition.get("description"), "group": definition.get("group"),
                            "priority": definition.get("priority"), "status": status, "kind": "rule"}
    for cluster, described in clusters.items():
        segment = f"cluster:{cluster}"
        description = described.get("description") if isinstance(described, dict) else None
        entries[segment] = {"id": segment, "name": f"Cluster {cluster}", "description": description,
                            "group": MODEL_GROUP, "priority": None, "status": None, "kind": "model"}
    for segment in counts:
        if segment not in entries and segment not in gone:
            model = segment.startswith("cluster:")
            entries[segment] = {"id": segment, "name": segment, "description": None, "priority": None,
                                "group": MODEL_GROUP if model else OTHER_GROUP, "status": None,
                                "kind": "model" if model else "unknown"}
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for entry in entries.values():
        groups.setdefault(entry["group"], []).append({**entry, "count": int(counts.get(entry["id"], 0))})
    listed = [{"group": group, "exclusive": group not in (None, OTHER_GROUP),
               "segments": sorted(members, key=lambda s: (s["priority"] is None, s["priority"] or 0, s["id"]))}
              for group, members in groups.items()]
    return sorted(listed, key=_group_rank)


FEATURE_GROUPS = ("activity", "RFM", "affinity", "intent", "engineering")
_FEATURE_GROUP = {
    **dict.fromkeys(("recency_days", "frequency_180d", "monetary_180d", "aov_180d", "r_score", "f_score",
                     "m_score"), "RFM"),
    **dict.fromkeys(("top_categories", "top_category", "engagement", "max_category_views_24h"), "affinity"),
    **dict.fromkeys(("intent", "max_item_views_24h", "top_item_24h", "cart_abandoned", "returned_after_abandon"),
                    "intent"),
    **dict.fromkeys(("version", "ts", "id", "schema", "user", "reference_ts"), "engineering"),
}


def feature_group(name: str) -> str:
    """Where a feature is shown on a user's page (docs/features.md): windowed counts and sessions are
    activity; bookkeeping fields (and names this version does not know) go behind the details toggle."""
    if name in _FEATURE_GROUP:
        return _FEATURE_GROUP[name]
    if re.search(r"_(\d+[hdm])$", name) or "session" in name:
        return "activity"
    return "engineering"


def daily_changes(changes: Iterable[Mapping[str, Any]], segment: str,
                  window: TimeRange = ALL_TIME) -> list[dict[str, Any]]:
    """Enters and exits of one segment per UTC day of event time (inside ``window``), oldest day first."""
    days: dict[str, dict[str, int]] = {}
    for change in changes:
        if change.get("segment") != segment or change.get("event_time") not in window:
            continue
        day = datetime.fromtimestamp(change["event_time"] / 1000, UTC).date().isoformat()
        tally = days.setdefault(day, {"enter": 0, "exit": 0})
        action = change.get("action")
        if action in tally:
            tally[action] += 1
    return [{"day": day, **tally} for day, tally in sorted(days.items())]


def top_causes(changes: Iterable[Mapping[str, Any]], segment: str, window: TimeRange = ALL_TIME,
               limit: int = TOP_CAUSES) -> dict[str, list[dict[str, Any]]]:
    """The most frequent causes of entry and of exit of one segment (inside ``window``), in words.

    Most frequent first, ties by the words; the causes as :func:`describe_cause` says them without detail.
    """
    tallies: dict[str, Counter[str]] = {"enter": Counter(), "exit": Counter()}
    for change in changes:
        action = change.get("action")
        if change.get("segment") == segment and action in tallies and change.get("event_time") in window:
            cause = change.get("cause")
            tallies[str(action)][describe_cause(cause if isinstance(cause, Mapping) else None, detail=False)] += 1
    return {action: [{"cause": cause, "count": count}
                     for cause, count in sorted(tally.items(), key=lambda pair: (-pair[1], pair[0]))[:limit]]
            for action, tally in tallies.items()}


def csv_cell(text: str) -> str:
    """A value a spreadsheet will not run as a formula (user ids come from the events: hostile)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _decode_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _change_row(stream_id: str, fields: Mapping[str, str]) -> dict[str, Any]:
    change = _decode_json(fields.get("change"))
    if not isinstance(change, dict):
        return {"stream_id": stream_id, "raw": fields}
    return {
        "stream_id": stream_id, "id": change.get("id"), "user": change.get("user"), "action": change.get("action"),
        "segment": change.get("segment"), "event_time": change.get("event_time"),
        "cause": describe_cause(change.get("cause")), "cause_kind": (change.get("cause") or {}).get("kind"),
        "segments": change.get("segments"),
    }


def _stream_changes(entries: Iterable[tuple[str, Mapping[str, str]]]) -> list[dict[str, Any]]:
    """The decoded changes of ``segments:changes`` entries; an entry that is not a JSON object is skipped."""
    return [change for change in (_decode_json(fields.get("change")) for _, fields in entries)
            if isinstance(change, dict)]


def _by_instance(fields: Mapping[str, str]) -> dict[str, str]:
    """A per-instance hash (field = parallel instance index) in instance order."""
    return dict(sorted(fields.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))


def _rule_row(rule_id: str, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict):
        return {"id": rule_id, "raw": entry}
    definition = entry.get("definition") or {}
    return {
        "id": rule_id, "version": entry.get("version"), "status": entry.get("status"),
        "name": definition.get("name"), "group": definition.get("group"), "priority": definition.get("priority"),
        "description": definition.get("description"), "when": definition.get("when"),
    }


@dataclass
class RedisView:
    """Reads one deployment's keys (``prefix``); every public method returns JSON-ready data."""

    client: redis.Redis
    prefix: str
    url: str
    settings: RedisSettings

    @classmethod
    def connect(cls, settings: RedisSettings) -> RedisView:
        # Short timeouts: a page must say "Redis is down" quickly instead of hanging.
        client = connect(settings, decode_responses=True, socket_connect_timeout=1.0, socket_timeout=2.0)
        return cls(client=client, prefix=settings.key_prefix, url=settings.url, settings=settings)

    def _guard(self, read: Callable[[], T]) -> dict[str, Any] | T:
        try:
            return read()
        except redis.RedisError as exc:
            return {"redis": self.status(str(exc) or type(exc).__name__)}

    def status(self, error: str | None = None) -> dict[str, Any]:
        return {"ok": error is None, "url": public_url(self.url), "prefix": self.prefix, "error": error}

    def _hash(self, key: str) -> dict[str, str] | None:
        """A hash's fields, or None when the key does not exist (not written by the job yet)."""
        found: dict[str, str] = self.client.hgetall(key)  # type: ignore[assignment]
        return found or None

    def overview(self, window: TimeRange = ALL_TIME) -> dict[str, Any]:
        return self._guard(lambda: self._overview(window))  # type: ignore[return-value]

    def _overview(self, window: TimeRange) -> dict[str, Any]:
        p = self.prefix
        pipe = self.client.pipeline(transaction=False)
        pipe.pfcount(users_hll_key(p))
        pipe.hgetall(segment_counts_key(p))
        pipe.xlen(segment_changes_key(p))
        # Stream ids are processing time: a range of event time reads the whole (capped) stream and filters.
        pipe.xrevrange(segment_changes_key(p), count=None if window.bounded else FEED_SIZE)
        pipe.hgetall(rules_key(p))
        pipe.hgetall(rule_instances_key(p))
        pipe.hgetall(models_current_key(p))
        pipe.hgetall(models_clusters_key(p))
        pipe.hgetall(models_instances_key(p))
        pipe.exists(models_drift_key(p))
        pipe.xrevrange(models_drift_key(p), count=DRIFT_SIZE)
        pipe.hgetall(deadletter_counts_key(p))
        (users, counts, changes_length, feed, rules, instances, model, clusters, model_instances, drift_exists,
         drift, deadletters) = pipe.execute()
        reads = self.client.pipeline(transaction=False)  # one GET per key: a cluster spreads them over slots
        for key in sorted(self.client.scan_iter(experiment_metrics_key(p, "*"), count=100)):
            reads.get(key)
        experiments = [_decode_json(text) for text in reads.execute()]
        segment_counts = {segment: int(count) for segment, count in sorted(counts.items())}
        rows = [_change_row(sid, f) for sid, f in feed]
        matching = [row for row in rows if row.get("event_time") in window] if window.bounded else rows
        return {
            "redis": self.status(),
            "empty": not (users or segment_counts or changes_length or rules),
            "users_seen": int(users),
            "segments": segment_counts,
            "changes": {"length": int(changes_length), "in_range": len(matching) if window.bounded else None,
                        "recent": matching[:FEED_SIZE]},
            "catalog": segment_catalog({rule_id: _decode_json(entry) for rule_id, entry in rules.items()},
                                       segment_counts, {c: _decode_json(text) for c, text in clusters.items()}),
            "rules": [_rule_row(rule_id, _decode_json(entry)) for rule_id, entry in sorted(rules.items())],
            "rule_instances": _by_instance(instances),
            "model": model or None,
            "clusters": ([{"cluster": cluster, **(_decode_json(text) or {})}
                          for cluster, text in sorted(clusters.items(), key=lambda kv: kv[0])] if clusters else None),
            "model_instances": _by_instance(model_instances),
            # The stream appears with the first drift: with a model published and no stream, there was none yet.
            "drift": [{"stream_id": sid, **(_decode_json(f.get("drift")) or {})} for sid, f in drift]
            if drift_exists or model else None,
            "deadletters": ({reason: int(count) for reason, count in sorted(deadletters.items())}
                            if deadletters else None),
            "experiments": [experiment for experiment in experiments if isinstance(experiment, dict)],
        }

    def history(self, buckets: int = HISTORY_BUCKETS, window: TimeRange = ALL_TIME) -> dict[str, Any]:
        return self._guard(lambda: self._history(buckets, window))  # type: ignore[return-value]

    def _history(self, buckets: int, window: TimeRange) -> dict[str, Any]:
        p = self.prefix
        pipe = consistent_pipeline(self.client, self.settings)  # one cut of counts and stream
        pipe.hgetall(segment_counts_key(p))
        pipe.xrange(segment_changes_key(p))
        counts, entries = pipe.execute()
        changes = _stream_changes(entries)
        return {"redis": self.status(),
                **segment_history(changes, {s: int(n) for s, n in counts.items()}, buckets, window)}

    def segment(self, segment: str, page: int = 0, page_size: int = MEMBERS_PAGE,
                window: TimeRange = ALL_TIME) -> dict[str, Any]:
        return self._guard(lambda: self._segment(segment, page, page_size, window))  # type: ignore[return-value]

    def _segment(self, segment: str, page: int, page_size: int, window: TimeRange) -> dict[str, Any]:
        p = self.prefix
        pipe = consistent_pipeline(self.client, self.settings)  # the page, total and definition of one moment
        pipe.zcard(segment_members_key(p, segment))
        pipe.zrevrange(segment_members_key(p, segment), page * page_size, (page + 1) * page_size - 1,
                       withscores=True)
        pipe.hgetall(rules_key(p))
        pipe.hgetall(segment_counts_key(p))
        pipe.hgetall(models_clusters_key(p))
        pipe.xrange(segment_changes_key(p))
        total, members, rules, counts, clusters, entries = pipe.execute()
        catalog = segment_catalog({rule_id: _decode_json(entry) for rule_id, entry in rules.items()},
                                  {s: int(n) for s, n in counts.items()},
                                  {c: _decode_json(text) for c, text in clusters.items()})
        found = next((s for group in catalog for s in group["segments"] if s["id"] == segment), None)
        changes = _stream_changes(entries)
        return {
            "redis": self.status(), "segment": segment, "found": found is not None or bool(total),
            "definition": found, "total": int(total), "page": page, "page_size": page_size,
            "members": [{"user": user, "since": int(score)} for user, score in members],
            "daily": daily_changes(changes, segment, window),
            "causes": top_causes(changes, segment, window),
            "changes_kept": len(entries),
        }

    def members_csv(self, segment: str) -> Iterator[str]:
        """The segment's members as CSV, newest first, read in chunks so a large segment streams.

        Chunks are separate reads: members entering or leaving during an export can shift a row
        across a chunk boundary (the export is a view of a live set, as the page is).
        """
        key = segment_members_key(self.prefix, segment)
        yield _csv_row(["user", "entered_at", "entered_at_ms"])
        start = 0
        while True:
            chunk = self.client.zrevrange(key, start, start + CSV_CHUNK - 1, withscores=True)
            for user, score in chunk:  # type: ignore[union-attr]
                entered = int(score)
                iso = datetime.fromtimestamp(entered / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                yield _csv_row([csv_cell(user), iso[:-4] + "Z", str(entered)])
            if len(chunk) < CSV_CHUNK:  # type: ignore[arg-type]
                return
            start += CSV_CHUNK

    def user(self, user_key: str) -> dict[str, Any]:
        return self._guard(lambda: self._user(user_key))  # type: ignore[return-value]

    def _user(self, user_key: str) -> dict[str, Any]:
        p = self.prefix
        pipe = self.client.pipeline(transaction=False)
        for key in (user_profile_key(p, user_key), user_segments_key(p, user_key), user_features_key(p, user_key),
                    user_model_key(p, user_key), user_recs_info_key(p, user_key)):
            pipe.hgetall(key)
        pipe.zrevrange(user_recs_key(p, user_key), 0, -1, withscores=True)
        pipe.hgetall(models_clusters_key(p))
        profile, segments, features, model, recs_info, recs, clusters = pipe.execute()
        memberships = {segment: int(ts) for segment, ts in segments.items() if not segment.startswith("_")}
        return {
            "redis": self.status(), "user": user_key,
            "found": bool(profile or segments or features or model or recs_info or recs),
            "profile": profile or None,
            "segments": memberships if segments else None,
            "features": _grouped_features(features) if features else None,
            "model": _user_model(model, clusters) if model else None,
            "recommendations": _user_recs(recs_info, recs) if (recs_info or recs) else None,
        }


def _grouped_features(features: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    grouped: dict[str, dict[str, Any]] = {group: {} for group in FEATURE_GROUPS}
    for name, value in sorted(features.items()):
        grouped[feature_group(name)][name] = _decode_json(value) if value.startswith(("[", "{")) else value
    return {group: values for group, values in grouped.items() if values}


def _user_model(model: Mapping[str, str], clusters: Mapping[str, str]) -> dict[str, Any]:
    cluster = model.get("cluster")
    described = _decode_json(clusters.get(cluster)) if cluster is not None else None
    return {**model, "cluster_description": described.get("description") if isinstance(described, dict) else None}


def _user_recs(info: Mapping[str, str], ranked: list[tuple[str, float]]) -> dict[str, Any]:
    """Items with reasons from the info hash when present, else the bare sorted set."""
    items = _decode_json(info.get("items")) if info else None
    if not isinstance(items, list):
        items = [{"item": item, "score": score, "reasons": []} for item, score in ranked]
    items = [{**entry, "why": describe_reasons(entry.get("reasons"))} for entry in items if isinstance(entry, dict)]
    return {"version": info.get("version"), "ts": info.get("ts"), "suppressed": info.get("suppressed"),
            "items": items}


def _csv_row(cells: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()

"""The per-user feature operator: one state object, one call per event, a vector when it matters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from operators.events import Event
from operators.features.affinity import CategoryAffinity
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.rfm import RFM_METRICS, PopulationScorer, PurchaseHistory, Rfm, rfm_of
from operators.features.sessions import SessionTracker
from operators.features.windows import SlidingCount
from operators.jsontext import sorted_json

FEATURES_SCHEMA = "features.v1"
#: Vector fields whose change alone makes an update worth emitting.
KEY_FIELDS = ("r_score", "f_score", "m_score", "sessions_30d", "returned_after_abandon", "cart_abandoned",
              "max_item_views_24h", "add_to_cart_24h", "checkout_start_24h", "purchase_24h", "top_category")
#: Window counts the emission policy and the engagement score read on every event.
DECISION_COUNTS = (("add_to_cart", "24h"), ("checkout_start", "24h"), ("purchase", "24h"),
                   ("email_click", "30d"), ("purchase", "30d"), ("add_to_cart", "30d"))
#: Every field of :meth:`FeatureOperator.decision_values`: computed at every event, so rules may compare them.
DECISION_FIELDS = (
    *(f"{event_type}_{window}" for event_type, window in DECISION_COUNTS), "max_item_views_24h",
    "sessions_30d", "avg_session_minutes_30d", "avg_session_depth_30d", "session_depth", "session_minutes",
    "days_since_previous_session", "cart_abandoned", "returned_after_abandon", "recency_days", "frequency_180d",
    "monetary_180d", "aov_180d", "r_score", "f_score", "m_score", "top_category", "engagement",
)
#: What is remembered of the last emitted vector to decide whether the next one is worth sending.
EMITTED_FIELDS = (*KEY_FIELDS, "engagement")


@dataclass
class UserFeatures:
    """All feature state of one user; bounded by configuration, not by the number of events."""

    reference_ts: int = 0
    """Newest event time seen: the 'now' of every window (late events never move it back)."""
    counts: dict[str, dict[str, SlidingCount]] = field(default_factory=dict)
    items: dict[str, SlidingCount] = field(default_factory=dict)
    categories: dict[str, SlidingCount] = field(default_factory=dict)
    sessions: SessionTracker = field(default_factory=SessionTracker)
    session_starts: SlidingCount = field(default_factory=SlidingCount)
    session_lengths: SlidingCount = field(default_factory=SlidingCount)
    session_depths: SlidingCount = field(default_factory=SlidingCount)
    purchases: PurchaseHistory = field(default_factory=PurchaseHistory)
    affinity: CategoryAffinity = field(default_factory=CategoryAffinity)
    version: int = 0
    emitted: dict[str, Any] = field(default_factory=dict)
    emitted_at: int = 0
    decision: dict[str, Any] = field(default_factory=dict, compare=False)
    """The decision values of the latest event, for the rules; transient (the codec does not store it)."""


@dataclass(frozen=True)
class FeatureVector:
    user_key: str
    version: int
    ts: int
    values: dict[str, Any]

    @property
    def vector_id(self) -> str:
        return f"{self.user_key}:f{self.version}"

    def to_json(self) -> bytes:
        return sorted_json({"id": self.vector_id, "schema": FEATURES_SCHEMA, "user": self.user_key,
                            "version": self.version, "ts": self.ts, "features": self.values})


def _bounded_add(counters: dict[str, SlidingCount], key: str, limit: int, config: FeatureConfig, ts: int,
                 reference_ts: int) -> None:
    """Count ``key`` in the item window, keeping at most ``limit`` keys (the least recent goes)."""
    window = config.item_window
    counter = counters.get(key)
    if counter is None:
        counter = counters[key] = SlidingCount()
    counter.add(window, ts, reference_ts)
    oldest = window.bounds(reference_ts)[0]
    for name, tracked in list(counters.items()):
        tracked.prune_to(oldest)
        if not tracked.buckets:
            del counters[name]
    if len(counters) > limit:
        newest = {k: max(c.buckets) for k, c in counters.items()}
        # On a tie of recency (same bucket) the key just viewed is the most recent: never evict it first.
        for evicted in sorted(counters, key=lambda k: (newest[k], k == key, k))[: len(counters) - limit]:
            del counters[evicted]


class FeatureOperator:
    """Update a user's :class:`UserFeatures` with an event and decide whether to emit a vector."""

    def __init__(self, config: FeatureConfig, population: PopulationScorer) -> None:
        self.config = config
        self.population = population
        self.windows_by_name = {window.name: window for window in config.windows}
        # Field names and weights computed once, not per event.
        self._decision_counts = tuple((f"{t}_{w}", t, w) for t, w in DECISION_COUNTS)
        self._vector_counts = tuple((f"{t}_{w.name}", t, w.name) for t in config.counted_types for w in config.windows)
        self._engagement_weight_sum = sum(config.engagement_weights.values())

    def process(self, features: UserFeatures | None, event: Event) -> tuple[UserFeatures, FeatureVector | None]:
        config = self.config
        features = features or UserFeatures()
        reference = features.reference_ts = max(features.reference_ts, event.ts)
        per_type = features.counts.setdefault(event.type, {}) if event.type in config.counted_types else None
        if per_type is not None:
            for window in config.windows:
                counter = per_type.get(window.name)
                if counter is None:
                    counter = per_type[window.name] = SlidingCount()
                counter.add(window, event.ts, reference)
        if event.type == "product_view":
            _bounded_add(features.items, event.item_id, config.max_items, config, event.ts, reference)
            if event.category:
                _bounded_add(features.categories, event.category, config.max_categories, config, event.ts, reference)
        if event.type == "purchase":
            features.purchases.add(config.rfm_window, event.ts, event.price * event.quantity, reference)
        weight = config.affinity_weights.get(event.type, 0.0)
        if weight and event.category:
            features.affinity.add(event.category, weight, event.ts, config.affinity_half_life_ms,
                                  config.max_categories)
        previous_session = features.sessions.current
        closed = features.sessions.observe(event.type, event.ts, config.session_gap_ms, config.abandon_return_ms)
        if closed is not None:
            self._record_session(features, closed)
        current = features.sessions.current
        if current is not None and current is not previous_session:
            features.session_starts.add(config.session_window, current.start, reference)
        return features, self.maybe_emit(features, event.user_key)

    def close_session(self, features: UserFeatures, user_key: str, now_ts: int) -> FeatureVector | None:
        """The session gap has passed in event time (a timer fired at ``now_ts``)."""
        expiry = features.sessions.expiry(self.config.session_gap_ms)
        if expiry is None or expiry > now_ts:
            return None
        closed = features.sessions.close()
        if closed is not None:
            self._record_session(features, closed)
        features.reference_ts = max(features.reference_ts, now_ts)
        return self.maybe_emit(features, user_key)

    def forget(self, features: UserFeatures) -> None:
        """The user's state is being dropped (retention, erasure): remove them from the population."""
        scored = features.purchases.scored
        if scored is not None:
            for metric, value in zip(RFM_METRICS, scored, strict=True):
                self.population.move(metric, value, None)
            features.purchases.scored = None

    def _record_session(self, features: UserFeatures, session: Any) -> None:
        window = self.config.session_window
        features.session_lengths.add(window, session.start, features.reference_ts, session.length_ms)
        features.session_depths.add(window, session.start, features.reference_ts, session.depth)

    def prune(self, features: UserFeatures) -> None:
        reference = features.reference_ts
        oldest = {window.name: window.bounds(reference)[0] for window in self.config.windows}
        for per_type in features.counts.values():
            for name, counter in per_type.items():
                if name in oldest:
                    counter.prune_to(oldest[name])
        session_oldest = self.config.session_window.bounds(reference)[0]
        for counter in (features.session_starts, features.session_lengths, features.session_depths):
            counter.prune_to(session_oldest)
        features.purchases.prune(self.config.rfm_window, reference)
        item_oldest = self.config.item_window.bounds(reference)[0]
        for counters in (features.items, features.categories):  # items no longer viewed in the window go
            for key, counter in list(counters.items()):
                counter.prune_to(item_oldest)
                if not counter.buckets:
                    del counters[key]

    def _counts(self, features: UserFeatures, fields: tuple[tuple[str, str, str], ...]) -> dict[str, Any]:
        """``{field: count}`` of ``(field, event type, window name)`` triples, each window's bounds computed once."""
        reference = features.reference_ts
        bounds = {name: window.bounds(reference) for name, window in self.windows_by_name.items()}
        counts = features.counts
        values: dict[str, Any] = {}
        for key, event_type, window_name in fields:
            per_type = counts.get(event_type)
            counter = None if per_type is None else per_type.get(window_name)
            values[key] = 0 if counter is None else int(counter.total_within(*bounds[window_name]))
        return values

    def decision_values(self, features: UserFeatures) -> dict[str, Any]:
        """The fields the emission policy looks at, and what engagement needs: cheap, every event."""
        config, reference = self.config, features.reference_ts
        values = self._counts(features, self._decision_counts)
        oldest, newest = config.item_window.bounds(reference)
        values["max_item_views_24h"] = max((int(c.total_within(oldest, newest)) for c in features.items.values()),
                                           default=0)
        self._session_values(features, values)
        self._rfm_values(rfm_of(features.purchases, config.rfm_window, reference, self.population), values)
        top = features.affinity.top(reference, config.affinity_half_life_ms, 1)
        values["top_category"] = top[0][0] if top else ""
        values["engagement"] = self._engagement(values)
        return values

    def vector(self, features: UserFeatures, decision: dict[str, Any] | None = None) -> dict[str, Any]:
        """The current feature values (see docs/features.md for every formula)."""
        config, reference = self.config, features.reference_ts
        values = self._counts(features, self._vector_counts)
        values.update(decision if decision is not None else self.decision_values(features))
        oldest, newest = config.item_window.bounds(reference)
        item_counts = {k: int(c.total_within(oldest, newest)) for k, c in features.items.items()}
        category_counts = {k: int(c.total_within(oldest, newest)) for k, c in features.categories.items()}
        most = max(item_counts.values(), default=0)  # the most viewed item, the first by id on a tie: no sort
        values["top_item_24h"] = min((k for k, n in item_counts.items() if n == most), default="")
        values["max_category_views_24h"] = max(category_counts.values(), default=0)
        top = features.affinity.top(reference, config.affinity_half_life_ms, config.top_categories)
        values["top_categories"] = [[category, round(score, 3)] for category, score in top]
        return values

    def _session_values(self, features: UserFeatures, values: dict[str, Any]) -> None:
        window, reference = self.config.session_window, features.reference_ts
        tracker = features.sessions
        oldest, newest = window.bounds(reference)
        started = int(features.session_starts.total_within(oldest, newest))
        depth_sum = features.session_depths.total_within(oldest, newest)
        length_sum = features.session_lengths.total_within(oldest, newest)
        closed_count = max(started - (1 if tracker.current is not None else 0), 0)
        current = tracker.current
        gap_days = None
        if current is not None and tracker.previous_end is not None:
            gap_days = round((current.start - tracker.previous_end) / DAY_MS, 3)
        values["sessions_30d"] = started
        values["avg_session_minutes_30d"] = round(length_sum / closed_count / 60_000, 2) if closed_count else 0.0
        values["avg_session_depth_30d"] = round(depth_sum / closed_count, 2) if closed_count else 0.0
        values["session_depth"] = current.depth if current else 0
        values["session_minutes"] = round(current.length_ms / 60_000, 2) if current else 0.0
        values["days_since_previous_session"] = gap_days
        values["cart_abandoned"] = tracker.abandoned_at is not None and tracker.returned_at is None
        values["returned_after_abandon"] = tracker.returned_at is not None

    @staticmethod
    def _rfm_values(rfm: Rfm, values: dict[str, Any]) -> None:
        values["recency_days"] = rfm.recency_days
        values["frequency_180d"] = rfm.frequency
        values["monetary_180d"] = rfm.monetary
        values["aov_180d"] = round(rfm.average_order_value, 2)
        values["r_score"], values["f_score"], values["m_score"] = rfm.r, rfm.f, rfm.m

    def _engagement(self, values: dict[str, Any]) -> float:
        """0..100 from recency of the previous visit, visit frequency, depth and explicit signals."""
        weights = self.config.engagement_weights
        gap = values["days_since_previous_session"]
        recency = 0.5 if gap is None else 0.5 ** (gap / 7)
        frequency = min(values["sessions_30d"] / 8, 1.0)
        depth = min(values["avg_session_depth_30d"] / 10, 1.0)
        explicit = min((values["email_click_30d"] + 2 * values["purchase_30d"] + 0.5 * values["add_to_cart_30d"])
                       / 6, 1.0)
        score = (weights["recency"] * recency + weights["frequency"] * frequency + weights["depth"] * depth
                 + weights["explicit"] * explicit)
        return round(100 * score / self._engagement_weight_sum, 1)

    def maybe_emit(self, features: UserFeatures, user_key: str) -> FeatureVector | None:
        """Emit when a key field changed, engagement moved enough, or the last vector is old.

        The decision reads a handful of fields; the full vector (and pruning of expired buckets,
        which bounds state) is only computed for the vectors actually emitted, at least once per
        ``emit_max_silence_ms`` of an active user's event time.
        """
        decision = features.decision = self.decision_values(features)
        previous = features.emitted
        changed = (
            not previous
            or any(decision.get(name) != previous.get(name) for name in KEY_FIELDS)
            or abs(decision["engagement"] - previous.get("engagement", 0.0)) >= self.config.emit_min_engagement_change
            or features.reference_ts - features.emitted_at >= self.config.emit_max_silence_ms
        )
        if not changed:
            return None
        self.prune(features)
        values = self.vector(features, decision)
        features.version += 1
        features.emitted = {name: values[name] for name in EMITTED_FIELDS}
        features.emitted_at = features.reference_ts
        return FeatureVector(user_key, features.version, features.reference_ts, values)

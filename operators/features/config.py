"""Feature parameters, built from the ``features`` section of the settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from operators.features.windows import WindowSpec

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

WINDOW_1H = WindowSpec("1h", HOUR_MS, 5 * 60_000)
WINDOW_24H = WindowSpec("24h", DAY_MS, HOUR_MS)
WINDOW_7D = WindowSpec("7d", 7 * DAY_MS, 6 * HOUR_MS)
WINDOW_30D = WindowSpec("30d", 30 * DAY_MS, DAY_MS)
WINDOW_180D = WindowSpec("180d", 180 * DAY_MS, DAY_MS)

DEFAULT_AFFINITY_WEIGHTS = {
    "page_view": 0.5, "product_view": 1.0, "add_to_cart": 3.0, "checkout_start": 2.0, "purchase": 5.0,
    "email_click": 1.0,
}
DEFAULT_ENGAGEMENT_WEIGHTS = {"recency": 0.25, "frequency": 0.25, "depth": 0.2, "explicit": 0.3}


@dataclass(frozen=True)
class FeatureConfig:
    windows: tuple[WindowSpec, ...] = (WINDOW_1H, WINDOW_24H, WINDOW_7D, WINDOW_30D)
    counted_types: tuple[str, ...] = (
        "page_view", "product_view", "search", "add_to_cart", "remove_from_cart", "checkout_start", "purchase",
        "email_open", "email_click",
    )
    item_window: WindowSpec = WINDOW_24H
    """Window of the per-item and per-category product-view counts."""
    max_items: int = 20
    max_categories: int = 10
    session_gap_ms: int = 30 * 60_000
    session_window: WindowSpec = WINDOW_30D
    abandon_return_ms: int = 48 * HOUR_MS
    rfm_window: WindowSpec = WINDOW_180D
    affinity_half_life_ms: int = 7 * DAY_MS
    affinity_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_AFFINITY_WEIGHTS))
    top_categories: int = 3
    engagement_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ENGAGEMENT_WEIGHTS))
    emit_min_engagement_change: float = 5.0
    emit_max_silence_ms: int = HOUR_MS
    retention_ms: int = 90 * DAY_MS

    def window(self, name: str) -> WindowSpec:
        for spec in self.windows:
            if spec.name == name:
                return spec
        raise KeyError(f"no window named {name!r}; configured: {[w.name for w in self.windows]}")

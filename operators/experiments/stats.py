"""Per-arm statistics: conversion rate and revenue per exposed user, each compared with the control arm.

The unit is the exposed user (independent draws, unlike exposures or events of one user), so:

- conversion rate = converted users / exposed users, with a Wilson interval (sound at small counts, where
  the Wald interval collapses); against control a two-proportion z-test (pooled variance) and a Wald
  interval for the difference, and a log-scale (Katz) interval for the ratio, i.e. the relative lift;
- revenue per exposed user = revenue / exposed users, with a Student-t interval; against control a Welch
  interval (unequal variances, Welch-Satterthwaite degrees of freedom). Revenue is heavy-tailed, but the
  arm means of a few hundred users are close enough to normal for the interval; a bootstrap would need
  every user's revenue, the counters keep only the sum and the sum of squares (docs/experiments.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

from operators.experiments.attribution import Counts
from operators.experiments.config import Experiment

_NORMAL = NormalDist()


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_list(self) -> list[float]:
        return [self.low, self.high]


@dataclass(frozen=True)
class Comparison:
    """An arm against the control arm; ``None`` where the data cannot say (no users, or no conversions)."""

    rate_difference: float | None
    rate_difference_ci: Interval | None
    relative_lift: float | None
    """Conversion rate over the control's, minus 1."""
    relative_lift_ci: Interval | None
    p_value: float | None
    """Two-sided two-proportion z-test of equal conversion rates."""
    revenue_difference: float | None
    revenue_difference_ci: Interval | None
    """Welch interval of the difference in revenue per exposed user."""


@dataclass(frozen=True)
class ArmMetrics:
    arm: str
    counts: Counts
    conversion_rate: float | None
    conversion_rate_ci: Interval | None
    revenue_per_user: float | None
    revenue_per_user_ci: Interval | None
    versus_control: Comparison | None
    """``None`` for the control arm itself."""


def z_quantile(confidence: float) -> float:
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def t_quantile(confidence: float, df: float) -> float:
    """Student-t two-sided quantile by the Cornish-Fisher expansion around the normal one: within 0.005 of
    the exact value from 5 degrees of freedom on (0.02 below it at 3). Pure Python, so operators stay free of
    SciPy; arm intervals have hundreds of degrees of freedom, where the two agree to 1e-6."""
    z = z_quantile(confidence)
    df = max(df, 1.0)
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def wilson(successes: int, n: int, confidence: float) -> Interval:
    z = z_quantile(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p_value(x1: int, n1: int, x2: int, n2: int) -> float | None:
    """Two-sided p-value of H0: equal proportions (pooled standard error); ``None`` if it is undefined."""
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return None
    return 2 * _NORMAL.cdf(-abs(x1 / n1 - x2 / n2) / se)  # the lower tail: no 1 - cdf rounding to 0


def _revenue_moments(counts: Counts) -> tuple[float, float]:
    """Mean and sample variance of revenue per exposed user, from the sum and the sum of squares."""
    n = counts.exposed_users
    mean = counts.revenue / n
    variance = max(0.0, (counts.revenue_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    return mean, variance


def _compare(arm: Counts, control: Counts, confidence: float) -> Comparison:
    n1, x1, n2, x2 = arm.exposed_users, arm.converted_users, control.exposed_users, control.converted_users
    if not n1 or not n2:
        return Comparison(None, None, None, None, None, None, None)
    z = z_quantile(confidence)
    p1, p2 = x1 / n1, x2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    difference = p1 - p2
    lift = lift_ci = None
    if x1 and x2:
        log_ratio = math.log(p1 / p2)
        log_se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
        lift = p1 / p2 - 1
        lift_ci = Interval(math.exp(log_ratio - z * log_se) - 1, math.exp(log_ratio + z * log_se) - 1)
    (m1, v1), (m2, v2) = _revenue_moments(arm), _revenue_moments(control)
    s1, s2 = v1 / n1, v2 / n2
    revenue_ci = None
    if s1 + s2 > 0:
        df = (s1 + s2) ** 2 / ((s1 * s1 / (n1 - 1) if n1 > 1 else 0) + (s2 * s2 / (n2 - 1) if n2 > 1 else 0))
        half = t_quantile(confidence, df) * math.sqrt(s1 + s2)
        revenue_ci = Interval(m1 - m2 - half, m1 - m2 + half)
    return Comparison(difference, Interval(difference - z * se, difference + z * se), lift, lift_ci,
                      two_proportion_p_value(x1, n1, x2, n2), m1 - m2, revenue_ci)


def arm_metrics(experiment: Experiment, counts: Mapping[str, Counts], confidence: float = 0.95) -> list[ArmMetrics]:
    """Metrics of every arm of ``experiment`` (definition order), from the summed counters by arm."""
    control = counts.get(experiment.control, Counts())
    result = []
    for arm in experiment.arms:
        mine = counts.get(arm.id, Counts())
        n = mine.exposed_users
        rate = rate_ci = revenue = revenue_ci = None
        if n:
            rate, rate_ci = mine.converted_users / n, wilson(mine.converted_users, n, confidence)
            revenue, variance = _revenue_moments(mine)
            half = t_quantile(confidence, n - 1) * math.sqrt(variance / n)
            revenue_ci = Interval(revenue - half, revenue + half)
        versus = None if arm.id == experiment.control else _compare(mine, control, confidence)
        result.append(ArmMetrics(arm.id, mine, rate, rate_ci, revenue, revenue_ci, versus))
    return result


METRICS_SCHEMA_VERSION = 1


def _interval(value: Interval | None) -> list[float] | None:
    return None if value is None else value.as_list()


def metrics_record(experiment: Experiment, metrics: list[ArmMetrics], event_time_ms: int,
                   confidence: float) -> dict[str, Any]:
    """One ``experiments.metrics`` record (config/schemas/experiments.metrics.schema.json)."""
    arms = []
    for m in metrics:
        c, v = m.counts, m.versus_control
        arm: dict[str, Any] = {
            "arm": m.arm, "exposures": c.exposures, "exposed_users": c.exposed_users, "clicks": c.clicks,
            "conversions": c.conversions, "converted_users": c.converted_users, "revenue": round(c.revenue, 2),
            "crossovers": c.crossovers, "conversion_rate": m.conversion_rate,
            "conversion_rate_ci": _interval(m.conversion_rate_ci), "revenue_per_user": m.revenue_per_user,
            "revenue_per_user_ci": _interval(m.revenue_per_user_ci), "versus_control": None}
        if v is not None:
            arm["versus_control"] = {
                "rate_difference": v.rate_difference, "rate_difference_ci": _interval(v.rate_difference_ci),
                "relative_lift": v.relative_lift, "relative_lift_ci": _interval(v.relative_lift_ci),
                "p_value": v.p_value, "revenue_difference": v.revenue_difference,
                "revenue_difference_ci": _interval(v.revenue_difference_ci)}
        arms.append(arm)
    return {"schema_version": METRICS_SCHEMA_VERSION, "experiment_id": experiment.id,
            "experiment_version": experiment.version, "control": experiment.control, "confidence": confidence,
            "event_time": event_time_ms, "arms": arms}

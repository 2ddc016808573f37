"""Exposure and conversion attribution per user, in event time, with bounded state.

An exposure is a list the user was shown: emitted by the job (for a ``none`` arm: the shadow list,
computed and never emitted) or reported by the client as a ``recommendation_view`` event. A later event
on one of its items within the experiment's conversion window is attributed to the exposure's arm: a
``product_view`` is a click, an ``add_to_cart`` or ``purchase`` a conversion, and a purchase adds its
price x quantity as revenue. Each call returns additive :class:`Counts` per (experiment, arm), which the
shell sums (docs/experiments.md); nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace

import orjson

from operators.events import Event
from operators.experiments.assignment import Assignment, assign, merge_assignments
from operators.experiments.config import Experiment

CLICK_TYPES = frozenset({"product_view"})
CONVERSION_TYPES = frozenset({"add_to_cart", "purchase"})
VIEW_TYPE = "recommendation_view"


@dataclass(frozen=True)
class Bounds:
    """What one user's experiment state may hold: about ``max_exposures * max_items`` item ids."""

    max_exposures: int = 8
    """Exposures kept across experiments; the oldest goes first."""
    max_items: int = 20
    """Items kept of one exposure (a list longer than this is cut)."""
    lateness_ms: int = 60_000
    """An exposure is kept this long past its conversion window, for events that arrive out of order."""

    def __post_init__(self) -> None:
        if min(self.max_exposures, self.max_items) < 1 or self.lateness_ms < 0:
            raise ValueError(f"experiment bounds must keep something: {self}")


@dataclass(frozen=True)
class Counts:
    """Additive per-arm counters: what one call adds, and (summed) what an arm has counted."""

    exposures: int = 0
    exposed_users: int = 0
    clicks: int = 0
    conversions: int = 0
    converted_users: int = 0
    revenue: float = 0.0
    revenue_sq: float = 0.0
    """Sum over exposed users of their attributed revenue squared (the variance of revenue per user)."""
    crossovers: int = 0
    """Users merged in from another arm after being exposed there (identity stitching)."""

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(Counts)))


Delta = tuple[str, str, Counts]
"""(experiment id, arm, counts to add)."""


@dataclass(frozen=True)
class Exposure:
    experiment_id: str
    arm: str
    ts: int
    items: tuple[str, ...]


@dataclass
class ExperimentState:
    """One user's experiments: arms (sticky across identity stitching) and recent exposures."""

    assignments: dict[str, Assignment] = field(default_factory=dict)
    exposures: list[Exposure] = field(default_factory=list)

    def arm(self, experiment: Experiment, user_key: str, secret: bytes) -> str:
        """The user's arm: remembered, else assigned by hash (and remembered)."""
        current = self.assignments.get(experiment.id)
        if current is None:
            current = self.assignments[experiment.id] = Assignment(assign(secret, experiment, user_key))
        return current.arm

    def expose(self, experiments: Iterable[Experiment], user_key: str, secret: bytes, ts: int,
               items: Iterable[str], bounds: Bounds = Bounds()) -> list[Delta]:
        """The user was shown ``items`` at event time ``ts`` in each of ``experiments`` (the active ones they
        take part in). Showing the same list again is not another exposure while the first is kept."""
        shown = tuple(dict.fromkeys(items))[:bounds.max_items]
        if not shown:
            return []
        deltas: list[Delta] = []
        windows = {}
        for experiment in experiments:
            windows[experiment.id] = experiment.conversion_window_ms
            arm = self.arm(experiment, user_key, secret)
            if any(e.experiment_id == experiment.id and e.items == shown for e in self.exposures):
                continue
            self.exposures.append(Exposure(experiment.id, arm, ts, shown))
            current = self.assignments[experiment.id]
            first = not current.exposed
            if first or ts < current.first_exposure_ms:
                self.assignments[experiment.id] = replace(current, first_exposure_ms=ts)
            deltas.append((experiment.id, arm, Counts(exposures=1, exposed_users=int(first))))
        self._prune(windows, ts, bounds)
        return deltas

    def attribute(self, event: Event, experiments: Mapping[str, Experiment]) -> list[Delta]:
        """Clicks, conversions and revenue of ``event`` for each experiment in which the user was shown its
        item within the conversion window before it (the latest such exposure's arm)."""
        is_click = event.type in CLICK_TYPES
        if not event.item_id or not (is_click or event.type in CONVERSION_TYPES):
            return []
        matched: dict[str, Exposure] = {}
        for exposure in self.exposures:
            experiment = experiments.get(exposure.experiment_id)
            if experiment is None or not exposure.ts <= event.ts <= exposure.ts + experiment.conversion_window_ms \
                    or event.item_id not in exposure.items:
                continue
            if exposure.experiment_id not in matched or matched[exposure.experiment_id].ts < exposure.ts:
                matched[exposure.experiment_id] = exposure
        deltas: list[Delta] = []
        for experiment_id, exposure in sorted(matched.items()):
            if is_click:
                deltas.append((experiment_id, exposure.arm, Counts(clicks=1)))
                continue
            current = self.assignments[experiment_id]
            revenue = event.price * event.quantity if event.type == "purchase" else 0.0
            total = current.revenue + revenue
            self.assignments[experiment_id] = replace(current, converted=True, revenue=total)
            deltas.append((experiment_id, exposure.arm, Counts(
                conversions=1, converted_users=int(not current.converted), revenue=revenue,
                revenue_sq=total * total - current.revenue * current.revenue)))
        return deltas

    def on_event(self, event: Event, experiments: Mapping[str, Experiment], secret: bytes,
                 bounds: Bounds = Bounds()) -> list[Delta]:
        """Everything one validated event means for the user's experiments (a view exposes, others attribute)."""
        if event.type != VIEW_TYPE:
            return self.attribute(event, experiments)
        properties = orjson.loads(event.attributes).get("properties", {}) if event.attributes else {}
        named: str | None = properties.get("experiment_id")
        chosen = list(experiments.values()) if named is None else [e for e in experiments.values() if e.id == named]
        return self.expose(chosen, event.user_key, secret, event.ts, properties.get("items", ()), bounds)

    def forget(self, keep: Iterable[str]) -> None:
        """Drop everything of experiments not in ``keep`` (the shell calls this when one is stopped)."""
        kept = set(keep)
        self.assignments = {k: v for k, v in self.assignments.items() if k in kept}
        self.exposures = [e for e in self.exposures if e.experiment_id in kept]

    def _prune(self, windows: Mapping[str, int], now: int, bounds: Bounds) -> None:
        """Drop exposures whose window (plus lateness) ended before ``now``, then the oldest beyond the bound."""
        self.exposures = [e for e in self.exposures if e.experiment_id not in windows
                          or e.ts + windows[e.experiment_id] + bounds.lateness_ms >= now]
        self.exposures.sort(key=lambda e: e.ts)
        del self.exposures[:-bounds.max_exposures]

    def merge(self, anonymous: ExperimentState, bounds: Bounds = Bounds()) -> list[Delta]:
        """Take in an anonymous visitor's state at an identify (this state is the known user's): arms by
        :func:`~operators.experiments.assignment.merge_assignments`, exposures of the winning arms only, and a
        crossover counted for each experiment in which the visitor had been exposed in another arm."""
        self.assignments, crossed = merge_assignments(self.assignments, anonymous.assignments)
        kept = [e for e in anonymous.exposures if self.assignments[e.experiment_id].arm == e.arm]
        self.exposures = sorted(self.exposures + kept, key=lambda e: e.ts)[-bounds.max_exposures:]
        return [(experiment_id, self.assignments[experiment_id].arm, Counts(crossovers=1)) for experiment_id in crossed]

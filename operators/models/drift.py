"""Drift detection on a model's running loss or assignment distances (River ADWIN or Page-Hinkley).

Only *rising* values are drift here: a loss going up or points landing farther from their
centroids means the model fits the stream worse. A falling loss (the model learning) is not an
alarm, and neither is anything during the warm-up while the model is still converging.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from river import base

DETECTORS = ("adwin", "page_hinkley")


def make_detector(name: str) -> base.DriftDetector:
    # Imported here, by the trainer only: river.drift imports SciPy (~0.9 s), and SciPy's pybind11
    # modules can deadlock when several of PyFlink's operator threads import them at once.
    from river import drift

    if name == "adwin":
        return drift.ADWIN(delta=1e-5)
    if name == "page_hinkley":
        return drift.PageHinkley(min_instances=30, delta=0.005, threshold=50.0, mode="up")
    raise ValueError(f"unknown drift detector {name!r}; known: {', '.join(DETECTORS)}")


@dataclass(frozen=True)
class DriftEvent:
    model: str
    signal: str
    detector: str
    version: int
    """Model version in use when the drift was detected."""
    ts: int
    """Event time of the value that completed the detection."""

    @property
    def drift_id(self) -> str:
        """Deterministic: a replay after restore detects the same drift with the same id."""
        return f"{self.model}:{self.signal}:v{self.version}:{self.ts}"

    def to_json(self) -> bytes:
        return json.dumps({"id": self.drift_id, **asdict(self)}, separators=(",", ":"), sort_keys=True).encode()


class DriftMonitor:
    """Feeds one signal of one model to a detector and reports rising drifts as :class:`DriftEvent`."""

    def __init__(self, model: str, signal: str, detector: str = "adwin", warmup: int = 1000) -> None:
        self.model = model
        self.signal = signal
        self.detector = detector
        self.warmup = warmup
        self._detector = make_detector(detector)
        self._adwin = detector == "adwin"
        self._seen = 0

    def update(self, value: float, ts: int, version: int) -> DriftEvent | None:
        detector = self._detector
        adwin: Any = detector if self._adwin else None
        before = adwin.estimation if adwin is not None else 0.0
        detector.update(value)
        self._seen += 1
        if not detector.drift_detected or self._seen <= self.warmup:
            return None
        if adwin is not None and adwin.estimation <= before:  # ADWIN cuts on any change: keep rises
            return None
        return DriftEvent(self.model, self.signal, self.detector, version, ts)

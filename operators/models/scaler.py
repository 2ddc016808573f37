"""A standard scaler's state as plain numbers in a fixed feature order: what a published model carries and
what the sampled re-fit scales with (one formula for both, so a scorer assigns as the trainer does)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ScoringModelError(ValueError):
    """Model data that is not a well-formed :class:`ScoringModel`; the message says what is wrong."""


@dataclass(frozen=True)
class Scaler:
    """A standard scaler's state in a fixed feature order: ``(x - mean) / std``, 0 where std is 0."""

    means: tuple[float, ...]
    stds: tuple[float, ...]

    def scale(self, x: Mapping[Hashable, Any], features: Sequence[Hashable]) -> list[float]:
        return [(x[name] - mean) / std if std else 0.0
                for name, mean, std in zip(features, self.means, self.stds, strict=True)]

    def to_data(self) -> dict[str, list[float]]:
        return {"mean": list(self.means), "std": list(self.stds)}

    @classmethod
    def from_data(cls, data: Any, size: int, where: str) -> Scaler:
        if not isinstance(data, Mapping):
            raise ScoringModelError(f"{where}: expected an object with mean and std")
        return cls(finite_numbers(data.get("mean"), size, f"{where}.mean"),
                   finite_numbers(data.get("std"), size, f"{where}.std"))

    @classmethod
    def of(cls, means: Mapping[Any, float], variances: Mapping[Any, float], features: Sequence[Any]) -> Scaler:
        """From River's ``StandardScaler.means`` and ``.vars`` (absent features: never seen, so 0)."""
        return cls(tuple(float(means.get(name, 0.0)) for name in features),
                   tuple(float(variances.get(name, 0.0)) ** 0.5 for name in features))


def finite_numbers(values: Any, size: int, where: str) -> tuple[float, ...]:
    """``values`` as a tuple of ``size`` finite floats; :class:`ScoringModelError` on anything else."""
    if not isinstance(values, list) or len(values) != size:
        raise ScoringModelError(f"{where}: expected a list of {size} numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ScoringModelError(f"{where}: expected finite numbers")
    return tuple(float(v) for v in values)

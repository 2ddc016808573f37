"""PopulationHistogram: decrementable, mergeable population quantiles (pure)."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.quantiles import PopulationHistogram

values = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=60)


def histogram_of(items: list[float]) -> PopulationHistogram:
    histogram = PopulationHistogram()
    for item in items:
        histogram.add(item)
    return histogram


def test_extremes_of_a_small_population_score_1_and_5() -> None:
    spend = histogram_of([5, 20, 40, 80, 300])
    assert (spend.score(5), spend.score(300)) == (1, 5)


def test_an_empty_population_scores_the_middle_level() -> None:
    assert PopulationHistogram().score(42) == 3


def test_population_values_spread_evenly_over_the_levels() -> None:
    rng = random.Random(1)
    population = [rng.lognormvariate(3, 1) for _ in range(10_000)]
    histogram = histogram_of(population)
    levels = [histogram.score(value) for value in population]
    for level in range(1, 6):
        assert abs(levels.count(level) / len(levels) - 0.2) < 0.03


def test_quantiles_are_within_the_bin_error() -> None:
    rng = np.random.default_rng(2)
    population = rng.lognormal(4, 1.5, 5000)
    histogram = histogram_of(list(population))
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        exact = float(np.quantile(population, q))
        assert abs(histogram.quantile(q) - exact) / exact < 0.16


def test_move_replaces_a_users_value() -> None:
    histogram = histogram_of([1, 2, 3])
    histogram.move(3, 1000)
    assert histogram.count == 3 and histogram.rank(1000) >= 2 / 3 > histogram.rank(2)
    histogram.move(1000, None)
    assert histogram.count == 2


@settings(max_examples=60, deadline=None)
@given(values, values)
def test_removing_undoes_adding(kept: list[float], removed: list[float]) -> None:
    histogram = histogram_of(kept + removed)
    for value in removed:
        histogram.remove(value)
    assert histogram.bins == histogram_of(kept).bins


@settings(max_examples=60, deadline=None)
@given(values, values)
def test_merging_equals_adding_everything(left: list[float], right: list[float]) -> None:
    assert histogram_of(left).merged([histogram_of(right)]).bins == histogram_of(left + right).bins


@settings(max_examples=60, deadline=None)
@given(values, st.floats(min_value=0, max_value=2e6, allow_nan=False))
def test_rank_is_monotonic_and_bounded(items: list[float], probe: float) -> None:
    histogram = histogram_of(items)
    assert 0 <= histogram.rank(probe) <= 1
    assert histogram.rank(probe) <= histogram.rank(probe * 2 + 1)


def test_serialisation_round_trips() -> None:
    histogram = histogram_of([0, 0.001, 3, 3, 7e8])
    assert PopulationHistogram.from_dict(histogram.to_dict()).bins == histogram.bins
    assert pickle.loads(pickle.dumps(histogram)).bins == histogram.bins


def test_merging_different_binning_is_refused() -> None:
    with pytest.raises(ValueError, match="binning"):
        PopulationHistogram().merged([PopulationHistogram(bins_per_decade=8)])

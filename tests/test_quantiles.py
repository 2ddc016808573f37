"""PopulationHistogram: decrementable, mergeable population quantiles (pure)."""

from __future__ import annotations

import doctest
import json
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import quantiles
from operators.quantiles import PopulationHistogram

values = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=60)
in_range = st.lists(st.floats(min_value=1e-2, max_value=1e7, exclude_max=True), min_size=1, max_size=200)
BIN_RATIO = 10 ** (1 / 16)


def histogram_of(items: list[float]) -> PopulationHistogram:
    histogram = PopulationHistogram()
    for item in items:
        histogram.add(item)
    return histogram


def test_docstring_example_runs() -> None:
    assert doctest.testmod(quantiles).failed == 0


def test_small_population_exactly() -> None:
    histogram = histogram_of([0, 0, 1, 10])
    assert histogram.count == 4
    assert histogram.bins == {PopulationHistogram.ZERO_BIN: 2, 32: 1, 48: 1}
    assert [histogram.rank(value) for value in (0, 0.005, 1, 10, 1e9)] == [0, 0.25, 0.5, 0.75, 1]
    assert histogram.quantile(0.5) == pytest.approx(0.01)  # top of the zero bin
    assert histogram.quantile(0.75) == pytest.approx(BIN_RATIO)  # top of the bin of 1: resolution is one bin
    assert histogram.quantile(1) == pytest.approx(10 * BIN_RATIO)


def test_extremes_of_a_small_population_score_1_and_5() -> None:
    spend = histogram_of([5, 20, 40, 80, 300])
    assert [spend.score(value) for value in (5, 20, 40, 80, 300)] == [1, 2, 3, 4, 5]
    assert spend.score(1e12) == 5 and spend.score(0) == 1


def test_an_empty_population_scores_the_middle_level() -> None:
    assert PopulationHistogram().score(42) == 3
    assert PopulationHistogram().score(42, levels=3) == 2


def test_constructor_arguments_are_kept_and_checked() -> None:
    histogram = PopulationHistogram(low=1, high=1000, bins_per_decade=4)
    assert (histogram.low, histogram.high, histogram.bins_per_decade) == (1, 1000, 4)
    with pytest.raises(ValueError):
        PopulationHistogram(low=10, high=1)


def test_values_beyond_the_range_are_clamped() -> None:
    histogram = PopulationHistogram(low=1, high=1000, bins_per_decade=4)
    for value in (-5, 0, 0.5, 1e6, float("inf")):
        histogram.add(value)
    assert histogram.bins == {PopulationHistogram.ZERO_BIN: 3, 11: 2}
    assert 0 <= histogram.rank(-5) <= histogram.rank(float("inf")) == 1


def test_population_values_spread_evenly_over_the_levels() -> None:
    rng = random.Random(1)
    population = [rng.lognormvariate(3, 1) for _ in range(10_000)]
    histogram = histogram_of(population)
    levels = [histogram.score(value) for value in population]
    for level in range(1, 6):
        assert abs(levels.count(level) / len(levels) - 0.2) < 0.03


@pytest.mark.parametrize("seed", range(5))
def test_quantile_error_is_within_the_documented_bound(seed: int) -> None:
    rng = np.random.default_rng(seed)
    population = np.concatenate([rng.lognormal(4, 1.5, 3000), rng.exponential(2, 1000), rng.uniform(10, 1e5, 1000)])
    histogram = histogram_of(list(population))
    for q in np.linspace(0.01, 1, 100):
        exact = float(np.quantile(population, q, method="inverted_cdf"))
        assert abs(histogram.quantile(q) - exact) / exact < BIN_RATIO - 1
    for q in (0.1, 0.5, 0.9):  # numpy's default (interpolated) quantile too, with real data
        exact = float(np.quantile(population, q))
        assert abs(histogram.quantile(q) - exact) / exact < BIN_RATIO - 1


@settings(max_examples=100, deadline=None)
@given(in_range, st.integers(min_value=0, max_value=100))
def test_quantile_error_bound_holds_for_any_population(items: list[float], percent: int) -> None:
    exact = float(np.quantile(items, percent / 100, method="inverted_cdf"))
    estimate = histogram_of(items).quantile(percent / 100)
    assert exact / BIN_RATIO * (1 - 1e-9) <= estimate <= exact * BIN_RATIO * (1 + 1e-9)


def test_move_replaces_a_users_value() -> None:
    histogram = histogram_of([1, 2, 3])
    histogram.move(3, 1000)
    assert histogram.count == 3 and histogram.rank(1000) >= 2 / 3 > histogram.rank(2)
    histogram.move(1000, None)
    histogram.move(None, None)
    assert histogram.bins == histogram_of([1, 2]).bins


def test_removing_what_is_not_there_never_goes_below_zero() -> None:
    histogram = histogram_of([5])
    histogram.remove(5000)
    histogram.remove(5)
    histogram.remove(5)
    assert (histogram.count, histogram.bins) == (0, {})


@settings(max_examples=60, deadline=None)
@given(values, values)
def test_removing_undoes_adding(kept: list[float], removed: list[float]) -> None:
    histogram = histogram_of(kept + removed)
    for value in removed:
        histogram.remove(value)
    assert (histogram.count, histogram.bins) == (len(kept), histogram_of(kept).bins)


@settings(max_examples=60, deadline=None)
@given(values, values, values)
def test_merging_equals_adding_everything(first: list[float], second: list[float], third: list[float]) -> None:
    merged = histogram_of(first).merged([histogram_of(second), histogram_of(third)])
    together = histogram_of(first + second + third)
    assert (merged.count, merged.bins) == (together.count, together.bins)


def test_merging_returns_a_new_histogram() -> None:
    mine, theirs = histogram_of([1]), histogram_of([2])
    mine.merged([theirs]).add(3)
    assert (mine.count, theirs.count) == (1, 1)


def test_merging_different_binning_is_refused() -> None:
    with pytest.raises(ValueError, match="binning"):
        PopulationHistogram().merged([PopulationHistogram(bins_per_decade=8)])


@settings(max_examples=60, deadline=None)
@given(values, st.floats(min_value=0, max_value=2e6), st.floats(min_value=0, max_value=2e6))
def test_rank_is_monotonic_and_bounded(items: list[float], first: float, second: float) -> None:
    histogram = histogram_of(items)
    low, high = sorted((first, second))
    assert 0 <= histogram.rank(low) <= histogram.rank(high) <= 1


@settings(max_examples=60, deadline=None)
@given(values.filter(bool), st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_quantile_is_monotonic_and_inverts_rank(items: list[float], first: float, second: float) -> None:
    histogram = histogram_of(items)
    low, high = sorted((first, second))
    assert histogram.quantile(low) <= histogram.quantile(high)
    assert histogram.rank(histogram.quantile(first)) == pytest.approx(first, abs=1e-9)


def test_quantile_of_nothing_or_outside_0_1_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        PopulationHistogram().quantile(0.5)
    with pytest.raises(ValueError, match="within"):
        histogram_of([1]).quantile(1.5)


@settings(max_examples=60, deadline=None)
@given(values)
def test_serialisation_round_trips(items: list[float]) -> None:
    histogram = histogram_of(items)
    for copy in (PopulationHistogram.from_dict(json.loads(json.dumps(histogram.to_dict()))),
                 pickle.loads(pickle.dumps(histogram))):
        assert (copy.count, copy.bins, copy.rank(42)) == (histogram.count, histogram.bins, histogram.rank(42))
        copy.add(1)  # still a working histogram
        assert copy.count == histogram.count + 1


def test_serialised_form_is_sparse() -> None:
    data = histogram_of([0, 3, 3]).to_dict()
    assert data == {"low": 0.01, "high": 1e7, "bins_per_decade": 16, "bins": {"-1": 1, "39": 2}}


def test_bins_outside_the_binning_are_refused() -> None:
    data = {"low": 0.01, "high": 1e7, "bins_per_decade": 16, "bins": {"144": 1}}
    with pytest.raises(ValueError, match="144"):
        PopulationHistogram.from_dict(data)

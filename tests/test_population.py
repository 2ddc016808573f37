"""SharedPopulation: parallel instances converge to one population view through a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis

from connectors.population import SharedPopulation
from connectors.redis_keys import population_key
from operators.quantiles import PopulationHistogram
from personalize.settings import Settings

pytestmark = pytest.mark.integration

METRICS = ("frequency", "monetary")
LOW_SPENDERS = (1, 2, 3, 4)
HIGH_SPENDERS = (100, 200, 300, 400)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(stack_settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(stack_settings.redis.url)


@pytest.fixture
def prefix() -> str:
    return f"pop-{uuid.uuid4().hex[:8]}:"


def instance(client: redis.Redis, prefix: str, index: int, clock: Clock) -> SharedPopulation:
    return SharedPopulation(client, prefix, METRICS, index, refresh_interval_ms=5000, clock=clock)


def populate(population: SharedPopulation, spends: tuple[float, ...]) -> None:
    for spend in spends:
        population.move("monetary", None, spend)
        population.move("frequency", None, 1)


def populated_pair(client: redis.Redis, prefix: str) -> tuple[Clock, SharedPopulation, SharedPopulation]:
    """Instances 0 and 1 owning the low and the high spenders, not yet synced."""
    clock = Clock()
    first, second = instance(client, prefix, 0, clock), instance(client, prefix, 1, clock)
    populate(first, LOW_SPENDERS)
    populate(second, HIGH_SPENDERS)
    return clock, first, second


def test_instances_with_disjoint_users_converge_on_the_whole_population(client: redis.Redis, prefix: str) -> None:
    _clock, first, second = populated_pair(client, prefix)
    first.sync()
    second.sync()
    first.sync()
    everybody = PopulationHistogram().merged([first.local["monetary"], second.local["monetary"]])
    assert first.merged["monetary"].bins == second.merged["monetary"].bins == everybody.bins
    assert first.merged["frequency"].count == second.merged["frequency"].count == 8
    assert set(client.hkeys(population_key(prefix, "monetary"))) == {b"0", b"1"}


def test_scores_use_the_merged_view(client: redis.Redis, prefix: str) -> None:
    clock, first, second = populated_pair(client, prefix)
    second.sync()
    # Alone, 4 tops the low spenders and 100 is the bottom of the high ones; together both are middling.
    assert (first.local["monetary"].score(4), second.local["monetary"].score(100)) == (5, 1)
    assert first.score("monetary", 4) == 3  # first score syncs: sees second's users
    assert second.score("monetary", 100) == 1  # second synced before first published, until its interval passes
    clock.now = 5.0
    assert second.score("monetary", 100) == 3


def test_the_clock_decides_when_to_sync(client: redis.Redis, prefix: str) -> None:
    clock = Clock()
    first, second = instance(client, prefix, 0, clock), instance(client, prefix, 1, clock)
    assert first.maybe_sync()
    populate(second, HIGH_SPENDERS)
    second.sync()
    clock.now = 4.999
    assert not first.maybe_sync()
    first.score("monetary", 1)
    assert first.merged["monetary"].count == 0  # still the view of the last sync
    clock.now = 5.0
    first.score("monetary", 1)
    assert first.merged["monetary"].count == 4
    assert not first.maybe_sync()


def test_sync_is_idempotent(client: redis.Redis, prefix: str) -> None:
    _clock, first, second = populated_pair(client, prefix)
    second.sync()
    first.sync()
    published = client.hgetall(population_key(prefix, "monetary"))
    view = first.merged["monetary"].bins
    first.sync()
    second.sync()
    first.sync()
    assert client.hgetall(population_key(prefix, "monetary")) == published
    assert first.merged["monetary"].bins == second.merged["monetary"].bins == view
    assert first.merged["monetary"].count == 8


def test_restore_recovers_an_instances_histograms(client: redis.Redis, prefix: str) -> None:
    clock, first, second = populated_pair(client, prefix)
    first.sync()
    second.sync()
    restarted = instance(client, prefix, 0, clock)
    restarted.restore()
    for metric in METRICS:
        assert restarted.local[metric].bins == first.local[metric].bins
        assert restarted.merged[metric].bins == second.merged[metric].bins  # everybody, before any sync
    restarted.move("monetary", 4, 500)  # the restored histogram is live: old values can leave it
    restarted.sync()
    expected = PopulationHistogram()
    for spend in (1, 2, 3, 500, *HIGH_SPENDERS):
        expected.add(spend)
    assert restarted.merged["monetary"].bins == expected.bins


def test_an_instance_that_never_published_restores_empty(client: redis.Redis, prefix: str) -> None:
    clock = Clock()
    published = instance(client, prefix, 0, clock)
    populate(published, LOW_SPENDERS)
    published.sync()
    fresh = instance(client, prefix, 1, clock)
    fresh.restore()
    assert fresh.local["monetary"].count == 0
    assert fresh.merged["monetary"].count == 4


def test_a_client_that_decodes_responses_works_too(stack_settings: Settings, prefix: str) -> None:
    clock = Clock()
    decoding = redis.Redis.from_url(stack_settings.redis.url, decode_responses=True)
    first = instance(decoding, prefix, 0, clock)
    populate(first, LOW_SPENDERS)
    first.sync()
    first.sync()
    assert first.merged["monetary"].count == 4

"""SharedPopulation: parallel instances converge to one population view through a real Redis."""

from __future__ import annotations

import uuid

import pytest
import redis

from connectors.population import SharedPopulation
from personalize.settings import Settings

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def instances(stack_settings: Settings, clock: Clock) -> tuple[redis.Redis, str, list[SharedPopulation]]:
    client = redis.Redis.from_url(stack_settings.redis.url)
    prefix = f"pop-{uuid.uuid4().hex[:8]}:"
    return client, prefix, [SharedPopulation(client, prefix, ["monetary"], index, 5000, clock) for index in (0, 1)]


def test_instances_with_disjoint_users_converge(stack_settings: Settings) -> None:
    clock = Clock()
    _, _, (first, second) = instances(stack_settings, clock)
    for value in (1, 2, 3, 4):
        first.move("monetary", None, value)
    for value in (100, 200, 300, 400):
        second.move("monetary", None, value)
    first.sync()
    second.sync()
    first.sync()
    assert first.merged["monetary"].bins == second.merged["monetary"].bins
    assert first.score("monetary", 400) == 5 and second.score("monetary", 1) == 1


def test_sync_is_idempotent_and_restore_recovers(stack_settings: Settings) -> None:
    clock = Clock()
    client, prefix, (first, _) = instances(stack_settings, clock)
    for value in (10, 20, 30):
        first.move("monetary", None, value)
    first.sync()
    first.sync()
    assert first.merged["monetary"].count == 3
    restarted = SharedPopulation(client, prefix, ["monetary"], 0, 5000, clock)
    restarted.restore()
    assert restarted.local["monetary"].bins == first.local["monetary"].bins


def test_sync_happens_once_per_interval(stack_settings: Settings) -> None:
    clock = Clock()
    _, _, (first, _) = instances(stack_settings, clock)
    assert first.maybe_sync()
    clock.now += 1.0
    assert not first.maybe_sync()
    clock.now += 5.0
    assert first.maybe_sync()

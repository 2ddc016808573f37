"""The per-user core in the local runner, as the job drives it: fast checks of whole user journeys."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from jobs.local_runner import LocalRunner, UserCells
from jobs.pipeline import core_settings, local_core
from operators.events import Event
from operators.experiments.assignment import assign
from operators.experiments.attribution import Bounds
from operators.experiments.config import parse_experiment
from operators.experiments.serving import ExperimentPolicy
from operators.features.config import DAY_MS, FeatureConfig
from operators.features.operator import FeatureOperator
from operators.features.rfm import LocalPopulation
from operators.models.user import ForgetSlot, sample_slot
from operators.recs.user import UserRecState
from operators.user_core import (
    RECS_ROUTE,
    TRAINER_KEY,
    TRAINING_ROUTE,
    StageErase,
    StageProfile,
    StageSegmentChange,
    Step,
    UserCore,
)
from operators.validation import Limits, parse_event
from personalize import settings as settings_module
from state.codecs import encode_recs
from tests.test_privacy_integration import MINUTE, T0, browsing, consent

SETTINGS = settings_module.load(environ={})
LIMITS = Limits(SETTINGS.validation.max_payload_bytes, SETTINGS.validation.min_event_time_ms,
                SETTINGS.validation.max_future_skew_ms)


def parsed(raw: dict[str, Any]) -> Event:
    event = parse_event(json.dumps(raw).encode(), raw["ts"], LIMITS)
    assert isinstance(event, Event), event
    return event


def run(events: list[dict[str, Any]]) -> tuple[LocalRunner, list[tuple[str, Step]]]:
    steps: list[tuple[str, Step]] = []
    runner = LocalRunner(local_core(SETTINGS), SETTINGS.job.max_out_of_orderness_ms,
                         lambda user, step: steps.append((user, step)))
    for raw in events:
        event = parsed(raw)
        runner.event(event.user_key, event)
    return runner, steps


def test_an_erasure_request_clears_the_user_tombstones_and_confirms() -> None:
    """The first bench run of the core in the runner met an erasure request the test input never had."""
    runner, steps = run([*browsing("ann", T0), consent("ann-erase", "ann", T0 + 30 * MINUTE, False, erase=True)])
    erased = steps[-1][1]
    topics = SETTINGS.kafka.topics
    assert StageErase("ann") in erased.redis and erased.erasures == 1
    assert {(record.topic, record.value) for record in erased.records if record.value is None} >= {
        (topics.profiles.name, None), (topics.features.name, None), (topics.segments.name, None)}
    assert [record.topic for record in erased.records if record.value is not None][-1] == topics.erasures.name
    values = dict(runner.users())["ann"]
    assert values.get("consent") is not None
    assert all(values.get(name) is None for name in ("profile", "features", "rules", "models", "recs"))
    # The trainer's clustering sample keeps ann's newest behaviour input in her slot: it goes too.
    assert (TRAINING_ROUTE, TRAINER_KEY, ForgetSlot(sample_slot("ann", SETTINGS.models.sample_users))) in erased.sends


def test_a_session_closes_when_the_watermark_passes_its_gap() -> None:
    """The wake-up the core asked for fires in the runner once a later event moves event time past it."""
    gap = SETTINGS.features.session_gap_ms
    runner, steps = run([*browsing("bob", T0), *browsing("cid", T0 + gap + 2 * SETTINGS.job.max_out_of_orderness_ms)])
    woken = [step for user, step in steps if user == "bob"][len(browsing("bob", T0)):]
    assert runner.woken >= 1 and woken, "bob's session timer did not fire"
    assert not any(isinstance(write, StageProfile) for step in woken for write in step.redis)


def test_retention_is_asked_for_once_per_day_of_activity_and_still_forgets() -> None:
    """A retention wake-up moves once per day of activity: asking again per event cost the job a wake-up
    store and a timer registration per event. The one asked for on the last day still forgets the user."""
    retention = SETTINGS.features.retention_ms
    # Mid-morning of T0's day, whatever the wall clock: near midnight a session's close would fall on the
    # next day and move the retention day once more (as it should), which this test does not count.
    morning = T0 - T0 % DAY_MS + 10 * 60 * MINUTE
    days = [morning, morning + 2 * DAY_MS]
    later = days[-1] + retention + 2 * DAY_MS
    runner, steps = run([*browsing("dan", days[0]), *browsing("dan", days[1]), *browsing("eve", later)])
    asked = [ts for user, step in steps if user == "dan"
             for ts in step.wakeups if ts % DAY_MS == 0 and ts > later - 4 * DAY_MS]  # retention days only
    assert len(asked) == len(days) == len(set(asked)), asked
    left = dict(runner.users()).get("dan")
    assert left is None or left.get("features") is None, "dan was not forgotten at retention"


def test_consent_needs_erasure_settings() -> None:
    config = core_settings(replace(SETTINGS, privacy=replace(SETTINGS.privacy, enabled=True)))
    assert config.consent is not None
    with pytest.raises(ValueError, match="erasure"):
        UserCore(config, FeatureOperator(FeatureConfig(), LocalPopulation()))


def test_segment_changes_say_the_users_arm_while_an_experiment_runs() -> None:
    experiment = parse_experiment({"id": "recs-v1", "control": "control", "conversion_window": "1d", "arms": [
        {"id": "control", "weight": 1, "treatment": "none"}, {"id": "recs", "weight": 1, "treatment": "personalized"}]})
    core = local_core(SETTINGS)
    core.experiments = ExperimentPolicy((experiment,), b"k" * 32, Bounds())
    steps: list[Step] = []
    runner = LocalRunner(core, SETTINGS.job.max_out_of_orderness_ms, lambda _user, step: steps.append(step))
    for user in ("ann", "bob", "cid", "dan"):
        for raw in browsing(user, T0):
            event = parsed(raw)
            runner.event(event.user_key, event)
    changes = [json.loads(write.record) for step in steps for write in step.redis if isinstance(write,
                                                                                              StageSegmentChange)]
    assert changes and all(c["experiment"] == "recs-v1" for c in changes)
    assert all(c["arm"] == assign(b"k" * 32, experiment, c["user"]) for c in changes)
    # The arm is remembered in the user's recommendation state (what a login merges), and a remembered
    # arm wins over the hash: a visitor who signed up keeps theirs.
    values = dict(runner.users())
    assert all(values[user].get("recs").arms == {"recs-v1": assign(b"k" * 32, experiment, user)}
               for user in ("ann", "bob"))
    other = {"control": "recs", "recs": "control"}[assign(b"k" * 32, experiment, "eve")]
    cell = runner.cells.setdefault("eve", UserCells())
    cell["recs"].update(encode_recs(UserRecState(arms={"recs-v1": other})))
    steps.clear()
    for raw in browsing("eve", T0):
        event = parsed(raw)
        runner.event(event.user_key, event)
    requests = [message for step in steps for route, _, message in step.sends if route == RECS_ROUTE]
    assert requests and all(request.arm == ("recs-v1", other) for request in requests)

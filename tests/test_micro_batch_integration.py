"""Micro-batches change how the user operator is called, not what it emits: the same input through the
job called per event and per list gives the same output records (MiniCluster, real broker and Redis)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from jobs.personalize_job import job_environment, run_job, source_spec
from personalize import stack
from personalize.generator import EventGenerator
from personalize.kafka_tools import read_topic
from personalize.publish import publish
from personalize.settings import Settings
from tests.conftest import isolated

pytestmark = pytest.mark.integration

#: The user operator's own outputs. Model segments and recommendations also depend on when the global
#: models (trainer, recommender) see other users' inputs, and consent on the read order of two topics,
#: which no design fixes, so those are off here (as in tests/test_job_integration.py).
COMPARED = ("profiles", "features", "segments", "late")


def outputs(stack_settings: Settings, micro_batch_ms: int) -> dict[str, set[str]]:
    settings = isolated(stack_settings)
    settings = replace(settings, job=replace(settings.job, parallelism=1, micro_batch_ms=micro_batch_ms),
                       models=replace(settings.models, enabled=False),
                       privacy=replace(settings.privacy, enabled=False),
                       recommendations=replace(settings.recommendations, enabled=False),
                       generator=replace(settings.generator, users=150, events=6000, seed=11,
                                         out_of_order_share=0.1))
    stack.up(settings)
    records = list(EventGenerator(settings.generator).records())
    published = publish(records, settings.kafka, progress=False)
    run_job(settings, source_spec(settings, "earliest", published.end_offsets))
    topics = settings.kafka.topics
    found: dict[str, set[str]] = {}
    for name in COMPARED:
        topic = getattr(topics, name)
        found[name] = {json.loads(record.value)["id"] for record in read_topic(
            settings.kafka.bootstrap_servers, topic.name, topic.partitions)}
    return found


#: Outputs that also depend on other users: R/F/M scores are percentiles over the whole population, so a
#: user's feature vectors and segments depend on the order other users' events are read in. Two per-event
#: runs of this input differed by 90 of 2,968 vectors and 99 of 1,078 changes (2026-12-05); a per-list run
#: differed from one of them by 24 and 54.
ORDER_DEPENDENT = {"features": 0.08, "segments": 0.15}


def test_the_same_input_gives_the_same_outputs_per_event_and_per_list(stack_settings: Settings) -> None:
    per_event = outputs(stack_settings, micro_batch_ms=0)
    per_list = outputs(stack_settings, micro_batch_ms=50)
    assert per_event["profiles"], "the job produced profiles"
    assert per_event["segments"], "the rules produced segment changes"
    for name in COMPARED:
        if name in ORDER_DEPENDENT:
            differ = len(per_list[name] ^ per_event[name]) / len(per_list[name] | per_event[name])
            assert differ <= ORDER_DEPENDENT[name], (name, differ)
        else:
            assert per_list[name] == per_event[name], name


def test_no_python_call_keys_a_record(stack_settings: Settings) -> None:
    """The lists (by shard) and the internal routes to the trainer, the recommender and the experiment
    metrics are keyed in Java: the job graph has none of the Python operators PyFlink's ``key_by`` adds."""
    settings = replace(isolated(stack_settings), job=replace(stack_settings.job, parallelism=1))
    env = job_environment(settings, source_spec(settings, "earliest", None), None, None)
    plan = json.loads(env.get_execution_plan())
    names = [node["contents"] for node in plan["nodes"]]
    assert any("user-state" in name for name in names) and any("recommender" in name for name in names)
    assert not [name for name in names if "_stream_key_by_map_operator" in name]
    assert sum("route " in name for name in names) == 3

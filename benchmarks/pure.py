"""The pure-logic ceiling: the job's per-user core driven by the local runner, no Flink.

The same core as the job's user operator (``operators/user_core.py``, through ``jobs/local_runner.py``):
validation, then per user the stored values decoded, identity and consent, dedup and profile, features
with session closes, the user's part of the models, segment rules with their expiries, the user's
recommendation state, the values encoded again; wake-ups fire as the events' time passes them. The
trainer learns what the core sends it (snapshots go straight to the scorer) and the recommendation
server ranks the lists the core asks for, as their operators do in the job. What the loop reaches is
the most one Python worker could do; the gap to the job is Flink's, PyFlink's, Kafka's and Redis's.

Decoded values stay in the micro-batched operator's cache (``state/cache.py``) and are written back every
:data:`WRITE_BACK_EVERY` events, as the job does before each checkpoint (2 s at ~1,000 events/s);
``cached=False`` decodes and encodes per call, as the per-record operator does.

Left out: the output records' transport, and Redis (the writes are counted, not sent).
"""

from __future__ import annotations

import pickle
import statistics
import time
from collections.abc import Sequence
from typing import Any

from jobs.local_runner import LocalRunner, Table
from jobs.pipeline import local_core
from operators.events import Event
from operators.experiments.attribution import ExperimentState
from operators.models.training import ModelTrainer
from operators.recs.model import ItemModel
from operators.recs.serving import Published, RecList, RecommenderCore, RecRequest
from operators.user_core import TRAINING_ROUTE, StageProfile, StageSegmentChange, Step
from operators.validation import Limits, parse_event
from personalize.generator import GeneratedRecord
from personalize.settings import Settings
from state.cache import ValueCache

STAGES = ("parse", "user", "trainer", "recommender")
STATE_PARTS = ("profile", "features", "models", "rules", "recs", "consent", "published")
"""Keyed state of a user: the user operator's values and the recommender's map entry for the user (the
last published list; pickled, as its descriptor's ``PICKLED_BYTE_ARRAY`` stores it)."""
#: Events between two write-backs of the cache (the job writes back before every checkpoint).
WRITE_BACK_EVERY = 2000


def replay(records: Sequence[GeneratedRecord], settings: Settings, cached: bool = True) -> dict[str, Any]:
    """Events/s of the whole chain, microseconds per stage, and encoded keyed state bytes per user."""
    validation = settings.validation
    limits = Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)
    core = local_core(settings)
    core_config = core.settings
    trainer = ModelTrainer(core_config.models, lineage="bench") if core_config.models is not None else None
    recommender = RecommenderCore(core_config.recs) if core_config.recs is not None else None
    item_model = ItemModel()
    published: Table[Published] = Table()
    experiments: Table[ExperimentState] = Table()
    seconds = dict.fromkeys(STAGES, 0.0)
    counts = dict.fromkeys(("accepted", "segment_changes", "model_snapshots", "recommendation_lists"), 0)
    clock = time.perf_counter
    handled = 0.0
    """Time spent on the trainer and the recommender within the current runner call."""

    def carry_out(user: str, step: Step) -> None:
        nonlocal handled
        counts["accepted"] += sum(isinstance(write, StageProfile) for write in step.redis)
        counts["segment_changes"] += sum(isinstance(write, StageSegmentChange) for write in step.redis)
        for route, _receiver, message in step.sends:
            started = clock()
            if route == TRAINING_ROUTE:
                assert trainer is not None
                message.learn(trainer)
                snapshot = trainer.maybe_snapshot()
                if snapshot is not None:
                    counts["model_snapshots"] += 1
                    core.scorer.load(snapshot)
                stage = "trainer"
            else:
                recommend(message)
                stage = "recommender"
            elapsed = clock() - started
            seconds[stage] += elapsed
            handled += elapsed

    def recommend(request: RecRequest) -> None:
        """What the recommender operator does with a request (``jobs/adapters.py`` ``RecommenderFunction``)."""
        assert recommender is not None
        step = recommender.on_requests(item_model, [request], published, experiments)
        counts["recommendation_lists"] += sum(isinstance(output, RecList) for output in step.outputs)

    cache = ValueCache(settings.job.state_cache_users, float("inf")) if cached else None
    runner = LocalRunner(core, settings.job.max_out_of_orderness_ms, carry_out, cache, WRITE_BACK_EVERY)
    for record in records:
        t0 = clock()
        event = parse_event(record.value, record.ts, limits)
        t1 = clock()
        seconds["parse"] += t1 - t0
        if not isinstance(event, Event):
            continue
        handled = 0.0
        runner.event(event.user_key, event)
        seconds["user"] += clock() - t1 - handled
    total = sum(seconds.values())
    sizes_by_user = {user: {**runner.stored_bytes(user), **(
        {"published": len(pickle.dumps(tuple(published[user])))} if user in published else {})}
        for user in runner.cells}
    sizes = sorted(sum(parts.values()) for parts in sizes_by_user.values() if parts)
    by_part = {part: round(statistics.mean(parts.get(part, 0) for parts in sizes_by_user.values()))
               for part in STATE_PARTS}
    return {
        "events": len(records), **counts, "users": len(sizes), "wakeups": runner.woken, "cached": cached,
        "events_per_s": round(len(records) / total),
        "us_per_event": {stage: round(1e6 * spent / len(records), 1) for stage, spent in seconds.items()},
        "state_bytes": {"mean": round(statistics.mean(sizes)), "p95": sizes[int(0.95 * (len(sizes) - 1))],
                        "max": sizes[-1], "by_part_mean": by_part},
    }

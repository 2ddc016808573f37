"""Every output of the per-user core is byte for byte what it was before the hot-path work.

The core runs in the local runner (``jobs/local_runner.py``), as ``benchmarks/pure.py`` drives it: the
job's steps in the job's order, wake-ups included, with the trainer and the recommendation server
handling what the core sends them, over a fixed generated input. Each kind of output is hashed and
compared with ``tests/data/pure_outputs.json``: the hot paths of validation, profile, features, models,
rules, the state codecs and the core may change how, never what. State is compared decoded, so a
codec's byte layout may change but not what it keeps.

To re-record after a deliberate output change (say why in the commit)::

    .venv/bin/python tests/test_pure_outputs.py --write
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from dataclasses import is_dataclass, replace
from pathlib import Path
from typing import Any

from jobs.local_runner import LocalRunner, Table
from jobs.pipeline import local_core
from operators.events import Event
from operators.experiments.attribution import ExperimentState
from operators.models.training import ModelTrainer
from operators.recs.model import ItemModel
from operators.recs.serving import Forget, Published, RecommenderCore
from operators.user_core import (
    TRAINING_ROUTE,
    StageFeatures,
    StageModelScores,
    StageProfile,
    StageSegmentChange,
    Step,
)
from operators.validation import Limits, parse_event
from personalize import settings as settings_module
from personalize.generator import EventGenerator
from state.cache import ValueCache

GOLDEN = Path(__file__).parent / "data" / "pure_outputs.json"
EVENTS, SEED = 8000, 7


def outputs(cached: bool = False) -> dict[str, list[str]]:
    """Each kind of output of the core in the local runner, one line per output, in order.

    ``cached``: with the micro-batched operator's decoded-value cache, small enough to evict, written back
    every 500 events and lost every 1,700 (a restore from the checkpoint just taken): a value the core
    changed in place without storing it would show up as a different output."""
    settings = settings_module.load()
    records = list(EventGenerator(replace(settings.generator, events=EVENTS, seed=SEED)).records())
    validation = settings.validation
    limits = Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)
    core = local_core(settings)
    config = core.settings
    assert core.engine is not None and config.models is not None and config.recs is not None
    trainer, recommender = ModelTrainer(config.models, lineage="golden"), RecommenderCore(config.recs)
    item_model = ItemModel()
    published: Table[Published] = Table()
    experiments: Table[ExperimentState] = Table()
    out: dict[str, list[str]] = defaultdict(list)

    def carry_out(user: str, step: Step) -> None:
        out["wakeups"].append(f"{user} {step.wakeups}")
        for write in step.redis:
            match write:
                case StageProfile(update):
                    out["profile"].append(update.to_json().decode())
                case StageFeatures(vector):
                    out["vector"].append(repr(vector) + vector.to_json().decode())
                case StageModelScores():
                    out["model_scores"].append(repr(write))
                case StageSegmentChange(change):
                    out["segment_changes"].append(change.to_json(0).decode())
                case _:
                    out["redis_other"].append(repr(write))
        for record in [*step.records, *step.late]:
            if record.topic not in (config.topics["profiles"], config.topics["features"], config.topics["segments"]):
                out["records_other"].append(repr(record))
        for route, receiver, message in step.sends:
            if route == TRAINING_ROUTE:
                out["model_inputs"].append(repr(message))
                out["drift"].append(repr(message.learn(trainer)))
                snapshot = trainer.maybe_snapshot()
                if snapshot is not None:
                    core.scorer.load(snapshot)
                    out["snapshots"].append(str(snapshot.version))
            else:
                for output in recommender.on_requests(item_model, [message], published, experiments).outputs:
                    out["recs"].append(f"forget {receiver} {output.user_key}" if isinstance(output, Forget)
                                       else output.to_json(0).decode())

    cache = ValueCache(max_users=300, max_idle_s=float("inf")) if cached else None
    runner = LocalRunner(core, settings.job.max_out_of_orderness_ms, carry_out, cache, write_back_every=500)
    for index, record in enumerate(records):
        event = parse_event(record.value, record.ts, limits)
        out["parse"].append(repr(event))
        if isinstance(event, Event):
            runner.event(event.user_key, event)
        if cached and index % 1700 == 1699:
            runner.restore()
    for user_key, values in sorted(runner.users()):
        for part in ("profile", "features", "models", "rules", "recs", "consent"):
            decoded = values.get(part)
            if decoded is not None:
                out[f"state_{part}"].append(f"{user_key} {canonical(decoded)!r}")
    return out


def canonical(value: Any) -> Any:
    """``value`` with every dict's items sorted: some state dicts fill in set order, which varies by run."""
    if is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, canonical(vars(value)))
    if isinstance(value, dict):
        return sorted((repr(key), canonical(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        return [canonical(item) for item in value]
    return value


def digests(lines: dict[str, list[str]]) -> dict[str, Any]:
    return {kind: {"count": len(values), "sha256": hashlib.sha256("\n".join(values).encode()).hexdigest()}
            for kind, values in sorted(lines.items())}


def test_pure_outputs_are_unchanged() -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = digests(outputs())
    changed = sorted(kind for kind in expected.keys() | actual.keys() if expected.get(kind) != actual.get(kind))
    assert not changed, f"outputs changed: {changed}"


def test_the_decoded_value_cache_changes_no_output() -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = digests(outputs(cached=True))
    changed = sorted(kind for kind in expected.keys() | actual.keys() if expected.get(kind) != actual.get(kind))
    assert not changed, f"outputs changed with the cache: {changed}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        GOLDEN.write_text(json.dumps(digests(outputs()), indent=1) + "\n")
    elif sys.argv[1:2] == ["--dump"]:  # --dump FILE: every output line, to diff two checkouts
        Path(sys.argv[2]).write_text(json.dumps(outputs(), indent=0))
    else:
        print(json.dumps(digests(outputs()), indent=1))

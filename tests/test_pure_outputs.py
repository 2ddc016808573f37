"""Every per-event output of the pure user path is byte for byte what it was before the hot-path work.

The loop is ``benchmarks/pure.py``'s (validate, dedup + profile, features, user models and the trainer,
rules, recommendations) over a fixed generated input. Each kind of output is hashed and compared with
``tests/data/pure_outputs.json``, written from the code before the speed-ups: the hot paths of
validation, profile, features, models, rules and the state codecs may change how, never what.
State is compared decoded, so a codec's byte layout may change but not what it keeps.

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

from jobs.pipeline import feature_config, model_config, recommendation_config, rule_book
from operators.events import Event
from operators.features.operator import FeatureOperator
from operators.features.rfm import LocalPopulation
from operators.models.training import ModelScorer, ModelTrainer
from operators.models.user import UserModels, UserModelState
from operators.profile import ProfileOperator
from operators.recs.serving import Published, RecommendationServer, RecRequest
from operators.recs.user import UserRecState
from operators.rules.engine import RuleState, SegmentEngine
from operators.validation import Limits, parse_event
from personalize import settings as settings_module
from personalize.generator import EventGenerator
from state import codecs

GOLDEN = Path(__file__).parent / "data" / "pure_outputs.json"
EVENTS, SEED = 8000, 7
LIST_EVENTS = frozenset({"checkout_start", "remove_from_cart"})


def outputs() -> dict[str, list[str]]:
    """Each kind of output of the pure loop, one line per output, in order."""
    settings = settings_module.load()
    records = list(EventGenerator(replace(settings.generator, events=EVENTS, seed=SEED)).records())
    validation, job = settings.validation, settings.job
    limits = Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)
    profiles_op = ProfileOperator(job.dedup_window_ms, job.dedup_max_ids_per_user)
    features_op = FeatureOperator(feature_config(settings.features), LocalPopulation())
    book = rule_book(settings)
    assert book is not None
    engine = SegmentEngine(book.catalog().rule_set(book.compiler()))
    models = model_config(settings)
    assert models is not None
    user_models, trainer, scorer = UserModels(models), ModelTrainer(models, lineage="golden"), ModelScorer()
    recs_config = recommendation_config(settings)
    assert recs_config is not None
    server = RecommendationServer(recs_config)
    published: dict[str, Published] = {}
    states: dict[str, dict[str, bytes]] = {}
    out: dict[str, list[str]] = defaultdict(list)
    for record in records:
        event = parse_event(record.value, record.ts, limits)
        out["parse"].append(repr(event))
        if not isinstance(event, Event):
            continue
        state = states.setdefault(event.user_key, {})
        profile, update = profiles_op.process(
            codecs.decode_profile(state["profile"]) if "profile" in state else None, event)
        state["profile"] = codecs.encode_profile(profile)
        if update is None:
            out["profile"].append("duplicate")
            continue
        out["profile"].append(update.to_json().decode())
        features, vector = features_op.process(
            codecs.decode_features(state["features"]) if "features" in state else None, event)
        state["features"] = codecs.encode_features(features)
        decision = features.decision
        out["decision"].append(repr(sorted(decision.items())))
        out["vector"].append("" if vector is None else repr(vector) + vector.to_json().decode())
        model_state = codecs.decode_models(state["models"]) if "models" in state else UserModelState()
        inputs = user_models.purchase(model_state, event.ts) if event.type == "purchase" else []
        rescored = None
        if vector is not None:
            inputs += user_models.vector(model_state, vector, by_purchase=event.type == "purchase")
            rescored = user_models.score(model_state, vector, scorer)
        state["models"] = codecs.encode_models(model_state)
        decision["intent"] = model_state.intent
        out["model_inputs"].append(repr(inputs))
        out["rescored"].append(repr(rescored))
        for training_input in inputs:
            out["drift"].append(repr(training_input.learn(trainer)))
            snapshot = trainer.maybe_snapshot()
            if snapshot is not None:
                scorer.load(snapshot)
                out["snapshots"].append(str(snapshot.version))
        rules = codecs.decode_rules(state["rules"]) if "rules" in state else RuleState()
        changes = engine.observe(rules, event, profile.first_seen, decision)
        out["segment_changes"].append(repr([change.to_json(0).decode() for change in changes]))
        segments_now = tuple(sorted(rules.members))
        state["rules"] = codecs.encode_rules(rules)
        if event.type in recs_config.event_weights or event.type in LIST_EVENTS:
            user = codecs.decode_recs(state["recs"]) if "recs" in state else UserRecState()
            interaction = user.remember(event, recs_config, "", segments_now)
            state["recs"] = codecs.encode_recs(user)
            recs = server.handle(RecRequest(event.user_key, event.event_id, event.ts, interaction, user,
                                            segments_now), published.get(event.user_key))
            if recs is not None:
                published[event.user_key] = Published(recs.seq, tuple(recs.ranking.item_ids()))
                out["recs"].append(recs.to_json(0).decode())
    for user_key in sorted(states):
        state = states[user_key]
        for part in ("profile", "features", "models", "rules", "recs"):
            if part in state:
                decoded = getattr(codecs, f"decode_{part}")(state[part])
                if part == "models":  # pending examples were dicts when the golden file was recorded, now tuples
                    decoded.pending.examples = [(ts, list(x.values()) if isinstance(x, dict) else list(x))
                                                for ts, x in decoded.pending.examples]
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


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        GOLDEN.write_text(json.dumps(digests(outputs()), indent=1) + "\n")
    elif sys.argv[1:2] == ["--dump"]:  # --dump FILE: every output line, to diff two checkouts
        Path(sys.argv[2]).write_text(json.dumps(outputs(), indent=0))
    else:
        print(json.dumps(digests(outputs()), indent=1))

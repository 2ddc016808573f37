"""The pure-logic ceiling: the job's per-event operators in a plain Python loop, no Flink.

Same order and state handling as the keyed user operator (``jobs/adapters.py``): validate, then
per user decode state, dedup + profile, features, online models (the user's part, and the trainer
learning what the user part sends it, with snapshots handed straight to the scorer), segment rules,
the user's recommendation state and the recommender, encode state. What the loop reaches is the
most one Python worker could do; the gap to the job is Flink's, PyFlink's, Kafka's and Redis's.

Left out: timers (session closes, intent deadlines, retention, rule expiries fire in the job when the
watermark passes them), late-event routing and the output records' JSON. Each stage switches off
with its ``enabled`` setting, as in the job.
"""

from __future__ import annotations

import pickle
import statistics
import time
from collections.abc import Sequence
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
from personalize.generator import GeneratedRecord
from personalize.settings import Settings
from state.codecs import (
    decode_features,
    decode_models,
    decode_profile,
    decode_recs,
    decode_rules,
    encode_features,
    encode_models,
    encode_profile,
    encode_recs,
    encode_rules,
)

STAGES = ("parse", "profile", "features", "models", "rules", "recs")
STATE_PARTS = ("profile", "features", "models", "rules", "recs", "published")
"""Keyed state of a user: the user operator's five values and the recommender's map entry for the user
(the last published list; pickled, as its descriptor's ``PICKLED_BYTE_ARRAY`` stores it)."""
#: Events that change a user's list without teaching the model (as in ``jobs/adapters.py``).
LIST_EVENTS = frozenset({"checkout_start", "remove_from_cart"})


def replay(records: Sequence[GeneratedRecord], settings: Settings) -> dict[str, Any]:
    """Events/s of the whole chain, microseconds per stage, and encoded keyed state bytes per user."""
    validation, job = settings.validation, settings.job
    limits = Limits(validation.max_payload_bytes, validation.min_event_time_ms, validation.max_future_skew_ms)
    profiles_op = ProfileOperator(job.dedup_window_ms, job.dedup_max_ids_per_user)
    features_op = FeatureOperator(feature_config(settings.features), LocalPopulation())
    book = rule_book(settings)
    engine = SegmentEngine(book.catalog().rule_set(book.compiler())) if book is not None else None
    models_config = model_config(settings)
    user_models = UserModels(models_config) if models_config is not None else None
    trainer = ModelTrainer(models_config, lineage="bench") if models_config is not None else None
    scorer = ModelScorer()
    recs_config = recommendation_config(settings)
    server = RecommendationServer(recs_config) if recs_config is not None else None
    published: dict[str, Published] = {}
    states: dict[str, dict[str, bytes]] = {}
    seconds = dict.fromkeys(STAGES, 0.0)
    changes = accepted = snapshots = rec_lists = 0
    clock = time.perf_counter
    for record in records:
        t0 = clock()
        event = parse_event(record.value, record.ts, limits)
        t1 = clock()
        seconds["parse"] += t1 - t0
        if not isinstance(event, Event):
            continue
        state = states.setdefault(event.user_key, {})
        profile, update = profiles_op.process(decode_profile(state["profile"]) if "profile" in state else None, event)
        state["profile"] = encode_profile(profile)
        t2 = clock()
        seconds["profile"] += t2 - t1
        if update is None:
            continue
        accepted += 1
        decision: dict[str, Any] = {}
        vector = None
        if settings.features.enabled:
            features, vector = features_op.process(
                decode_features(state["features"]) if "features" in state else None, event)
            state["features"] = encode_features(features)
            decision = features.decision
        t3 = clock()
        seconds["features"] += t3 - t2
        if user_models is not None and trainer is not None:
            model_state = decode_models(state["models"]) if "models" in state else UserModelState()
            inputs = user_models.purchase(model_state, event.ts) if event.type == "purchase" else []
            if vector is not None:
                inputs += user_models.vector(model_state, vector, by_purchase=event.type == "purchase")
                user_models.score(model_state, vector, scorer)
            state["models"] = encode_models(model_state)
            decision["intent"] = model_state.intent
            for training_input in inputs:  # the trainer (one operator in the job) learns here too
                training_input.learn(trainer)
                snapshot = trainer.maybe_snapshot()
                if snapshot is not None:
                    snapshots += 1
                    scorer.load(snapshot)
        t4 = clock()
        seconds["models"] += t4 - t3
        segments_now: tuple[str, ...] = ()
        if engine is not None:
            rules = decode_rules(state["rules"]) if "rules" in state else RuleState()
            changes += len(engine.observe(rules, event, profile.first_seen, decision))
            segments_now = tuple(sorted(rules.members))
            state["rules"] = encode_rules(rules)
        t5 = clock()
        seconds["rules"] += t5 - t4
        if server is not None and recs_config is not None and (
                event.type in recs_config.event_weights or event.type in LIST_EVENTS):
            user = decode_recs(state["recs"]) if "recs" in state else UserRecState()
            interaction = user.remember(event, recs_config, "", segments_now)
            state["recs"] = encode_recs(user)
            recs = server.handle(RecRequest(event.user_key, event.event_id, event.ts, interaction, user,
                                            segments_now), published.get(event.user_key))
            if recs is not None:
                rec_lists += 1
                published[event.user_key] = Published(recs.seq, tuple(recs.ranking.item_ids()))
                state["published"] = pickle.dumps((recs.seq, tuple(recs.ranking.item_ids())))
        seconds["recs"] += clock() - t5
    total = sum(seconds.values())
    sizes = sorted(sum(len(blob) for blob in state.values()) for state in states.values())
    by_part = {part: round(statistics.mean(len(state.get(part, b"")) for state in states.values()))
               for part in STATE_PARTS}
    return {
        "events": len(records), "accepted": accepted, "users": len(states), "segment_changes": changes,
        "model_snapshots": snapshots, "recommendation_lists": rec_lists,
        "events_per_s": round(len(records) / total),
        "us_per_event": {stage: round(1e6 * spent / len(records), 1) for stage, spent in seconds.items()},
        "state_bytes": {"mean": round(statistics.mean(sizes)), "p95": sizes[int(0.95 * (len(sizes) - 1))],
                        "max": sizes[-1], "by_part_mean": by_part},
    }

"""Micro-benchmark of the pure per-event work: validation, profile, features, state codecs.

Run: ``.venv/bin/python -m benchmarks.bench_features [--events N] [--json OUT]``. Reports
microseconds per event for each stage and the encoded state bytes per active user.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from benchmarks.common import run_cli
from operators.events import Event
from operators.features.config import FeatureConfig
from operators.features.operator import FeatureOperator, UserFeatures
from operators.features.rfm import LocalPopulation
from operators.profile import ProfileOperator
from operators.validation import parse_event
from personalize import settings as settings_module
from personalize.generator import EventGenerator
from state.codecs import decode_features, decode_profile, encode_features, encode_profile


def run(events: int) -> dict[str, object]:
    settings = settings_module.load()
    records = list(EventGenerator(replace(settings.generator, events=events)).records())
    started = time.perf_counter()
    parsed = [parse_event(record.value, record.ts) for record in records]
    parse_s = time.perf_counter() - started
    valid = [event for event in parsed if isinstance(event, Event)]

    profile_operator, feature_operator = ProfileOperator(), FeatureOperator(FeatureConfig(), LocalPopulation())
    profiles: dict[str, bytes] = {}
    features: dict[str, bytes] = {}
    profile_s = features_s = 0.0
    emitted = 0
    for event in valid:
        t0 = time.perf_counter()
        stored = profiles.get(event.user_key)
        profile, update = profile_operator.process(decode_profile(stored) if stored else None, event)
        profiles[event.user_key] = encode_profile(profile)
        t1 = time.perf_counter()
        if update is not None:
            stored_features = features.get(event.user_key)
            state: UserFeatures | None = decode_features(stored_features) if stored_features else None
            state, vector = feature_operator.process(state, event)
            features[event.user_key] = encode_features(state)
            emitted += vector is not None
        features_s += time.perf_counter() - t1
        profile_s += t1 - t0
    feature_sizes = [len(blob) for blob in features.values()]
    profile_sizes = [len(blob) for blob in profiles.values()]
    return {
        "benchmark": "pure-features", "events": len(records), "valid_events": len(valid),
        "users": len(profiles), "vectors_emitted": emitted,
        "us_per_event": {
            "parse_validate": round(1e6 * parse_s / len(records), 2),
            "profile_with_codec": round(1e6 * profile_s / len(valid), 2),
            "features_with_codec": round(1e6 * features_s / len(valid), 2),
        },
        "state_bytes_per_user": {
            "profile_mean": round(statistics.mean(profile_sizes)),
            "features_mean": round(statistics.mean(feature_sizes)),
            "features_p95": sorted(feature_sizes)[int(0.95 * len(feature_sizes))], "features_max": max(feature_sizes),
        },
    }


def main() -> None:
    run_cli(__doc__, 100_000, "features.json", lambda args: run(args.events))


if __name__ == "__main__":
    main()

"""Seeded quality of the segment models on the generator's planted personas, and the evaluate CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from personalize import evaluate_segments
from personalize.evaluate_segments import Timeline, feature_timeline, model_config, run_models, summarize
from personalize.settings import Settings, load

EVENTS, USERS = 30_000, 200


@pytest.fixture(scope="module")
def settings() -> Settings:
    loaded = load(environ={})
    return replace(loaded, generator=replace(loaded.generator, events=EVENTS, users=USERS))


@pytest.fixture(scope="module")
def timeline(settings: Settings) -> Timeline:
    return feature_timeline(settings)


def warmup_ts(timeline: Timeline) -> int:
    return timeline.start_ts + int(evaluate_segments.DEFAULT_WARMUP * (timeline.end_ts - timeline.start_ts))


@pytest.fixture(scope="module")
def report(settings: Settings, timeline: Timeline) -> dict[str, Any]:
    return summarize(timeline, run_models(timeline, model_config(settings.models), warmup_ts(timeline)))


def test_clusters_recover_the_planted_personas(report: dict[str, Any]) -> None:
    assert report["clusterer"] == "kmeans"
    assert report["users_scored"] > 0.8 * USERS
    assert report["ari"] >= evaluate_segments.TARGET_ARI
    assert report["ari_with_hysteresis"] >= evaluate_segments.TARGET_ARI
    assert report["clusters_used"] == 5
    assert report["switches"]["with_hysteresis"] < report["switches"]["cluster"]


def test_purchase_intent_ranks_buyers_first(report: dict[str, Any]) -> None:
    intent = report["intent"]
    assert intent["roc_auc"] >= evaluate_segments.TARGET_AUC
    assert intent["log_loss"] < 0.45
    assert intent["examples"] > 5_000 and 0.1 < intent["positive_share"] < 0.6


def test_every_cluster_is_described(report: dict[str, Any]) -> None:
    clusters = report["clusters"]
    assert len(clusters) == 5 and all(cluster["text"] for cluster in clusters)
    assert sum(cluster["share"] for cluster in clusters) == pytest.approx(1.0, abs=1e-3)


def test_replays_are_deterministic(settings: Settings, timeline: Timeline) -> None:
    first_days = replace(timeline, steps=timeline.steps[: len(timeline.steps) // 3])
    first, again = (summarize(first_days, run_models(first_days, model_config(settings.models), warmup_ts(timeline)))
                    for _ in range(2))
    assert first == {**again, "cost_us": first["cost_us"]}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate_segments.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_cli_writes_the_report_and_says_whether_targets_were_met(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "segments.json"
    code = evaluate_segments.run(parse("--events", "3000", "--users", "30", "--clusterer", "kmeans",
                                       "--json", str(out)), settings)
    report = json.loads(out.read_text())
    met = report["default"]["ari"] >= 0.7 and report["default"]["intent"]["roc_auc"] >= 0.8
    assert code == (evaluate_segments.EXIT_OK if met else evaluate_segments.EXIT_FAILURE)
    assert [row["clusterer"] for row in report["comparison"]] == ["kmeans"]
    assert {"ari", "intent", "cost_us", "clusters", "drifts", "snapshot_model_bytes"} <= set(report["default"])


def test_bad_sizes_are_usage_errors(settings: Settings) -> None:
    assert evaluate_segments.run(parse("--events", "0"), settings) == evaluate_segments.EXIT_USAGE

"""Seeded quality of the segment models on the generator's planted personas, and the evaluate CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from personalize import evaluate_segments
from personalize.evaluate_segments import (
    Timeline,
    feature_timeline,
    model_config,
    run_models,
    summarize,
    unscored_report,
)
from personalize.generator import EventGenerator
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
    assert report["clusterer"] == "sampled_kmeans"
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
    assert [row["clusterer"] for row in report["comparison"]] == ["sampled_kmeans", "kmeans"]
    assert {"ari", "intent", "cost_us", "clusters", "drifts", "snapshot_model_bytes"} <= set(report["default"])


def test_bad_sizes_are_usage_errors(settings: Settings) -> None:
    assert evaluate_segments.run(parse("--events", "0"), settings) == evaluate_segments.EXIT_USAGE


def test_unscored_users_are_reported_and_count_as_their_own_cluster() -> None:
    personas = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "c1": "c", "c2": "c"}
    perfect = {"a1": 0, "a2": 0, "b1": 1, "b2": 1}
    report = unscored_report(personas, perfect, set(personas), {"a1", "c1"})
    assert report == {"unscored": {"users": 2, "share": 0.3333, "before_warmup": 1},
                      "ari_with_unscored": 1.0}  # all c: one cluster
    mixed = unscored_report(personas, {"a1": 0, "b1": 1, "c1": 2, "c2": 2}, set(personas))
    assert mixed["unscored"]["users"] == 2 and mixed["ari_with_unscored"] < 1.0
    assert unscored_report(personas, perfect, {"a1", "b1"}) == {
        "unscored": {"users": 0, "share": 0.0, "before_warmup": 0},
        "ari_with_unscored": 1.0}  # users without events are not judged
    assert unscored_report(personas, {}, set())["unscored"] == {"users": 0, "share": 0.0, "before_warmup": 0}


def test_the_held_out_mix_is_judged_against_its_own_personas(settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "segments.json"
    evaluate_segments.run(parse("--events", "3000", "--users", "30", "--personas", "heldout",
                                "--clusterer", "kmeans", "--json", str(out)), settings)
    report = json.loads(out.read_text())
    assert report["source"]["generator"]["personas"] == "heldout"
    assert report["default"]["users_with_events"] > 20


def test_evaluate_on_an_events_file_with_labels(settings: Settings, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    generator = EventGenerator(replace(settings.generator, events=3000, users=30))
    records = list(generator.records())
    events, labels, out = tmp_path / "events.jsonl", tmp_path / "labels.csv", tmp_path / "report.json"
    events.write_bytes(b"\n".join(r.value for r in records) + b"\n{oops\n")
    labels.write_text("user_id,persona\n" + "".join(f"{u},{p}\n" for u, p in generator.personas().items()))
    code = evaluate_segments.run(parse("--events-file", str(events), "--labels", str(labels),
                                       "--clusterer", "kmeans", "--json", str(out)), settings)
    assert code in (evaluate_segments.EXIT_OK, evaluate_segments.EXIT_FAILURE)
    report = json.loads(out.read_text())
    source, default = report["source"], report["default"]
    malformed = sum(r.kind == "malformed" for r in records)
    assert source["lines"] == len(records) + 1 and source["invalid_lines"] == malformed + 1
    assert source["invalid_by_reason"]["invalid_json"] >= 1
    assert default["users_labelled"] == 30
    assert default["users_scored"] + default["unscored"]["users"] == default["users_with_events"]
    assert f"{malformed + 1} invalid" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [("--events-file", "missing.jsonl", "--labels", "labels.csv"),
                                  ("--events-file", "events.jsonl", "--labels", "missing.csv"),
                                  ("--events-file", "events.jsonl")])
def test_missing_inputs_are_one_line_usage_errors(settings: Settings, tmp_path: Path, argv: tuple[str, ...],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "events.jsonl").write_text("")
    (tmp_path / "labels.csv").write_text("user_id,persona\nu1,a\n")
    args = [str(tmp_path / arg) if arg.endswith((".jsonl", ".csv")) else arg for arg in argv]
    assert evaluate_segments.run(parse(*args), settings) == evaluate_segments.EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith("personalize evaluate segments: ") and error.count("\n") == 1


def test_an_unwritable_report_is_one_line_and_a_failure(settings: Settings, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = evaluate_segments.run(parse("--events", "2000", "--users", "20", "--clusterer", "kmeans",
                                       "--json", str(tmp_path / "missing" / "report.json")), settings)
    assert code == evaluate_segments.EXIT_FAILURE
    assert capsys.readouterr().err.startswith("personalize evaluate segments: cannot write ")


def test_a_file_without_valid_events_is_a_usage_error(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").write_text("not json\n")
    (tmp_path / "labels.json").write_text('{"u1": "a"}')
    assert evaluate_segments.run(parse("--events-file", str(tmp_path / "events.jsonl"),
                                       "--labels", str(tmp_path / "labels.json")), settings) == \
        evaluate_segments.EXIT_USAGE

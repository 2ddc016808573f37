"""Micro-benchmark of segment rule evaluation, and how its cost grows with the number of rules.

Run: ``.venv/bin/python -m benchmarks.bench_rules [--events N] [--json OUT]``. Replays generated
events through the pure rule engine (with the state codec, as the job does) for the default rule
set and for 10, 100 and 1000 rules, reporting microseconds per event, rule evaluations per second
and the encoded rule state per user.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from typing import Any

import yaml

from benchmarks.common import run_cli
from operators.events import BEHAVIOR_TYPES, Event
from operators.features.operator import DECISION_FIELDS
from operators.rules.catalog import RuleBook
from operators.rules.engine import RuleState, SegmentEngine
from operators.validation import parse_event
from personalize import settings as settings_module
from personalize.generator import EventGenerator
from personalize.paths import CONFIG_DIR
from state.codecs import decode_rules, encode_rules

DEFAULT_RULES = yaml.safe_load((CONFIG_DIR / "rules.yaml").read_text())["segments"]


def synthetic_rules(count: int, categories: tuple[str, ...]) -> list[dict[str, Any]]:
    """``count`` distinct rules in the shapes marketers write: counts (per item, per category), sequences."""
    types = sorted(BEHAVIOR_TYPES)
    rules: list[dict[str, Any]] = []
    for n in range(count):
        event_type, category = types[n % len(types)], categories[(n // len(types)) % len(categories)]
        within = ("1h", "24h", "7d", "30d")[n % 4]
        shape = n % 4
        if shape == 0:
            when: dict[str, Any] = {"count": {"event": event_type, "within": within, "at_least": 1 + n % 5}}
        elif shape == 1:
            when = {"count": {"event": "product_view", "category": category, "within": within, "at_least": 2 + n % 3}}
        elif shape == 2:
            when = {"all": [{"count": {"event": event_type, "within": within, "at_least": 1}},
                            {"not": {"count": {"event": "purchase", "within": within, "at_least": 1 + n % 2}}}]}
        else:
            when = {"sequence": {"steps": [{"event": "add_to_cart"},
                                           {"absent": ["purchase"], "within": ("30m", "1h", "2h")[n % 3]},
                                           {"event": event_type, "within": within}],
                                 "hold": "24h", "cancel_on": ["purchase"]}}
        rules.append({"id": f"rule-{n}", "version": 1, "priority": n % 10, "when": when,
                      **({"group": f"group-{n % 5}"} if n % 3 == 0 else {})})
    return rules


def replay(events: list[Event], definitions: list[dict[str, Any]]) -> dict[str, Any]:
    book = RuleBook(tuple(definitions), DECISION_FIELDS)
    engine = SegmentEngine(book.catalog().rule_set(book.compiler()))
    states: dict[str, bytes] = {}
    first_seen: dict[str, int] = {}
    changes = 0
    started = time.perf_counter()
    for event in events:
        stored = states.get(event.user_key)
        state = decode_rules(stored) if stored else RuleState()
        first = first_seen.setdefault(event.user_key, event.ts)
        changes += len(engine.observe(state, event, first, {}))
        states[event.user_key] = encode_rules(state)
    seconds = time.perf_counter() - started
    sizes = [len(blob) for blob in states.values()]
    return {
        "rules": len(definitions), "us_per_event": round(1e6 * seconds / len(events), 1),
        "events_per_s": round(len(events) / seconds),
        "rule_evaluations_per_s": round(len(events) * len(definitions) / seconds),
        "changes": changes, "state_bytes_mean": round(statistics.mean(sizes)), "state_bytes_max": max(sizes),
    }


def run(events: int) -> dict[str, Any]:
    settings = settings_module.load()
    generator = replace(settings.generator, events=events)
    records = EventGenerator(generator).records()
    parsed = [parse_event(record.value, record.ts) for record in records]
    valid = [event for event in parsed if isinstance(event, Event)]
    return {
        "benchmark": "pure-rules", "events": len(valid),
        "default_rules": replay(valid, DEFAULT_RULES),
        "scaling": [replay(valid, synthetic_rules(count, generator.categories)) for count in (10, 100, 1000)],
    }


def main() -> None:
    run_cli(__doc__, 50_000, "rules.json", lambda args: run(args.events))


if __name__ == "__main__":
    main()

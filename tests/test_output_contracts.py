"""The output contracts (config/schemas/, docs/contracts.md) hold for what the job writes: records built
by the pure operators, and every record of a demo run on the test stack.

The schemas are open (consumers must ignore fields they do not know, docs/contracts.md), so the tests
also refuse any top-level field a schema does not document: a new field lands in its schema first.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from operators.deadletter import dead_letter, late_record
from operators.events import Event
from operators.features.operator import FeatureVector
from operators.privacy.erasure import ErasureConfirmation
from operators.privacy.identity import Handover, merge_record
from operators.privacy.pii import PiiHasher, Redactor
from operators.profile import ProfileUpdate
from operators.recs.recommender import Candidate, Ranking
from operators.recs.serving import RecList
from operators.rules.engine import SegmentChange
from operators.validation import Rejection
from personalize import settings as settings_module
from personalize.kafka_tools import read_topic
from personalize.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[1] / "config" / "schemas"
#: Output topic role (``kafka.topics.<role>``) -> its contract, named after the default topic name.
CONTRACTS = {"profiles": "users.profiles", "features": "users.features", "segments": "segments.changes",
             "recommendations": "recommendations.candidates", "deadletter": "events.deadletter",
             "late": "events.late", "drift": "models.drift", "merges": "identity.merges",
             "erasures": "privacy.erasures", "experiments": "experiments.metrics"}
#: Written and read only by the job (signed records); no contract for other readers.
INTERNAL = {"models", "handover"}

EVENT = Event(event_id="e1", type="product_view", user_key="u1", user_id="u1", anonymous_id="", ts=1_767_225_600_000,
              item_id="i1", category="books", price=0.0, quantity=1, session_id="s1", attributes='{"context":{}}')


@cache
def validator(contract: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{contract}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def check(contract: str, value: bytes) -> dict[str, Any]:
    """Validate one record value against its contract; every top-level field must be documented."""
    record = json.loads(value)
    checker = validator(contract)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in checker.iter_errors(record)]
    assert not errors, (contract, errors, record)
    undocumented = record.keys() - checker.schema["properties"].keys()
    assert not undocumented, (contract, sorted(undocumented))
    return record


def test_every_output_topic_has_a_contract_or_is_internal() -> None:
    topics = settings_module.load().kafka.topics
    roles = {field.name for field in dataclasses.fields(topics)}
    outputs = {role for role in roles if getattr(topics, role) in topics.outputs()}
    assert outputs == CONTRACTS.keys() | INTERNAL
    assert {role: getattr(topics, role).name for role in CONTRACTS} == CONTRACTS
    assert sorted(path.name for path in SCHEMAS.iterdir()) == sorted(
        f"{c}.schema.json" for c in CONTRACTS.values())


def test_records_of_the_pure_operators_match_their_contracts() -> None:
    check("users.profiles", ProfileUpdate("u1", 3, {"product_view": 3}, 1, 2, "e1", "product_view", 2).to_json())
    check("users.features", FeatureVector("u1", 2, 5, {"sessions_30d": 1, "top_category": "books"}).to_json())
    check("segments.changes", SegmentChange("u1", 1, "browsers", "enter",
                                            {"kind": "event", "event": {"id": "e1", "type": "page_view"},
                                             "rule": "browsers", "version": 1},
                                            (), ("browsers",), 5).to_json(6))
    check("segments.changes", SegmentChange("u1", 2, "browsers", "exit", {"kind": "expiry", "rule": "browsers",
                                                                          "version": 1},
                                            ("browsers",), (), 7).to_json(8, ("recs-v1", "control")))
    ranking = Ranking([Candidate("i2", 0.5, {"covisit": 0.3, "popular": 0.2})])
    check("recommendations.candidates", RecList("u1", 1, "e1", 5, ranking).to_json(6))
    check("recommendations.candidates", RecList("u1", 2, "e2", 6, Ranking(suppressed="checkout")).to_json(7))
    check("recommendations.candidates", RecList("u1", 3, "e3", 7, ranking, "recs-v1", "variant").to_json(8))
    check("events.late", late_record(EVENT))
    check("privacy.erasures", ErasureConfirmation("abc", "user_request", 5, 1, ("profile-v1",), 6,
                                                  ("users.profiles",), 0).to_json())
    identify = EVENT._replace(type="identify", anonymous_id="a1")
    check("identity.merges", merge_record(Handover("anon:a1", "u1", identify, {}), ("profile",))[1])


def test_drift_record_matches_its_contract() -> None:
    from operators.models.drift import DriftEvent  # imports River

    check("models.drift", DriftEvent("intent", "log_loss", "adwin", 3, 5).to_json())


@pytest.mark.parametrize("payload", [
    b'{"event_id": "e1", "user_id": "u1", "traits": {"email": "a@b.c"}}',  # redacted JSON object
    b"{not json", b"[1, 2]", b"\xff\xfe", b"", None, b'{"a": "' + b"x" * 70_000 + b'"}',
])
@pytest.mark.parametrize("redactor", [None, Redactor(), Redactor(PiiHasher(b"k" * 32))], ids=["plain", "mask", "hash"])
def test_dead_letters_match_their_contract(payload: bytes | None, redactor: Redactor | None) -> None:
    _, value = dead_letter(Rejection("invalid_json", "Expecting value"), payload, "events.behavior", 2, 7, 1)
    record = check("events.deadletter", value if redactor is None else redactor.dead_letter(value))
    assert redactor is not None or "payload_dropped" not in record


@pytest.mark.integration
def test_every_record_of_a_demo_run_matches_its_contract(demo_settings: Settings) -> None:
    topics = demo_settings.kafka.topics
    seen = {}
    for role, contract in CONTRACTS.items():
        topic = getattr(topics, role)
        records = list(read_topic(demo_settings.kafka.bootstrap_servers, topic.name, topic.partitions,
                                  idle_timeout_s=1.0))
        for record in records:
            assert record.value is not None
            check(contract, record.value)
        seen[contract] = len(records)
    assert all(seen[c] > 0 for c in ("users.profiles", "users.features", "segments.changes",
                                     "recommendations.candidates", "events.deadletter")), seen

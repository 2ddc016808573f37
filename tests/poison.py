"""A seeded fuzzer of malformed event payloads, for the poison-input test.

Every payload it returns is rejected by the validator (the fuzzer checks, and retries the rare
mutation that happens to stay valid), so a test can demand that each one reaches the dead-letter
topic. The mutations aim at what breaks parsers and the code behind them: cut and random bytes,
deep nesting, huge payloads, wrong types and ranges, NaN, lone UTF-16 surrogates, BOMs.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from operators.validation import Limits, Rejection, parse_event
from personalize.generator import GeneratedRecord

WRONG_VALUES: tuple[Any, ...] = (None, True, -1, 0, 2**70, -1e308, 1.5, "", "x" * 300, [], [1, 2], {}, {"a": None},
                                 "\ud800", "\udfff\ud800", "2026-13-45T99:99:99Z", "\u0000")
SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")
FIELDS = ("event_id", "type", "user_id", "anonymous_id", "ts", "item_id", "category", "price", "quantity",
          "session_id", "context", "properties", "traits", "consent", "query", "order_id", "schema_version")


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _cut(doc: dict[str, Any], rng: random.Random) -> bytes:
    text = _dumps(doc)
    return text[:rng.randrange(0, len(text) - 1)]


def _random_bytes(doc: dict[str, Any], rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))


def _flip_bytes(doc: dict[str, Any], rng: random.Random) -> bytes:
    data = bytearray(_dumps(doc))
    for _ in range(rng.randrange(1, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _wrong_field(doc: dict[str, Any], rng: random.Random) -> bytes:
    return _dumps({**doc, rng.choice(FIELDS): rng.choice(WRONG_VALUES)})


def _drop_required(doc: dict[str, Any], rng: random.Random) -> bytes:
    dropped = rng.choice((("event_id",), ("type",), ("ts",), ("user_id", "anonymous_id")))
    return _dumps({k: v for k, v in doc.items() if k not in dropped})


def _deep(doc: dict[str, Any], rng: random.Random) -> bytes:
    depth = rng.randrange(1_000, 30_000)  # within the size limit: the parser must cope
    return _dumps({**doc, "properties": None})[:-1] + b',"properties":' + b"[" * depth + b"]" * depth + b"}"


def _huge(doc: dict[str, Any], rng: random.Random) -> bytes:
    return _dumps({**doc, "properties": {"blob": "y" * rng.randrange(65_536, 80_000)}})


def _not_object(doc: dict[str, Any], rng: random.Random) -> bytes:
    return _dumps(rng.choice(([doc], "event", 42, None, True, [])))


def _constants(doc: dict[str, Any], rng: random.Random) -> bytes:
    return _dumps({**doc, "price": 0})[:-1] + rng.choice((b',"price":NaN}', b',"price":Infinity}', b',"ts":-Infinity}'))


def _bom_or_empty(doc: dict[str, Any], rng: random.Random) -> bytes:
    return rng.choice((b"", b"\xef\xbb\xbf" + _dumps(doc), b"\xff\xfe" + _dumps(doc).decode().encode("utf-16-le"),
                       b" " * rng.randrange(1, 10)))


def _surrogates(doc: dict[str, Any], rng: random.Random) -> bytes:
    """Lone surrogates are legal JSON escapes but not Unicode text: nothing can encode them as UTF-8."""
    field = rng.choice(("user_id", "event_id", "item_id", "session_id", "category"))
    return _dumps({**doc, field: "u" + rng.choice(SURROGATES) + str(rng.randrange(10**6))})


#: Mutations and their weights (huge payloads are few: they cost the broker most).
MUTATIONS: dict[Callable[[dict[str, Any], random.Random], bytes], float] = {
    _cut: 3, _random_bytes: 2, _flip_bytes: 3, _wrong_field: 3, _drop_required: 2, _deep: 1, _huge: 0.2,
    _not_object: 1, _constants: 1, _bom_or_empty: 1, _surrogates: 1}


def poison(valid: list[GeneratedRecord], count: int, seed: int, limits: Limits) -> Iterator[GeneratedRecord]:
    """``count`` malformed records, each modelled on a random valid one (its topic and Kafka timestamp)."""
    rng = random.Random(seed)
    made = misses = 0
    while made < count:
        template = rng.choice(valid)
        mutation = rng.choices(list(MUTATIONS), weights=list(MUTATIONS.values()))[0]
        value = mutation(json.loads(template.value), rng)
        if not isinstance(parse_event(value, template.ts, limits), Rejection):
            misses += 1
            assert misses < 1000, f"{mutation.__name__} keeps producing valid events"
        else:
            made += 1
            key = template.key if rng.random() < 0.8 else None
            yield replace(template, key=key, value=value, kind="malformed")

"""Versioned binary codecs for keyed state: explicit, compact, and safe to evolve.

Layout of an encoded :class:`~operators.profile.UserProfile`::

    byte 0      codec version (1)
    bytes 1..   JSON header {"c": counts, "f": first_seen, "l": last_seen, "s": seq, "n": ids}
    then        n uint32 id fingerprints, n uint32 ages in seconds before last_seen

A decoder refuses unknown versions loudly: silently misreading state is worse than failing.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Any

import orjson

from operators.dedup import RecentIds
from operators.experiments.assignment import Assignment
from operators.experiments.attribution import Counts, ExperimentState, Exposure
from operators.experiments.config import Experiment, parse_experiment
from operators.features.affinity import CategoryAffinity
from operators.features.operator import EMITTED_FIELDS, UserFeatures
from operators.features.rfm import PurchaseHistory
from operators.features.sessions import Session, SessionTracker
from operators.features.windows import SlidingCount
from operators.jsontext import compact_json
from operators.models.inputs import BEHAVIOUR_FEATURES, HALF_MAX, INTENT_FEATURES
from operators.models.intent import PendingExamples
from operators.models.membership import Membership as ClusterMembership
from operators.models.user import UserModelState
from operators.privacy.consent import ConsentState
from operators.privacy.identity import IdentityState
from operators.profile import UserProfile
from operators.recs.user import UserRecState
from operators.rules.engine import Membership, RuleState
from operators.rules.signals import SignalLog

PROFILE_CODEC_VERSION = 2
#: Version 1 (still read) kept the recent ids' ages in whole seconds, so a value read back differed from
#: the one kept in memory (the user operator keeps decoded values between calls, ``state/cache.py``).
#: Version 2 keeps milliseconds, exactly: uint32, or uint64 (header ``"w": 8``) when an age passes 49 days.
_AGE_UNIT_MS = {1: 1000, 2: 1}
_MAX_AGE = 2**32 - 1
_MAX_WIDE_AGE = 2**64 - 1


class CodecError(ValueError):
    """Stored state cannot be decoded by this version of the job."""


def encode_profile(profile: UserProfile) -> bytes:
    seen, last_seen = profile.recent.seen, profile.last_seen
    fields: dict[str, Any] = {"c": profile.counts, "f": profile.first_seen, "l": last_seen, "s": profile.seq,
                              "n": len(seen)}
    ages = [last_seen - ts for ts in seen.values()]
    age_format = "I"
    if ages and (min(ages) < 0 or max(ages) > _MAX_AGE):  # rare: an id older than 49 days, or a broken clock
        ages = [min(max(age, 0), _MAX_WIDE_AGE) for age in ages]
        if max(ages) > _MAX_AGE:
            age_format, fields["w"] = "Q", 8
    header = compact_json(fields)
    packed = struct.pack(f"<{len(seen)}I{len(seen)}{age_format}", *seen, *ages)
    return bytes([PROFILE_CODEC_VERSION]) + struct.pack("<I", len(header)) + header + packed


def decode_profile(data: bytes) -> UserProfile:
    if not data or data[0] not in _AGE_UNIT_MS:
        raise CodecError(f"unknown profile codec version {data[:1]!r}; expected {PROFILE_CODEC_VERSION}")
    unit = _AGE_UNIT_MS[data[0]]
    (header_length,) = struct.unpack_from("<I", data, 1)
    header = orjson.loads(data[5:5 + header_length])
    count = header["n"]
    age_format = "Q" if header.get("w") == 8 else "I"
    values = struct.unpack_from(f"<{count}I{count}{age_format}", data, 5 + header_length)
    last_seen = header["l"]
    seen = dict(zip(values[:count], [last_seen - age * unit for age in values[count:]], strict=True))
    return UserProfile(counts=header["c"], first_seen=header["f"], last_seen=last_seen, seq=header["s"],
                       recent=RecentIds(seen=seen))


FEATURES_CODEC_VERSION = 3


def _pairs(counter: SlidingCount) -> list[float]:
    """``{bucket: n}`` as ``[first bucket, n, gap to next bucket, n, ...]`` in bucket order.

    Bucket ids are 7-8 digit numbers; gaps between a user's buckets are mostly one digit, which
    halves the encoded size of a busy user's counters.
    """
    flat: list[float] = []
    previous = 0
    for bucket in sorted(counter.buckets):
        flat += [bucket - previous, counter.buckets[bucket]]
        previous = bucket
    return flat


def _counter(flat: list[float]) -> SlidingCount:
    buckets: dict[int, float] = {}
    bucket = 0
    for i in range(0, len(flat), 2):
        bucket += int(flat[i])
        buckets[bucket] = flat[i + 1]
    return SlidingCount(buckets=buckets)


def encode_features(features: UserFeatures) -> bytes:
    sessions, purchases = features.sessions, features.purchases
    current = sessions.current
    document = {
        "v": FEATURES_CODEC_VERSION,
        "r": features.reference_ts,
        "c": {t: {w: _pairs(c) for w, c in per.items() if c.buckets} for t, per in features.counts.items()},
        "i": {k: _pairs(c) for k, c in features.items.items()},
        "k": {k: _pairs(c) for k, c in features.categories.items()},
        "s": [None if current is None else [current.start, current.end, current.depth, int(current.carted),
                                           int(current.purchased)],
              sessions.previous_end, sessions.abandoned_at, sessions.returned_at, sessions.out_of_order,
              sessions.timer_at],
        "ss": _pairs(features.session_starts), "sl": _pairs(features.session_lengths),
        "sd": _pairs(features.session_depths),
        "p": [_pairs(purchases.count), _pairs(purchases.spend), purchases.last_purchase_ts,
              None if purchases.scored is None else list(purchases.scored)],
        "a": {k: [round(score, 6), ts] for k, (score, ts) in features.affinity.scores.items()},
        "e": [features.version, [features.emitted.get(name) for name in EMITTED_FIELDS] if features.emitted else [],
              features.emitted_at],
    }
    return _compressed(document, FEATURES_CODEC_VERSION)


#: Documents up to this many bytes are stored as bare JSON, larger ones zlib-compressed (codec version 3).
RAW_JSON_MAX_BYTES = 512
#: zlib window of the compressed documents: 4 KB (2**12), more than a document needs; the output is the same
#: size as with zlib's default 32 KB window, which costs more to set up per compress.
ZLIB_WBITS = 12
#: Feature and rule codec version 2 (still read): the document always zlib-compressed.
_ALWAYS_COMPRESSED = 2


def _compressed(document: dict[str, Any], version: int) -> bytes:
    """Byte 0 the codec version, then the JSON document: bare up to ``RAW_JSON_MAX_BYTES``, else
    compressed with zlib level 1 (the fastest) and a 4 KB window.

    The feature and rule documents repeat keys, window names and digits: compressed a long one takes
    about half. A short one is not worth the ~20 µs per encode and ~7 µs per decode (in the pure loop),
    and a user's keyed state stays under 2 KB (docs/performance.md, "Per-event work").
    """
    data = compact_json(document)
    if len(data) > RAW_JSON_MAX_BYTES:
        data = zlib.compress(data, 1, ZLIB_WBITS)
    return bytes([version]) + data


def _compressed_document(data: bytes, kind: str, version: int) -> dict[str, Any]:
    """A document :func:`_compressed` wrote, or one of an older version, or a loud :class:`CodecError`.

    Version 1 was bare JSON (no version byte), version 2 always zlib-compressed (32 KB window, which
    :func:`zlib.decompress` reads as any other), version 3 is bare JSON (``{``) or zlib after its byte.
    """
    if data[:1] == b"{":
        return _json_document(data, kind, 1)
    stored = data[0] if data else None
    if stored not in (_ALWAYS_COMPRESSED, version):
        raise CodecError(f"unknown {kind} codec version {data[:1]!r}; expected {version}")
    body = data[1:]
    if stored == version and body[:1] == b"{":
        return _json_document(body, kind, version)
    try:
        return _json_document(zlib.decompress(body), kind, stored)
    except zlib.error as exc:
        raise CodecError(f"{kind} state is not readable: {exc}") from exc


def _json_document(data: bytes, kind: str, version: int) -> dict[str, Any]:
    """A JSON state document of the expected codec version, or a loud :class:`CodecError`."""
    try:
        document = orjson.loads(data)
    except ValueError as exc:
        raise CodecError(f"{kind} state is not readable: {exc}") from exc
    if not isinstance(document, dict) or document.get("v") != version:
        raise CodecError(f"unknown {kind} codec version; expected {version}")
    return document


def decode_features(data: bytes) -> UserFeatures:
    document = _compressed_document(data, "feature", FEATURES_CODEC_VERSION)
    current, previous_end, abandoned_at, returned_at, out_of_order, timer_at = document["s"]
    count, spend, last_purchase_ts, scored = document["p"]
    version, emitted_values, emitted_at = document["e"]
    emitted = dict(zip(EMITTED_FIELDS, emitted_values, strict=True)) if emitted_values else {}
    return UserFeatures(
        reference_ts=document["r"],
        counts={t: {w: _counter(flat) for w, flat in per.items()} for t, per in document["c"].items()},
        items={k: _counter(flat) for k, flat in document["i"].items()},
        categories={k: _counter(flat) for k, flat in document["k"].items()},
        sessions=SessionTracker(
            current=None if current is None else Session(current[0], current[1], current[2], bool(current[3]),
                                                         bool(current[4])),
            previous_end=previous_end, abandoned_at=abandoned_at, returned_at=returned_at,
            out_of_order=out_of_order, timer_at=timer_at,
        ),
        session_starts=_counter(document["ss"]), session_lengths=_counter(document["sl"]),
        session_depths=_counter(document["sd"]),
        purchases=PurchaseHistory(count=_counter(count), spend=_counter(spend), last_purchase_ts=last_purchase_ts,
                                  scored=None if scored is None else tuple(scored)),
        affinity=CategoryAffinity(scores={k: (score, ts) for k, (score, ts) in document["a"].items()}),
        version=version, emitted=emitted, emitted_at=emitted_at,
    )


RULES_CODEC_VERSION = 3


def encode_rules(state: RuleState) -> bytes:
    """Timestamps are stored as ages before ``now`` (short numbers), each log as ``[floor, {entity: ages}]``."""
    now = state.now
    document = {
        "v": RULES_CODEC_VERSION,
        "n": now,
        "fs": state.first_seen,
        "l": {key: [log.floor, {entity: [now - ts for ts in times] for entity, times in log.entities.items()}]
              for key, log in state.logs.items() if log.entities},
        "a": state.attributes,
        "f": state.features,
        "m": {name: [now - member.since, member.version] for name, member in state.members.items()},
        "q": {name: now - since for name, since in state.waiting.items()},
        "s": state.seq,
        "w": state.wake,
        "p": state.fingerprint,
    }
    return _compressed(document, RULES_CODEC_VERSION)


def decode_rules(data: bytes) -> RuleState:
    document = _compressed_document(data, "rule", RULES_CODEC_VERSION)
    now = document["n"]
    return RuleState(
        logs={key: SignalLog({entity: [now - age for age in ages] for entity, ages in entities.items()}, floor)
              for key, (floor, entities) in document["l"].items()},
        attributes=document["a"], features=document["f"],
        members={name: Membership(now - age, version) for name, (age, version) in document["m"].items()},
        waiting={name: now - age for name, age in document["q"].items()},
        now=now, first_seen=document["fs"], seq=document["s"], wake=document["w"], fingerprint=document["p"],
    )


RECS_CODEC_VERSION = 1


def encode_recs(user: UserRecState) -> bytes:
    """Item maps keep their order (oldest first), which is what the recommender's bounds rely on."""
    document = {
        "v": RECS_CODEC_VERSION, "r": user.recent, "c": user.cart, "p": user.purchased,
        "a": {k: [score, ts] for k, (score, ts) in user.affinity.scores.items()},
        "k": user.checkout_ts, "t": user.reference_ts,
    }
    if user.arms:  # only while experiments run: no bytes for everyone else
        document["x"] = user.arms
    return compact_json(document)


def decode_recs(data: bytes) -> UserRecState:
    document = _json_document(data, "recommendation", RECS_CODEC_VERSION)
    return UserRecState(recent=document["r"], cart=document["c"], purchased=document["p"],
                        affinity=CategoryAffinity(scores={k: (score, ts) for k, (score, ts) in document["a"].items()}),
                        checkout_ts=document["k"], reference_ts=document["t"], arms=document.get("x", {}))


MODELS_CODEC_VERSION = 3
#: Layout of an encoded :class:`~operators.models.user.UserModelState` (version 3)::
#:
#:     byte 0      codec version (3)
#:     bytes 1..4  header length (uint32), then the JSON header {"d", "m", "i", "s", "b", "g", "r"}
#:     then        if "b" (1): the latest scored behaviour input, ``BEHAVIOUR_FEATURES`` as float16
#:     then        the pending examples to the end: int64 event time, then the ``INTENT_FEATURES`` as float16
#:
#: Half precision (3 significant digits) is far below what SGD on these log counts and rates resolves,
#: and an example takes 58 bytes instead of ~150 as JSON. Version 2 (no behaviour input, "g" and "r")
#: and version 1 (all JSON) are still read.
_EXAMPLE = struct.Struct(f"<q{len(INTENT_FEATURES)}e")
_BEHAVIOUR = struct.Struct(f"<{len(BEHAVIOUR_FEATURES)}e")


def encode_models(state: UserModelState) -> bytes:
    membership = state.membership
    examples = state.pending.examples
    behaviour = state.behaviour
    header = compact_json({"d": state.pending.dropped,
                           "m": [membership.cluster, membership.candidate, membership.streak],
                           "i": state.intent, "s": state.version, "b": int(behaviour is not None),
                           "g": state.vector_version, "r": state.rescores})
    try:  # capping every value costs more than trying first: values past HALF_MAX are rare
        packed = b"".join([_EXAMPLE.pack(ts, *values) for ts, values in examples])
    except OverflowError:
        packed = b"".join([_EXAMPLE.pack(ts, *(min(value, HALF_MAX) for value in values)) for ts, values in examples])
    kept = b"" if behaviour is None else _BEHAVIOUR.pack(*behaviour)  # already capped (behaviour_values)
    return bytes([MODELS_CODEC_VERSION]) + struct.pack("<I", len(header)) + header + kept + packed


def decode_models(data: bytes) -> UserModelState:
    if data[:1] == b"{":
        return _decode_models_v1(data)
    if data[:1] not in (b"\x02", bytes([MODELS_CODEC_VERSION])):
        raise CodecError(f"unknown model codec version {data[:1]!r}; expected {MODELS_CODEC_VERSION}")
    try:
        (header_length,) = struct.unpack_from("<I", data, 1)
        start = 5 + header_length
        header = orjson.loads(data[5:start])
        behaviour = None
        if header.get("b"):  # version 2 has no "b"
            behaviour = _BEHAVIOUR.unpack_from(data, start)
            start += _BEHAVIOUR.size
        examples = [(row[0], row[1:]) for row in _EXAMPLE.iter_unpack(data[start:])]
    except (struct.error, ValueError) as exc:
        raise CodecError(f"model state is not readable: {exc}") from exc
    state = _model_state(examples, header)
    state.behaviour, state.vector_version, state.rescores = behaviour, header.get("g", 0), header.get("r", 0)
    return state


def _decode_models_v1(data: bytes) -> UserModelState:
    document = _json_document(data, "model", 1)
    if any(len(values) != len(INTENT_FEATURES) for _, values in document["p"]):
        raise CodecError("model state is not readable: an example has the wrong number of values")
    examples = [(ts, tuple(values)) for ts, values in document["p"]]
    return _model_state(examples, document)


def _model_state(examples: list[tuple[int, tuple[float, ...]]], document: dict[str, Any]) -> UserModelState:
    cluster, candidate, streak = document["m"]
    return UserModelState(pending=PendingExamples(examples, document["d"]),
                          membership=ClusterMembership(cluster, candidate, streak),
                          intent=document["i"], version=document["s"])


# Privacy states: JSON with "v". A decoder refuses unknown versions loudly: silently misreading consent
# is worse than failing.
CONSENT_CODEC_VERSION = 1
IDENTITY_CODEC_VERSION = 1


def encode_consent(state: ConsentState) -> bytes:
    """About 60 bytes: ``{"v":1,"c":{"personalization":false},"t":..,"g":..,"n":..}``."""
    return compact_json({"v": CONSENT_CODEC_VERSION, "c": state.choices, "t": state.changed_at,
                         "g": state.granted_since, "n": state.generation})


def decode_consent(data: bytes) -> ConsentState:
    document = _json_document(data, "consent", CONSENT_CODEC_VERSION)
    return ConsentState(choices=document["c"], changed_at=document["t"], granted_since=document["g"],
                        generation=document["n"])


def encode_identity(state: IdentityState) -> bytes:
    return compact_json({"v": IDENTITY_CODEC_VERSION, "a": state.alias_of, "s": state.since, "l": state.linked})


def decode_identity(data: bytes) -> IdentityState:
    document = _json_document(data, "identity", IDENTITY_CODEC_VERSION)
    return IdentityState(alias_of=document["a"], since=document["s"], linked=document["l"])


EXPERIMENTS_CODEC_VERSION = 1


def encode_experiments(state: ExperimentState) -> bytes:
    """A recommender's per-user experiment state: arms with their counters, and the recent exposures."""
    return compact_json({
        "v": EXPERIMENTS_CODEC_VERSION,
        "a": {k: [a.arm, a.first_exposure_ms, a.converted, a.revenue] for k, a in state.assignments.items()},
        "e": [[e.experiment_id, e.arm, e.ts, e.items] for e in state.exposures],
    })


def decode_experiments(data: bytes) -> ExperimentState:
    document = _json_document(data, "experiment", EXPERIMENTS_CODEC_VERSION)
    return ExperimentState(
        assignments={k: Assignment(arm, first, converted, revenue)
                     for k, (arm, first, converted, revenue) in document["a"].items()},
        exposures=[Exposure(experiment_id, arm, ts, tuple(items)) for experiment_id, arm, ts, items in document["e"]])


def encode_arm_counts(watermark: int, counts: dict[str, Counts], experiment: Experiment) -> bytes:
    """An experiment's summed counters by arm, the watermark they are complete up to, and its definition."""
    return compact_json({"v": EXPERIMENTS_CODEC_VERSION, "w": watermark, "d": experiment.definition(),
                         "a": {arm: dataclasses.astuple(c) for arm, c in counts.items()}})


def decode_arm_counts(data: bytes) -> tuple[int, dict[str, Counts], Experiment]:
    document = _json_document(data, "experiment counts", EXPERIMENTS_CODEC_VERSION)
    return (document["w"], {arm: Counts(*values) for arm, values in document["a"].items()},
            parse_experiment(document["d"]))

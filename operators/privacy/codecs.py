"""Versioned codecs of the privacy states, in the style of ``state/codecs.py`` (JSON with ``"v"``).

They live here, not in ``state/codecs.py``, only until the job wires them (docs/privacy.md).
A decoder refuses unknown versions loudly: silently misreading consent is worse than failing.
"""

from __future__ import annotations

import json
from typing import Any

from operators.privacy.consent import ConsentState
from operators.privacy.identity import IdentityState
from state.codecs import CodecError

CONSENT_CODEC_VERSION = 1
IDENTITY_CODEC_VERSION = 1


def _document(data: bytes, kind: str, version: int) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise CodecError(f"{kind} state is not readable: {exc}") from exc
    if not isinstance(document, dict) or document.get("v") != version:
        raise CodecError(f"unknown {kind} codec version; expected {version}")
    return document


def encode_consent(state: ConsentState) -> bytes:
    """About 60 bytes: ``{"v":1,"c":{"personalization":false},"t":..,"g":..,"n":..}``."""
    return json.dumps({"v": CONSENT_CODEC_VERSION, "c": state.choices, "t": state.changed_at,
                       "g": state.granted_since, "n": state.generation}, separators=(",", ":")).encode("utf-8")


def decode_consent(data: bytes) -> ConsentState:
    document = _document(data, "consent", CONSENT_CODEC_VERSION)
    return ConsentState(choices=document["c"], changed_at=document["t"], granted_since=document["g"],
                        generation=document["n"])


def encode_identity(state: IdentityState) -> bytes:
    return json.dumps({"v": IDENTITY_CODEC_VERSION, "a": state.alias_of, "s": state.since, "l": state.linked},
                      separators=(",", ":")).encode("utf-8")


def decode_identity(data: bytes) -> IdentityState:
    document = _document(data, "identity", IDENTITY_CODEC_VERSION)
    return IdentityState(alias_of=document["a"], since=document["s"], linked=document["l"])

"""The record format of the identity loop's internal topic: signed, size-bounded, data only.

Handovers carry a user's stored state and forwarded events are processed as already validated, so a
record on ``identity.handover`` is trusted only when this job signed it. The broker may have no access
control (docs/security.md): a record anyone else wrote, of another kind, cut, or malformed is refused
with an :class:`InternalRecordError` that says why, and the job dead-letters it (``invalid_internal``).
"""

from __future__ import annotations

from typing import get_type_hints

from operators.events import Event
from state.signing import Signer, UnsignedRecord

INTERNAL_SCHEMA = "identity.internal.v1"
#: Kafka's default largest record; a handover holds one user's state (a few KB).
MAX_INTERNAL_BYTES = 1_048_576
_FIELD_TYPES: tuple[type, ...] = tuple(get_type_hints(Event).values())


class InternalRecordError(ValueError):
    """A record on the internal topic that this job did not write; the message is the dead letter's detail."""


def internal_signer(secret: bytes) -> Signer:
    return Signer(secret, INTERNAL_SCHEMA)


def encode_internal(event: Event, signer: Signer) -> bytes:
    """An event on the internal topic (forwarded events, handovers, erasure commands); key: ``user_key``.
    ``ts`` at the top, as events have it: the source's watermarks read it (``connectors.kafka``), so the
    loop's records keep the event time they carry and do not hold the watermark back."""
    return signer.sign({"schema": INTERNAL_SCHEMA, "ts": event.ts, "event": list(event)})


def decode_internal(payload: bytes | None, signer: Signer) -> Event:
    """The event this job wrote, or :class:`InternalRecordError`."""
    try:
        document = signer.open(payload, MAX_INTERNAL_BYTES)
    except UnsignedRecord as exc:
        raise InternalRecordError(str(exc)) from None
    fields = document.get("event")
    if document.get("schema") != INTERNAL_SCHEMA or not isinstance(fields, list) or len(fields) != len(_FIELD_TYPES):
        raise InternalRecordError(f"not an {INTERNAL_SCHEMA} record")
    if not all(_is_a(value, kind) for value, kind in zip(fields, _FIELD_TYPES, strict=True)):
        raise InternalRecordError("event fields of the wrong type")
    return Event(*fields)


def _is_a(value: object, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))

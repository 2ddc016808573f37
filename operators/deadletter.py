"""Dead-letter records: the raw payload, why it was rejected, and where it came from."""

from __future__ import annotations

import base64
import json

from operators.events import Event
from operators.validation import Rejection

#: Payload bytes kept in a dead letter; larger payloads are truncated (their size is recorded).
MAX_KEPT_PAYLOAD_BYTES = 65_536


def dead_letter(
    rejection: Rejection, payload: bytes | None, topic: str, partition: int, offset: int, record_ts: int
) -> tuple[bytes, bytes]:
    """Key and value of the dead-letter record. The key ``topic:partition:offset`` is its identity."""
    raw = payload or b""
    kept = raw[:MAX_KEPT_PAYLOAD_BYTES]
    record: dict[str, object] = {
        "id": f"{topic}:{partition}:{offset}",
        "reason": rejection.reason,
        "detail": rejection.detail,
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp": record_ts},
        "payload_bytes": len(raw),
        "truncated": len(kept) < len(raw),
    }
    try:
        record["payload"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        record["payload_base64"] = base64.b64encode(kept).decode("ascii")
    key = f"{topic}:{partition}:{offset}".encode()
    return key, json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")


def late_record(event: Event) -> bytes:
    """A late event as it was validated (no raw payload: it was valid), for the late topic."""
    return json.dumps({"id": event.event_id, "user": event.user_key, "type": event.type, "ts": event.ts,
                       "event": event._asdict()}, separators=(",", ":"), sort_keys=True).encode("utf-8")

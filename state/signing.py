"""HMAC signatures of the records only the job may write (model snapshots, the identity loop's records).

The broker may have no access control, so a record on an internal topic proves nothing by being
there. Each kind of record is signed with its own key, derived from the job's secret (the one that
keys pseudonyms, docs/privacy.md), so a record not written by this job, or one of another kind
replayed onto this topic, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

SIGNATURE_FIELD = "sig"


class UnsignedRecord(ValueError):
    """A record that is not a document this job signed; the message says why (a dead letter's detail)."""


class Signer:
    """Signs and verifies canonical JSON documents of one record kind (``domain``)."""

    def __init__(self, secret: bytes, domain: str) -> None:
        self._key = hmac.new(secret, b"personalize/" + domain.encode("utf-8"), hashlib.sha256).digest()

    def _signature(self, body: bytes) -> str:
        return hmac.new(self._key, body, hashlib.sha256).hexdigest()

    def sign(self, document: dict[str, object]) -> bytes:
        """The document as canonical JSON (sorted keys) with its signature as the last field."""
        body = canonical(document)
        return body[:-1] + b',"' + SIGNATURE_FIELD.encode() + b'":"' + self._signature(body).encode() + b'"}'

    def verify(self, document: dict[str, object]) -> bool:
        """Whether the parsed ``document`` carries this job's signature of the rest of it (the field is
        removed). Canonical re-encoding reproduces the signed bytes: orjson writes the shortest
        round-trip form of every float."""
        signature = document.pop(SIGNATURE_FIELD, None)
        if not isinstance(signature, str):
            return False
        return hmac.compare_digest(signature, self._signature(canonical(document)))

    def open(self, data: bytes | None, max_bytes: int) -> dict[str, Any]:
        """The document of a record signed with this key (its signature removed), or :class:`UnsignedRecord`
        for anything else: empty, over ``max_bytes``, not a JSON object, unsigned or signed with another key."""
        if not data:
            raise UnsignedRecord("empty record")
        if len(data) > max_bytes:
            raise UnsignedRecord(f"{len(data)} bytes > the limit of {max_bytes}")
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UnsignedRecord("not JSON") from None
        if not isinstance(document, dict):
            raise UnsignedRecord("not a JSON object")
        if not self.verify(document):
            raise UnsignedRecord("not signed by this job (missing or wrong HMAC)")
        return document


def canonical(document: object) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)

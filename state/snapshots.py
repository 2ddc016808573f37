"""The record format of ``models.snapshots``: signed, size-bounded, data only.

A snapshot record is JSON (``models.snapshot.v3``; v2 had nine clustering features, before
``remove_rate``): the snapshot's summary, its id, the scoring model as numbers
(:class:`~operators.models.scoring.ScoringModel`) and an HMAC of all of it with the job's secret. A
scorer refuses a record that is too large, not JSON, unsigned or signed with another key, of another
schema, or malformed, with a :class:`SnapshotError` that says which; the job dead-letters it and keeps
the model it had (docs/security.md).
"""

from __future__ import annotations

from typing import Any

from operators.models.clustering import ClusterDescription
from operators.models.scaler import ScoringModelError
from operators.models.scoring import ScoringModel
from operators.models.training import ModelSnapshot
from state.signing import Signer, UnsignedRecord

SNAPSHOT_SCHEMA = "models.snapshot.v3"
SIGNING_DOMAIN = SNAPSHOT_SCHEMA
MAX_CLUSTERS = 256
MAX_TEXT = 500


class SnapshotError(ValueError):
    """A record that is not a snapshot this job wrote; the message says why (the dead letter's detail)."""


def snapshot_signer(secret: bytes) -> Signer:
    return Signer(secret, SIGNING_DOMAIN)


def encode_snapshot(snapshot: ModelSnapshot, signer: Signer) -> bytes:
    return signer.sign({**snapshot.summary(), "id": snapshot.snapshot_id, "schema": SNAPSHOT_SCHEMA,
                        "model": snapshot.model.to_data()})


def decode_snapshot(data: bytes | None, signer: Signer, max_bytes: int) -> ModelSnapshot:
    """The snapshot of a record this job signed; :class:`SnapshotError` for anything else."""
    try:
        document = signer.open(data, max_bytes)
    except UnsignedRecord as exc:
        raise SnapshotError(str(exc)) from None
    if document.get("schema") != SNAPSHOT_SCHEMA:
        raise SnapshotError(f"schema {str(document.get('schema'))[:40]!r}, this job reads {SNAPSHOT_SCHEMA}")
    try:
        return ModelSnapshot(
            version=_integer(document["version"]), ts=_integer(document["ts"]), cause=_text(document["cause"]),
            model=ScoringModel.from_data(document["model"]), clusters=_clusters(document["clusters"]),
            lineage=_text(document["lineage"]))
    except (KeyError, TypeError, ValueError, ScoringModelError) as exc:
        raise SnapshotError(f"malformed: {str(exc)[:200]}") from None


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError("expected a non-negative 64-bit integer")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ValueError(f"expected a string of at most {MAX_TEXT} characters")
    return value


def _clusters(values: Any) -> tuple[ClusterDescription, ...]:
    if not isinstance(values, list) or len(values) > MAX_CLUSTERS:
        raise ValueError(f"clusters: expected a list of at most {MAX_CLUSTERS}")
    return tuple(ClusterDescription.from_dict(value) for value in values)

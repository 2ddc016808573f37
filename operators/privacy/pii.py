"""Keyed hashing of identifiers (pseudonymisation at ingest) and redaction of dead-letter payloads.

HMAC-SHA256 with a secret, not a plain hash: user ids and emails come from small, guessable
spaces, so an unkeyed hash is reversed by hashing candidates. The secret comes from the
configuration or an environment variable, never from code, and hashing refuses to run without one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from operators.events import Event, user_key_of

#: Environment variable read when ``privacy.secret`` is empty (so the secret can stay out of files).
SECRET_ENV = "PERSONALIZE_PII_SECRET"
#: Shorter secrets are refused: an HMAC is only as strong as its key.
MIN_SECRET_BYTES = 16
#: Hex characters kept of a digest: 128 bits, collision-free at any user count, short in keys.
HASH_HEX_CHARS = 32
HASH_PREFIX = "h:"
REDACTED = "[redacted]"

#: Trait fields replaced by their keyed hash at ingest (stable, so they still join, but not readable).
HASHED_TRAITS = ("email", "phone")
#: Fields dropped at ingest: nothing in the job reads them (data minimisation).
DROPPED_FIELDS = (("context", "ip"), ("traits", "name"), ("traits", "first_name"), ("traits", "last_name"),
                  ("traits", "address"))
#: Known PII locations in an event payload and what kind of value each holds (the hash domain).
PII_PATHS: Mapping[tuple[str, ...], str] = {
    ("user_id",): "user_id", ("anonymous_id",): "anonymous_id", ("email",): "email",
    ("traits", "email"): "email", ("traits", "phone"): "phone", ("properties", "email"): "email",
    **{path: "" for path in DROPPED_FIELDS},
}
#: Normalized keys (lower case, letters and digits only: ``Email``, ``e-mail``, ``EMAIL_ADDRESS`` alike)
#: redacted wherever they appear in a dead-letter payload, producers nest PII in odd places; with their
#: hash domain ("" for values only ever dropped).
PII_NAMES: Mapping[str, str] = {
    **dict.fromkeys(("userid", "customerid", "accountid", "memberid"), "user_id"),
    **dict.fromkeys(("anonymousid", "visitorid", "deviceid", "cookieid", "clientid"), "anonymous_id"),
    **dict.fromkeys(("tel", "telephone", "msisdn"), "phone"),
    **dict.fromkeys(("name", "firstname", "lastname", "fullname", "givenname", "familyname", "surname", "username",
                     "displayname", "ip", "ipv4", "ipv6", "clientip", "remoteip", "dob", "birthday", "ssn",
                     "iban", "zip", "zipcode", "postcode", "postalcode"), ""),
}
#: Parts of normalized keys that mark PII whatever surrounds them (``billingAddress``, ``mobile_number``).
PII_PARTS: tuple[tuple[str, str], ...] = (("email", "email"), ("phone", "phone"), ("mobile", "phone"),
                                          ("ipaddress", ""), ("address", ""), ("password", ""), ("birth", ""),
                                          ("creditcard", ""), ("cardnumber", ""), ("passport", ""))


def pii_kind(key: str) -> str | None:
    """The hash domain of a payload key that names PII ("" for values only dropped), None otherwise."""
    normalized = "".join(character for character in key.lower() if character.isalnum())
    kind = PII_NAMES.get(normalized)
    if kind is not None:
        return kind
    return next((kind for part, kind in PII_PARTS if part in normalized), None)


class SecretError(ValueError):
    """Hashing is enabled but the secret is missing or too short: refuse to start rather than leak."""


def resolve_secret(configured: str, environ: Mapping[str, str], env_name: str = SECRET_ENV) -> bytes:
    """The HMAC secret: the configured value, else the environment variable; empty when neither is set.

    ``environ`` is injected (the settings loader passes ``os.environ``) so operators never read the
    environment themselves.
    """
    return (configured or environ.get(env_name, "")).encode("utf-8")


@dataclass(frozen=True)
class PiiHasher:
    """Stable, salted pseudonyms: the same value and secret always give the same hash."""

    secret: bytes = field(repr=False)
    """Never printed: ``repr`` of a config object ends up in logs."""

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_SECRET_BYTES:
            raise SecretError(f"PII hashing needs a secret of at least {MIN_SECRET_BYTES} bytes: set "
                              f"privacy.secret or ${SECRET_ENV}")

    def hash(self, kind: str, value: str) -> str:
        """``h:`` + 32 hex chars. ``kind`` separates domains, so a user id and an equal email differ."""
        digest = hmac.new(self.secret, f"{kind}\x1f{value}".encode(), hashlib.sha256).hexdigest()
        return HASH_PREFIX + digest[:HASH_HEX_CHARS]

    def user_id(self, value: str) -> str:
        return self.hash("user_id", value)

    def anonymous_id(self, value: str) -> str:
        return self.hash("anonymous_id", value)

    def email(self, value: str) -> str:
        """Normalised first (case, surrounding spaces), so one mailbox is one pseudonym."""
        return self.hash("email", value.strip().lower())

    def value(self, kind: str, value: str) -> str:
        """Hash by kind; ``email`` is normalised."""
        return self.email(value) if kind == "email" else self.hash(kind, value)


def hasher_from(enabled: bool, secret: bytes) -> PiiHasher | None:
    """The hasher when hashing is enabled (refusing an empty secret), else None."""
    return PiiHasher(secret) if enabled else None


def pseudonymize_event(event: Event, hasher: PiiHasher) -> Event:
    """The event with hashed ids (and so a hashed ``user_key``), hashed email/phone traits and the
    dropped fields removed. Applied right after validation, so no raw id reaches state, Redis or Kafka."""
    user_id = hasher.user_id(event.user_id) if event.user_id else ""
    anonymous_id = hasher.anonymous_id(event.anonymous_id) if event.anonymous_id else ""
    attributes = event.attributes
    if attributes:
        document = json.loads(attributes)
        traits = document.get("traits")
        if isinstance(traits, dict):
            for name in HASHED_TRAITS:
                if isinstance(traits.get(name), str):
                    traits[name] = hasher.value(name, traits[name])
        for parent, name in DROPPED_FIELDS:
            section = document.get(parent)
            if isinstance(section, dict):
                section.pop(name, None)
        attributes = json.dumps(document, separators=(",", ":"), sort_keys=True)
    return event._replace(user_id=user_id, anonymous_id=anonymous_id, user_key=user_key_of(user_id, anonymous_id),
                          attributes=attributes)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


@dataclass(frozen=True)
class Redactor:
    """Replaces known PII in dead-letter payloads: by its keyed hash when a hasher is configured (so a
    bad record can still be matched to a pseudonymous user), else by ``[redacted]``."""

    hasher: PiiHasher | None = None

    def redact(self, document: Any, path: tuple[str, ...] = ()) -> tuple[Any, list[str]]:
        """A copy of ``document`` with PII replaced, and the dotted paths that were replaced."""
        if isinstance(document, list):
            redacted: list[Any] = []
            found: list[str] = []
            for item in document:
                value, paths = self.redact(item, (*path, "[]"))
                redacted.append(value)
                found += paths
            return redacted, found
        if not isinstance(document, dict):
            return document, []
        result: dict[str, Any] = {}
        found = []
        for key, value in document.items():
            here = (*path, key)
            kind = PII_PATHS.get(here) if here in PII_PATHS else pii_kind(key) if isinstance(key, str) else None
            if kind is None or value is None:
                result[key], paths = self.redact(value, here)
                found += paths
            else:
                result[key] = self._replacement(kind, value)
                found.append(".".join(here))
        return result, found

    def _replacement(self, kind: str, value: Any) -> str:
        if self.hasher is not None and kind and isinstance(value, str):
            return self.hasher.value(kind, value)
        return REDACTED

    def dead_letter(self, value: bytes) -> bytes:
        """A dead-letter record (``operators.deadletter.dead_letter``) with its payload redacted.

        A payload that parses as a JSON object keeps its shape with PII replaced (``redacted`` lists
        the paths); any other payload (not UTF-8, truncated, not JSON, not an object, nested too
        deeply) is dropped, and ``payload_dropped`` says why: it cannot be searched for PII.
        """
        record = json.loads(value)
        text = record.pop("payload", None)
        if record.pop("payload_base64", None) is not None:
            record["payload_dropped"] = "not_utf8"
        elif text:
            record.update(self._redacted_payload(text, record.get("truncated", False)))
        else:
            record["payload"] = ""
        return json.dumps(record, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def _redacted_payload(self, text: str, truncated: bool) -> dict[str, Any]:
        if truncated:
            return {"payload_dropped": "truncated"}
        try:
            document = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return {"payload_dropped": "not_json"}
        if not isinstance(document, dict):
            return {"payload_dropped": "not_an_object"}
        try:
            redacted, paths = self.redact(document)
            payload = json.dumps(redacted, separators=(",", ":"), sort_keys=True)
        except RecursionError:
            return {"payload_dropped": "nested_too_deeply"}
        return {"payload": payload, "redacted": sorted(set(paths))}

"""Someone else's events and personas for ``personalize evaluate segments``.

Events are JSON Lines in the event contract (docs/events.md): one event per line, validated by the
job's own validator, so a line the job would dead-letter is counted under the same reason code and
skipped, never fatal. Labels (user -> persona) are the ground truth the clusters are judged
against, so a malformed label file is refused as a whole: a silently dropped label would change
the score.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from operators.events import Event
from operators.validation import Limits, parse_event

LABEL_COLUMNS = ("user_id", "persona")
MAX_LABEL_CHARS = 256


class InputError(ValueError):
    """A file that cannot be used at all: one line saying which and why."""


@dataclass
class EventLoad:
    events: list[Event] = field(default_factory=list)
    lines: int = 0
    """Non-blank lines read."""
    invalid: Counter[str] = field(default_factory=Counter)
    """Rejected lines by the validator's reason code (docs/events.md)."""


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{what} {path}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read ({exc.strerror or exc})") from None


def load_events(path: Path, limits: Limits, now_ms: int | None = None) -> EventLoad:
    """Valid events of a JSONL file; invalid lines counted by reason.

    A file has no Kafka record time, so event times are judged against ``now_ms`` (the wall clock
    by default): events from the future beyond ``limits.max_future_skew_ms`` are rejected.
    """
    record_ts = int(time.time() * 1000) if now_ms is None else now_ms
    load = EventLoad()
    for line in _read_bytes(path, "events").splitlines():
        if not line.strip():
            continue
        load.lines += 1
        parsed = parse_event(line, record_ts, limits)
        if isinstance(parsed, Event):
            load.events.append(parsed)
        else:
            load.invalid[parsed.reason] += 1
    return load


def _label(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_LABEL_CHARS:
        raise InputError(f"{where}: expected a non-empty string of at most {MAX_LABEL_CHARS} characters")
    return value.strip()


def _add(labels: dict[str, str], user: str, persona: str, where: str) -> None:
    if labels.setdefault(user, persona) != persona:
        raise InputError(f"{where}: user {user!r} is labelled twice ({labels[user]!r} and {persona!r})")


def load_labels(path: Path) -> dict[str, str]:
    """User -> persona from a ``.json`` object (``{"user-1": "bargain_hunter", ...}``) or, for any other
    name, a CSV with the header ``user_id,persona`` (more columns are ignored).

    A user is a ``user_id``, or ``anon:<anonymous_id>`` for a visitor who never identified.
    """
    data = _read_bytes(path, "labels")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"labels {path}: not UTF-8") from None
    labels: dict[str, str] = {}
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"labels {path}: invalid JSON at line {exc.lineno}") from None
        if not isinstance(doc, dict):
            raise InputError(f"labels {path}: expected a JSON object of user -> persona")
        for user, persona in doc.items():
            where = f"labels {path}: user {user[:40]!r}"
            _add(labels, _label(user, where), _label(persona, where), where)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in LABEL_COLUMNS if name not in header]
        if missing:
            raise InputError(f"labels {path}: the header needs the columns {','.join(LABEL_COLUMNS)}"
                             f" (missing {', '.join(missing)})")
        user_at, persona_at = (header.index(name) for name in LABEL_COLUMNS)
        try:
            for row in reader:
                where = f"labels {path}:{reader.line_num}"
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) <= max(user_at, persona_at):
                    raise InputError(f"{where}: expected {len(header)} columns, got {len(row)}")
                _add(labels, _label(row[user_at], where), _label(row[persona_at], where), where)
        except csv.Error as exc:
            raise InputError(f"labels {path}:{reader.line_num}: {exc}") from None
    if not labels:
        raise InputError(f"labels {path}: no labels")
    return labels

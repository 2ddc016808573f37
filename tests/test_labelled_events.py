"""Loading someone else's events and personas for ``personalize evaluate segments``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from operators.validation import Limits
from personalize.labelled_events import InputError, load_events, load_labels

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def event(n: int, **fields: object) -> bytes:
    doc = {"event_id": f"e{n}", "type": "page_view", "user_id": "u1", "ts": NOW - 1000 + n, **fields}
    return json.dumps(doc).encode()


def test_valid_events_load_and_invalid_lines_are_counted_by_reason(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([
        event(1), b"", b"   ", event(2, type="search", query="shoes"),
        b'{"event_id": "e3", "type": "page_view"',             # cut short
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        event(4, type="teleport"),
        event(5, user_id=None),
        event(6, ts=NOW + 10 * 86_400_000),                     # ten days in the future
        b"x" * 70_000,                                          # larger than max_payload_bytes
        event(7) + b"\r",                                       # CRLF file
    ]))
    load = load_events(path, Limits(), now_ms=NOW)
    assert [e.event_id for e in load.events] == ["e1", "e2", "e7"]
    assert load.lines == 10
    assert load.invalid == {"invalid_json": 1, "not_utf8": 1, "not_an_object": 1, "unknown_type": 1,
                            "missing_user": 1, "timestamp_out_of_range": 1, "payload_too_large": 1}


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["missing", "directory"])
def test_an_unreadable_events_file_is_one_clear_error(tmp_path: Path, make: object) -> None:
    path = tmp_path / "events.jsonl"
    make(path)  # type: ignore[operator]
    with pytest.raises(InputError, match=r"^events .*events\.jsonl: (no such file|is a directory)$"):
        load_events(path, Limits())


def test_labels_from_csv_and_json(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("\ufeffsegment,user_id,persona\nx,u1,buyer\r\n\n,anon:a7, browser \nx,u1,buyer\n",
                        encoding="utf-8")
    assert load_labels(csv_path) == {"u1": "buyer", "anon:a7": "browser"}
    json_path = tmp_path / "labels.JSON"
    json_path.write_text(json.dumps({"u1": "buyer", "u2": "browser"}))
    assert load_labels(json_path) == {"u1": "buyer", "u2": "browser"}


@pytest.mark.parametrize(("name", "content", "error"), [
    ("l.csv", b"user,label\nu1,buyer\n", "header needs the columns user_id,persona"),
    ("l.csv", b"user_id,persona\nu1,buyer\nu1,browser\n", "labelled twice"),
    ("l.csv", b"user_id,persona\nu1\n", ":2: expected 2 columns, got 1"),
    ("l.csv", b"user_id,persona\nu1,\n", ":2: expected a non-empty string"),
    ("l.csv", b"user_id,persona\n" + b"u1," + b"p" * 300 + b"\n", "at most 256 characters"),
    ("l.csv", b"user_id,persona\n", "no labels"),
    ("l.csv", b"", "header needs the columns"),
    ("l.csv", b"user_id,persona\nu1,caf\xe9\n", "not UTF-8"),
    ("l.csv", b'user_id,persona\nu1,"buyer\n', "unexpected end of data"),
    ("l.json", b'["u1", "buyer"]', "expected a JSON object"),
    ("l.json", b'{"u1": 3}', "expected a non-empty string"),
    ("l.json", b'{"u1": "buyer",', "invalid JSON at line 1"),
    ("l.json", b"{}", "no labels"),
])
def test_bad_labels_are_refused_with_one_line(tmp_path: Path, name: str, content: bytes, error: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=error) as raised:
        load_labels(path)
    assert "\n" not in str(raised.value)


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_labels(tmp_path / "labels.csv")

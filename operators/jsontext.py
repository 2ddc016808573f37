"""Compact, key-sorted JSON bytes: the job's output records and internal payloads.

orjson instead of the standard library: the user operator writes several records per event (a profile
update, a feature vector, segment changes, a recommendation request) and the standard encoder was a
measurable share of its time (docs/performance.md). The text is the same JSON, compact and with
sorted keys; non-ASCII characters are written as UTF-8 instead of ``\\u`` escapes.
"""

from __future__ import annotations

from typing import Any

import orjson


def sorted_json(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)

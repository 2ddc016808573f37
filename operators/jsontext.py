"""Compact JSON bytes for the per-event output records (profile updates, feature vectors, segment
changes, recommendation lists), the internal topic's payloads and the state documents.

orjson instead of the standard library: the user operator writes several records per event (a profile
update, a feature vector, segment changes, a recommendation request) and encodes and decodes its state
documents per event and per timer: the state codecs (JSON and zlib) took about a quarter of its Python
time (docs/performance.md). The text is the same JSON, compact; non-ASCII characters are written as UTF-8
instead of ``\\u`` escapes. NumPy scalars (River and the recommender may hand them over) are written
as numbers, as the standard library writes a ``numpy.float64``.
"""

from __future__ import annotations

from typing import Any

import orjson

_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _plain(value: Any) -> Any:
    """Other subclasses of float: as the float they are (orjson writes only exact floats itself)."""
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def compact_json(document: Any) -> bytes:
    return orjson.dumps(document, default=_plain, option=_NUMPY)


def sorted_json(document: Any) -> bytes:
    """Key-sorted: output records are compared byte for byte across runs."""
    return orjson.dumps(document, default=_plain, option=_NUMPY | orjson.OPT_SORT_KEYS)

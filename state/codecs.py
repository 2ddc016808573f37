"""Versioned binary codecs for keyed state: explicit, compact, and safe to evolve.

Layout of an encoded :class:`~operators.profile.UserProfile`::

    byte 0      codec version (1)
    bytes 1..   JSON header {"c": counts, "f": first_seen, "l": last_seen, "s": seq, "n": ids}
    then        n uint32 id fingerprints, n uint32 ages in seconds before last_seen

A decoder refuses unknown versions loudly: silently misreading state is worse than failing.
"""

from __future__ import annotations

import json
import struct

from operators.dedup import RecentIds
from operators.profile import UserProfile

PROFILE_CODEC_VERSION = 1
_MAX_AGE_S = 2**32 - 1


class CodecError(ValueError):
    """Stored state cannot be decoded by this version of the job."""


def encode_profile(profile: UserProfile) -> bytes:
    ids = list(profile.recent.seen.items())
    header = json.dumps(
        {"c": profile.counts, "f": profile.first_seen, "l": profile.last_seen, "s": profile.seq, "n": len(ids)},
        separators=(",", ":"),
    ).encode("utf-8")
    ages = [min(max(profile.last_seen - ts, 0) // 1000, _MAX_AGE_S) for _, ts in ids]
    packed = struct.pack(f"<{len(ids)}I{len(ids)}I", *(fp for fp, _ in ids), *ages)
    return bytes([PROFILE_CODEC_VERSION]) + struct.pack("<I", len(header)) + header + packed


def decode_profile(data: bytes) -> UserProfile:
    if not data or data[0] != PROFILE_CODEC_VERSION:
        raise CodecError(f"unknown profile codec version {data[:1]!r}; expected {PROFILE_CODEC_VERSION}")
    (header_length,) = struct.unpack_from("<I", data, 1)
    header = json.loads(data[5:5 + header_length])
    count = header["n"]
    values = struct.unpack_from(f"<{count}I{count}I", data, 5 + header_length)
    last_seen = header["l"]
    seen = {values[i]: last_seen - values[count + i] * 1000 for i in range(count)}
    return UserProfile(counts=header["c"], first_seen=header["f"], last_seen=last_seen, seq=header["s"],
                       recent=RecentIds(seen=seen))

"""Every Redis key name the gateway uses, built in this one module.

Redis Cluster runs a Lua script only when all its keys hash to one slot. A session's atomic
steps touch the session's own keys *and* shared indexes (the deadline set, the completed
stream, the CallSid index), so keys are grouped into ``BUCKETS`` hash-tag buckets: a session,
its history, documents, its CallSid index entry, and the deadline set and completed
stream that hold it all carry the tag ``{bN}`` of its bucket and live in one slot.

::

    <prefix>{bN}:sess:<id>          hash: the live session, one JSON value per field
    <prefix>{bN}:sess:<id>:msgs     list: history (JSON messages)
    <prefix>{bN}:sess:<id>:docs     hash: document id -> JSON document
    <prefix>{bN}:call:<CallSid>     string: session id
    <prefix>{bN}:deadlines          sorted set: session id -> expiry deadline (unix seconds)
    <prefix>{bN}:completed          stream: completed sessions for the archiver

A session opened for a call gets an id in the CallSid's bucket (ids are minted until one
lands there: 16 tries on average, microseconds), so a retried webhook finds the CallSid index
and the session in the same slot. ``BUCKETS`` is part of the data layout: changing it orphans
live keys, so it is a constant, not a setting.
"""

from __future__ import annotations

import os
import uuid
import zlib

BUCKETS = 16


def bucket_of(value: str) -> int:
    return zlib.crc32(value.encode()) % BUCKETS


def _uuid4_strings(count: int) -> list[str]:
    """``count`` random UUID4 strings from one ``os.urandom`` call (uuid.uuid4 per try is slow)."""
    raw = bytearray(os.urandom(16 * count))
    out = []
    for i in range(0, 16 * count, 16):
        raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40  # version 4
        raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80  # RFC 4122 variant
        h = raw[i : i + 16].hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def mint_session_id(same_bucket_as: str | None = None) -> str:
    """A new UUID4 session id; in the bucket of ``same_bucket_as`` when given."""
    if same_bucket_as is None:
        return str(uuid.uuid4())
    want = bucket_of(same_bucket_as)
    while True:
        for candidate in _uuid4_strings(BUCKETS * 2):
            if bucket_of(candidate) == want:
                return candidate


class Keys:
    """Key builder under one configurable prefix (tests use a unique prefix each)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "vg:") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they mark hash tags)")
        self.prefix = prefix

    def _tag(self, bucket: int) -> str:
        return f"{self.prefix}{{b{bucket}}}:"

    def session(self, session_id: str) -> str:
        return f"{self._tag(bucket_of(session_id))}sess:{session_id}"

    def messages(self, session_id: str) -> str:
        return self.session(session_id) + ":msgs"

    def documents(self, session_id: str) -> str:
        return self.session(session_id) + ":docs"

    def session_keys(self, session_id: str) -> list[str]:
        """All per-session keys, in a fixed order (scripts rely on it)."""
        base = self.session(session_id)
        return [base, base + ":msgs", base + ":docs"]

    def call(self, call_sid: str) -> str:
        return f"{self._tag(bucket_of(call_sid))}call:{call_sid}"

    def deadlines(self, bucket: int) -> str:
        return f"{self._tag(bucket)}deadlines"

    def completed(self, bucket: int) -> str:
        return f"{self._tag(bucket)}completed"

    def deadlines_of(self, session_id: str) -> str:
        return self.deadlines(bucket_of(session_id))

    def completed_of(self, session_id: str) -> str:
        return self.completed(bucket_of(session_id))

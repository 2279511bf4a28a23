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

A session opened for a call gets an id in the CallSid's bucket (candidates are drawn until one
lands there: 16 tries on average, a few microseconds), so a retried webhook finds the CallSid index
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


#: The RFC 4122 variant nibble (``10xx``) for each random hex digit; keeps the digit's low bits.
_VARIANT = dict(zip("0123456789abcdef", "89ab89ab89ab89ab", strict=True))
#: Candidate tails drawn per ``os.urandom`` call (a tail hits the wanted bucket 1 time in 16).
_TAILS = 48
_TAIL_HEX = 12


def mint_session_id(same_bucket_as: str | None = None) -> str:
    """A new UUID4 session id; in the bucket of ``same_bucket_as`` when given.

    One random head (``xxxxxxxx-xxxx-4xxx-Vxxx-``) and candidate 12-digit tails come from one
    ``os.urandom`` read; the head's CRC-32 is computed once and continued over each tail
    (``crc32(head + tail) == crc32(tail, crc32(head))``) until one lands in the bucket.
    """
    if same_bucket_as is None:
        return str(uuid.uuid4())
    want = bucket_of(same_bucket_as)
    while True:
        h = os.urandom(10 + _TAILS * _TAIL_HEX // 2).hex()  # 20 head digits, then the tails
        head = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-"
        seed = zlib.crc32(head.encode())
        tails = h[20:].encode()
        for i in range(0, len(tails), _TAIL_HEX):
            tail = tails[i : i + _TAIL_HEX]
            if zlib.crc32(tail, seed) % BUCKETS == want:
                return head + tail.decode()


class Keys:
    """Key builder under one configurable prefix (tests use a unique prefix each)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str = "vg:") -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces (they mark hash tags)")
        self.prefix = prefix

    def _tag(self, bucket: int) -> str:
        return f"{self.prefix}{{b{bucket}}}:"

    def session_prefix_of(self, session_id: str) -> str:
        """The session key less the id: every session in ``session_id``'s bucket starts so (the
        OPEN script reads a retried call's session, in the same bucket, under it)."""
        return f"{self._tag(bucket_of(session_id))}sess:"

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

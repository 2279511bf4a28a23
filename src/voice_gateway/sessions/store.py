"""The live session store: interface, shared field codec, and the factory.

Two implementations pass one contract suite (tests/integration/sessions/test_store_contract.py):
``RedisSessionStore`` (shared between instances) and ``MemorySessionStore`` (the embedded default
for one process: not shared, not durable).

Semantics every implementation keeps:

- A session's keys live ``expiration_seconds + expiry_grace`` seconds from open or last touch;
  the deadline index holds ``last touch + expiration_seconds`` so the sweeper completes an
  outlived session (``expired``) before its data expires.
- ``create`` with a ``call_sid`` is idempotent: a second create for the same CallSid returns
  the first session (``created=False``).
- ``complete`` is atomic and exactly-once: it flips the status, computes ``duration``, drops the
  deadline, and appends the final record to the completed queue in one step. A second call
  returns ``None``. The completed session stays readable for ``completed_retention`` seconds.
- The completed queue is consumed by archivers in a group: ``read_completed`` delivers each
  entry to one consumer; an entry stays pending until ``ack_completed``; ``claim_completed``
  takes over entries another consumer has held longer than ``min_idle_ms`` (a crashed one).
"""

from __future__ import annotations

import functools
import json
import json.encoder
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from voice_gateway.sessions.models import (
    CompletedSession,
    EndReason,
    Message,
    Session,
    StreamInfo,
)

if TYPE_CHECKING:
    from voice_gateway.settings import Settings

#: Counter fields that ``increment`` may change.
COUNTER_FIELDS = frozenset({"turns", "message_count", "interruptions"})


@dataclass(frozen=True, slots=True)
class CompletedEntry:
    """One delivery from the completed queue; ``entry_id`` is what ``ack_completed`` takes."""

    entry_id: str
    record: CompletedSession
    deliveries: int = 1


class SessionStore(ABC):
    """Live state of sessions. Every method may raise ``StoreUnavailable``."""

    #: True when several gateway processes can share this store.
    shared: bool = False

    # -- sessions ---------------------------------------------------------------------------

    @abstractmethod
    async def create(
        self, session: Session, *, call_sid: str | None = None
    ) -> tuple[Session, bool]:
        """Store a new active session; with ``call_sid``, return the existing one if any."""

    @abstractmethod
    async def get(self, session_id: str) -> Session | None:
        """The session (active, or completed and still retained), or None."""

    @abstractmethod
    async def get_by_call_sid(self, call_sid: str) -> Session | None: ...

    @abstractmethod
    async def update(self, session_id: str, fields: Mapping[str, Any], now: datetime) -> Session:
        """Set top-level fields of an active session (raises SessionNotFound / AlreadyCompleted)."""

    @abstractmethod
    async def claim_stream(self, session_id: str, stream: StreamInfo, now: datetime) -> bool:
        """Attach ``stream`` unless a live (not ended) stream is attached; False if refused.
        Raises SessionNotFound / AlreadyCompleted like ``update``."""

    @abstractmethod
    async def increment(self, session_id: str, counters: Mapping[str, int], now: datetime) -> None:
        """Add to counter fields of an active session (no-op on a completed one)."""

    @abstractmethod
    async def touch(self, session_id: str, now: datetime) -> None:
        """Extend the TTL and deadline of an active session (raises like ``update``)."""

    @abstractmethod
    async def append_messages(
        self,
        session_id: str,
        messages: Sequence[Message],
        now: datetime,
        counters: Mapping[str, int] | None = None,
    ) -> int:
        """Append history to an active session, and add ``counters`` to its counter fields
        in the same step; returns the new history length."""

    @abstractmethod
    async def get_messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> list[Message]:
        """History in order; empty when the session is unknown."""

    @abstractmethod
    async def complete(
        self,
        session_id: str,
        end_reason: EndReason,
        now: datetime,
        duration: float | None = None,
        *,
        on_expiry: bool = False,
    ) -> CompletedSession | None:
        """The exactly-once transition; None when already completed (SessionNotFound if unknown).
        ``on_expiry``: the sweeper is completing it, so the reason set by ``set_deadline`` wins."""

    @abstractmethod
    async def mark_ending(self, session_id: str, end_reason: EndReason) -> None:
        """The gateway is ending this active call: every completion from now on (a status
        callback, a sweeper) uses ``end_reason``. AlreadyCompleted / SessionNotFound otherwise."""

    @abstractmethod
    async def set_deadline(
        self, session_id: str, deadline: datetime, expiry_reason: EndReason | None = None
    ) -> None:
        """Move the sweeper's deadline for an active session, and the end reason it will use."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Remove every key of the session (True if it existed)."""

    @abstractmethod
    async def expired_sessions(self, now: datetime, limit: int = 100) -> list[str]:
        """Ids of active sessions whose deadline has passed."""

    @abstractmethod
    async def count_active(self) -> int: ...

    @abstractmethod
    async def active_session_ids(self) -> list[str]:
        """Ids of every active session (the deadline index); O(active sessions)."""

    # -- documents (session-scoped; tools are the session's ``tools`` field) ----------------

    @abstractmethod
    async def put_document(
        self, session_id: str, doc_id: str, document: Mapping[str, Any]
    ) -> None: ...

    @abstractmethod
    async def get_documents(self, session_id: str) -> list[dict[str, Any]]: ...

    # -- completed queue ---------------------------------------------------------------------

    @abstractmethod
    async def read_completed(
        self, consumer: str, count: int = 100, block_ms: int = 1000
    ) -> list[CompletedEntry]: ...

    @abstractmethod
    async def claim_completed(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[CompletedEntry]: ...

    @abstractmethod
    async def ack_completed(self, entry_ids: Sequence[str]) -> None: ...

    @abstractmethod
    async def completed_backlog(self) -> tuple[int, int]:
        """(entries waiting in the queue, of which delivered but not acknowledged)."""

    # -- lifecycle of the store itself -------------------------------------------------------

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot be reached."""

    @abstractmethod
    async def close(self) -> None: ...


# -- field codec shared by the implementations ------------------------------------------------

#: Fields kept in the hash only for the store's own use (never part of the model).
INTERNAL_PREFIX = "_"


def _value_encoder() -> Callable[[Any], str]:
    """Compact JSON of one value, the exact text ``json.JSONEncoder(separators=(",", ":"))``
    writes, at a fraction of its cost per call: scalars go straight to the C string escaper,
    containers to one C encoder built once (``JSONEncoder.encode`` builds one per call)."""
    slow = json.JSONEncoder(separators=(",", ":")).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (not CPython): the stdlib path, same text
        return slow
    # (markers, default, encoder, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan):
    # no circular check (model dumps have no cycles), the JSONEncoder defaults otherwise.
    default = json.JSONEncoder().default
    iterencode = make(None, default, encode_basestring_ascii, None, ":", ",", False, False, True)

    def encode(value: Any) -> str:
        if value is None:
            return "null"
        if value is True:
            return "true"
        if value is False:
            return "false"
        kind = type(value)
        if kind is str:
            return encode_basestring_ascii(value)
        if kind is int:
            return int.__repr__(value)
        return "".join(iterencode(value, 0))

    return encode


_encode = _value_encoder()


def encode_fields(values: Mapping[str, Any]) -> dict[str, str]:
    """Top-level session fields as compact JSON strings (one hash field each)."""
    return {k: _encode(v) for k, v in values.items()}


def session_to_fields(session: Session) -> dict[str, str]:
    return encode_fields(session.model_dump(mode="json"))


def session_from_fields(raw: Mapping[str, str]) -> Session:
    data = {k: json.loads(v) for k, v in raw.items() if not k.startswith(INTERNAL_PREFIX)}
    return Session.model_validate(data)


def dump_update(fields: Mapping[str, Any]) -> dict[str, str]:
    """Validate a partial update against the model and encode it (ValueError on bad input)."""
    unknown = set(fields) - set(Session.model_fields)
    if unknown:
        raise ValueError(f"unknown session fields: {sorted(unknown)}")
    # Validate each field by round-tripping through the model's own field validators, on a copy
    # of one blank session (``model_construct`` costs ~20x a copy: it inspects every default
    # factory's signature on each call).
    probe = _blank_session().model_copy()
    for name, value in fields.items():
        Session.__pydantic_validator__.validate_assignment(probe, name, value)
    return encode_fields(probe.model_dump(mode="json", include=set(fields)))


@functools.cache
def _blank_session() -> Session:
    return Session.model_construct(agent_id="")


def create_store(settings: Settings, *, prefix: str | None = None) -> SessionStore:
    """The store the settings ask for: Redis when ``redis_url`` is set, else in-memory."""
    if settings.redis_url:
        from voice_gateway.sessions.redis_store import RedisSessionStore

        return RedisSessionStore.from_url(
            settings.redis_url.get_secret_value(),
            prefix=prefix if prefix is not None else settings.redis_prefix,
            expiry_grace=settings.expiry_grace_seconds,
            completed_retention=settings.completed_retention_seconds,
            max_connections=settings.redis_max_connections,
        )
    from voice_gateway.sessions.memory_store import MemorySessionStore

    return MemorySessionStore(
        expiry_grace=settings.expiry_grace_seconds,
        completed_retention=settings.completed_retention_seconds,
    )

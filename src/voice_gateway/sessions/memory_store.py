"""In-memory ``SessionStore``: the embedded default for a single process.

Same semantics as the Redis store (TTL, CallSid index, deadline index, exactly-once completion,
a consumer-group-like completed queue), but **not shared** between processes and **not
durable**: a restart loses live sessions and completed records not yet archived. Use Redis
(``VOICE_GATEWAY_REDIS_URL``) for anything that must survive a restart or run on several
instances.

Every mutation runs without an ``await`` in its critical section, so on one event loop each is
atomic, like a Lua script in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from voice_gateway.errors import AlreadyCompleted, SessionNotFound
from voice_gateway.sessions.models import (
    CompletedSession,
    EndReason,
    Message,
    Session,
    SessionStatus,
    StreamInfo,
)
from voice_gateway.sessions.store import COUNTER_FIELDS, CompletedEntry, SessionStore, dump_update


@dataclass
class _Live:
    session: Session
    created_ts: float
    expires_at: float
    call_sid: str | None
    expiry_reason: EndReason | None = None
    ending_reason: EndReason | None = None
    messages: list[Message] = field(default_factory=list)
    documents: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Queued:
    record: CompletedSession
    consumer: str | None = None
    delivered_at: float = 0.0


class MemorySessionStore(SessionStore):
    shared = False

    def __init__(self, *, expiry_grace: int = 300, completed_retention: int = 3600) -> None:
        self._grace = expiry_grace
        self._retention = completed_retention
        self._live: dict[str, _Live] = {}
        self._calls: dict[str, str] = {}
        self._deadlines: dict[str, float] = {}
        self._queue: dict[str, _Queued] = {}
        self._seq = itertools.count(1)
        self._queue_changed = asyncio.Event()

    # -- helpers ------------------------------------------------------------------------

    def _entry(self, session_id: str) -> _Live | None:
        entry = self._live.get(session_id)
        if entry is not None and entry.expires_at <= time.time():
            self._drop(session_id)
            return None
        return entry

    def _active(self, session_id: str) -> _Live:
        entry = self._entry(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        if entry.session.status is not SessionStatus.ACTIVE:
            raise AlreadyCompleted(session_id)
        return entry

    def _drop(self, session_id: str) -> bool:
        entry = self._live.pop(session_id, None)
        self._deadlines.pop(session_id, None)
        if entry is not None and entry.call_sid is not None:
            self._calls.pop(entry.call_sid, None)
        return entry is not None

    # -- sessions -----------------------------------------------------------------------

    async def create(
        self, session: Session, *, call_sid: str | None = None
    ) -> tuple[Session, bool]:
        if call_sid is not None:
            existing_id = self._calls.get(call_sid)
            existing = self._entry(existing_id) if existing_id else None
            if existing is not None:
                return existing.session.model_copy(deep=True), False
        if self._entry(session.id) is not None:
            raise ValueError(f"session id {session.id} already exists")
        created_ts = session.created_at.timestamp()
        self._live[session.id] = _Live(
            session=session.model_copy(deep=True),
            created_ts=created_ts,
            expires_at=time.time() + session.expiration_seconds + self._grace,
            call_sid=call_sid,
        )
        self._deadlines[session.id] = created_ts + session.expiration_seconds
        if call_sid is not None:
            self._calls[call_sid] = session.id
        return session, True

    async def get(self, session_id: str) -> Session | None:
        entry = self._entry(session_id)
        return entry.session.model_copy(deep=True) if entry else None

    async def get_by_call_sid(self, call_sid: str) -> Session | None:
        sid = self._calls.get(call_sid)
        return await self.get(sid) if sid else None

    async def update(self, session_id: str, fields: Mapping[str, Any], now: datetime) -> Session:
        dump_update(fields)  # same validation as Redis
        entry = self._active(session_id)
        data = entry.session.model_dump()
        data.update(fields)
        data["updated_at"] = now
        entry.session = Session.model_validate(data)
        return entry.session.model_copy(deep=True)

    async def claim_stream(self, session_id: str, stream: StreamInfo, now: datetime) -> bool:
        entry = self._active(session_id)
        current = entry.session.stream
        if current is not None and current.ended_at is None:
            return False
        entry.session.stream = stream.model_copy()
        entry.session.updated_at = now
        return True

    async def increment(self, session_id: str, counters: Mapping[str, int], now: datetime) -> None:
        bad = set(counters) - COUNTER_FIELDS
        if bad:
            raise ValueError(f"not counters: {sorted(bad)}")
        entry = self._entry(session_id)
        if entry is None or entry.session.status is not SessionStatus.ACTIVE:
            return
        for name, amount in counters.items():
            setattr(entry.session, name, getattr(entry.session, name) + int(amount))

    async def touch(self, session_id: str, now: datetime) -> None:
        entry = self._active(session_id)
        expiration = entry.session.expiration_seconds
        entry.expires_at = time.time() + expiration + self._grace
        self._deadlines[session_id] = now.timestamp() + expiration
        entry.session.updated_at = now

    async def append_messages(
        self,
        session_id: str,
        messages: Sequence[Message],
        now: datetime,
        counters: Mapping[str, int] | None = None,
    ) -> int:
        bad = set(counters or {}) - COUNTER_FIELDS
        if bad:
            raise ValueError(f"not counters: {sorted(bad)}")
        entry = self._active(session_id)
        for name, amount in (counters or {}).items():
            setattr(entry.session, name, getattr(entry.session, name) + int(amount))
        entry.messages.extend(m.model_copy(deep=True) for m in messages)
        entry.session.message_count += len(messages)
        entry.session.updated_at = now
        return len(entry.messages)

    async def get_messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> list[Message]:
        entry = self._entry(session_id)
        if entry is None or limit <= 0:
            return []
        return [m.model_copy(deep=True) for m in entry.messages[offset : offset + limit]]

    async def complete(
        self,
        session_id: str,
        end_reason: EndReason,
        now: datetime,
        duration: float | None = None,
        *,
        on_expiry: bool = False,
    ) -> CompletedSession | None:
        entry = self._entry(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        if entry.session.status is not SessionStatus.ACTIVE:
            return None
        if entry.ending_reason is not None:
            end_reason = entry.ending_reason
        elif on_expiry and entry.expiry_reason is not None:
            end_reason = entry.expiry_reason
        measured = round(max(0.0, now.timestamp() - entry.created_ts), 3)
        entry.session.status = SessionStatus.COMPLETED
        entry.session.end_reason = end_reason
        entry.session.ended_at = now
        entry.session.updated_at = now
        entry.session.duration = float(duration) if duration is not None else measured
        self._deadlines.pop(session_id, None)
        entry.expires_at = time.time() + self._retention
        record = CompletedSession(
            session=entry.session.model_copy(deep=True),
            messages=[m.model_copy(deep=True) for m in entry.messages],
        )
        self._queue[f"0/{next(self._seq)}"] = _Queued(record)
        self._queue_changed.set()
        return record

    async def mark_ending(self, session_id: str, end_reason: EndReason) -> None:
        self._active(session_id).ending_reason = end_reason

    async def set_deadline(
        self, session_id: str, deadline: datetime, expiry_reason: EndReason | None = None
    ) -> None:
        entry = self._active(session_id)
        self._deadlines[session_id] = deadline.timestamp()
        entry.expiry_reason = expiry_reason

    async def delete(self, session_id: str) -> bool:
        return self._drop(session_id)

    async def expired_sessions(self, now: datetime, limit: int = 100) -> list[str]:
        ts = now.timestamp()
        due = sorted((d, sid) for sid, d in self._deadlines.items() if d <= ts)
        return [sid for _, sid in due[:limit]]

    async def count_active(self) -> int:
        return len(self._deadlines)

    async def active_session_ids(self) -> list[str]:
        return list(self._deadlines)

    # -- documents --------------------------------------------------------------

    async def put_document(self, session_id: str, doc_id: str, document: Mapping[str, Any]) -> None:
        self._active(session_id).documents[doc_id] = dict(document)

    async def get_documents(self, session_id: str) -> list[dict[str, Any]]:
        entry = self._entry(session_id)
        if entry is None:
            return []
        docs = [dict(d) for d in entry.documents.values()]
        docs.sort(key=lambda d: (str(d.get("created_at", "")), str(d.get("id", ""))))
        return docs

    # -- completed queue --------------------------------------------------------------------

    def _deliver(self, consumer: str, count: int, pick: Any) -> list[CompletedEntry]:
        out: list[CompletedEntry] = []
        now = time.monotonic()
        for entry_id, queued in self._queue.items():
            if len(out) >= count:
                break
            if pick(queued, now):
                queued.consumer = consumer
                queued.delivered_at = now
                out.append(CompletedEntry(entry_id, queued.record.model_copy(deep=True)))
        return out

    async def read_completed(
        self, consumer: str, count: int = 100, block_ms: int = 1000
    ) -> list[CompletedEntry]:
        def fresh(queued: _Queued, _now: float) -> bool:
            return queued.consumer is None

        out = self._deliver(consumer, count, fresh)
        if out or not block_ms:
            return out
        self._queue_changed.clear()
        try:
            await asyncio.wait_for(self._queue_changed.wait(), block_ms / 1000)
        except TimeoutError:
            return []
        return self._deliver(consumer, count, fresh)

    async def claim_completed(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[CompletedEntry]:
        def stale(queued: _Queued, now: float) -> bool:
            return queued.consumer is not None and (now - queued.delivered_at) * 1000 >= min_idle_ms

        return self._deliver(consumer, count, stale)

    async def ack_completed(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            self._queue.pop(entry_id, None)

    async def completed_backlog(self) -> tuple[int, int]:
        pending = sum(1 for q in self._queue.values() if q.consumer is not None)
        return len(self._queue), pending

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

"""The one module that changes a session's state.

Webhooks, the media-stream handler, the agent bridge, the REST API and the expiry sweeper all
call ``Lifecycle``; none of them writes to the store directly. ``complete`` is where
exactly-once is decided: the store's atomic step lets one caller win, and that caller's record
is already on the completed queue for the archiver when ``complete`` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from voice_gateway.errors import AlreadyCompleted, SessionNotFound, StoreUnavailable
from voice_gateway.sessions.models import (
    CompletedSession,
    EndReason,
    Message,
    MessageRole,
    Session,
    StreamInfo,
    utcnow,
)
from voice_gateway.sessions.store import SessionStore

log = logging.getLogger(__name__)

CompletionListener = Callable[[CompletedSession], None]
T = TypeVar("T")


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    budget_seconds: float = 15.0,
    first_delay: float = 0.1,
) -> T:
    """Run a state write, retrying with exponential backoff while the store is unavailable
    (a Redis restart or failover), for up to ``budget_seconds``; then the error propagates.
    For writes off the request path only: a webhook answers 503 instead of waiting."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_seconds
    delay = first_delay
    while True:
        try:
            return await op()
        except StoreUnavailable as exc:
            if loop.time() + delay > deadline:
                raise
            log.warning("%s: store unavailable, retrying in %.1fs: %s", what, delay, exc.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class Lifecycle:
    def __init__(self, store: SessionStore, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self._clock = clock
        self._listeners: list[CompletionListener] = []

    def on_complete(self, listener: CompletionListener) -> None:
        """Call ``listener`` (synchronously) with every record this process completes."""
        self._listeners.append(listener)

    async def open(self, session: Session, *, call_sid: str | None = None) -> tuple[Session, bool]:
        """Store a new session; for a CallSid seen before, return its session (created=False)."""
        session, created = await self.store.create(session, call_sid=call_sid)
        if created:
            log.info(
                "session opened session_id=%s agent=%s channel=%s call_sid=%s",
                session.id,
                session.agent_id,
                session.channel.service,
                call_sid or "-",
            )
        return session, created

    async def get(self, session_id: str) -> Session:
        session = await self.store.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    async def touch(self, session_id: str) -> None:
        await self.store.touch(session_id, self._clock())

    async def update(self, session_id: str, **fields: Any) -> Session:
        return await self.store.update(session_id, fields, self._clock())

    async def set_summary(self, session_id: str, summary: str) -> Session:
        return await self.update(session_id, summary=summary)

    async def attach_stream(self, session_id: str, stream: StreamInfo) -> Session:
        return await self.update(session_id, stream=stream)

    async def claim_stream(self, session_id: str, stream: StreamInfo) -> bool:
        """Attach a media stream unless one is live already (False: refuse the second one)."""
        return await self.store.claim_stream(session_id, stream, self._clock())

    async def count(self, session_id: str, **counters: int) -> None:
        await self.store.increment(session_id, counters, self._clock())

    def message(
        self,
        role: MessageRole,
        content: str,
        *,
        turn_id: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> Message:
        return Message(
            role=role,
            content=content,
            turn_id=turn_id,
            metadata=dict(metadata or {}),
            created_at=at or self._clock(),
        )

    async def append_message(
        self,
        session_id: str,
        role: MessageRole,
        content: str,
        *,
        turn_id: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Message:
        msg = self.message(role, content, turn_id=turn_id, metadata=metadata)
        await self.store.append_messages(session_id, [msg], self._clock())
        return msg

    async def append_messages(
        self,
        session_id: str,
        messages: Sequence[Message],
        counters: Mapping[str, int] | None = None,
    ) -> int:
        """Append history and add to counters (``turns``, ``interruptions``, ...) in one step."""
        return await self.store.append_messages(session_id, messages, self._clock(), counters)

    async def history(self, session_id: str, offset: int = 0, limit: int = 100) -> list[Message]:
        return await self.store.get_messages(session_id, offset, limit)

    async def mark_ending(self, session_id: str, end_reason: EndReason) -> None:
        """The gateway is about to end this call (hang up): its status callback, or a sweeper,
        will complete it with ``end_reason`` even if it gets there before the gateway does."""
        await self.store.mark_ending(session_id, end_reason)

    async def set_deadline(
        self, session_id: str, in_seconds: float, expiry_reason: EndReason | None = None
    ) -> None:
        """Have the sweeper (of any instance) end the session ``in_seconds`` from now with
        ``expiry_reason`` unless something completes it first: a lease while a call is live,
        a grace period for the status callback once its stream ended."""
        deadline = self._clock() + timedelta(seconds=in_seconds)
        await self.store.set_deadline(session_id, deadline, expiry_reason)

    async def complete(
        self,
        session_id: str,
        end_reason: EndReason,
        *,
        duration: float | None = None,
        on_expiry: bool = False,
    ) -> CompletedSession:
        """Complete the session exactly once; every other caller gets ``AlreadyCompleted``."""
        record = await self.store.complete(
            session_id, end_reason, self._clock(), duration, on_expiry=on_expiry
        )
        if record is None:
            raise AlreadyCompleted(session_id)
        s = record.session
        log.info(
            "session completed session_id=%s end_reason=%s duration=%.3f call_sid=%s",
            s.id,
            s.end_reason.value if s.end_reason else "-",
            s.duration or 0.0,
            s.channel.sid or "-",
        )
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:  # a metrics hook must never break completion
                log.exception("completion listener failed session_id=%s", s.id)
        return record

    async def complete_if_active(
        self,
        session_id: str,
        end_reason: EndReason,
        *,
        duration: float | None = None,
        on_expiry: bool = False,
    ) -> CompletedSession | None:
        """``complete``, treating "already completed" and "unknown" as a quiet no-op."""
        try:
            return await self.complete(
                session_id, end_reason, duration=duration, on_expiry=on_expiry
            )
        except (AlreadyCompleted, SessionNotFound):
            return None

    async def sweep(self, limit: int = 100) -> list[str]:
        """Complete every session past its deadline (``expired``, or the reason its deadline was
        set with); returns the ones this instance won."""
        won: list[str] = []
        ids: Iterable[str] = await self.store.expired_sessions(self._clock(), limit)
        for sid in ids:
            if await self.complete_if_active(sid, EndReason.EXPIRED, on_expiry=True) is not None:
                won.append(sid)
        return won

"""The calls this process carries, and the leases that let any instance finish them.

While a stream is live, its session's sweeper deadline is a **lease** (``call_lease_seconds``
ahead, end reason ``error``) that this process renews for all its calls in one loop. If the
process dies, the lease runs out and any instance's sweeper completes the session, unless
Twilio's status callback (to any instance) completes it first with the real status.

When a stream ends normally, the deadline becomes ``status_grace_seconds`` ahead with end
reason ``completed``: the status callback normally wins; if it never comes, a sweeper ends the
call from the stream's end. Nothing here is held only in this process's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from voice_gateway.errors import AlreadyCompleted, GatewayError, SessionNotFound, StoreUnavailable
from voice_gateway.sessions.lifecycle import Lifecycle, with_retry
from voice_gateway.sessions.models import EndReason

log = logging.getLogger(__name__)


class _Stream(Protocol):
    @property
    def queued_ms(self) -> int: ...

    async def shutdown(self) -> None: ...


class CallRegistry:
    def __init__(self, lifecycle: Lifecycle, *, lease_seconds: float = 30.0) -> None:
        self._lifecycle = lifecycle
        self.lease_seconds = lease_seconds
        self._streams: dict[str, _Stream] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._streams)

    def live_streams(self) -> list[_Stream]:
        return list(self._streams.values())

    def claim(self, session_id: str, stream: _Stream) -> bool:
        """Register the live stream of a session; False if this process already has one."""
        if session_id in self._streams:
            return False
        self._streams[session_id] = stream
        self._idle.clear()
        return True

    def release(self, session_id: str, stream: _Stream) -> None:
        if self._streams.get(session_id) is stream:
            del self._streams[session_id]
            if not self._streams:
                self._idle.set()

    async def lease(self, session_id: str) -> None:
        """Hold (or renew) the session's lease: ended ``error`` if this process disappears."""
        await self._lifecycle.set_deadline(session_id, self.lease_seconds, EndReason.ERROR)

    async def stream_ended(self, session_id: str, grace: float, call_sid: str) -> None:
        """Hand the session to the sweepers: ``completed`` after ``grace`` unless the status
        callback completes it first. Retried briefly: if it never lands, the lease still ends
        the call (as ``error``)."""
        try:
            await with_retry(
                lambda: self._lifecycle.set_deadline(session_id, grace, EndReason.COMPLETED),
                what="stream end hand-off",
                budget_seconds=1.5,
                first_delay=0.2,
            )
        except (AlreadyCompleted, SessionNotFound):
            return
        except StoreUnavailable as exc:
            log.warning(
                "could not hand the ended call to the sweepers (the lease will end it): %s "
                "call_sid=%s",
                exc.message,
                call_sid,
            )

    async def renew_leases(self, stop: asyncio.Event) -> None:
        """Background loop: renew every live call's lease at a third of its length."""
        interval = self.lease_seconds / 3
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for session_id in list(self._streams):
                try:
                    await self.lease(session_id)
                except (AlreadyCompleted, SessionNotFound):
                    continue
                except GatewayError as exc:
                    log.warning("lease renewal failed, retrying next round: %s", exc.message)
                    break

    async def drain(self, grace: float) -> None:
        """Let live calls run up to ``grace`` s, then end the rest (going-away)."""
        if self._streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for stream in list(self._streams.values()):
            await stream.shutdown()

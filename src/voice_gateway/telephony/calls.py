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
from voice_gateway.telephony.pacing import WATCHDOG_SECONDS

log = logging.getLogger(__name__)

#: Lease renewals in flight at once (each holds a pooled Redis connection for a round trip).
RENEW_CONCURRENCY = 32


class _Stream(Protocol):
    @property
    def queued_ms(self) -> int: ...

    def pacing_watchdog(self) -> None: ...

    async def shutdown(self) -> None: ...


class CallRegistry:
    def __init__(self, lifecycle: Lifecycle, *, lease_seconds: float = 30.0) -> None:
        self._lifecycle = lifecycle
        self.lease_seconds = lease_seconds
        self._streams: dict[str, _Stream] = {}
        # Set once a live stream's end is written into its session (see ``stream_recorded``).
        self._recorded: dict[str, asyncio.Event] = {}
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
        self._recorded[session_id] = asyncio.Event()
        self._idle.clear()
        return True

    def stream_recorded(self, session_id: str) -> None:
        """The stream of ``session_id`` claimed here is over and its end is in the session
        (or will never be: it was refused): a status callback waiting for it may go on."""
        event = self._recorded.pop(session_id, None)
        if event is not None:
            event.set()

    def recording(self, session_id: str) -> asyncio.Event | None:
        """Set when this process's stream of ``session_id`` has recorded its end; None when
        this process has no such stream (it may be live on another instance)."""
        return self._recorded.get(session_id)

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
            await self._renew_round()

    async def watch_pacing(self, stop: asyncio.Event, interval: float = WATCHDOG_SECONDS) -> None:
        """Background loop: a paced stream whose frames stopped reads on arrival again
        (``telephony/pacing.py``)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            for stream in list(self._streams.values()):
                stream.pacing_watchdog()

    async def _renew_round(self) -> None:
        """Renew every live lease, ``RENEW_CONCURRENCY`` at a time: one by one, a round takes
        calls x round trip, which on a slow Redis outlasts the lease (600 ms x 10 calls > 6 s)
        and lets a sweeper end live calls. The round stops at the first store failure."""
        pending = list(self._streams)
        failure: GatewayError | None = None

        async def renew() -> None:
            nonlocal failure
            while pending and failure is None:
                try:
                    await self.lease(pending.pop())
                except (AlreadyCompleted, SessionNotFound):
                    continue
                except GatewayError as exc:
                    failure = exc

        await asyncio.gather(*(renew() for _ in range(min(RENEW_CONCURRENCY, len(pending)))))
        if failure is not None:
            log.warning("lease renewal failed, retrying next round: %s", failure.message)

    async def drain(self, grace: float) -> bool:
        """Let live calls run up to ``grace`` s, then end the rest (going-away). True if there
        were live calls (their status callbacks are still to come)."""
        had_calls = bool(self._streams)
        if self._streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for stream in list(self._streams.values()):
            await stream.shutdown()
        return had_calls

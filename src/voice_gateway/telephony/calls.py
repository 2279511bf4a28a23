"""The calls this process carries: live streams, and completions awaiting a status callback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import EndReason

log = logging.getLogger(__name__)


class _Stream(Protocol):
    async def shutdown(self) -> None: ...


class CallRegistry:
    def __init__(self, lifecycle: Lifecycle) -> None:
        self._lifecycle = lifecycle
        self._streams: dict[str, _Stream] = {}
        self._later: dict[str, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()

    def __len__(self) -> int:
        return len(self._streams)

    def claim(self, session_id: str, stream: _Stream) -> bool:
        """Register the live stream of a session; False if this process already has one."""
        if session_id in self._streams:
            return False
        self._streams[session_id] = stream
        return True

    def release(self, session_id: str, stream: _Stream) -> None:
        if self._streams.get(session_id) is stream:
            del self._streams[session_id]
            if not self._streams:
                self._idle.set()

    def complete_later(self, session_id: str, delay: float, call_sid: str) -> None:
        """Complete the session after ``delay`` s unless its status callback did it first."""
        if session_id in self._later:
            return
        task = asyncio.create_task(self._complete_after(session_id, delay, call_sid))
        self._later[session_id] = task
        task.add_done_callback(lambda _t: self._later.pop(session_id, None))

    async def _complete_after(self, session_id: str, delay: float, call_sid: str) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(delay)
        record = await self._lifecycle.complete_if_active(session_id, EndReason.COMPLETED)
        if record is not None:
            log.info(
                "no status callback within %.1fs: completed from the stream's end call_sid=%s",
                delay,
                call_sid,
            )

    async def drain(self, grace: float) -> None:
        """Let live calls run up to ``grace`` s, then end the rest (going-away)."""
        if self._streams:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for stream in list(self._streams.values()):
            await stream.shutdown()

    async def close(self) -> None:
        """Shutdown: completions still waiting for a status callback happen now."""
        for task in list(self._later.values()):
            task.cancel()  # _complete_after swallows the cancel and completes at once
        if self._later:
            await asyncio.gather(*self._later.values(), return_exceptions=True)

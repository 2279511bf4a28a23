"""Real-time pacing shared by every simulated call of an event loop, and sending without a task.

A call streams a frame every 20 ms on its own absolute schedule (frame *n* is due at
``t0 + n * 20 ms``). Awaiting ``asyncio.sleep`` for each frame of each call costs a timer
handle, a future and a task wake-up per frame; with hundreds of calls in one process that is
a large share of the simulator's CPU. :class:`FramePacer` instead keeps one heap of
``(due, step)`` for the whole loop and one timer armed at the earliest due time. When it
fires, it runs every step that is due, earliest first, re-reading the clock as it goes; each
step sends one call's frame at once and returns when its next frame is due. Schedules stay
per call and absolute, and each call still measures its own lateness (send time minus due
time), so a pacer that falls behind shows up in the lateness exactly as before.

:func:`send_now` runs an ``await ws.send_str(...)``-style coroutine synchronously: aiohttp
writes an uncompressed frame to the transport before its first ``await`` (it only awaits for
flow control when the transport is paused), so in the usual case the coroutine finishes
without suspending. If it does suspend, the rest of it runs in a task (returned, so that the
caller can wait for it before sending more).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import weakref
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["FramePacer", "pacer_for", "send_now"]

log = logging.getLogger(__name__)

#: A step sends what is due and returns when it is next due (loop time), or None when it is
#: finished or will re-add itself.
Step = Callable[[], float | None]


class FramePacer:
    """One timer for every paced stream of a loop: runs each step at its due time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Step]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self._running = False

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, due: float, step: Step) -> None:
        """Run ``step`` at loop time ``due`` (at once, on the next pass, if that is past)."""
        heapq.heappush(self._heap, (due, next(self._order), step))
        if self._running:
            return  # the running pass re-arms the timer when it is done
        if self._timer is None or due < self._armed_at:
            self._arm(due)

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = due
        self._timer = self._loop.call_at(due, self._run)

    def _run(self) -> None:
        self._timer = None
        heap = self._heap
        clock = self._loop.time
        self._running = True
        try:
            while heap and heap[0][0] <= clock():
                _, _, step = heapq.heappop(heap)
                try:
                    due = step()
                except Exception:  # a step reports its own errors; this keeps the others going
                    log.exception("paced step failed")
                    continue
                if due is not None:
                    heapq.heappush(heap, (due, next(self._order), step))
        finally:
            self._running = False
            if heap:
                self._arm(heap[0][0])


_PACERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FramePacer] = (
    weakref.WeakKeyDictionary()
)


def pacer_for(loop: asyncio.AbstractEventLoop) -> FramePacer:
    """The loop's shared pacer."""
    pacer = _PACERS.get(loop)
    if pacer is None:
        pacer = _PACERS[loop] = FramePacer(loop)
    return pacer


def send_now(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` until it finishes or first suspends. None when it finished; otherwise the
    task that carries it on. Its exceptions propagate when it finishes at once."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    task = asyncio.ensure_future(_carry_on(coro, pending))
    task.add_done_callback(_retrieve)
    return task


async def _carry_on(coro: Coroutine[Any, Any, None], pending: Any) -> None:
    await _Resume(coro, pending)


class _Resume:
    """Awaitable that carries on a coroutine which already yielded ``pending`` to its driver:
    it passes that on to the task running it, then drives the coroutine as a task would."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, None], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, Any, None]:
        coro, pending = self._coro, self._pending
        while True:
            try:
                value = yield pending
            except BaseException as exc:  # cancellation or an error thrown in by the task
                try:
                    pending = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    pending = coro.send(value)
                except StopIteration:
                    return


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("send finished with %r", task.exception())

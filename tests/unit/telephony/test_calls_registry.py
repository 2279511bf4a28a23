"""The call registry's hand-over to a status callback that came before the stream's end."""

from __future__ import annotations

import asyncio

from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.memory_store import MemorySessionStore
from voice_gateway.telephony.calls import CallRegistry


class _Stream:
    queued_ms = 0

    def __init__(self) -> None:
        self.watched = 0
        self.twice = asyncio.Event()

    def pacing_watchdog(self) -> None:
        self.watched += 1
        if self.watched >= 2:
            self.twice.set()

    async def shutdown(self) -> None:
        return None


async def test_a_waiting_status_callback_is_woken_once_the_stream_recorded_its_end() -> None:
    registry = CallRegistry(Lifecycle(MemorySessionStore()))
    assert registry.recording("s1") is None  # no stream here: the caller polls the store
    stream = _Stream()
    assert registry.claim("s1", stream)
    recorded = registry.recording("s1")
    assert recorded is not None and not recorded.is_set()
    waiter = asyncio.create_task(recorded.wait())
    registry.release("s1", stream)  # released first: the end is not written yet
    await asyncio.sleep(0)
    assert not waiter.done()
    registry.stream_recorded("s1")
    await asyncio.wait_for(waiter, 1)
    assert registry.recording("s1") is None


async def test_a_second_stream_refused_here_leaves_the_first_ones_hand_over() -> None:
    registry = CallRegistry(Lifecycle(MemorySessionStore()))
    first = _Stream()
    assert registry.claim("s1", first)
    event = registry.recording("s1")
    assert not registry.claim("s1", _Stream())
    assert registry.recording("s1") is event


async def test_the_pacing_watchdog_visits_every_live_stream() -> None:
    registry = CallRegistry(Lifecycle(MemorySessionStore()))
    streams = [_Stream(), _Stream()]
    for i, stream in enumerate(streams):
        registry.claim(f"s{i}", stream)
    stop = asyncio.Event()
    task = asyncio.create_task(registry.watch_pacing(stop, interval=0.01))
    await asyncio.wait_for(asyncio.gather(*(s.twice.wait() for s in streams)), 5)
    stop.set()
    await asyncio.wait_for(task, 1)

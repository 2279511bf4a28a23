"""``Batcher``: calls made together leave together; each caller gets its own result."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from voice_gateway.sessions.redis_store import Batcher


class Recorder:
    """A ``send`` that records its batches and answers each item with ``item * 10``;
    negative items fail alone, ``0`` fails the whole batch. ``gate`` holds batches back."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def send(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        if 0 in items:
            raise ConnectionError("the whole batch failed")
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def _turns(n: int = 10) -> None:
    """Let the event loop run ``n`` turns (the batcher sends on the turn after a call)."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_calls_made_in_one_turn_leave_as_one_batch() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send)
    assert await asyncio.gather(*(batcher.call(i) for i in range(1, 6))) == [10, 20, 30, 40, 50]
    assert rec.batches == [[1, 2, 3, 4, 5]]
    assert await batcher.call(7) == 70  # alone: goes alone
    assert rec.batches[-1] == [7]


async def test_each_caller_gets_its_own_error_and_a_failed_send_fails_its_batch() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send)
    results = await asyncio.gather(*(batcher.call(i) for i in (1, -2, 3)), return_exceptions=True)
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError)
    failed = await asyncio.gather(batcher.call(4), batcher.call(0), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in failed)
    assert await batcher.call(5) == 50  # and the batcher goes on


async def test_while_batches_are_out_new_calls_wait_and_leave_together() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher: Batcher[int, int] = Batcher(rec.send, max_in_flight=1)
    first = asyncio.ensure_future(batcher.call(1))
    await _turns()
    assert rec.batches == [[1]]
    later = [asyncio.ensure_future(batcher.call(i)) for i in (2, 3, 4)]
    await _turns()
    assert rec.batches == [[1]]  # one batch out at most: these wait
    rec.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert rec.batches == [[1], [2, 3, 4]]


async def test_batches_are_capped() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher(rec.send, max_batch=3)
    assert await asyncio.gather(*(batcher.call(i) for i in range(1, 8))) == [
        10 * i for i in range(1, 8)
    ]
    assert rec.batches == [[1, 2, 3], [4, 5, 6], [7]]


async def test_a_cancelled_caller_leaves_the_others_their_results() -> None:
    rec = Recorder()
    rec.gate.clear()
    batcher: Batcher[int, int] = Batcher(rec.send)
    calls = [asyncio.ensure_future(batcher.call(i)) for i in (1, 2, 3)]
    await _turns()
    assert rec.batches == [[1, 2, 3]]
    calls[1].cancel()
    rec.gate.set()
    assert await calls[0] == 10 and await calls[2] == 30
    with pytest.raises(asyncio.CancelledError):
        await calls[1]

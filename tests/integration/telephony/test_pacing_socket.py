"""``InboundPacer`` on a real TCP socket: the kernel holds frames under the mark and wakes the
reader with all of them once the frame that meets it arrives; ``stop`` and the watchdog let
a held message through at once."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from voice_gateway.telephony.pacing import InboundPacer, wire_bytes

FRAME = b"x" * 330  # about a Twilio media message
QUIET = 0.15  # long enough for loopback to deliver anything not held back


@dataclass
class Reads(asyncio.Protocol):
    chunks: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.arrived.set()


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[tuple[Reads, asyncio.StreamWriter]]:
    loop = asyncio.get_running_loop()
    reads = Reads()
    server = await loop.create_server(lambda: reads, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(100):
            if reads.transport is not None:
                break
            await asyncio.sleep(0.01)
        yield reads, writer
    finally:
        writer.close()
        server.close()
        await server.wait_closed()


async def send(writer: asyncio.StreamWriter, n: int) -> None:
    for _ in range(n):
        writer.write(FRAME)
        await writer.drain()
        await asyncio.sleep(0.005)


def pacer_for(reads: Reads, max_wait_ms: int = 200) -> InboundPacer:
    pacer = InboundPacer.for_transport(reads.transport, max_wait_ms)
    if pacer is None:
        pytest.skip("SO_RCVLOWAT is not available here")
    return pacer


async def test_frames_under_the_mark_wait_and_come_in_one_read() -> None:
    async with connected() as (reads, writer):
        pacer = pacer_for(reads)
        text_len = len(FRAME) - 8  # so that wire_bytes() is the frame's size
        assert wire_bytes(text_len) == len(FRAME)
        pacer.after_frame(text_len, slack_ms=60.0)  # the 4th frame could decide something
        await send(writer, 3)
        await asyncio.sleep(QUIET)
        assert reads.chunks == [], "three frames stay in the kernel"
        await send(writer, 1)
        await asyncio.wait_for(reads.arrived.wait(), 5)
        assert b"".join(reads.chunks) == FRAME * 4
        assert len(reads.chunks) == 1, "one read took all four"


async def test_no_slack_reads_every_frame_on_arrival() -> None:
    async with connected() as (reads, writer):
        pacer = pacer_for(reads)
        pacer.after_frame(len(FRAME) - 8, slack_ms=60.0)
        pacer.after_frame(len(FRAME) - 8, slack_ms=0.0)  # now the next frame could decide
        assert pacer.low_water_mark == 1
        await send(writer, 1)
        await asyncio.wait_for(reads.arrived.wait(), 5)
        assert b"".join(reads.chunks) == FRAME


async def test_tighten_lowers_a_held_mark_when_the_agent_starts_speaking() -> None:
    async with connected() as (reads, writer):
        pacer = pacer_for(reads)
        frame_len = len(FRAME) - 8
        pacer.after_frame(frame_len, slack_ms=math.inf)  # quiet line: a frame may wait 200 ms
        await send(writer, 3)
        await asyncio.sleep(QUIET)
        assert reads.chunks == [], "held: the 11th frame would wake the reader"
        pacer.tighten(slack_ms=200.0)  # never raises (or keeps) a mark
        assert pacer.low_water_mark == 10 * len(FRAME) + 1
        pacer.tighten(slack_ms=60.0)  # an answer starts: the 4th frame from here could barge in
        await send(writer, 1)
        await asyncio.wait_for(reads.arrived.wait(), 5)
        assert b"".join(reads.chunks) == FRAME * 4, "woken by the 4th frame, not the 11th"
        assert len(reads.chunks) == 1


async def test_stop_and_the_watchdog_release_a_held_message() -> None:
    async with connected() as (reads, writer):
        pacer = pacer_for(reads)
        pacer.after_frame(len(FRAME) - 8, slack_ms=100.0)
        writer.write(b"a short last message")
        await writer.drain()
        await asyncio.sleep(QUIET)
        assert reads.chunks == []
        pacer.watchdog(frames_in=7)  # first look: frames may still be coming
        await asyncio.sleep(QUIET)
        assert reads.chunks == []
        pacer.watchdog(frames_in=7)  # no frame since: stop holding
        await asyncio.wait_for(reads.arrived.wait(), 5)
        assert b"".join(reads.chunks) == b"a short last message"
        assert pacer.low_water_mark == 1

    async with connected() as (reads, writer):
        pacer = pacer_for(reads)
        pacer.after_frame(len(FRAME) - 8, slack_ms=100.0)
        writer.write(b"close frame")
        await writer.drain()
        await asyncio.sleep(QUIET)
        assert reads.chunks == []
        pacer.stop()
        await asyncio.wait_for(reads.arrived.wait(), 5)
        pacer.after_frame(len(FRAME) - 8, slack_ms=100.0)  # stopped for good
        assert pacer.low_water_mark == 1


async def test_pacing_is_off_without_a_socket_or_an_interval() -> None:
    assert InboundPacer.for_transport(None, 100) is None
    async with connected() as (reads, _):
        assert InboundPacer.for_transport(reads.transport, 0) is None

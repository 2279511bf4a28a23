"""The websocket agent client against a stuck reference agent (on loopback, in process).

A stuck agent must fail within ``read_timeout``: counted from the first request it has said
nothing to (a barge-in that cancels the wait and a next turn do not restart it), and when it
stops reading its socket, a send that cannot finish fails the same way, instead of waiting.
``tests/faults/test_stuck_agent.py`` covers the same with real processes and a gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import pytest

from voice_gateway.agents.base import AgentContext, AudioFormat, CallerTurn, Conversation
from voice_gateway.agents.example_server import ExampleAgentServer
from voice_gateway.agents.websocket import WebSocketAgent
from voice_gateway.errors import AgentError
from voice_gateway.sessions.models import Session

READ_TIMEOUT = 2.0


def context() -> AgentContext:
    session = Session(agent_id="remote")
    return AgentContext(session, [], [], [])


def turn(turn_id: int, audio: bytes, fmt: AudioFormat) -> CallerTurn:
    return CallerTurn(turn_id, audio, len(audio) // 32, fmt)


async def drain(conv: Conversation, t: CallerTurn) -> None:
    async for _ in conv.answer(t):
        pass


async def test_a_new_turn_does_not_restart_a_silent_agents_clock(
    server: ExampleAgentServer,
) -> None:
    server.never_answer = True  # reads every turn, answers none
    conv = await WebSocketAgent(await server.start(), read_timeout=READ_TIMEOUT).open(context())
    loop = asyncio.get_running_loop()
    try:
        fmt = conv.audio_format
        first = asyncio.create_task(drain(conv, turn(1, bytes(3200), fmt)))
        asked = loop.time()
        await asyncio.sleep(READ_TIMEOUT * 0.6)
        first.cancel()  # the caller talked over the wait (a barge-in)
        with contextlib.suppress(asyncio.CancelledError):
            await first
        with pytest.raises(AgentError, match=f"sent nothing for {READ_TIMEOUT:.1f}s"):
            await drain(conv, turn(2, bytes(3200), fmt))
        # it failed read_timeout after the first turn, not after the second
        assert loop.time() - asked < READ_TIMEOUT * 1.5
    finally:
        await conv.close("test over")


async def test_an_agent_that_answers_gets_a_fresh_clock_for_the_next_turn(
    server: ExampleAgentServer,
) -> None:
    conv = await WebSocketAgent(await server.start(), read_timeout=READ_TIMEOUT).open(context())
    try:
        fmt = conv.audio_format
        await drain(conv, turn(1, bytes(3200), fmt))
        await asyncio.sleep(READ_TIMEOUT * 1.2)  # idle longer than the read timeout
        await drain(conv, turn(2, bytes(3200), fmt))  # answered: no failure
    finally:
        await conv.close("test over")
    assert [m["type"] for m in server.received] == ["turn", "turn", "end"]


def socket_buffer_bytes() -> int:
    wmem = Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()
    rmem = Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()
    return int(wmem[2]) + int(rmem[1])


async def test_an_agent_that_stops_reading_fails_the_send(server: ExampleAgentServer) -> None:
    server.stall_after_turns = 0  # stops reading right after `ready`
    conv = await WebSocketAgent(await server.start(), read_timeout=READ_TIMEOUT).open(context())
    loop = asyncio.get_running_loop()
    # More than the socket buffers take, and incompressible (permessage-deflate is on).
    audio = random.Random(3).randbytes(socket_buffer_bytes() + 2**20)
    started = loop.time()
    try:
        with pytest.raises(AgentError, match="not reading"):
            await drain(conv, turn(1, audio, conv.audio_format))
        assert loop.time() - started < READ_TIMEOUT * 1.5
    finally:
        closing = loop.time()
        await conv.close("test over")  # the connection was cut: nothing to wait for
        assert loop.time() - closing < 1.0

"""The websocket agent client against the reference agent service on loopback."""

from __future__ import annotations

import pytest

from voice_gateway.agents.base import (
    AgentAudio,
    AgentContext,
    AgentText,
    AudioFormat,
    CallerTurn,
    HangUp,
    SummaryUpdate,
    Transfer,
)
from voice_gateway.agents.example_server import ExampleAgentServer
from voice_gateway.agents.websocket import WebSocketAgent
from voice_gateway.errors import AgentError
from voice_gateway.sessions.models import Message, Session, Tool


def context() -> AgentContext:
    session = Session(agent_id="remote", situation="a booking line", tools=[Tool(name="book")])
    return AgentContext(
        session, [Message(role="user", content="earlier")], session.tools, [{"id": "d1"}]
    )


async def test_negotiates_format_and_answers_a_turn(server: ExampleAgentServer) -> None:
    agent = WebSocketAgent(await server.start(), connect_timeout=2, read_timeout=2)
    conv = await agent.open(context())
    try:
        assert conv.audio_format == AudioFormat("pcm16", 16000)
        start = server.sessions[0]
        assert start["session"]["situation"] == "a booking line"
        assert start["history"][0]["content"] == "earlier"
        assert start["tools"][0]["name"] == "book" and start["documents"] == [{"id": "d1"}]
        audio = bytes(range(256)) * 25  # 6400 bytes = 200 ms at 16 kHz
        events = [e async for e in conv.answer(CallerTurn(1, audio, 200, conv.audio_format))]
        assert b"".join(e.audio for e in events if isinstance(e, AgentAudio)) == audio
        assert AgentText("caller turn 1", "user") in events
        assert SummaryUpdate("1 turns so far") in events
        keys = [e async for e in conv.dtmf("0", 2)]
        assert Transfer("+15005550100") in keys
        assert any(isinstance(e, HangUp) for e in [e async for e in conv.dtmf("*", 3)])
        await conv.interrupted(1, 120)
    finally:
        await conv.close("test over")
    kinds = [m["type"] for m in server.received]
    assert kinds == ["turn", "dtmf", "dtmf", "interrupted", "end"]
    assert server.received[3] == {"type": "interrupted", "turn_id": 1, "heard_ms": 120}


async def test_mulaw_only_service_gets_telephone_audio(server: ExampleAgentServer) -> None:
    server.encoding, server.sample_rate = "mulaw", 8000
    conv = await WebSocketAgent(await server.start()).open(context())
    assert conv.audio_format == AudioFormat("mulaw", 8000)
    await conv.close("done")


async def test_unreachable_service_is_an_agent_error() -> None:
    with pytest.raises(AgentError):
        await WebSocketAgent("ws://127.0.0.1:1/agent", connect_timeout=1).open(context())


async def test_service_that_never_gets_ready_times_out(server: ExampleAgentServer) -> None:
    server.no_ready = True
    with pytest.raises(AgentError, match="did not get ready"):
        await WebSocketAgent(await server.start(), connect_timeout=0.3).open(context())


async def test_silent_service_times_out_mid_answer(server: ExampleAgentServer) -> None:
    server.never_answer = True
    conv = await WebSocketAgent(await server.start(), read_timeout=0.3).open(context())
    with pytest.raises(AgentError, match="sent nothing"):
        [e async for e in conv.answer(CallerTurn(1, b"\x00" * 320, 10, conv.audio_format))]
    await conv.close("done")


async def test_crash_mid_call_is_an_agent_error(server: ExampleAgentServer) -> None:
    server.crash_after_turns = 2
    conv = await WebSocketAgent(await server.start(), read_timeout=2).open(context())
    first = [e async for e in conv.answer(CallerTurn(1, b"\x00" * 320, 10, conv.audio_format))]
    assert first
    with pytest.raises(AgentError, match="closed"):
        [e async for e in conv.answer(CallerTurn(2, b"\x00" * 320, 10, conv.audio_format))]
    await conv.close("done")

"""The turn bridge end to end: simulator <-> gateway <-> agent, with the fake Twilio REST API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from tests.e2e.conftest import GatewayFactory, Harness, speech_audio
from voice_gateway import appkeys
from voice_gateway.agents.base import (
    Agent,
    AgentAudio,
    AgentContext,
    AgentEvent,
    CallerTurn,
    Conversation,
)
from voice_gateway.agents.bridge import MAX_QUEUED_MS
from voice_gateway.agents.example_server import ExampleAgentServer
from voice_gateway.sessions.models import EndReason
from voice_gateway.settings import AgentConfig, NumberRoute
from voice_gateway.sim.audio import caller_recording, caller_recording_info, silence, tone

pytestmark = pytest.mark.asyncio(loop_scope="module")

REMOTE_NUMBER = "+18005550300"


@pytest_asyncio.fixture(loop_scope="module")
async def agent_server() -> AsyncIterator[ExampleAgentServer]:
    server = ExampleAgentServer()
    yield server
    await server.close()


async def remote_gateway(
    factory: GatewayFactory, server: ExampleAgentServer, store: str = "memory", **agent: object
) -> Harness:
    url = await server.start()
    options = {"connect_timeout": 2.0, "read_timeout": 2.0, **agent}
    return await factory(
        store,
        agents=[
            AgentConfig(id="echo", name="Echo", type="echo", transfer_to="+15005550100"),
            AgentConfig(id="remote", name="Remote", type="websocket", url=url, **options),  # type: ignore[arg-type]
        ],
        numbers=[NumberRoute(number=REMOTE_NUMBER, agent="remote")],
    )


@pytest.mark.slow
async def test_echo_answers_every_utterance_and_barge_in_clears_fast(
    gateway_factory: GatewayFactory,
) -> None:
    # Redis only: the in-memory store runs every other e2e test; this one plays 18 s of audio.
    gw = await gateway_factory("redis")
    info = caller_recording_info()
    result = await gw.place(audio=caller_recording(), to_number="+18005550199")
    assert result.ok, result.errors
    utterances = info["utterances"]
    latencies = result.turn_latencies_ms()
    assert len(latencies) == len(utterances) == 4  # every utterance got an answer
    silence_ms = gw.settings.turn.end_silence_ms
    assert all(silence_ms - 40 <= t <= silence_ms + 400 for t in latencies), latencies
    # The echoes overlap the next utterance: each overlap is a barge-in, cleared fast.
    barge_ins = result.barge_in_ms()
    assert barge_ins, "the fixture's echoes overlap the next utterance: expected barge-ins"
    talked_over = [
        seg
        for seg in result.utterances()
        if any(a <= result.send_times_ms[seg.start_frame] < b for a, b in result.playout_ms)
    ]
    assert len(barge_ins) == len(talked_over)  # every talk-over was cleared
    assert all(ms <= 100 for ms in barge_ins), barge_ins
    row = await gw.archived(result.session_id or "")
    assert row.turns == 4
    assert row.interruptions == len(result.clears_ms) >= 1
    history = await gw.archive.history(row.id, limit=100)
    users = [m for m in history if m.role == "user"]
    assert len(users) == 4 and all(m.turn_id is not None for m in users)
    cut = [m for m in history if m.role == "event" and "interrupted" in m.content]
    assert len(cut) == row.interruptions
    assert all(0 <= m.metadata["heard_ms"] <= 4000 for m in cut)


async def test_short_noise_during_playback_does_not_interrupt(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory("memory")
    # speak, then while the echo plays a 40 ms click, then silence
    audio = silence(300) + tone(800) + silence(800) + tone(40, dbfs=-6) + silence(2500)
    result = await gw.place(audio=audio)
    assert result.ok, result.errors
    assert len(result.turn_latencies_ms()) == 1
    assert result.clears_ms == []


async def test_keypad_reaches_the_remote_agent_and_gathering_works(
    gateway_factory: GatewayFactory, agent_server: ExampleAgentServer
) -> None:
    gw = await remote_gateway(
        gateway_factory, agent_server, dtmf_gather=True, dtmf_timeout_seconds=0.5
    )
    result = await gw.place(
        audio=silence(2500),
        to_number=REMOTE_NUMBER,
        dtmf=[(300, "1"), (450, "2"), (600, "#"), (1200, "7")],
    )
    assert result.ok, result.errors
    digits = [m["digits"] for m in agent_server.received if m["type"] == "dtmf"]
    assert digits == ["12", "7"]  # "#" ends a gathered sequence; a pause ends the next
    row = await gw.archived(result.session_id or "")
    keypad = [m for m in await gw.archive.history(row.id) if m.metadata.get("dtmf")]
    assert [m.metadata["dtmf"] for m in keypad] == ["12", "7"]


async def test_remote_agent_answers_in_its_own_format_and_updates_the_summary(
    gateway_factory: GatewayFactory, agent_server: ExampleAgentServer
) -> None:
    gw = await remote_gateway(gateway_factory, agent_server)
    result = await gw.place(audio=speech_audio(), to_number=REMOTE_NUMBER)
    assert result.ok, result.errors
    assert len(result.turn_latencies_ms()) == 1
    received = sum(r.size for r in result.events if r.kind == "media")
    assert 0.7 * 8 * 800 < received < 1.6 * 8 * 800  # ~the 0.8 s turn (plus rolls), resampled back
    row = await gw.archived(result.session_id or "")
    assert row.summary == "1 turns so far"
    history = await gw.archive.history(row.id)
    assert [m.content for m in history if m.role == "user"] == ["caller turn 1"]
    assert any(m.role == "assistant" and "you spoke for" in m.content for m in history)
    start = agent_server.sessions[0]
    assert start["session"]["id"] == row.id and start["session"]["agent_id"] == "remote"


async def test_agent_hang_up_waits_for_playback_then_hangs_up_over_rest(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory("memory")
    result = await gw.place(audio=speech_audio() + silence(3000), dtmf=[(2600, "*")])
    assert result.call_sid
    updates = gw.api.updates(result.call_sid)
    assert {"Status": "completed"} in [
        {k: v for k, v in u.items() if k == "Status"} for u in updates
    ]
    row = await gw.archived(result.session_id or "")
    assert row.end_reason is EndReason.HANGUP_BY_AGENT
    assert len(await gw.rows_for_call(result.call_sid)) == 1


async def test_status_callback_racing_the_agent_hang_up_keeps_the_agent_reason(
    gateway_factory: GatewayFactory,
) -> None:
    """Twilio may post the hang-up's ``completed`` status callback before its API answers the
    hang-up request: the session still ends ``hangup_by_agent``, once."""
    gw = await gateway_factory("memory")
    call = gw.call(audio=speech_audio() + silence(3000), dtmf=[(2600, "*")], status_callbacks=())
    answered: list[int | None] = []

    async def callback_first(call_sid: str, form: dict[str, str]) -> None:
        if call_sid == call.call_sid and form.get("Status") == "completed":
            answered.append(await call.post_status("completed", duration=3))

    gw.api.before_answer = callback_first
    result = await call.run()
    assert answered and answered[0] is not None and answered[0] < 300, answered
    row = await gw.archived(result.session_id or "")
    assert row.end_reason is EndReason.HANGUP_BY_AGENT
    assert len(await gw.rows_for_call(result.call_sid)) == 1


async def test_transfer_redirects_with_dial_and_ends_transferred(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(
        "memory",
        agents=[AgentConfig(id="echo", name="Echo", type="echo", transfer_to="+15005550100")],
    )
    result = await gw.place(audio=silence(3000), dtmf=[(500, "0")])
    twiml = [u.get("Twiml", "") for u in gw.api.updates(result.call_sid)]
    assert any("<Dial" in t and "+15005550100" in t for t in twiml), twiml
    row = await gw.archived(result.session_id or "")
    assert row.end_reason is EndReason.TRANSFERRED
    assert len(await gw.rows_for_call(result.call_sid)) == 1


async def test_crashing_remote_agent_falls_back_and_the_row_is_right(
    gateway_factory: GatewayFactory, agent_server: ExampleAgentServer
) -> None:
    agent_server.crash_after_turns = 2
    gw = await remote_gateway(gateway_factory, agent_server, fallback="echo")
    audio = speech_audio() + speech_audio() + speech_audio()
    result = await gw.place(audio=audio, to_number=REMOTE_NUMBER)
    assert result.ok, result.errors
    assert (
        len(result.turn_latencies_ms()) == 3
    )  # turn 2 answered again by the fallback, then turn 3
    row = await gw.archived(result.session_id or "")
    assert row.end_reason is EndReason.COMPLETED
    assert row.turns == 3
    events = [m.content for m in await gw.archive.history(row.id) if m.role == "event"]
    assert any(e.startswith("agent failed") for e in events)
    assert "switched to fallback agent echo" in events


async def test_remote_agent_failure_without_fallback_hangs_up_with_error(
    gateway_factory: GatewayFactory, agent_server: ExampleAgentServer
) -> None:
    agent_server.never_answer = True
    gw = await remote_gateway(gateway_factory, agent_server, read_timeout=0.5)
    result = await gw.place(audio=speech_audio() + silence(2000), to_number=REMOTE_NUMBER)
    assert {"Status": "completed"} in [
        {"Status": u["Status"]} for u in gw.api.updates(result.call_sid) if "Status" in u
    ]
    row = await gw.archived(result.session_id or "")
    assert row.end_reason is EndReason.ERROR


class _Runaway(Conversation):
    """An agent that streams 60 s of audio as fast as it can."""

    async def answer(self, turn: CallerTurn) -> AsyncIterator[AgentEvent]:
        for _ in range(600):
            yield AgentAudio(b"\x01" * 800)  # 100 ms


class _RunawayAgent(Agent):
    async def open(self, context: AgentContext) -> Conversation:
        return _Runaway()


async def test_an_agent_streaming_far_ahead_is_held_back(gateway_factory: GatewayFactory) -> None:
    """A runaway agent cannot fill the gateway's memory: it is read only as fast as playback
    makes room, so a call never holds much more than MAX_QUEUED_MS of audio."""

    async def swap_agent(app: web.Application) -> None:
        app[appkeys.AGENTS]["echo"] = _RunawayAgent()

    gw = await gateway_factory("memory", configure=lambda app: app.on_startup.append(swap_agent))
    task = asyncio.create_task(gw.place(audio=speech_audio() + silence(4000)))
    peak = 0
    while not task.done():
        for stream in gw.app[appkeys.CALLS].live_streams():
            peak = max(peak, stream.queued_ms)
        await asyncio.sleep(0.05)
    result = task.result()
    assert result.media_received > 0
    assert 0 < peak <= MAX_QUEUED_MS + 1000

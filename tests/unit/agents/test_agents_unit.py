"""Agent-side pure parts: audio conversion, history cut, echo, plugin loading."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from voice_gateway.agents.base import (
    AgentAudio,
    AudioFormat,
    CallerTurn,
    HangUp,
    Transfer,
    cut_history,
)
from voice_gateway.agents.bridge import FromAgentAudio, to_agent_audio
from voice_gateway.agents.echo import EchoAgent, EchoConversation
from voice_gateway.agents.registry import build_agent, load_plugin
from voice_gateway.audio.g711 import pcm16_to_ulaw, ulaw_to_pcm16
from voice_gateway.errors import ConfigError
from voice_gateway.sessions.models import ContextOverflow, Message, Session, utcnow
from voice_gateway.settings import AgentConfig


def tone_ulaw(freq: float = 440.0, ms: int = 400, amplitude: float = 8000.0) -> bytes:
    n = 8 * ms
    t = np.arange(n) / 8000.0
    return pcm16_to_ulaw((amplitude * np.sin(2 * math.pi * freq * t)).astype(np.int16))


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


def test_mulaw_conversation_gets_the_telephone_bytes_unchanged() -> None:
    audio = tone_ulaw()
    assert to_agent_audio(audio, AudioFormat("mulaw", 8000)) is audio
    assert FromAgentAudio(AudioFormat()).convert(audio) == audio


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_pcm_round_trip_keeps_length_and_level(rate: int) -> None:
    audio = tone_ulaw(ms=400)
    fmt = AudioFormat("pcm16", rate)
    pcm_bytes = to_agent_audio(audio, fmt)
    assert len(pcm_bytes) == 2 * 400 * rate // 1000
    back = FromAgentAudio(fmt)
    # deliver it in odd-sized pieces, as a network would
    out = b"".join(back.convert(pcm_bytes[i : i + 333]) for i in range(0, len(pcm_bytes), 333))
    out += back.flush()
    assert abs(len(out) - len(audio)) <= 16  # within 2 ms of the original length
    original = ulaw_to_pcm16(audio)[400:2800]
    returned = ulaw_to_pcm16(out)[400:2800]
    assert rms(returned) == pytest.approx(rms(original), rel=0.1)


def test_unsupported_formats_are_refused() -> None:
    with pytest.raises(ValueError):
        AudioFormat("mulaw", 16000)
    with pytest.raises(ValueError):
        AudioFormat("pcm16", 44100)


def _history(n: int) -> list[Message]:
    base = utcnow()
    return [
        Message(
            role="user" if i % 2 == 0 else "assistant",
            content=f"m{i}",
            created_at=base + timedelta(seconds=i),
        )
        for i in range(n)
    ]


def test_history_cut_follows_context_overflow() -> None:
    history = _history(10)
    short = Session(agent_id="a")
    assert cut_history(short, history, max_messages=20) == history
    truncate = Session(agent_id="a", context_overflow=ContextOverflow.TRUNCATE, summary="s")
    assert [m.content for m in cut_history(truncate, history, 4)] == ["m6", "m7", "m8", "m9"]
    summarize = Session(
        agent_id="a", context_overflow=ContextOverflow.SUMMARIZE, summary="wants a refund"
    )
    cut = cut_history(summarize, history, 4)
    assert cut[0].role == "system" and "wants a refund" in cut[0].content
    assert [m.content for m in cut[1:]] == ["m8", "m9"]
    adaptive_no_summary = Session(agent_id="a")
    assert [m.content for m in cut_history(adaptive_no_summary, history, 3)] == ["m7", "m8", "m9"]
    adaptive_summary = Session(agent_id="a", summary="x")
    assert cut_history(adaptive_summary, history, 4)[0].role == "system"


async def test_echo_plays_the_turn_back_and_keys_control_the_call() -> None:
    conv = EchoConversation()
    audio = tone_ulaw()
    events = [e async for e in conv.answer(CallerTurn(1, audio, 400))]
    assert AgentAudio(audio) in events
    assert [e async for e in conv.dtmf("5", 2) if isinstance(e, HangUp | Transfer)] == []
    assert any(isinstance(e, HangUp) for e in [e async for e in conv.dtmf("*", 3)])
    assert any(isinstance(e, Transfer) for e in [e async for e in conv.dtmf("0", 4)])
    assert conv.digits == ["5", "*", "0"]


class PluginAgent(EchoAgent):
    """A team's in-process agent, referenced as `module:Class` in config."""


def test_python_plugin_agents_load_by_module_and_class() -> None:
    config = AgentConfig(id="p", type="python", plugin=f"{__name__}:PluginAgent", options={"x": 1})
    agent = build_agent(config)
    assert isinstance(agent, PluginAgent) and agent.options == {"x": 1}
    with pytest.raises(ConfigError):
        load_plugin("no_such_module_anywhere:Agent")
    with pytest.raises(ConfigError):
        load_plugin(f"{__name__}:rms")  # not a class with open()

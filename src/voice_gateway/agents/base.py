"""The agent interface: a conversation per session, fed caller turns, answering with events.

An agent sees sessions and turns, never Twilio. The gateway converts audio to and from the
format the conversation asks for (``AudioFormat``): mu-law at 8 kHz (no conversion) or
16-bit PCM at 8, 16 or 24 kHz.

Events an answer may yield, in any order and number:
``AgentAudio`` (speech to play), ``AgentText`` (what the agent says, or the transcript of what
it heard), ``SummaryUpdate``, ``HangUp`` (after the audio already yielded has played),
``Transfer``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from voice_gateway.sessions.models import ContextOverflow, Message, Session, Tool

Encoding = Literal["mulaw", "pcm16"]
SUPPORTED_RATES = (8000, 16000, 24000)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding = "mulaw"
    sample_rate: int = 8000

    def __post_init__(self) -> None:
        if self.encoding not in ("mulaw", "pcm16"):
            raise ValueError(f"unsupported audio encoding {self.encoding!r}")
        if self.sample_rate not in SUPPORTED_RATES or (
            self.encoding == "mulaw" and self.sample_rate != 8000
        ):
            raise ValueError(f"unsupported audio format {self.encoding}/{self.sample_rate}")


TELEPHONE = AudioFormat("mulaw", 8000)


@dataclass(frozen=True, slots=True)
class AgentContext:
    """What a conversation is opened with."""

    session: Session
    history: Sequence[Message]
    tools: Sequence[Tool]
    documents: Sequence[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class CallerTurn:
    turn_id: int
    audio: bytes  # in the conversation's audio format
    duration_ms: int  # the speech span, without pre/post roll
    format: AudioFormat = TELEPHONE


@dataclass(frozen=True, slots=True)
class AgentAudio:
    audio: bytes  # in the conversation's audio format


@dataclass(frozen=True, slots=True)
class AgentText:
    text: str
    role: Literal["assistant", "user"] = "assistant"  # user = transcript of the caller


@dataclass(frozen=True, slots=True)
class SummaryUpdate:
    summary: str


@dataclass(frozen=True, slots=True)
class HangUp:
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Transfer:
    target: str | None = None  # None: the agent's configured transfer_to


AgentEvent = AgentAudio | AgentText | SummaryUpdate | HangUp | Transfer


class Conversation(ABC):
    """One session's conversation with an agent. Methods may raise ``AgentError``."""

    #: The audio format this conversation takes and produces.
    audio_format: AudioFormat = TELEPHONE

    @abstractmethod
    def answer(self, turn: CallerTurn) -> AsyncIterator[AgentEvent]:
        """Answer a caller turn. The gateway cancels the iteration on barge-in."""

    async def dtmf(self, digits: str, turn_id: int) -> AsyncIterator[AgentEvent]:
        """Keypad input (one digit, or a gathered sequence), answered like a turn with
        ``turn_id``. Default: ignored."""
        return
        yield  # pragma: no cover - makes this an async generator

    async def interrupted(self, turn_id: int, heard_ms: int) -> None:
        """The caller talked over the answer to ``turn_id`` after hearing ``heard_ms`` of it."""
        return None

    async def close(self, reason: str) -> None:
        return None


class Agent(ABC):
    """A configured agent; opens one conversation per session."""

    @abstractmethod
    async def open(self, context: AgentContext) -> Conversation: ...


def cut_history(
    session: Session, history: Sequence[Message], max_messages: int = 50
) -> list[Message]:
    """The history a conversation is opened with, cut by the session's ``context_overflow``.

    - ``truncate``: the last ``max_messages`` messages.
    - ``summarize``: the session summary (as a system message) plus the last half.
    - ``adaptive`` (default): everything when it fits; else ``summarize`` when there is a
      summary, else ``truncate``.
    """
    if len(history) <= max_messages:
        return list(history)
    strategy = session.context_overflow
    if strategy is ContextOverflow.ADAPTIVE:
        strategy = ContextOverflow.SUMMARIZE if session.summary else ContextOverflow.TRUNCATE
    if strategy is ContextOverflow.TRUNCATE or not session.summary:
        return list(history[-max_messages:])
    keep = max(1, max_messages // 2)
    note = Message(role="system", content=f"Summary of the earlier conversation: {session.summary}")
    return [note, *history[-keep:]]

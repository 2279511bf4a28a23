"""The seam between a call's media stream and whatever handles its audio.

The media-stream handler (``stream.py``) owns the socket, parses frames and keeps the playback
clock; it hands the caller's audio to a ``CallBridge`` and gives the bridge a ``CallControl`` to
speak back with. The bridge never sees Twilio messages, and the handler never sees turns or
agents.

Per-frame calls (``on_audio``) are synchronous and must not block: a bridge that needs to do
I/O schedules it on its own tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from voice_gateway.sessions.models import EndReason, Session


@dataclass(frozen=True, slots=True)
class CallInfo:
    session: Session
    call_sid: str
    stream_sid: str
    account_sid: str


class CallControl(Protocol):
    """What a bridge may do to its call. Audio is raw mu-law, 8 kHz mono."""

    def play(self, ulaw: bytes, *, label: str | None = None) -> None:
        """Queue audio for the caller (sent as 20 ms frames, paced by Twilio's buffer)."""

    def end_of_answer(self, label: str) -> None:
        """Mark the end of an answer: ``CallBridge.on_played(label)`` fires once it was heard."""

    def clear(self) -> int:
        """Stop playback now (barge-in); returns the ms of queued audio that was dropped."""

    @property
    def played_ms(self) -> int:
        """Agent audio the caller has heard (mark echoes), in ms since the stream started."""

    @property
    def queued_ms(self) -> int:
        """Agent audio sent or queued but not yet confirmed played."""

    @property
    def clock_ms(self) -> int:
        """Caller audio received so far, in ms (the call's media clock)."""

    async def hang_up(self, end_reason: EndReason = EndReason.HANGUP_BY_AGENT) -> None:
        """End the call over Twilio REST and complete the session with ``end_reason``."""

    async def transfer(self, target: str) -> None:
        """Redirect the call with ``<Dial>target</Dial>``; the session ends ``transferred``."""


class CallBridge(Protocol):
    async def start(self, call: CallInfo, control: CallControl) -> None:
        """The stream started and was verified; the bridge may begin (e.g. a greeting)."""

    def on_audio(self, ulaw: bytes) -> None:
        """One inbound media chunk (normally 20 ms = 160 bytes). Must not block."""

    def audio_slack_ms(self) -> float:
        """How long the next inbound frame may wait before it is handled without delaying
        anything the bridge does (until the earliest frame that could barge in or end a turn;
        0 when the very next one could; ``inf`` when none could): the stream reads the socket
        less often within it (``telephony/pacing.py``)."""

    def on_dtmf(self, digit: str) -> None: ...

    def on_played(self, label: str) -> None:
        """Audio up to ``end_of_answer(label)`` finished playing (or was cleared)."""

    async def stop(self, reason: str) -> None:
        """The stream ended (``stop``, socket closed, shutdown). Flush what must be kept."""


class SilentBridge:
    """A bridge that listens and says nothing (for calls with no agent attached)."""

    async def start(self, call: CallInfo, control: CallControl) -> None:
        return None

    def on_audio(self, ulaw: bytes) -> None:
        return None

    def audio_slack_ms(self) -> float:
        return math.inf

    def on_dtmf(self, digit: str) -> None:
        return None

    def on_played(self, label: str) -> None:
        return None

    async def stop(self, reason: str) -> None:
        return None

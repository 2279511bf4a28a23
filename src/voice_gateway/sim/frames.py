"""What a simulated call streams, prepared once per process, and its ``media`` frames.

Every call of a load test streams the same fixture, so the per-frame work that only depends on
the audio is done once per distinct audio and shared by all calls of the process:

- :func:`frame_plan` cuts the audio into 160-byte frames (looped or cut to ``loop_seconds``,
  the last one padded with silence, then the trailing silence), with each frame's base64
  payload and whether it carries speech (:func:`~voice_gateway.sim.audio.frame_is_speech`).
- :class:`MediaRenderer` writes a call's ``media`` frames from a string template. The result
  is byte for byte what :func:`voice_gateway.telephony.media.twilio_media` writes; the
  renderer checks that once per stream and falls back to ``twilio_media`` if it ever differs.
"""

from __future__ import annotations

import binascii
import functools
import json
from dataclasses import dataclass
from typing import Final

from voice_gateway.sim.audio import FRAME_BYTES, FRAME_MS, frame_is_speech, silence
from voice_gateway.telephony import media as codec

__all__ = ["FramePlan", "MediaRenderer", "frame_plan"]

#: Distinct (audio, loop, trailing silence) plans kept per process.
_PLAN_CACHE_SIZE: Final = 16


@dataclass(frozen=True, slots=True)
class FramePlan:
    """The frames of one call's stream, in order. Repeated frames are the same objects."""

    #: Raw mu-law, 160 bytes each.
    frames: tuple[bytes, ...]
    #: ``frames[n]`` base64-encoded, as the ``media.payload`` of frame n.
    payloads: tuple[str, ...]
    #: Whether ``frames[n]`` carries speech (energy detector).
    speech: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.frames)


def frame_plan(audio: bytes, loop_seconds: float | None, trailing_silence_ms: int) -> FramePlan:
    """The frames a call streams for this audio (cached per process)."""
    return _plan(bytes(audio), loop_seconds, trailing_silence_ms)


@functools.lru_cache(maxsize=_PLAN_CACHE_SIZE)
def _plan(audio: bytes, loop_seconds: float | None, trailing_silence_ms: int) -> FramePlan:
    if loop_seconds is not None:
        total = round(loop_seconds * 1000 / FRAME_MS)
        if audio:
            looped = audio * (total * FRAME_BYTES // len(audio) + 1)
            audio = looped[: total * FRAME_BYTES]
        else:
            audio = silence(total * FRAME_MS)
    quiet = silence(FRAME_MS)
    raw = []
    for i in range(0, len(audio), FRAME_BYTES):
        frame = audio[i : i + FRAME_BYTES]
        if len(frame) < FRAME_BYTES:
            frame += quiet[: FRAME_BYTES - len(frame)]
        raw.append(frame)
    raw.extend(quiet for _ in range(trailing_silence_ms // FRAME_MS))
    # One object, one base64 string and one speech decision per distinct frame.
    distinct: dict[bytes, tuple[bytes, str, bool]] = {}
    for frame in raw:
        if frame not in distinct:
            b64 = binascii.b2a_base64(frame, newline=False).decode("ascii")
            distinct[frame] = (frame, b64, frame_is_speech(frame))
    entries = [distinct[frame] for frame in raw]
    return FramePlan(
        frames=tuple(e[0] for e in entries),
        payloads=tuple(e[1] for e in entries),
        speech=tuple(e[2] for e in entries),
    )


class MediaRenderer:
    """``media`` frames of one stream from a template, identical to ``codec.twilio_media``."""

    __slots__ = ("_head", "_mid", "exact", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self._head = '{"event":"media","sequenceNumber":"'
        sid = json.dumps(stream_sid, separators=(",", ":"), ensure_ascii=False)
        self._mid = '","streamSid":' + sid + ',"media":{"track":"inbound","chunk":"'
        #: Whether the template matches ``twilio_media`` (checked on a probe frame).
        self.exact = True
        probe = b"\x00\xff\x7f\x80"
        b64 = binascii.b2a_base64(probe, newline=False).decode("ascii")
        self.exact = self.render(12, 34, 560, probe, b64) == codec.twilio_media(
            stream_sid, 12, 34, 560, probe
        )

    def render(self, seq: int, chunk: int, timestamp_ms: int, payload: bytes, b64: str) -> str:
        """Frame ``chunk`` (``payload``, whose base64 is ``b64``) with ``sequenceNumber`` seq."""
        if not self.exact:
            return codec.twilio_media(self.stream_sid, seq, chunk, timestamp_ms, payload)
        return (
            f'{self._head}{seq}{self._mid}{chunk}","timestamp":"{timestamp_ms}",'
            f'"payload":"{b64}"}}}}'
        )

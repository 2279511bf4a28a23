"""Audio for simulated callers: the packaged recording, synthetic mu-law, speech detection.

Everything is raw G.711 mu-law, 8 kHz mono (what Twilio streams), 160 bytes per 20 ms frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import numpy as np

from voice_gateway.audio.g711 import ULAW_SILENCE, pcm16_to_ulaw, ulaw_to_pcm16

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SAMPLE_RATE",
    "SpeechSegment",
    "caller_recording",
    "caller_recording_info",
    "frame_is_speech",
    "silence",
    "speech_segments",
    "tone",
]

SAMPLE_RATE: Final = 8000
FRAME_BYTES: Final = 160
FRAME_MS: Final = 20
#: Frames whose RMS is above this (dBFS) count as speech in :func:`speech_segments`.
SPEECH_DBFS: Final = -45.0

_DATA = "voice_gateway.sim.data"


def caller_recording() -> bytes:
    """The packaged caller recording (about 18 s, four utterances), raw mu-law."""
    return resources.files(_DATA).joinpath("caller.ulaw").read_bytes()


def caller_recording_info() -> dict[str, Any]:
    """The recording's description: utterance texts and their frame ranges."""
    data: dict[str, Any] = json.loads(
        resources.files(_DATA).joinpath("caller.json").read_text(encoding="utf-8")
    )
    return data


def caller_recording_speech() -> list[tuple[int, int]]:
    """The recording's utterances as inclusive frame ranges: its exact turn boundaries."""
    return [(u["start_frame"], u["end_frame"]) for u in caller_recording_info()["utterances"]]


def silence(ms: int) -> bytes:
    """``ms`` milliseconds of digital silence (0xFF)."""
    return bytes([ULAW_SILENCE]) * (SAMPLE_RATE * ms // 1000)


def tone(ms: int, *, hz: float = 440.0, dbfs: float = -12.0) -> bytes:
    """A sine tone of ``ms`` milliseconds: synthetic "speech" that any energy VAD hears."""
    n = SAMPLE_RATE * ms // 1000
    amplitude = 32767 * 10 ** (dbfs / 20)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    pcm = (amplitude * np.sin(2 * math.pi * hz * t)).astype(np.int16)
    return bytes(pcm16_to_ulaw(pcm))


def frame_is_speech(frame: bytes, threshold_dbfs: float = SPEECH_DBFS) -> bool:
    """Whether one frame's RMS level is above ``threshold_dbfs``."""
    if not frame:
        return False
    pcm = ulaw_to_pcm16(frame).astype(np.float64)
    rms = float(np.sqrt(np.mean(pcm * pcm)))
    if rms <= 0:
        return False
    return 20 * math.log10(rms / 32768) > threshold_dbfs


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    """Frames ``start_frame`` .. ``end_frame`` (inclusive) of a frame sequence are speech."""

    start_frame: int
    end_frame: int


def speech_segments(
    flags: list[bool], *, hangover_frames: int = 15, min_frames: int = 5
) -> list[SpeechSegment]:
    """Utterances in a per-frame speech/non-speech sequence.

    A pause shorter than ``hangover_frames`` (300 ms by default) does not end an utterance;
    utterances shorter than ``min_frames`` are dropped (clicks).
    """
    out: list[SpeechSegment] = []
    start: int | None = None
    last = -1
    for i, speech in enumerate(flags):
        if not speech:
            if start is not None and i - last > hangover_frames:
                if last - start + 1 >= min_frames:
                    out.append(SpeechSegment(start, last))
                start = None
            continue
        if start is None:
            start = i
        last = i
    if start is not None and last - start + 1 >= min_frames:
        out.append(SpeechSegment(start, last))
    return out

"""Caller audio: G.711 codec, resampling, voice-activity detection and turn detection.

Pure, synchronous, per-frame code (no I/O, no asyncio); see ``docs/audio.md``.

* :mod:`voice_gateway.audio.g711` - mu-law <-> 16-bit PCM.
* :mod:`voice_gateway.audio.resample` - streaming 8/16/24/48 kHz conversion.
* :mod:`voice_gateway.audio.vad` - voice-activity detectors and their registry.
* :mod:`voice_gateway.audio.endpointer` - caller turns from 20 ms mu-law frames.
"""

from __future__ import annotations

from voice_gateway.audio.endpointer import (
    BargeInCandidate,
    Endpointer,
    EndpointerConfig,
    Event,
    SpeechStarted,
    TurnDiscarded,
    TurnEnded,
)
from voice_gateway.audio.g711 import (
    ULAW_SILENCE,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
    ulaw_to_pcm16_bytes,
)
from voice_gateway.audio.resample import SUPPORTED_RATES, Resampler, resample_all
from voice_gateway.audio.vad import (
    EnergyVad,
    VoiceActivityDetector,
    WebRtcVad,
    create_vad,
    register_vad,
)

__all__ = [
    "SUPPORTED_RATES",
    "ULAW_SILENCE",
    "BargeInCandidate",
    "Endpointer",
    "EndpointerConfig",
    "EnergyVad",
    "Event",
    "Resampler",
    "SpeechStarted",
    "TurnDiscarded",
    "TurnEnded",
    "VoiceActivityDetector",
    "WebRtcVad",
    "create_vad",
    "pcm16_to_ulaw",
    "register_vad",
    "resample_all",
    "ulaw_to_pcm16",
    "ulaw_to_pcm16_bytes",
]

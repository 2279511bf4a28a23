"""Helpers for the audio tests: the spoken caller fixture, synthetic line noise, mixing."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voice_gateway.audio.g711 import pcm16_to_ulaw, ulaw_to_pcm16

FIXTURES = Path(__file__).parents[2] / "fixtures"
FRAME = 160  # mu-law bytes (= samples) per 20 ms frame
RATE = 8000
SILENT_FRAME = b"\xff" * FRAME

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Utterance:
    index: int
    start_frame: int
    end_frame_exclusive: int
    text: str


@functools.cache
def load_caller() -> tuple[bytes, tuple[Utterance, ...]]:
    """The spoken fixture (raw 8 kHz mu-law) and its utterances with exact frame boundaries."""
    audio = (FIXTURES / "caller.ulaw").read_bytes()
    meta = json.loads((FIXTURES / "caller.json").read_text())
    assert len(audio) == meta["total_frames"] * FRAME
    utterances = tuple(
        Utterance(u["index"], u["start_frame"], u["end_frame_exclusive"], u["text"])
        for u in meta["utterances"]
    )
    return audio, utterances


def dbfs_amplitude(dbfs: float) -> float:
    """RMS (16-bit units) of a signal at ``dbfs``."""
    return float(32768.0 * 10.0 ** (dbfs / 20.0))


def to_ulaw(signal: FloatArray) -> bytes:
    """Round, clip and mu-law-encode a float signal in 16-bit units."""
    return pcm16_to_ulaw(np.clip(np.rint(signal), -32768, 32767).astype(np.int16))


def frames_of(ulaw: bytes) -> list[bytes]:
    return [ulaw[i : i + FRAME] for i in range(0, len(ulaw), FRAME)]


def mix(ulaw: bytes, noise: FloatArray) -> bytes:
    """Add noise (float, 16-bit units, same length) to mu-law audio."""
    return to_ulaw(ulaw_to_pcm16(ulaw).astype(np.float64) + noise)


def line_noise(
    seconds: float,
    *,
    white_dbfs: float | None = None,
    hum_hz: float | None = None,
    hum_dbfs: float = -40.0,
    clicks: int = 0,
    seed: int = 0,
) -> FloatArray:
    """Synthetic line noise: white hiss, mains hum with 3rd and 5th harmonics, clicks."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    signal = np.zeros(n)
    if white_dbfs is not None:
        signal += rng.standard_normal(n) * dbfs_amplitude(white_dbfs)
    if hum_hz is not None:
        for harmonic, gain_db in ((1, 0.0), (3, -10.0), (5, -16.0)):
            amplitude = dbfs_amplitude(hum_dbfs + gain_db) * np.sqrt(2.0)  # sine peak from rms
            signal += amplitude * np.sin(2 * np.pi * hum_hz * harmonic * t + harmonic)
    for position in rng.integers(0, n - 8, size=clicks):
        signal[position : position + 4] += [20000.0, -15000.0, 8000.0, -3000.0]
    return signal


def tone(hz: float, seconds: float, rate: int, dbfs: float = -12.0) -> FloatArray:
    """A sine whose RMS is ``dbfs``."""
    t = np.arange(int(seconds * rate)) / rate
    signal: FloatArray = dbfs_amplitude(dbfs) * np.sqrt(2.0) * np.sin(2 * np.pi * hz * t)
    return signal

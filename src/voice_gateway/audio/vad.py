"""Voice-activity detection for 20 ms frames of 8 kHz 16-bit PCM, with a pluggable registry.

A detector answers one question per frame: is this speech? The endpointer
(:mod:`voice_gateway.audio.endpointer`) turns those answers into caller turns.

* :class:`VoiceActivityDetector` is the interface (a :class:`typing.Protocol`): ``is_speech``
  for one frame of :data:`FRAME_SAMPLES` samples (:data:`FRAME_BYTES` bytes of little-endian
  int16 at 8 kHz) and ``reset`` to forget the stream.
* :class:`WebRtcVad` (name ``"webrtc"``, the default) is the WebRTC GMM detector behind an
  adaptive energy gate that keeps it quiet on line noise, hiss and hum.
* :class:`EnergyVad` (name ``"energy"``) is a plain RMS threshold: cheap, no model, only for clean
  lines.
* :func:`create_vad` builds a detector by name; ``"package.module:ClassName"`` imports a class
  from anywhere (e.g. a team's Silero wrapper) and :func:`register_vad` adds a short name.

Levels are in dBFS: ``20 * log10(rms / 32768)``, so a full-scale square wave is 0 dBFS and a
full-scale sine -3 dBFS. Digital silence is reported as :data:`MIN_DBFS`.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import webrtcvad

from voice_gateway.errors import ConfigError

__all__ = [
    "FRAME_BYTES",
    "FRAME_SAMPLES",
    "MIN_DBFS",
    "SAMPLE_RATE",
    "EnergyVad",
    "VoiceActivityDetector",
    "WebRtcVad",
    "available_vads",
    "create_vad",
    "dbfs_to_power",
    "frame_dbfs",
    "frame_power",
    "power_to_dbfs",
    "register_vad",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160  # 20 ms at 8 kHz
FRAME_BYTES: Final = 2 * FRAME_SAMPLES
#: Level reported for digital silence (and the lowest level any frame is given).
MIN_DBFS: Final = -100.0

_FULL_SCALE_POWER: Final = 32768.0 * 32768.0
_MIN_MEAN_SQUARE: Final = _FULL_SCALE_POWER * 10.0 ** (MIN_DBFS / 10.0)
_SILENT_FRAME: Final = bytes(FRAME_BYTES)
# Pre-built dtypes and a bound function: these run for every frame of every call.
_PCM_DTYPE: Final = np.dtype("<i2")
_FLOAT_DTYPE: Final = np.dtype(np.float32)
_frombuffer: Final = np.frombuffer


@runtime_checkable
class VoiceActivityDetector(Protocol):
    """Decides, frame by frame, whether a telephone stream carries speech.

    Frames arrive in order, one call per 20 ms frame, as :data:`FRAME_BYTES` bytes of 16-bit
    little-endian PCM at 8 kHz. Implementations may keep state between frames (noise estimates,
    hang-over, recurrent state); ``reset`` starts a new stream. They must be cheap: this runs for
    every frame of every call.
    """

    def is_speech(self, pcm16_8k: bytes) -> bool:
        """Return True when the frame is (part of) speech."""
        ...

    def reset(self) -> None:
        """Forget everything learnt from earlier frames."""
        ...


def _check_frame(pcm16_8k: bytes) -> None:
    if len(pcm16_8k) != FRAME_BYTES:
        raise ValueError(
            f"a VAD frame is {FRAME_BYTES} bytes (20 ms of 8 kHz 16-bit PCM), got {len(pcm16_8k)}"
        )


def frame_power(pcm16: bytes) -> float:
    """Mean square of 16-bit little-endian PCM samples (0.0 for no data)."""
    if pcm16 == _SILENT_FRAME:  # the common case of digital silence, without numpy
        return 0.0
    samples = _frombuffer(pcm16, _PCM_DTYPE).astype(_FLOAT_DTYPE)
    if not samples.size:
        return 0.0
    return float(samples.dot(samples)) / samples.size


def power_to_dbfs(mean_square: float) -> float:
    """Convert a mean square to dBFS, with :data:`MIN_DBFS` as the lowest value."""
    if mean_square <= _MIN_MEAN_SQUARE:
        return MIN_DBFS
    return 10.0 * math.log10(mean_square / _FULL_SCALE_POWER)


def dbfs_to_power(dbfs: float) -> float:
    """Convert dBFS to the mean square of 16-bit samples."""
    return float(_FULL_SCALE_POWER * 10.0 ** (dbfs / 10.0))


def frame_dbfs(pcm16: bytes) -> float:
    """RMS level of 16-bit little-endian PCM in dBFS (:data:`MIN_DBFS` for silence or no data)."""
    return power_to_dbfs(frame_power(pcm16))


# webrtcvad.Vad.is_speech is a Python wrapper around this C function; calling it directly saves
# a fair part of the per-frame cost. Fall back to the wrapper if a release moves it.
_webrtc_process: Any = getattr(getattr(webrtcvad, "_webrtcvad", None), "process", None)


class WebRtcVad:
    """WebRTC's VAD (``webrtcvad``) behind an adaptive energy gate.

    A frame is handed to WebRTC's detector only when it passes the gate:

    * it is at least ``min_snr_db`` above the measured noise floor, so stationary hum, hiss or a
      steady tone never count, however loud; and
    * it is at or above ``energy_floor_dbfs`` (-45 dBFS), or at least ``noise_margin_db`` above the
      noise floor. The second path lets soft onsets ("th", "f", "h") through on a clean line,
      where the noise floor is far below -45 dBFS; on a line with -50 dBFS of hiss it adds
      nothing, and frames of hiss (below -45 dBFS) are never speech.

    The noise floor is the quietest frame of the last ``noise_window_ms`` (minimum statistics:
    speech has pauses and dips, line noise does not), kept as the minima of four blocks plus the
    running minimum of the current block, so it costs O(1) per frame and follows a change of line
    noise within ``noise_window_ms`` to ``1.25 * noise_window_ms``. The flip side: a sound that
    holds one level for longer than that (a steady tone, music on hold) becomes the noise floor
    and stops counting as speech; real speech always dips between syllables.

    Set ``noise_margin_db=None`` for a plain absolute gate (``energy_floor_dbfs`` only, no noise
    tracking). WebRTC's detector on its own flags low hiss, hum and clicks now and then and calls
    the first 4-5 frames of any stream speech; the gate removes those answers.

    ``aggressiveness`` is WebRTC's mode, 0 (least) to 3 (most aggressive in rejecting non-speech).
    """

    _BLOCKS: Final = 4

    def __init__(
        self,
        aggressiveness: int = 2,
        *,
        energy_floor_dbfs: float = -45.0,
        noise_margin_db: float | None = 12.0,
        min_snr_db: float = 6.0,
        noise_window_ms: int = 2000,
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, got {aggressiveness!r}")
        if not MIN_DBFS <= energy_floor_dbfs <= 0.0:
            raise ValueError(
                f"energy_floor_dbfs must be between {MIN_DBFS} and 0, got {energy_floor_dbfs!r}"
            )
        if noise_margin_db is not None and noise_margin_db < 0.0:
            raise ValueError(f"noise_margin_db must be >= 0 or None, got {noise_margin_db!r}")
        if min_snr_db < 0.0:
            raise ValueError(f"min_snr_db must be >= 0, got {min_snr_db!r}")
        if noise_window_ms < 4 * 20:
            raise ValueError(f"noise_window_ms must be at least 80, got {noise_window_ms!r}")
        self.aggressiveness = aggressiveness
        self.energy_floor_dbfs = float(energy_floor_dbfs)
        self.noise_margin_db = None if noise_margin_db is None else float(noise_margin_db)
        self.min_snr_db = float(min_snr_db)
        self.noise_window_ms = noise_window_ms
        # The gate compares mean squares, so a frame costs no logarithm.
        self._adaptive = noise_margin_db is not None
        self._floor_power = dbfs_to_power(self.energy_floor_dbfs)
        self._margin = 10.0 ** ((noise_margin_db or 0.0) / 10.0)
        self._min_snr = 10.0 ** (self.min_snr_db / 10.0)
        self._block_frames = noise_window_ms // 20 // self._BLOCKS
        self._block_mins: list[float] = []
        self._vad = webrtcvad.Vad(aggressiveness)
        self.reset()

    def __repr__(self) -> str:
        return (
            f"WebRtcVad(aggressiveness={self.aggressiveness}, "
            f"energy_floor_dbfs={self.energy_floor_dbfs}, noise_margin_db={self.noise_margin_db}, "
            f"min_snr_db={self.min_snr_db}, noise_window_ms={self.noise_window_ms})"
        )

    @property
    def last_dbfs(self) -> float:
        """Level of the last frame seen (dBFS)."""
        return power_to_dbfs(self._last_power)

    @property
    def noise_floor_dbfs(self) -> float:
        """Current noise floor estimate (dBFS); :data:`MIN_DBFS` before the first frame."""
        noise = min(self._closed_min, self._block_min)
        return MIN_DBFS if noise == math.inf else power_to_dbfs(noise)

    def reset(self) -> None:
        self._vad = webrtcvad.Vad(self.aggressiveness)
        self._handle: Any = getattr(self._vad, "_vad", None)
        self._block_mins.clear()
        self._closed_min = math.inf  # minimum over the closed blocks
        self._block_min = math.inf  # minimum over the current block
        self._filled = 0  # frames in the current block
        self._last_power = 0.0

    def passes_gate(self, pcm16_8k: bytes) -> bool:
        """Update the level and noise estimates with this frame; True if it may be speech."""
        if pcm16_8k == _SILENT_FRAME:
            power = 0.0
        else:
            samples = _frombuffer(pcm16_8k, _PCM_DTYPE).astype(_FLOAT_DTYPE)
            power = float(samples.dot(samples)) / FRAME_SAMPLES
        self._last_power = power
        if not self._adaptive:
            return power >= self._floor_power
        tracked = power if power > _MIN_MEAN_SQUARE else _MIN_MEAN_SQUARE
        if tracked < self._block_min:
            self._block_min = tracked
        self._filled += 1
        if self._filled < self._block_frames:
            closed = self._closed_min
            noise = closed if closed < self._block_min else self._block_min
        else:
            noise = self._close_block()
        if power < noise * self._min_snr:
            return False
        return power >= self._floor_power or power >= noise * self._margin

    def _close_block(self) -> float:
        mins = self._block_mins
        mins.append(self._block_min)
        if len(mins) > self._BLOCKS:
            del mins[0]
        self._closed_min = min(mins)
        self._block_min = math.inf
        self._filled = 0
        return self._closed_min

    def is_speech(self, pcm16_8k: bytes) -> bool:
        if len(pcm16_8k) != FRAME_BYTES:
            _check_frame(pcm16_8k)
        if not self.passes_gate(pcm16_8k):
            return False
        if _webrtc_process is not None and self._handle is not None:
            return bool(_webrtc_process(self._handle, SAMPLE_RATE, pcm16_8k, FRAME_SAMPLES))
        return bool(self._vad.is_speech(pcm16_8k, SAMPLE_RATE, FRAME_SAMPLES))


class EnergyVad:
    """Speech when the frame's RMS level is at or above ``threshold_dbfs``. No model, no state.

    Cheap and predictable, but it cannot tell speech from noise of the same level: use it on
    clean lines, in tests, or as a baseline.
    """

    def __init__(self, threshold_dbfs: float = -40.0) -> None:
        if not MIN_DBFS <= threshold_dbfs <= 0.0:
            raise ValueError(
                f"threshold_dbfs must be between {MIN_DBFS} and 0, got {threshold_dbfs!r}"
            )
        self.threshold_dbfs = float(threshold_dbfs)
        self._threshold_power = dbfs_to_power(self.threshold_dbfs)

    def __repr__(self) -> str:
        return f"EnergyVad(threshold_dbfs={self.threshold_dbfs})"

    def reset(self) -> None:
        """Nothing to forget."""

    def is_speech(self, pcm16_8k: bytes) -> bool:
        _check_frame(pcm16_8k)
        return frame_power(pcm16_8k) >= self._threshold_power


VadFactory = Callable[..., VoiceActivityDetector]

_REGISTRY: dict[str, VadFactory] = {
    "webrtc": WebRtcVad,
    "energy": EnergyVad,
}


def register_vad(name: str, factory: VadFactory) -> None:
    """Make ``create_vad(name, **options)`` call ``factory(**options)``.

    Names are short identifiers without ``":"`` (which marks ``module:Class`` references).
    Re-registering a name replaces it.
    """
    if not name or ":" in name:
        raise ValueError(f"a VAD name must be non-empty and contain no ':', got {name!r}")
    _REGISTRY[name] = factory


def available_vads() -> list[str]:
    """The registered short names (``module:Class`` references work in addition)."""
    return sorted(_REGISTRY)


def _import_factory(reference: str) -> VadFactory:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            f"VAD reference {reference!r} is not 'package.module:ClassName'", key="vad"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import VAD module {module_name!r}: {exc}", key="vad") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ConfigError(
                f"module {module_name!r} has no attribute {attribute!r}", key="vad"
            ) from exc
    if not callable(target):
        raise ConfigError(f"VAD reference {reference!r} is not a class or factory", key="vad")
    factory: VadFactory = target
    return factory


def create_vad(name: str = "webrtc", **options: Any) -> VoiceActivityDetector:
    """Build a detector: a registered name (``"webrtc"``, ``"energy"``) or ``"module:Class"``.

    ``options`` are passed to the class (or factory) as keyword arguments. Raises
    :class:`~voice_gateway.errors.ConfigError` for an unknown name, a reference that cannot be
    imported, options the class rejects, or an object without ``is_speech`` and ``reset``.
    """
    if ":" in name:
        factory = _import_factory(name)
    else:
        try:
            factory = _REGISTRY[name]
        except KeyError:
            known = ", ".join(available_vads())
            raise ConfigError(
                f"unknown VAD {name!r}; use one of {known} or 'package.module:ClassName'",
                key="vad",
            ) from None
    try:
        vad = factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot create VAD {name!r} with {options!r}: {exc}", key="vad") from exc
    if not isinstance(vad, VoiceActivityDetector):
        raise ConfigError(
            f"VAD {name!r} built a {type(vad).__name__}, which lacks is_speech() and reset()",
            key="vad",
        )
    logger.debug("created VAD %r: %r", name, vad)
    return vad

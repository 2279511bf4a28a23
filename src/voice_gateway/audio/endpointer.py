"""Turn detection: cuts the caller's 8 kHz mu-law stream into turns, one 20 ms frame at a time.

Feed every 160-byte mu-law frame of a call to :meth:`Endpointer.push`; it returns the events that
frame caused (usually none):

* :class:`SpeechStarted` when the start threshold is met: ``start_ms`` of speech among the frames
  of a short sliding window (``start_window_ms``), so one frame the VAD misses does not restart
  the count. ``start_frame`` is the first speech frame of that window, not the frame where the
  threshold was met.
* :class:`BargeInCandidate` once per turn when the turn has carried ``barge_in_ms`` of speech
  without a gap longer than the start window's tolerance. While the agent is talking, the caller
  of the endpointer should treat *this* event, not :class:`SpeechStarted`, as a barge-in.
* :class:`TurnEnded` when ``end_silence_ms`` of non-speech follow the last speech frame
  (``reason="silence"``), when the turn reaches ``max_turn_ms`` (``"max_length"``: the turn is cut
  there and, if the caller keeps talking, a new one starts on the next frames with no audio lost
  or repeated), or at :meth:`Endpointer.flush` (``"flush"``). Its audio runs from ``pre_roll_ms``
  before the first speech frame to ``post_roll_ms`` after the last one.
* :class:`TurnDiscarded` instead of :class:`TurnEnded` when the speech lasted less than
  ``min_turn_ms`` (a cough, a click, a blip): every :class:`SpeechStarted` is followed by exactly
  one :class:`TurnEnded` or :class:`TurnDiscarded`.

Frames are numbered from 0 in push order; ``*_ms`` fields are ``frame * 20``. A frame index ``f``
covers ``[20 f, 20 f + 20)`` ms of the stream.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voice_gateway.audio.g711 import _DECODE_HIGH, _DECODE_LOW
from voice_gateway.audio.vad import VoiceActivityDetector, create_vad

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "BargeInCandidate",
    "Endpointer",
    "EndpointerConfig",
    "Event",
    "SpeechStarted",
    "TurnDiscarded",
    "TurnEnded",
]

logger = logging.getLogger(__name__)

FRAME_MS: Final = 20
FRAME_BYTES: Final = 160  # 20 ms of 8 kHz mu-law

TurnEndReason = Literal["silence", "max_length", "flush"]


class EndpointerConfig(BaseModel):
    """Turn-detection settings. Durations are in milliseconds and are rounded to whole 20 ms frames
    (``start_ms=70`` means 4 frames)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vad: str = Field(
        default="webrtc",
        description="Voice-activity detector: 'webrtc', 'energy', another registered name, or "
        "'package.module:ClassName' for a plug-in.",
    )
    vad_aggressiveness: int = Field(
        default=2,
        ge=0,
        le=3,
        description="WebRTC VAD mode, 0 (keeps most audio as speech) to 3 (rejects most "
        "non-speech). Used by the 'webrtc' detector only.",
    )
    energy_floor_dbfs: float = Field(
        default=-45.0,
        le=0.0,
        ge=-100.0,
        description="Frames quieter than this (RMS, dBFS) are not speech unless they stand "
        "noise_margin_db above the measured line noise (so soft onsets count on a clean line). "
        "Used by the 'webrtc' detector only.",
    )
    vad_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Further keyword arguments for the detector's constructor (for 'webrtc': "
        "noise_margin_db, min_snr_db, noise_window_ms; for 'energy': threshold_dbfs; anything "
        "for a plug-in).",
    )
    start_ms: int = Field(
        default=80,
        ge=20,
        description="Speech needed to start a turn, counted within start_window_ms.",
    )
    start_window_ms: int = Field(
        default=120,
        ge=20,
        description="Sliding window in which start_ms of speech must fall; the difference is how "
        "many frames the VAD may miss without delaying the start.",
    )
    end_silence_ms: int = Field(
        default=600,
        ge=20,
        description="Non-speech after the last speech frame that ends a turn.",
    )
    pre_roll_ms: int = Field(
        default=200,
        ge=0,
        description="Audio kept from before the first speech frame and put at the start of the "
        "turn's audio.",
    )
    post_roll_ms: int = Field(
        default=100,
        ge=0,
        description="Audio kept after the last speech frame at the end of the turn's audio "
        "(at most end_silence_ms).",
    )
    max_turn_ms: int = Field(
        default=30_000,
        ge=100,
        description="A turn is cut and emitted (reason 'max_length') when its speech span gets "
        "this long.",
    )
    min_turn_ms: int = Field(
        default=200,
        ge=0,
        description="Turns whose speech span is shorter are discarded as noise (TurnDiscarded).",
    )
    barge_in_ms: int = Field(
        default=200,
        ge=20,
        description="Speech, without a gap longer than the start window allows, after which a "
        "BargeInCandidate is emitted.",
    )

    @model_validator(mode="after")
    def _check_windows(self) -> EndpointerConfig:
        if _frames(self.start_window_ms) < _frames(self.start_ms):
            raise ValueError("start_window_ms must be at least start_ms")
        if _frames(self.max_turn_ms) <= _frames(self.min_turn_ms):
            raise ValueError("max_turn_ms must be longer than min_turn_ms")
        return self


def _frames(ms: int) -> int:
    """Milliseconds to whole frames, rounding up (at least the duration asked for)."""
    return -(-ms // FRAME_MS)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """The start threshold was met: a turn is open from ``start_frame`` on."""

    start_frame: int
    start_ms: int
    #: Frame whose push emitted this event.
    detected_at_frame: int


@dataclass(frozen=True, slots=True)
class BargeInCandidate:
    """The open turn has carried ``speech_ms`` of speech (>= barge_in_ms): enough to interrupt."""

    start_frame: int
    start_ms: int
    detected_at_frame: int
    speech_ms: int


@dataclass(frozen=True, slots=True)
class TurnEnded:
    """A complete caller turn.

    ``audio_ulaw`` covers frames ``audio_start_frame .. audio_end_frame_exclusive - 1``: the
    pre-roll (shorter at the stream start or right after a previous turn), the speech, and the
    post-roll. ``end_frame_exclusive`` is one past the last speech frame; for ``"max_length"``
    the audio ends there too (no post-roll), so the next turn's audio continues seamlessly.
    """

    audio_ulaw: bytes
    start_frame: int
    end_frame_exclusive: int
    start_ms: int
    end_ms: int
    detected_at_frame: int
    reason: TurnEndReason
    audio_start_frame: int
    audio_end_frame_exclusive: int

    @property
    def duration_ms(self) -> int:
        """Length of the speech span (without pre- and post-roll)."""
        return self.end_ms - self.start_ms


@dataclass(frozen=True, slots=True)
class TurnDiscarded:
    """A started turn ended with less than ``min_turn_ms`` of speech span and was dropped."""

    start_frame: int
    end_frame_exclusive: int
    detected_at_frame: int
    reason: TurnEndReason


Event = SpeechStarted | BargeInCandidate | TurnEnded | TurnDiscarded


class Endpointer:
    """Stateful turn detector for one call's caller audio (see the module documentation).

    Not thread-safe; use one instance per stream. ``vad`` overrides the detector the config
    names (it is reset by :meth:`reset`).
    """

    def __init__(
        self,
        config: EndpointerConfig | None = None,
        *,
        vad: VoiceActivityDetector | None = None,
    ) -> None:
        self.config = cfg = config or EndpointerConfig()
        self.vad = vad if vad is not None else _vad_from_config(cfg)
        self._start_frames = _frames(cfg.start_ms)
        self._window_frames = _frames(cfg.start_window_ms)
        self._gap_tolerance = self._window_frames - self._start_frames
        self._end_frames = _frames(cfg.end_silence_ms)
        self._pre_roll_frames = _frames(cfg.pre_roll_ms)
        self._post_roll_frames = min(_frames(cfg.post_roll_ms), self._end_frames)
        self._max_frames = _frames(cfg.max_turn_ms)
        self._min_frames = _frames(cfg.min_turn_ms)
        self._barge_frames = _frames(cfg.barge_in_ms)
        self._open_barge_frames = max(self._start_frames, self._barge_frames)
        # Frames before a turn: enough for the pre-roll ahead of any start frame in the window.
        self._history: deque[bytes] = deque(maxlen=self._pre_roll_frames + self._window_frames)
        self._recent_speech: deque[int] = deque()  # speech frame indices inside the start window
        self._audio = bytearray()
        self._pcm = bytearray(2 * FRAME_BYTES)
        self._is_speech = self.vad.is_speech
        self.reset()

    # -- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the stream (frame numbering restarts at 0) and reset the VAD."""
        self.vad.reset()
        self._frame = -1  # index of the last pushed frame
        self._history.clear()
        self._recent_speech.clear()
        self._audio = bytearray()
        self._in_turn = False
        self._start = 0  # first speech frame of the open turn
        self._audio_start = 0  # frame index of self._audio[0]
        self._min_audio_start = 0  # no audio before this frame goes into a new turn
        self._last_speech = -1
        self._silence_run = 0
        self._run_speech = 0  # speech frames in the current run (for barge-in)
        self._barge_sent = False

    @property
    def frames_pushed(self) -> int:
        """Frames pushed since the last reset (the next frame gets this index)."""
        return self._frame + 1

    @property
    def in_turn(self) -> bool:
        """True between a SpeechStarted and its TurnEnded/TurnDiscarded."""
        return self._in_turn

    @property
    def frames_until_turn_end(self) -> int | None:
        """The earliest of the coming frames that could end the open turn: 1 = the next one.

        It counts down frame by frame while the caller stays quiet (a turn ends on the
        ``end_silence_ms`` silence, or is cut at ``max_turn_ms``) and is back at the whole
        silence on speech; None out of a turn (a turn must start before it can end)."""
        if not self._in_turn:
            return None
        to_silence = self._end_frames - self._silence_run
        to_max = self._max_frames - (self._frame + 1 - self._start)
        return max(1, min(to_silence, to_max))

    @property
    def frames_until_barge_in(self) -> int | None:
        """The earliest of the coming frames that could emit ``BargeInCandidate``, were all of
        them speech: 1 = the next one; None once this turn has sent it. Out of a turn, a turn
        must start first (``start_ms`` within the window) and carry ``barge_in_ms``."""
        if self._in_turn:
            if self._barge_sent:
                return None
            return max(1, self._barge_frames - self._run_speech)
        needed = max(self._start_frames, self._barge_frames)
        return max(1, needed - len(self._recent_speech))

    def frames_until_decision(self, barge_in: bool) -> int | None:
        """``frames_until_turn_end``, or ``frames_until_barge_in`` if that is sooner and a
        barge-in counts (``barge_in``: the agent is speaking): one call per frame on the media
        path, so it reads the state directly."""
        if self._in_turn:
            to_end = self._end_frames - self._silence_run
            to_max = self._max_frames - (self._frame + 1 - self._start)
            if to_max < to_end:
                to_end = to_max
            if barge_in and not self._barge_sent:
                to_barge = self._barge_frames - self._run_speech
                if to_barge < to_end:
                    to_end = to_barge
            return to_end if to_end > 1 else 1
        if not barge_in:
            return None
        needed = self._open_barge_frames - len(self._recent_speech)
        return needed if needed > 1 else 1

    # -- feeding -----------------------------------------------------------------------------

    def push(self, ulaw_frame: bytes) -> list[Event]:
        """Process the next 20 ms mu-law frame (160 bytes) and return the events it caused."""
        if len(ulaw_frame) != FRAME_BYTES:
            raise ValueError(
                f"an endpointer frame is {FRAME_BYTES} bytes of mu-law (20 ms), "
                f"got {len(ulaw_frame)}"
            )
        self._frame = frame = self._frame + 1
        pcm = self._pcm  # decode in place: bytes.translate through the G.711 table
        pcm[0::2] = ulaw_frame.translate(_DECODE_LOW)
        pcm[1::2] = ulaw_frame.translate(_DECODE_HIGH)
        speech = self._is_speech(bytes(pcm))
        if not self._in_turn:
            self._history.append(ulaw_frame)
            if not speech:
                if self._recent_speech and self._recent_speech[0] <= frame - self._window_frames:
                    self._recent_speech.popleft()
                return []
            recent = self._recent_speech
            recent.append(frame)
            if recent[0] <= frame - self._window_frames:
                recent.popleft()
            if len(recent) < self._start_frames:
                return []
            return self._open_turn(frame)

        self._audio += ulaw_frame
        events: list[Event] = []
        if speech:
            self._last_speech = frame
            self._silence_run = 0
            self._run_speech += 1
            if not self._barge_sent and self._run_speech >= self._barge_frames:
                events.append(self._barge_in(frame))
        else:
            self._silence_run += 1
            if self._silence_run > self._gap_tolerance:
                self._run_speech = 0
            if self._silence_run >= self._end_frames:
                events.append(self._close_turn("silence", self._last_speech + 1, frame))
                return events
        if frame + 1 - self._start >= self._max_frames:
            # Cut here, or at the last speech frame if this is a pause: never longer than max.
            events.append(self._close_turn("max_length", self._last_speech + 1, frame))
        return events

    def flush(self) -> list[Event]:
        """End of stream: close the open turn (``reason="flush"``), if any, and reset."""
        events: list[Event] = []
        if self._in_turn:
            events.append(self._close_turn("flush", self._last_speech + 1, self._frame))
        self.reset()
        return events

    # -- transitions -------------------------------------------------------------------------

    def _open_turn(self, frame: int) -> list[Event]:
        start = self._recent_speech[0]
        oldest = frame - len(self._history) + 1
        audio_start = max(start - self._pre_roll_frames, oldest, self._min_audio_start)
        skip = audio_start - oldest
        self._audio = bytearray(b"".join(list(self._history)[skip:]))
        self._audio_start = audio_start
        self._in_turn = True
        self._start = start
        self._last_speech = frame
        self._silence_run = 0
        self._run_speech = len(self._recent_speech)
        self._barge_sent = False
        self._recent_speech.clear()
        self._history.clear()
        logger.debug("speech started at frame %d (detected at frame %d)", start, frame)
        events: list[Event] = [SpeechStarted(start, start * FRAME_MS, frame)]
        if self._run_speech >= self._barge_frames:
            events.append(self._barge_in(frame))
        if frame + 1 - start >= self._max_frames:
            events.append(self._close_turn("max_length", self._last_speech + 1, frame))
        return events

    def _refill_history(self, first: int, frame: int) -> None:
        """Put the turn's frames ``max(first, ...) .. frame`` back into the pre-roll history."""
        history = self._history
        history.clear()
        assert history.maxlen is not None
        first = max(first, frame + 1 - history.maxlen)
        audio, base = self._audio, self._audio_start
        for index in range(first, frame + 1):
            offset = (index - base) * FRAME_BYTES
            history.append(bytes(audio[offset : offset + FRAME_BYTES]))

    def _barge_in(self, frame: int) -> BargeInCandidate:
        self._barge_sent = True
        return BargeInCandidate(
            self._start, self._start * FRAME_MS, frame, self._run_speech * FRAME_MS
        )

    def _close_turn(self, reason: TurnEndReason, end: int, frame: int) -> TurnEnded | TurnDiscarded:
        start = self._start
        self._in_turn = False
        self._recent_speech.clear()
        # A cut turn ends where it was cut (the next turn goes on from there); otherwise add the
        # post-roll, as far as it has been pushed.
        audio_end = end if reason == "max_length" else min(end + self._post_roll_frames, frame + 1)
        discard = reason != "max_length" and end - start < self._min_frames
        # Frames not emitted stay available as pre-roll for the next turn; an emitted turn's
        # audio never overlaps the next one's.
        kept_from = self._audio_start if discard else audio_end
        self._refill_history(kept_from, frame)
        if discard:
            self._audio = bytearray()
            logger.debug(
                "discarded %d ms blip at frame %d (%s)", (end - start) * FRAME_MS, start, reason
            )
            return TurnDiscarded(start, end, frame, reason)
        self._min_audio_start = audio_end
        del self._audio[(audio_end - self._audio_start) * FRAME_BYTES :]
        audio = bytes(self._audio)
        self._audio = bytearray()
        logger.debug(
            "turn ended (%s): frames %d-%d, %d ms, detected at frame %d",
            reason,
            start,
            end,
            (end - start) * FRAME_MS,
            frame,
        )
        return TurnEnded(
            audio_ulaw=audio,
            start_frame=start,
            end_frame_exclusive=end,
            start_ms=start * FRAME_MS,
            end_ms=end * FRAME_MS,
            detected_at_frame=frame,
            reason=reason,
            audio_start_frame=self._audio_start,
            audio_end_frame_exclusive=audio_end,
        )


def _vad_from_config(config: EndpointerConfig) -> VoiceActivityDetector:
    options: dict[str, Any] = {}
    if config.vad == "webrtc":
        options = {
            "aggressiveness": config.vad_aggressiveness,
            "energy_floor_dbfs": config.energy_floor_dbfs,
        }
    options.update(config.vad_options)
    return create_vad(config.vad, **options)

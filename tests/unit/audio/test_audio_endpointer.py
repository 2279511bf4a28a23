"""Turn detection on the spoken fixture, on line noise, and on scripted VAD decisions."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np
import pydantic
import pytest
from tests.unit.audio.signals import (
    FRAME,
    SILENT_FRAME,
    Utterance,
    frames_of,
    line_noise,
    load_caller,
    mix,
    to_ulaw,
)

from voice_gateway.audio.endpointer import (
    BargeInCandidate,
    Endpointer,
    EndpointerConfig,
    Event,
    SpeechStarted,
    TurnDiscarded,
    TurnEnded,
)
from voice_gateway.audio.g711 import ulaw_to_pcm16
from voice_gateway.errors import ConfigError


def run(ulaw: bytes, endpointer: Endpointer | None = None, **config: object) -> list[Event]:
    ep = endpointer or Endpointer(EndpointerConfig(**config))
    events: list[Event] = []
    for frame in frames_of(ulaw):
        events += ep.push(frame)
    return events + ep.flush()


def turns(events: Iterable[Event]) -> list[TurnEnded]:
    return [e for e in events if isinstance(e, TurnEnded)]


def overlaps(turn: TurnEnded, u: Utterance) -> bool:
    return turn.start_frame < u.end_frame_exclusive and u.start_frame < turn.end_frame_exclusive


def assert_one_turn_per_utterance(
    found: Sequence[TurnEnded], utterances: Sequence[Utterance]
) -> None:
    assert len(found) == len(utterances)
    for i, turn in enumerate(found):
        # Turn i overlaps utterance i and no other: nothing split, nothing merged.
        assert [u.index for u in utterances if overlaps(turn, u)] == [utterances[i].index]


def assert_sequence_is_well_formed(events: Sequence[Event]) -> None:
    """SpeechStarted, at most one BargeInCandidate, then exactly one TurnEnded/TurnDiscarded."""
    open_start: SpeechStarted | None = None
    for e in events:
        if isinstance(e, SpeechStarted):
            assert open_start is None
            open_start = e
            barge = False
        elif isinstance(e, BargeInCandidate):
            assert open_start is not None and not barge
            assert e.start_frame == open_start.start_frame
            barge = True
        else:
            assert open_start is not None
            assert e.start_frame == open_start.start_frame
            open_start = None
    assert open_start is None


# -- the spoken fixture --------------------------------------------------------------------------


@pytest.mark.parametrize("end_silence_ms", [400, 600, 800])
def test_fixture_one_turn_per_utterance_ended_in_time(end_silence_ms: int) -> None:
    audio, utterances = load_caller()
    events = run(audio, end_silence_ms=end_silence_ms)
    found = turns(events)
    assert_one_turn_per_utterance(found, utterances)
    assert not [e for e in events if isinstance(e, TurnDiscarded)]
    assert_sequence_is_well_formed(events)
    for turn, u in zip(found, utterances, strict=True):
        assert turn.reason == "silence"
        # Decided no earlier than the utterance's end (no early cut) and no later than the
        # silence setting plus one frame after it.
        assert u.end_frame_exclusive <= turn.detected_at_frame
        assert turn.detected_at_frame <= u.end_frame_exclusive + end_silence_ms // 20 + 1
        assert (turn.start_ms, turn.end_ms) == (
            turn.start_frame * 20,
            turn.end_frame_exclusive * 20,
        )


def test_fixture_turn_audio_holds_the_whole_utterance_with_pre_roll() -> None:
    audio, utterances = load_caller()
    for turn, u in zip(turns(run(audio)), utterances, strict=True):
        assert turn.start_frame <= u.start_frame
        assert turn.audio_start_frame == turn.start_frame - 10  # 200 ms of pre-roll
        assert turn.audio_end_frame_exclusive >= u.end_frame_exclusive
        expected = audio[turn.audio_start_frame * FRAME : turn.audio_end_frame_exclusive * FRAME]
        assert turn.audio_ulaw == expected


@pytest.mark.parametrize("start_ms", [60, 80, 100])
def test_speech_started_promptly_for_every_utterance(start_ms: int) -> None:
    audio, utterances = load_caller()
    events = run(audio, start_ms=start_ms, start_window_ms=start_ms + 40)
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert len(starts) == len(utterances)
    for started, u in zip(starts, utterances, strict=True):
        assert started.start_frame <= u.start_frame + 1
        assert started.start_ms == started.start_frame * 20
        # The event is out when its frame has been pushed: (frame + 1) * 20 ms into the stream.
        latency_ms = (started.detected_at_frame + 1) * 20 - u.start_frame * 20
        assert latency_ms <= start_ms + 40


def test_barge_in_candidate_after_barge_in_ms_of_speech() -> None:
    audio, utterances = load_caller()
    events = run(audio, barge_in_ms=300)
    barges = [e for e in events if isinstance(e, BargeInCandidate)]
    assert len(barges) == len(utterances)  # each utterance is long enough, once per turn
    for barge in barges:
        assert barge.speech_ms >= 300
        assert (barge.detected_at_frame - barge.start_frame + 1) * 20 >= 300


def test_fixture_with_hiss_still_gives_the_four_turns() -> None:
    audio, utterances = load_caller()
    noisy = mix(audio, line_noise(len(audio) / 8000, white_dbfs=-50.0, seed=11))
    events = run(noisy)
    found = turns(events)
    assert_one_turn_per_utterance(found, utterances)
    assert_sequence_is_well_formed(events)
    for turn, u in zip(found, utterances, strict=True):
        assert u.end_frame_exclusive <= turn.detected_at_frame <= u.end_frame_exclusive + 31


# -- line noise alone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "noise",
    [
        {"white_dbfs": -55.0},
        {"white_dbfs": -50.0},
        {"white_dbfs": -50.0, "clicks": 5},
        {"hum_hz": 50.0, "hum_dbfs": -40.0, "white_dbfs": -55.0, "clicks": 5},
        {"hum_hz": 60.0, "hum_dbfs": -40.0, "white_dbfs": -50.0, "clicks": 5},
        {"hum_hz": 50.0, "hum_dbfs": -25.0, "white_dbfs": -50.0, "clicks": 3},
    ],
    ids=["hiss-55", "hiss-50", "hiss-clicks", "hum50", "hum60", "loud-hum"],
)
def test_line_noise_alone_makes_no_turn(noise: dict[str, float]) -> None:
    events = run(to_ulaw(line_noise(10.0, seed=5, **noise)))  # type: ignore[arg-type]
    assert events == []  # not even a SpeechStarted that would interrupt the agent


# -- length limits -------------------------------------------------------------------------------


def test_long_speech_is_cut_at_max_turn_ms_without_losing_audio() -> None:
    audio, (u0, u1, *_) = load_caller()
    # 5.2 s of continuous speech (two utterances back to back), between half-second silences.
    speech = (
        audio[u0.start_frame * FRAME : u0.end_frame_exclusive * FRAME]
        + audio[u1.start_frame * FRAME : u1.end_frame_exclusive * FRAME]
    )
    stream = SILENT_FRAME * 25 + speech + SILENT_FRAME * 50
    events = run(stream, max_turn_ms=2000)
    assert_sequence_is_well_formed(events)
    found = turns(events)
    assert [t.reason for t in found] == ["max_length", "max_length", "silence"]
    for cut in found[:2]:
        # At most 2000 ms of speech span; the cut comes at the latest when 2000 ms are reached.
        assert 90 <= cut.end_frame_exclusive - cut.start_frame <= 100
        assert cut.detected_at_frame == cut.start_frame + 99
    # The turns' audio follows on with no gap and no overlap: together they are the speech.
    for before, after in itertools.pairwise(found):
        assert after.audio_start_frame == before.audio_end_frame_exclusive
        assert after.start_frame >= before.end_frame_exclusive
    start = found[0].audio_start_frame
    joined = b"".join(t.audio_ulaw for t in found)
    assert joined == stream[start * FRAME : found[-1].audio_end_frame_exclusive * FRAME]
    assert found[-1].end_frame_exclusive == 25 + len(speech) // FRAME


@pytest.mark.parametrize("blip_ms", [60, 80, 100])
def test_short_blip_makes_no_turn(blip_ms: int) -> None:
    audio, utterances = load_caller()
    loud = utterances[1].start_frame + 20  # inside a word
    blip = audio[loud * FRAME : (loud + blip_ms // 20) * FRAME]
    events = run(SILENT_FRAME * 50 + blip + SILENT_FRAME * 50)
    assert turns(events) == []
    assert_sequence_is_well_formed(events)  # a SpeechStarted, if any, is withdrawn
    for e in events:
        if isinstance(e, TurnDiscarded):
            assert e.reason == "silence"


# -- stream control ------------------------------------------------------------------------------


def test_reset_really_resets() -> None:
    audio, _ = load_caller()
    expected = run(audio)
    ep = Endpointer()
    for frame in frames_of(audio)[:120]:  # stop inside the first utterance
        ep.push(frame)
    assert ep.in_turn
    ep.reset()
    assert not ep.in_turn
    assert ep.frames_pushed == 0
    assert run(audio, ep) == expected  # same turns, same frame numbers, same audio


def test_flush_emits_the_turn_in_progress() -> None:
    audio, (u0, *_) = load_caller()
    ep = Endpointer()
    events: list[Event] = []
    for frame in frames_of(audio)[:150]:  # the stream ends mid-utterance
        events += ep.push(frame)
    assert turns(events) == []
    (turn,) = ep.flush()
    assert isinstance(turn, TurnEnded)
    assert turn.reason == "flush"
    assert turn.start_frame <= u0.start_frame
    assert turn.end_frame_exclusive == turn.audio_end_frame_exclusive == 150
    assert turn.detected_at_frame == 149
    assert turn.audio_ulaw == audio[turn.audio_start_frame * FRAME : 150 * FRAME]
    assert ep.flush() == []  # nothing pending any more
    assert ep.frames_pushed == 0


def test_frames_must_be_160_bytes() -> None:
    ep = Endpointer()
    for size in (0, 159, 320):
        with pytest.raises(ValueError, match="160 bytes"):
            ep.push(b"\xff" * size)


# -- exact logic, with scripted VAD decisions ----------------------------------------------------


class ScriptedVad:
    """Speech on the frames (counted from the last reset) listed in ``speech``."""

    def __init__(self, speech: Iterable[int] = ()) -> None:
        self.speech = set(speech)
        self.index = 0

    def is_speech(self, pcm16_8k: bytes) -> bool:
        speech = self.index in self.speech
        self.index += 1
        return speech

    def reset(self) -> None:
        self.index = 0


def numbered_frames(count: int) -> bytes:
    """Frame i is 160 bytes of value i % 256, so turn audio can be traced to frame numbers."""
    return b"".join(bytes([i % 256]) * FRAME for i in range(count))


def frame_numbers(audio: bytes) -> list[int]:
    return [f[0] for f in frames_of(audio)]


def scripted(speech: Iterable[int], frames: int = 200, **config: object) -> list[Event]:
    ep = Endpointer(EndpointerConfig(**config), vad=ScriptedVad(speech))
    return run(numbered_frames(frames), ep)


def test_one_missed_frame_does_not_delay_the_start() -> None:
    events = scripted([10, 11, 13, 14, *range(15, 40)])  # frame 12 missed by the VAD
    started = events[0]
    assert started == SpeechStarted(start_frame=10, start_ms=200, detected_at_frame=14)


def test_scattered_speech_frames_do_not_start_a_turn() -> None:
    assert scripted(range(10, 100, 3)) == []  # never 4 speech frames within 120 ms


def test_turn_audio_is_pre_roll_speech_and_post_roll() -> None:
    (turn,) = turns(scripted(range(50, 80)))
    assert (turn.start_frame, turn.end_frame_exclusive) == (50, 80)
    assert frame_numbers(turn.audio_ulaw) == list(range(40, 85))  # 200 ms before, 100 ms after
    assert turn.detected_at_frame == 80 + 30 - 1


def test_pre_roll_is_shorter_at_the_stream_start() -> None:
    (turn,) = turns(scripted(range(3, 30)))
    assert turn.audio_start_frame == 0
    assert frame_numbers(turn.audio_ulaw)[:4] == [0, 1, 2, 3]


def test_consecutive_turns_never_share_audio() -> None:
    events = scripted([*range(20, 40), *range(51, 80)], end_silence_ms=200)
    first, second = turns(events)
    assert first.audio_end_frame_exclusive == 45
    assert second.audio_start_frame == 45  # the pre-roll stops where the last turn's audio did
    assert frame_numbers(first.audio_ulaw + second.audio_ulaw) == list(range(10, 85))


def test_barge_in_needs_continuous_speech() -> None:
    # 120 ms of speech, a 60 ms gap (longer than the 40 ms the start window tolerates), speech.
    events = scripted([*range(10, 16), *range(19, 60)])
    (barge,) = [e for e in events if isinstance(e, BargeInCandidate)]
    assert barge.start_frame == 10
    assert barge.detected_at_frame == 28  # 10 frames (200 ms) after the gap, not counting before
    assert barge.speech_ms == 200


def test_max_length_cuts_and_the_next_turn_goes_on() -> None:
    events = scripted(range(0, 250), frames=300, max_turn_ms=2000)
    found = turns(events)
    assert [(t.start_frame, t.end_frame_exclusive, t.reason) for t in found] == [
        (0, 100, "max_length"),
        (100, 200, "max_length"),
        (200, 250, "silence"),
    ]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert [(s.start_frame, s.detected_at_frame) for s in starts] == [
        (0, 3),
        (100, 103),
        (200, 203),
    ]
    assert frame_numbers(b"".join(t.audio_ulaw for t in found)) == [i % 256 for i in range(255)]


def test_min_turn_ms_discards_short_turns() -> None:
    events = scripted(range(30, 38), min_turn_ms=200)  # 160 ms of speech
    assert [type(e) for e in events] == [SpeechStarted, TurnDiscarded]
    events = scripted(range(30, 40), min_turn_ms=200)  # 200 ms of speech
    assert [type(e) for e in events] == [SpeechStarted, BargeInCandidate, TurnEnded]


# -- configuration -------------------------------------------------------------------------------


def test_defaults() -> None:
    cfg = EndpointerConfig()
    assert (cfg.vad, cfg.vad_aggressiveness, cfg.energy_floor_dbfs) == ("webrtc", 2, -45.0)
    assert (cfg.end_silence_ms, cfg.pre_roll_ms, cfg.max_turn_ms) == (600, 200, 30000)
    assert 60 <= cfg.start_ms <= 100
    assert cfg.min_turn_ms == cfg.barge_in_ms == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"start_ms": 200, "start_window_ms": 100},
        {"max_turn_ms": 200, "min_turn_ms": 200},
        {"vad_aggressiveness": 5},
        {"end_silence_ms": 0},
        {"end_silence": 600},  # misspelt field
    ],
)
def test_bad_config_is_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(pydantic.ValidationError):
        EndpointerConfig(**bad)


def test_unknown_vad_in_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Endpointer(EndpointerConfig(vad="no-such-vad"))


def test_plugin_vad_from_config() -> None:
    cfg = EndpointerConfig(vad=f"{__name__}:ScriptedVad", vad_options={"speech": range(5, 30)})
    ep = Endpointer(cfg)
    assert isinstance(ep.vad, ScriptedVad)
    (turn,) = turns(run(numbered_frames(100), ep))
    assert (turn.start_frame, turn.end_frame_exclusive) == (5, 30)


def test_webrtc_options_reach_the_detector() -> None:
    ep = Endpointer(
        EndpointerConfig(vad_aggressiveness=3, energy_floor_dbfs=-40, vad_options={"min_snr_db": 9})
    )
    vad = ep.vad
    assert (vad.aggressiveness, vad.energy_floor_dbfs, vad.min_snr_db) == (3, -40.0, 9.0)  # type: ignore[attr-defined]


def test_a_louder_caller_gives_the_same_turns() -> None:
    """The same speech 6 dB louder gives the same turn boundaries."""
    audio, _ = load_caller()
    louder = to_ulaw(ulaw_to_pcm16(audio).astype(np.float64) * 2.0)
    assert [(t.start_frame, t.end_frame_exclusive) for t in turns(run(louder))] == [
        (t.start_frame, t.end_frame_exclusive) for t in turns(run(audio))
    ]


def _frames_of(audio: bytes) -> list[bytes]:
    return [audio[i : i + 160] for i in range(0, len(audio), 160)]


def test_frames_until_turn_end_counts_down_through_the_silence_and_resets_on_speech() -> None:
    from voice_gateway.sim.audio import silence, tone

    ep = Endpointer(EndpointerConfig(end_silence_ms=600))
    for frame in _frames_of(silence(200)):
        ep.push(frame)
    assert ep.frames_until_turn_end is None  # no turn open
    for frame in _frames_of(tone(400)):
        ep.push(frame)
    assert ep.frames_until_turn_end == 30  # talking: a whole silence to go
    left = []
    for frame in _frames_of(silence(580)):
        ep.push(frame)
        left.append(ep.frames_until_turn_end)
    assert left == list(range(29, 0, -1))
    # the frame it names as the earliest is the one that ends the turn
    assert turns(ep.push(_frames_of(silence(20))[0])) and ep.frames_until_turn_end is None


def test_frames_until_turn_end_counts_the_max_length_cut() -> None:
    from voice_gateway.sim.audio import silence, tone

    ep = Endpointer(EndpointerConfig(max_turn_ms=1000, min_turn_ms=100))
    for frame in _frames_of(silence(200)):
        ep.push(frame)
    left = []
    events: list[object] = []
    for frame in _frames_of(tone(1500)):
        events = ep.push(frame)
        left.append(ep.frames_until_turn_end)
        if turns(events):
            break
    # a silence could end it 30 frames on; once the 50-frame cut is nearer, that is the bound
    opened = next(i for i, n in enumerate(left) if n is not None)
    assert left[opened:-1] == [min(30, n) for n in range(50 - opened - 1, 0, -1)], left
    assert [t.reason for t in turns(events)] == ["max_length"]


def test_frames_until_barge_in_names_the_frame_that_emits_it() -> None:
    from voice_gateway.sim.audio import silence, tone

    cfg = EndpointerConfig(start_ms=80, barge_in_ms=200)
    ep = Endpointer(cfg)
    for frame in _frames_of(silence(200)):
        ep.push(frame)
    assert ep.frames_until_barge_in == 10  # nothing heard yet: 200 ms of speech to go
    speech = _frames_of(tone(400))
    predicted, emitted_at = None, None
    for i, frame in enumerate(speech):
        before = ep.frames_until_barge_in
        events = ep.push(frame)
        if i == 0:
            predicted = before  # counted from the first speech frame
        if any(isinstance(e, BargeInCandidate) for e in events):
            emitted_at = i + 1
            break
    assert predicted is not None and emitted_at == predicted
    assert ep.frames_until_barge_in is None  # sent once per turn


def test_frames_until_barge_in_out_of_a_turn_needs_the_start_first() -> None:
    from voice_gateway.sim.audio import silence

    ep = Endpointer(EndpointerConfig(start_ms=120, start_window_ms=160, barge_in_ms=80))
    ep.push(_frames_of(silence(20))[0])
    assert ep.frames_until_barge_in == 6  # a turn needs 120 ms of speech before any barge-in


def test_frames_until_decision_is_the_sooner_of_turn_end_and_barge_in() -> None:
    audio, _ = load_caller()
    ep = Endpointer(EndpointerConfig(barge_in_ms=80))
    checked = 0
    for frame in _frames_of(audio):
        ep.push(frame)
        end, barge = ep.frames_until_turn_end, ep.frames_until_barge_in
        assert ep.frames_until_decision(False) == end
        candidates = [f for f in (end, barge) if f is not None]
        assert ep.frames_until_decision(True) == (min(candidates) if candidates else None)
        checked += end is not None
    assert checked > 100  # the caller's turns were walked through, not just silence

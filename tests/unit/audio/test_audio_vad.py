"""Voice-activity detectors and their registry."""

from __future__ import annotations

import numpy as np
import pytest
from tests.unit.audio.signals import (
    FRAME,
    dbfs_amplitude,
    frames_of,
    line_noise,
    load_caller,
    to_ulaw,
    tone,
)

from voice_gateway.audio.g711 import ulaw_to_pcm16, ulaw_to_pcm16_bytes
from voice_gateway.audio.vad import (
    MIN_DBFS,
    EnergyVad,
    VoiceActivityDetector,
    WebRtcVad,
    available_vads,
    create_vad,
    frame_dbfs,
    register_vad,
)
from voice_gateway.errors import ConfigError


def pcm_frames(ulaw: bytes) -> list[bytes]:
    return [ulaw_to_pcm16_bytes(f) for f in frames_of(ulaw)]


def decisions(vad: VoiceActivityDetector, ulaw: bytes) -> list[bool]:
    return [vad.is_speech(f) for f in pcm_frames(ulaw)]


# -- levels --------------------------------------------------------------------------------------


def test_frame_dbfs() -> None:
    square = np.where(np.arange(160) % 20 < 10, 32767, -32767).astype("<i2").tobytes()
    assert frame_dbfs(square) == pytest.approx(0.0, abs=0.01)
    sine = tone(1000, 0.02, 8000, dbfs=-30).astype("<i2").tobytes()
    assert frame_dbfs(sine) == pytest.approx(-30.0, abs=0.05)
    assert frame_dbfs(bytes(320)) == MIN_DBFS
    assert frame_dbfs(b"") == MIN_DBFS


# -- WebRtcVad -----------------------------------------------------------------------------------


def test_webrtc_finds_the_speech_of_the_fixture_and_nothing_else() -> None:
    audio, utterances = load_caller()
    flags = decisions(WebRtcVad(), audio)
    inside = np.zeros(len(flags), dtype=bool)
    for u in utterances:
        inside[u.start_frame : u.end_frame_exclusive] = True
        # Most frames of every utterance are speech (short pauses between words are not).
        assert np.mean(flags[u.start_frame : u.end_frame_exclusive]) > 0.9, u.text
    assert not np.any(np.array(flags)[~inside])


@pytest.mark.parametrize("white_dbfs", [-55.0, -50.0])
def test_webrtc_ignores_hiss(white_dbfs: float) -> None:
    hiss = to_ulaw(line_noise(10, white_dbfs=white_dbfs, seed=3))
    assert not any(decisions(WebRtcVad(), hiss))


@pytest.mark.parametrize("hum_hz", [50.0, 60.0])
def test_webrtc_ignores_loud_steady_hum(hum_hz: float) -> None:
    """Hum well above the -45 dBFS floor is still not speech: it is steady, like noise."""
    hum = to_ulaw(line_noise(5, hum_hz=hum_hz, hum_dbfs=-30.0, white_dbfs=-60.0))
    assert not any(decisions(WebRtcVad(), hum))


def test_soft_speech_counts_on_a_clean_line_unless_the_floor_is_absolute() -> None:
    """The adaptive gate keeps quiet talkers on clean lines; an absolute floor would drop them."""
    audio, utterances = load_caller()
    # 20 dB quieter: the speech now averages about -44 dBFS, much of it below the -45 floor.
    quiet = to_ulaw(ulaw_to_pcm16(audio).astype(np.float64) * dbfs_amplitude(-20) / 32768)
    inside = np.zeros(len(audio) // FRAME, dtype=bool)
    for u in utterances:
        inside[u.start_frame : u.end_frame_exclusive] = True
    adaptive = np.array(decisions(WebRtcVad(), quiet))
    absolute = np.array(decisions(WebRtcVad(noise_margin_db=None), quiet))
    assert adaptive[inside].mean() > 0.85
    assert absolute[inside].mean() < 0.3
    assert not adaptive[~inside].any()


def test_webrtc_reset_forgets_the_noise_floor() -> None:
    audio, _ = load_caller()
    speech = audio[: 200 * FRAME]
    vad = WebRtcVad()
    fresh = decisions(vad, speech)
    decisions(vad, to_ulaw(line_noise(3, white_dbfs=-35.0)))  # raises the noise floor
    assert vad.noise_floor_dbfs > -40
    vad.reset()
    assert vad.noise_floor_dbfs == MIN_DBFS
    assert decisions(vad, speech) == fresh


def test_webrtc_options_are_validated() -> None:
    for bad in ({"aggressiveness": 4}, {"energy_floor_dbfs": 3.0}, {"noise_window_ms": 20}):
        with pytest.raises(ValueError):
            WebRtcVad(**bad)


@pytest.mark.parametrize("vad", [WebRtcVad(), EnergyVad()], ids=["webrtc", "energy"])
def test_frames_must_be_20ms(vad: VoiceActivityDetector) -> None:
    with pytest.raises(ValueError, match="320 bytes"):
        vad.is_speech(bytes(318))


# -- EnergyVad -----------------------------------------------------------------------------------


def test_energy_vad_is_a_level_threshold() -> None:
    vad = EnergyVad(threshold_dbfs=-40.0)
    loud = tone(300, 0.02, 8000, dbfs=-39.5).astype("<i2").tobytes()
    quiet = tone(300, 0.02, 8000, dbfs=-40.5).astype("<i2").tobytes()
    assert vad.is_speech(loud)
    assert not vad.is_speech(quiet)
    assert not vad.is_speech(bytes(320))


# -- registry ------------------------------------------------------------------------------------


class ScriptedVad:
    """A plug-in detector: speech on the frames whose index is in ``speech_frames``."""

    def __init__(self, speech_frames: list[int] | None = None, label: str = "") -> None:
        self.speech_frames = set(speech_frames or [])
        self.label = label
        self.index = 0

    def is_speech(self, pcm16_8k: bytes) -> bool:
        speech = self.index in self.speech_frames
        self.index += 1
        return speech

    def reset(self) -> None:
        self.index = 0


class NotAVad:
    def __init__(self) -> None:
        self.x = 1


def test_create_vad_by_name() -> None:
    default = create_vad()
    assert isinstance(default, WebRtcVad)
    assert default.aggressiveness == 2
    assert default.energy_floor_dbfs == -45.0
    energy = create_vad("energy", threshold_dbfs=-30.0)
    assert isinstance(energy, EnergyVad)
    assert energy.threshold_dbfs == -30.0
    assert {"webrtc", "energy"} <= set(available_vads())


def test_unknown_vad_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown VAD 'silero'") as info:
        create_vad("silero")
    assert info.value.key == "vad"


def test_plugin_by_module_path() -> None:
    vad = create_vad(f"{__name__}:ScriptedVad", speech_frames=[1], label="team-a")
    assert isinstance(vad, ScriptedVad)
    assert vad.label == "team-a"
    assert [vad.is_speech(bytes(320)) for _ in range(3)] == [False, True, False]


@pytest.mark.parametrize(
    ("reference", "options", "message"),
    [
        (f"{__name__}:NotAVad", {}, "lacks is_speech"),
        (f"{__name__}:Missing", {}, "has no attribute"),
        ("voice_gateway.no_such_module:Vad", {}, "cannot import"),
        (f"{__name__}:ScriptedVad", {"no_such_option": 1}, "cannot create"),
        ("energy", {"threshold_dbfs": 12.0}, "cannot create"),
        (":ScriptedVad", {}, "package.module:ClassName"),
    ],
)
def test_bad_plugins_are_config_errors(
    reference: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        create_vad(reference, **options)


def test_register_vad_adds_a_short_name() -> None:
    register_vad("scripted-test", ScriptedVad)
    try:
        vad = create_vad("scripted-test", speech_frames=[0])
        assert isinstance(vad, ScriptedVad)
        assert vad.is_speech(bytes(320))
    finally:
        from voice_gateway.audio import vad as vad_module

        vad_module._REGISTRY.pop("scripted-test", None)
    with pytest.raises(ValueError):
        register_vad("pkg:Class", ScriptedVad)

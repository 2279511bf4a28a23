"""Streaming resampler: frame sizes, continuity across frames, fidelity and anti-aliasing."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest
from tests.unit.audio.signals import tone

from voice_gateway.audio.resample import SUPPORTED_RATES, Resampler, resample_all

PAIRS = [(8000, 16000), (16000, 8000), (8000, 24000), (24000, 8000)]
ALL_PAIRS = [(a, b) for a in SUPPORTED_RATES for b in SUPPORTED_RATES if a != b]


def rms_db(x: npt.NDArray[np.int16] | npt.NDArray[np.float64]) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(10.0 * np.log10(max(float(np.mean(x * x)), 1e-12)))


def dominant_hz(x: npt.NDArray[np.int16], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1.0 / rate)[int(np.argmax(spectrum))])


def noise(rate: int, seconds: float = 1.0, seed: int = 1) -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal(int(rate * seconds)) * 4000, -32768, 32767).astype(np.int16)


@pytest.mark.parametrize("agent_rate", [16000, 24000])
def test_tone_survives_the_round_trip(agent_rate: int) -> None:
    original = tone(1000, 1.0, 8000, dbfs=-12).astype(np.int16)
    up = resample_all(original, 8000, agent_rate)
    back = resample_all(up, agent_rate, 8000)
    assert up.size == original.size * agent_rate // 8000
    assert back.size == original.size
    for signal, rate in ((up, agent_rate), (back, 8000)):
        assert dominant_hz(signal, rate) == pytest.approx(1000, abs=2)
        assert abs(rms_db(signal) - rms_db(original)) < 0.5
    # Aligned in time with the input: the round trip is nearly sample-exact (not delayed).
    assert np.max(np.abs(back[50:-50].astype(int) - original[50:-50])) <= 8


def test_output_is_time_aligned_with_the_input() -> None:
    """Output sample j is the signal at j / out_rate: no filter delay leaks into the timing."""
    x = tone(440, 0.5, 8000, dbfs=-6).astype(np.int16)
    y = resample_all(x, 8000, 24000)
    ideal = tone(440, 0.5, 24000, dbfs=-6)
    assert np.max(np.abs(y[300:-300] - ideal[300:-300])) < 0.002 * np.max(np.abs(ideal))


@pytest.mark.parametrize(("in_rate", "out_rate"), ALL_PAIRS)
def test_frame_by_frame_equals_whole_buffer(in_rate: int, out_rate: int) -> None:
    x = noise(in_rate)
    whole = resample_all(x, in_rate, out_rate)
    frame = in_rate // 50
    r = Resampler(in_rate, out_rate)
    streamed = np.concatenate(
        [r.process(x[i : i + frame]) for i in range(0, x.size, frame)] + [r.flush()]
    )
    assert streamed.size == whole.size == x.size * out_rate // in_rate
    assert np.max(np.abs(streamed.astype(int) - whole)) <= 1
    # Ragged chunks (as a network delivers them) give the same stream too.
    r = Resampler(in_rate, out_rate)
    cuts = [0, 1, 7, 8, 333, 1000, 4321, x.size]
    ragged = np.concatenate([r.process(x[a:b]) for a, b in itertools.pairwise(cuts)] + [r.flush()])
    assert np.max(np.abs(ragged.astype(int) - whole)) <= 1


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_20ms_frame_sizes(in_rate: int, out_rate: int) -> None:
    """As documented: the first frame is short by `delay`, then every frame is exact."""
    frame_in, frame_out = in_rate // 50, out_rate // 50
    r = Resampler(in_rate, out_rate)
    assert 0 < r.delay < frame_out  # the first frame already yields audio
    x = noise(in_rate, seconds=0.5)
    sizes = [r.process(x[i : i + frame_in]).size for i in range(0, x.size, frame_in)]
    assert sizes[0] == frame_out - r.delay
    assert set(sizes[1:]) == {frame_out}
    tail = r.flush()
    assert tail.size == r.delay
    assert sum(sizes) + tail.size == x.size * out_rate // in_rate


def test_flush_ends_the_stream_and_starts_a_new_one() -> None:
    x = noise(8000, seconds=0.2)
    r = Resampler(8000, 16000)
    first = np.concatenate([r.process(x), r.flush()])
    second = np.concatenate([r.process(x), r.flush()])
    assert np.array_equal(first, second)  # nothing of the first stream leaks into the second
    assert r.flush().size == 0  # flushing an empty stream yields nothing


def test_reset_forgets_the_stream() -> None:
    x = noise(16000, seconds=0.1)
    fresh = Resampler(16000, 8000).process(x)
    r = Resampler(16000, 8000)
    r.process(noise(16000, seconds=0.1, seed=9))
    r.reset()
    assert np.array_equal(r.process(x), fresh)


@pytest.mark.parametrize(("in_rate", "hz"), [(16000, 6000), (24000, 6000), (24000, 10000)])
def test_downsampling_removes_what_8khz_cannot_carry(in_rate: int, hz: int) -> None:
    """A tone above 4 kHz must not come out as an audible alias (6 kHz would fold to 2 kHz)."""
    loud = tone(hz, 1.0, in_rate, dbfs=-6).astype(np.int16)
    out = resample_all(loud, in_rate, 8000)
    assert rms_db(out[100:-100]) - rms_db(loud) < -60  # at least 60 dB down
    # ...while the telephone band passes untouched.
    speech_band = tone(3000, 1.0, in_rate, dbfs=-6).astype(np.int16)
    kept = resample_all(speech_band, in_rate, 8000)
    assert abs(rms_db(kept[100:-100]) - rms_db(speech_band)) < 0.5


@pytest.mark.parametrize("agent_rate", [16000, 24000])
def test_upsampling_adds_no_images(agent_rate: int) -> None:
    """8 kHz audio carries nothing above 4 kHz; the up-sampled stream must not invent any."""
    x = tone(1000, 1.0, 8000, dbfs=-6).astype(np.int16)
    y = resample_all(x, 8000, agent_rate).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.size))) ** 2
    freqs = np.fft.rfftfreq(y.size, 1.0 / agent_rate)
    above = spectrum[freqs > 4600].sum()
    assert 10 * np.log10(above / spectrum.sum()) < -70


def test_equal_rates_pass_samples_through() -> None:
    x = noise(16000, seconds=0.05)
    r = Resampler(16000, 16000)
    assert r.is_identity
    out = r.process(x)
    assert np.array_equal(out, x)
    assert r.flush().size == 0
    assert np.array_equal(resample_all(x.tobytes(), 16000, 16000), x)


def test_accepts_little_endian_bytes() -> None:
    x = noise(8000, seconds=0.1)
    assert np.array_equal(
        resample_all(x.astype("<i2").tobytes(), 8000, 16000), resample_all(x, 8000, 16000)
    )


def test_full_scale_input_does_not_wrap_around() -> None:
    """Filter overshoot on a full-scale square wave must clip, not overflow int16."""
    square = np.where(np.arange(8000) % 40 < 20, 32767, -32768).astype(np.int16)
    out = resample_all(square, 8000, 16000)
    # A wrap-around would turn a peak into a large value of the opposite sign mid-half-period.
    plateau = out[np.arange(out.size) % 80 == 20]  # middle of each positive half period
    assert np.all(plateau[5:-5] > 20000)


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(44100, 8000), (8000, 11025), (0, 8000), (8000, 22050)]
)
def test_unsupported_rates_are_rejected(in_rate: int, out_rate: int) -> None:
    with pytest.raises(ValueError, match="not supported"):
        Resampler(in_rate, out_rate)


def test_rejects_samples_that_are_not_int16() -> None:
    r = Resampler(8000, 16000)
    with pytest.raises(ValueError):
        r.process(np.zeros(160, dtype=np.float32))
    with pytest.raises(ValueError):
        r.process(b"\x00\x01\x02")

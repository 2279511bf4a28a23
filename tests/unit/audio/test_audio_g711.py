"""G.711 mu-law codec against the normative reference algorithm (bias 0x84, clip 32635)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from voice_gateway.audio.g711 import (
    ULAW_SILENCE,
    pcm16_to_ulaw,
    ulaw_to_pcm16,
    ulaw_to_pcm16_bytes,
)

BIAS, CLIP = 0x84, 32635
EXP = [0, 0, 1, 1, 2, 2, 2, 2] + [3] * 8 + [4] * 16 + [5] * 32 + [6] * 64 + [7] * 128


def lin2ulaw(s: int) -> int:
    sign = 0x80 if s < 0 else 0
    s = min(-s if s < 0 else s, CLIP) + BIAS
    e = EXP[(s >> 7) & 0xFF]
    return ~(sign | (e << 4) | ((s >> (e + 3)) & 0x0F)) & 0xFF


def ulaw2lin(u: int) -> int:
    u = ~u & 0xFF
    s = ((((u & 0x0F) << 3) + BIAS) << ((u >> 4) & 7)) - BIAS
    return -s if u & 0x80 else s


ALL_CODES = bytes(range(256))


def test_every_code_decodes_like_the_reference() -> None:
    decoded = ulaw_to_pcm16(ALL_CODES)
    assert decoded.dtype == np.int16
    assert decoded.tolist() == [ulaw2lin(u) for u in range(256)]


def test_decoded_bytes_are_little_endian_int16() -> None:
    expected = struct.pack("<256h", *(ulaw2lin(u) for u in range(256)))
    assert ulaw_to_pcm16_bytes(ALL_CODES) == expected
    assert ulaw_to_pcm16_bytes(bytearray(ALL_CODES)) == expected
    assert ulaw_to_pcm16_bytes(memoryview(ALL_CODES)) == expected


def test_every_int16_value_encodes_like_the_reference() -> None:
    samples = np.arange(-32768, 32768, dtype=np.int64)
    expected = bytes(lin2ulaw(int(s)) for s in samples)
    assert pcm16_to_ulaw(samples.astype(np.int16)) == expected
    # The same through little-endian PCM bytes, and through a non-contiguous view.
    assert pcm16_to_ulaw(samples.astype("<i2").tobytes()) == expected
    assert pcm16_to_ulaw(samples.astype(np.int16)[::2]) == expected[::2]


def test_known_values() -> None:
    assert ULAW_SILENCE == 0xFF == lin2ulaw(0)
    assert ulaw_to_pcm16(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0, 0, 32124, -32124]
    assert pcm16_to_ulaw(np.zeros(160, dtype=np.int16)) == bytes([ULAW_SILENCE]) * 160
    # Beyond the clip level every sample saturates to the loudest codes.
    assert pcm16_to_ulaw(np.array([32767, -32768], dtype=np.int16)) == bytes([0x80, 0x00])


def test_round_trip_is_exact_on_the_code_set() -> None:
    decoded = ulaw_to_pcm16(ALL_CODES)
    again = ulaw_to_pcm16(pcm16_to_ulaw(decoded))
    assert np.array_equal(again, decoded)
    # Every code except negative zero (0x7F, which decodes to 0 = 0xFF) survives unchanged.
    reencoded = pcm16_to_ulaw(decoded)
    assert [u for u in range(256) if reencoded[u] != u] == [0x7F]


def test_empty_input() -> None:
    assert ulaw_to_pcm16(b"").size == 0
    assert ulaw_to_pcm16_bytes(b"") == b""
    assert pcm16_to_ulaw(b"") == b""
    assert pcm16_to_ulaw(np.zeros(0, dtype=np.int16)) == b""


@pytest.mark.parametrize(
    "bad",
    [
        b"\x00\x01\x02",  # odd number of bytes
        np.zeros(4, dtype=np.float32),
        np.zeros(4, dtype=np.int32),
        np.zeros((2, 2), dtype=np.int16),
    ],
    ids=["odd-bytes", "float32", "int32", "2-d"],
)
def test_encoder_rejects_what_is_not_16_bit_mono_pcm(bad: object) -> None:
    with pytest.raises(ValueError):
        pcm16_to_ulaw(bad)  # type: ignore[arg-type]

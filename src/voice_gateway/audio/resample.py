"""Streaming sample-rate conversion of 16-bit PCM between the telephone and agent rates.

Twilio sends 8 kHz audio; agents usually want 16 kHz or 24 kHz, and send 16/24 kHz back. A call
is converted 20 ms frame by 20 ms frame, so the converter is *streaming*: :class:`Resampler`
carries its filter state from one :meth:`Resampler.process` call to the next, and a stream cut
into frames converts like the whole signal at once (:func:`resample_all`).

Supported rates are :data:`SUPPORTED_RATES` (8000, 16000, 24000 and 48000 Hz), in any pairing;
other rates raise ``ValueError``. Equal rates are the identity.

How it works
------------
A polyphase windowed-sinc FIR low-pass (Kaiser window, about 80 dB stop-band attenuation) at the
common rate ``in_rate * L == out_rate * M``. The pass band reaches 85 % of the lower of the two
Nyquist frequencies (3400 Hz when 8 kHz is involved, the top of the telephone band), the cut-off
(-6 dB) is that Nyquist frequency and the stop band starts at 115 % of it (4600 Hz). So a tone
above 4.6 kHz cannot alias when down-sampling, up-sampling leaves no images, and only the
4.0-4.6 kHz edge can fold back, into 3.4-4.0 kHz, outside the telephone band. With the cut-off
exactly at Nyquist the filter is an L-th-band filter whose zero taps are skipped. Outputs are
computed with numpy correlations over the buffered input: no per-sample Python loop.

Why not ``soxr.ResampleStream``: its only quality that returns a fixed number of samples per call
(``"QQ"``, cubic interpolation) has no anti-alias filter (a 6 kHz tone going from 16 kHz to 8 kHz
comes out at full level as a 2 kHz alias), and its filtered qualities (``"LQ"`` to ``"VHQ"``)
return audio in bursts (e.g. 0, 0, 0, 940 samples for four 20 ms frames), which would need a
further 60-120 ms of buffering to give fixed frame sizes. This filter has none of these problems.

Frame sizes and delay
---------------------
Output is time-aligned with the input: output sample ``j`` is the signal at time
``j / out_rate``. The filter looks :attr:`Resampler.delay` output samples (about 2 ms) ahead, so

* the first :meth:`~Resampler.process` call returns ``n * out_rate / in_rate - delay`` samples;
* every later call returns exactly ``n * out_rate / in_rate`` samples when that is a whole number
  (a 160-sample 20 ms frame at 8 kHz gives 320 samples at 16 kHz and 480 at 24 kHz; 320 or 480
  samples give 160 at 8 kHz); for other chunk sizes the count varies by one so that the running
  total stays ``floor``-exact;
* :meth:`~Resampler.flush` returns the remaining ``delay`` samples (the input is continued with
  silence), so a whole stream of ``N`` input samples yields ``ceil(N * out_rate / in_rate)``
  output samples in total, and the resampler is ready for a new stream.
"""

from __future__ import annotations

import logging
import math
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["SUPPORTED_RATES", "Resampler", "resample_all"]

logger = logging.getLogger(__name__)

#: Sample rates (Hz) the resampler accepts, in any pairing.
SUPPORTED_RATES: Final = (8000, 16000, 24000, 48000)

_STOPBAND_DB: Final = 80.0
#: Pass band edge and stop band edge as fractions of the lower Nyquist frequency (3400 Hz and
#: 4600 Hz when 8 kHz is involved); the cut-off (-6 dB) is at the Nyquist frequency itself.
_PASS_EDGE: Final = 0.85
_STOP_EDGE: Final = 1.15

_INITIAL_CAPACITY: Final = 4096  # samples of input buffered before the store is compacted

Int16Array = npt.NDArray[np.int16]
_Float64Array = npt.NDArray[np.float64]


def _as_int16(pcm: Int16Array | bytes | bytearray | memoryview) -> Int16Array:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise ValueError(f"expected int16 samples, got dtype {pcm.dtype}")
        if pcm.ndim != 1:
            raise ValueError(f"expected a 1-D array of samples, got shape {pcm.shape}")
        return pcm
    nbytes = memoryview(pcm).nbytes
    if nbytes % 2:
        raise ValueError(f"16-bit PCM needs an even number of bytes, got {nbytes}")
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)


def _check_rate(name: str, rate: int) -> None:
    if rate not in SUPPORTED_RATES:
        supported = ", ".join(str(r) for r in SUPPORTED_RATES)
        raise ValueError(f"{name}={rate!r} is not supported; use one of {supported} Hz")


def _design(in_rate: int, out_rate: int) -> tuple[int, int, int, _Float64Array]:
    """Return ``(L, M, delay, phases)``: the polyphase filter for ``in_rate -> out_rate``.

    ``phases[p, k]`` is tap ``p + k * L`` of the prototype low-pass (zero-padded), scaled so that
    every phase has unity DC gain; ``delay`` is its group delay in output samples.
    """
    g = math.gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    rate = in_rate * up  # the common (virtual, zero-stuffed) rate
    nyquist = min(in_rate, out_rate) / 2.0
    cutoff = nyquist * (_PASS_EDGE + _STOP_EDGE) / 2.0
    width = 2.0 * math.pi * nyquist * (_STOP_EDGE - _PASS_EDGE) / rate
    beta = 0.1102 * (_STOPBAND_DB - 8.7)
    n_min = math.ceil((_STOPBAND_DB - 8.0) / (2.285 * width)) + 1
    # Odd length with a group delay (in virtual samples) that is a whole number of output samples.
    delay = math.ceil((n_min - 1) / (2 * down))
    n_taps = 2 * down * delay + 1
    centre = (n_taps - 1) / 2.0
    t = np.arange(n_taps, dtype=np.float64) - centre
    taps = (2.0 * cutoff / rate) * np.sinc(2.0 * cutoff / rate * t) * np.kaiser(n_taps, beta)
    per_phase = -(-n_taps // up)
    padded = np.zeros(per_phase * up, dtype=np.float64)
    padded[:n_taps] = taps
    phases = padded.reshape(per_phase, up).T.copy()  # phases[p, k] = taps[p + k * up]
    phases /= phases.sum(axis=1, keepdims=True)  # unity DC gain for every phase
    return up, down, delay, phases


class Resampler:
    """Streaming 16-bit PCM resampler (see the module documentation for frame sizes).

    >>> r = Resampler(8000, 16000)
    >>> len(r.process(np.zeros(160, dtype=np.int16))) == 320 - r.delay
    True
    >>> len(r.process(np.zeros(160, dtype=np.int16)))
    320
    >>> len(r.flush()) == r.delay  # the stream's tail; r is ready for a new stream
    True
    """

    __slots__ = (
        "_down",
        "_head",
        "_history",
        "_in_total",
        "_next_out",
        "_origin",
        "_store",
        "_sub",
        "_tail",
        "_up",
        "delay",
        "in_rate",
        "out_rate",
    )

    def __init__(self, in_rate: int, out_rate: int) -> None:
        _check_rate("in_rate", in_rate)
        _check_rate("out_rate", out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        #: Per phase p, for j in 0..M-1: the reversed taps p + j*L, p + (j+M)*L, ... without
        #: their zero ends, and how far back (in input samples) the first of them reaches.
        self._sub: list[list[tuple[int, _Float64Array]]] = []
        if in_rate == out_rate:
            self._up, self._down, self.delay, per_phase = 1, 1, 0, 1
        else:
            self._up, self._down, self.delay, phases = _design(in_rate, out_rate)
            per_phase = int(phases.shape[1])
            for phase in phases:
                self._sub.append(self._split(phase, self._down))
            logger.debug(
                "resampler %d -> %d Hz: L=%d M=%d, %d taps per phase, delay %d samples",
                in_rate,
                out_rate,
                self._up,
                self._down,
                per_phase,
                self.delay,
            )
        self._history = per_phase - 1
        # Input samples live in _store[_head:_tail]; _store[i] is input sample i + _origin.
        self._store: _Float64Array = np.zeros(0, dtype=np.float64)
        self._head = self._tail = self._origin = 0
        self._in_total = 0
        self._next_out = 0
        self.reset()

    @staticmethod
    def _split(phase: _Float64Array, down: int) -> list[tuple[int, _Float64Array]]:
        # The cut-off sits at the lower Nyquist frequency, so the prototype is an L-th-band
        # filter: many taps are zero (one phase of an up-sampler is a single tap). Dropping
        # zero ends saves whole correlations.
        tiny = 1e-12 * float(np.max(np.abs(phase)))
        subs: list[tuple[int, _Float64Array]] = []
        for j in range(min(down, phase.size)):
            taps = phase[j::down][::-1]
            nonzero = np.flatnonzero(np.abs(taps) > tiny)
            if not nonzero.size:
                continue
            first, last = int(nonzero[0]), int(nonzero[-1])
            reach = j + (taps.size - 1 - first) * down
            subs.append((reach, np.ascontiguousarray(taps[first : last + 1])))
        return subs

    @property
    def is_identity(self) -> bool:
        """True when the rates are equal and samples pass through unchanged."""
        return self.in_rate == self.out_rate

    def reset(self) -> None:
        """Forget the stream: the next :meth:`process` call starts a new one."""
        self._store = np.zeros(self._history + _INITIAL_CAPACITY, dtype=np.float64)
        self._head = 0
        self._tail = self._history  # zeros: the silence before the stream
        self._origin = -self._history
        self._in_total = 0
        self._next_out = self.delay  # index of the next output of the (delayed) FIR

    def process(self, pcm: Int16Array | bytes | bytearray | memoryview) -> Int16Array:
        """Feed the next chunk of input samples and return the output samples now available.

        ``pcm`` is a 1-D ``int16`` array or 16-bit little-endian PCM bytes; the result is a new
        ``int16`` array. Raises ``ValueError`` for another dtype or shape.
        """
        samples = _as_int16(pcm)
        if self.is_identity:
            return samples.copy()
        if samples.size:
            self._append(samples)
        return self._produce((self._in_total * self._up - 1) // self._down + 1)

    def flush(self) -> Int16Array:
        """End the stream: return the last samples (input continued with silence) and reset."""
        if self.is_identity:
            return np.zeros(0, dtype=np.int16)
        total_out = -(-self._in_total * self._up // self._down)  # ceil
        stop = total_out + self.delay
        needed = ((stop - 1) * self._down) // self._up + 1  # input samples the last output needs
        if needed > self._in_total:
            self._append(np.zeros(needed - self._in_total, dtype=np.int16))
        out = self._produce(stop)
        self.reset()
        return out

    def _append(self, samples: Int16Array) -> None:
        size = int(samples.size)
        if self._tail + size > self._store.size:
            kept = self._tail - self._head
            if kept + size > self._store.size // 2:  # grow, or the next call compacts again
                store = np.zeros(2 * (kept + size), dtype=np.float64)
            else:
                store = self._store
            store[:kept] = self._store[self._head : self._tail]
            self._store = store
            self._origin += self._head
            self._head, self._tail = 0, kept
        self._store[self._tail : self._tail + size] = samples
        self._tail += size
        self._in_total += size

    def _produce(self, stop: int) -> Int16Array:
        """Compute the FIR outputs ``_next_out .. stop-1`` from the buffered input."""
        start = self._next_out
        count = stop - start
        if count <= 0:
            return np.zeros(0, dtype=np.int16)
        up, down, buf, origin = self._up, self._down, self._store, self._origin
        out = np.empty(count, dtype=np.float64)
        # Outputs start+r, start+r+L, ... share one phase and step M input samples apart; each
        # is a sum over j of a correlation of every M-th input sample with every M-th tap.
        for r in range(min(up, count)):
            n = (count - r + up - 1) // up
            q = (start + r) * down
            newest = q // up - origin  # _store index of the newest input sample of the first output
            target = out[r::up]
            for index, (reach, taps) in enumerate(self._sub[q % up]):
                lo = newest - reach
                window = buf[lo : lo + (n + taps.size - 2) * down + 1 : down]
                part = window * taps[0] if taps.size == 1 else np.correlate(window, taps)
                if index:
                    target += part
                else:
                    target[:] = part
        self._next_out = stop
        keep_from = (stop * down) // up - self._history  # oldest input the next output needs
        self._head = max(self._head, keep_from - origin)
        np.rint(out, out=out)
        out.clip(-32768.0, 32767.0, out=out)
        return out.astype(np.int16)


def resample_all(
    pcm: Int16Array | bytes | bytearray | memoryview, in_rate: int, out_rate: int
) -> Int16Array:
    """Resample a whole buffer at once (time-aligned, ``ceil(n * out_rate / in_rate)`` samples).

    Equivalent to feeding ``pcm`` to a new :class:`Resampler` in any chunking and flushing it.
    """
    resampler = Resampler(in_rate, out_rate)
    head = resampler.process(pcm)
    if resampler.is_identity:
        return head
    return np.concatenate((head, resampler.flush()))

"""Per-frame CPU cost of the audio path (not collected by pytest; run it by hand).

    .venv/bin/python tests/unit/audio/bench_audio.py

Prints CPU microseconds per 20 ms frame, the best of several timeit repeats, for the endpointer with
its default WebRTC VAD on the spoken fixture (all frames, speech frames only, digital silence,
-50 dBFS hiss) and for the codec and resampler steps.
"""

from __future__ import annotations

import sys
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[3]))  # the repository root, for tests.unit.audio

from tests.unit.audio.signals import FRAME, frames_of, line_noise, load_caller, to_ulaw

from voice_gateway.audio.endpointer import Endpointer
from voice_gateway.audio.g711 import pcm16_to_ulaw, ulaw_to_pcm16, ulaw_to_pcm16_bytes
from voice_gateway.audio.resample import Resampler


def per_frame(run: Callable[[], object], frames: int, number: int = 20, repeat: int = 7) -> float:
    # CPU time of this process, not wall time: other jobs on the machine do not count.
    best = min(timeit.repeat(run, number=number, repeat=repeat, timer=time.process_time))
    return best / number / frames * 1e6


def endpointer_cost(frames: list[bytes]) -> float:
    endpointer = Endpointer()

    def run() -> None:
        endpointer.reset()
        for frame in frames:
            endpointer.push(frame)

    return per_frame(run, len(frames))


def main() -> None:
    audio, utterances = load_caller()
    all_frames = frames_of(audio)
    speech = [f for u in utterances for f in all_frames[u.start_frame : u.end_frame_exclusive]]
    silence = [b"\xff" * FRAME] * 500
    hiss = frames_of(to_ulaw(line_noise(10.0, white_dbfs=-50.0)))
    print("endpointer + WebRtcVad, us per 20 ms frame:")
    print(f"  whole fixture ({len(all_frames)} frames) {endpointer_cost(all_frames):6.2f}")
    print(f"  speech frames only ({len(speech)})      {endpointer_cost(speech):6.2f}")
    print(f"  digital silence                 {endpointer_cost(silence):6.2f}")
    print(f"  -50 dBFS hiss                   {endpointer_cost(hiss):6.2f}")

    frame = all_frames[100]
    pcm = ulaw_to_pcm16(frame)
    print("codec, us per frame:")
    print(f"  ulaw_to_pcm16_bytes  {per_frame(lambda: ulaw_to_pcm16_bytes(frame), 1, 20000):6.2f}")
    print(f"  ulaw_to_pcm16        {per_frame(lambda: ulaw_to_pcm16(frame), 1, 20000):6.2f}")
    print(f"  pcm16_to_ulaw        {per_frame(lambda: pcm16_to_ulaw(pcm), 1, 20000):6.2f}")
    print("resampler, us per 20 ms frame:")
    for in_rate, out_rate in ((8000, 16000), (8000, 24000), (16000, 8000), (24000, 8000)):
        cost = per_frame(
            partial(Resampler(in_rate, out_rate).process, np.resize(pcm, in_rate // 50)), 1, 2000
        )
        print(f"  {in_rate:>5} -> {out_rate:<5}        {cost:6.2f}")


if __name__ == "__main__":
    main()

"""The simulator's fast paths: the shared pacer, frames rendered from a template, sends without a
task, and mark echoes from a timer. Each must do exactly what the plain version did."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from voice_gateway.sim import frames as frames_module
from voice_gateway.sim.audio import (
    FRAME_BYTES,
    caller_recording,
    frame_is_speech,
    silence,
    tone,
)
from voice_gateway.sim.caller import CallConfig, SimulatedCall, _PacedStream
from voice_gateway.sim.frames import MediaRenderer, frame_plan
from voice_gateway.sim.pacer import FramePacer, pacer_for, send_now
from voice_gateway.telephony import media as codec

TOKEN = "unit-test-auth-token-0123456789"
EPS = 1e-9  # past a due time computed as t0 + n * 0.02
ACCOUNT = "AC" + "a" * 32


# -- a clock the test moves by hand -------------------------------------------------------------


class FakeHandle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just what the pacer and a paced stream use of a loop: ``time``, ``call_at`` and
    ``create_future`` (a real future of the running loop)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.timers: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(when, callback)
        self.timers.append(handle)
        return handle

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def armed(self) -> list[float]:
        return [h.when for h in self.timers if not h.cancelled]

    def advance(self, to: float) -> None:
        """Move the clock to ``to`` and run the timers due by then, as the loop would."""
        self.now = to
        while due := [h for h in self.timers if not h.cancelled and h.when <= to]:
            for handle in due:
                self.timers.remove(handle)
                handle.callback()


class RecordingWs:
    """A client websocket that records what is sent; ``hold`` makes the next send wait."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False
        self.hold: asyncio.Future[None] | None = None

    async def send_str(self, data: str) -> None:
        self.sent.append(data)  # written before any wait, as aiohttp does
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.sent]


def streaming_call(loop: FakeLoop, ws: RecordingWs, audio: bytes, **options: Any) -> SimulatedCall:
    """A call whose stream is open on the fake loop (``start`` sent at its ``now``)."""
    call = SimulatedCall(
        CallConfig(
            base_url="http://127.0.0.1:1",
            auth_token=TOKEN,
            account_sid=ACCOUNT,
            audio=audio,
            **options,
        )
    )
    call.ws = ws  # type: ignore[assignment]
    call._loop = loop  # type: ignore[assignment]
    call._t0 = call._play_end = loop.now
    call._seq = 1  # as after ``start``
    return call


def start_stream(call: SimulatedCall, loop: FakeLoop) -> _PacedStream:
    """What ``stream_audio`` does in real time, on the fake clock."""
    stream = _PacedStream(call, call._frame_plan(), sorted(call.config.dtmf), loop)  # type: ignore[arg-type]
    stream.start()
    return stream


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- frames ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sid", ["MZ" + "0123456789abcdef" * 2, 'MZ"quo\\te', "MZünï☎\n"])
def test_rendered_media_frames_are_byte_identical_to_twilio_media(sid: str) -> None:
    renderer = MediaRenderer(sid)
    assert renderer.exact
    plan = frame_plan(caller_recording()[: 40 * FRAME_BYTES] + b"\x01\x02", None, 60)
    for n, (frame, b64) in enumerate(zip(plan.frames, plan.payloads, strict=True)):
        for seq in (n + 2, 10**12 + n):
            assert renderer.render(seq, n + 1, n * 20, frame, b64) == codec.twilio_media(
                sid, seq, n + 1, n * 20, frame
            )


def test_renderer_falls_back_to_twilio_media_if_the_format_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def reordered(sid: str, seq: int, chunk: int, ts: int, payload: bytes, **_: Any) -> str:
        return json.dumps({"streamSid": sid, "event": "media", "n": [seq, chunk, ts, len(payload)]})

    monkeypatch.setattr(frames_module.codec, "twilio_media", reordered)
    renderer = MediaRenderer("MZ1")
    assert not renderer.exact
    assert renderer.render(3, 2, 20, b"\xff" * 160, "ignored") == reordered(
        "MZ1", 3, 2, 20, b"\xff" * 160
    )


def _plain_frames(audio: bytes, loop_seconds: float | None, trailing_ms: int) -> list[bytes]:
    """How the simulator cut its audio before the plan was cached (the reference)."""
    if loop_seconds is not None:
        total = round(loop_seconds * 1000 / 20)
        if audio:
            audio = (audio * (total * 160 // len(audio) + 1))[: total * 160]
        else:
            audio = silence(total * 20)
    out = []
    for i in range(0, len(audio), 160):
        frame = audio[i : i + 160]
        out.append(frame + silence(20)[: 160 - len(frame)])
    return out + [silence(20)] * (trailing_ms // 20)


@pytest.mark.parametrize(
    ("audio", "loop_seconds", "trailing_ms"),
    [
        (tone(80) + b"\x7f" * 50, None, 40),
        (tone(60) + silence(40), 0.5, 0),
        (tone(1000), 0.1, 20),
        (b"", 0.06, 0),
        (b"", None, 60),
    ],
)
def test_frame_plan_is_what_the_call_streams(
    audio: bytes, loop_seconds: float | None, trailing_ms: int
) -> None:
    plan = frame_plan(audio, loop_seconds, trailing_ms)
    expected = _plain_frames(audio, loop_seconds, trailing_ms)
    assert list(plan.frames) == expected
    assert list(plan.payloads) == [
        json.loads(codec.twilio_media("MZ", 2, 1, 0, f))["media"]["payload"] for f in expected
    ]
    assert list(plan.speech) == [frame_is_speech(f) for f in expected]
    assert frame_plan(bytearray(audio), loop_seconds, trailing_ms) is plan  # cached per process


def test_frame_plan_shares_repeated_frames() -> None:
    plan = frame_plan(tone(100), 2.0, 100)
    assert len(plan) == 105
    assert plan.frames[0] is plan.frames[5] and plan.payloads[0] is plan.payloads[5]
    assert plan.frames[-1] is plan.frames[-2]


# -- the pacer ------------------------------------------------------------------------------------


def test_pacer_runs_due_steps_earliest_first_on_one_timer() -> None:
    loop = FakeLoop(100.0)
    pacer = FramePacer(loop)  # type: ignore[arg-type]
    ran: list[tuple[str, float]] = []

    def stepper(name: str, due: float, times: int) -> Callable[[], float | None]:
        state = {"due": due, "left": times}

        def step() -> float | None:
            ran.append((name, loop.now))
            state["left"] -= 1
            state["due"] += 0.020  # an absolute schedule: from its due time, not from now
            return state["due"] if state["left"] else None

        pacer.add(due, step)
        return step

    stepper("a", 100.010, 3)
    stepper("b", 100.005, 2)
    assert loop.armed() == [100.005]  # one timer, at the earliest due time
    loop.advance(100.012)  # both are due: earliest first
    assert ran == [("b", 100.012), ("a", 100.012)]
    assert loop.armed() == [pytest.approx(100.025)]
    loop.advance(100.1)  # b (due 25 ms), a (30 ms), a (50 ms): in due order, in one pass
    assert ran[2:] == [("b", 100.1), ("a", 100.1), ("a", 100.1)]
    assert len(pacer) == 0 and loop.armed() == []


def test_pacer_keeps_going_when_a_step_fails() -> None:
    loop = FakeLoop(0.0)
    pacer = FramePacer(loop)  # type: ignore[arg-type]
    ran: list[str] = []

    def bad() -> float | None:
        raise RuntimeError("boom")

    def good() -> float | None:
        ran.append("good")
        return None

    pacer.add(1.0, bad)
    pacer.add(1.0, good)
    loop.advance(1.0)
    assert ran == ["good"]


async def test_pacer_is_shared_per_loop() -> None:
    loop = asyncio.get_running_loop()
    assert pacer_for(loop) is pacer_for(loop)
    assert pacer_for(FakeLoop(0.0)) is not pacer_for(loop)  # type: ignore[arg-type]


# -- paced streaming ----------------------------------------------------------------------------


async def test_lateness_is_measured_against_the_absolute_schedule() -> None:
    """A stall delays the frames due during it; each records its own lateness against
    ``t0 + n * 20 ms``, and the schedule after the stall does not shift."""
    loop = FakeLoop(50.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, silence(200))
    stream = start_stream(call, loop)
    await settle()
    loop.advance(50.0)  # frame 0 at t0
    loop.advance(50.095)  # the process stalled: frames 1-4 (due 20..80 ms) go out now
    loop.advance(50.1 + EPS)  # frame 5, on time
    loop.advance(50.175)  # frames 6-8 (due 120, 140, 160 ms), late
    loop.advance(50.5)  # frame 9 (due 180 ms), very late
    await settle()
    assert stream.done.done()
    r = call.result
    assert r.frames_sent == 10
    ms = pytest.approx([0, 95, 95, 95, 95, 100, 175, 175, 175, 500], abs=1e-3)
    assert r.send_times_ms == ms
    assert r.lateness_ms == pytest.approx([0, 75, 55, 35, 15, 0, 55, 35, 15, 320], abs=1e-3)
    for n, (sent, late) in enumerate(zip(r.send_times_ms, r.lateness_ms, strict=True)):
        assert sent - late == pytest.approx(n * 20, abs=1e-3)  # each against its own due time
    media = [f for f in ws.frames() if f["event"] == "media"]
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, 11)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * n) for n in range(10)]


async def test_paced_frames_are_twilios_with_dtmf_in_sequence() -> None:
    loop = FakeLoop(7.0)
    ws = RecordingWs()
    audio = tone(60) + silence(40)
    call = streaming_call(loop, ws, audio, dtmf=[(40, "5"), (40, "6"), (500, "#")])
    stream = start_stream(call, loop)
    await settle()
    loop.advance(8.0)
    await settle()
    assert stream.done.done()
    plan = frame_plan(audio, None, 0)
    sid = call.stream_sid
    expected = [
        codec.twilio_media(sid, 2, 1, 0, plan.frames[0]),
        codec.twilio_media(sid, 3, 2, 20, plan.frames[1]),
        codec.twilio_dtmf(sid, 4, "5"),
        codec.twilio_dtmf(sid, 5, "6"),
        codec.twilio_media(sid, 6, 3, 40, plan.frames[2]),
        codec.twilio_media(sid, 7, 4, 60, plan.frames[3]),
        codec.twilio_media(sid, 8, 5, 80, plan.frames[4]),
        codec.twilio_dtmf(sid, 9, "#"),  # after the audio, at once
    ]
    assert ws.sent == expected
    assert [d for _, d in call.result.dtmf_sent] == ["5", "6", "#"]
    assert call.result.speech_flags == list(plan.speech)


async def test_stream_stops_at_the_next_frame_once_the_stream_ends() -> None:
    loop = FakeLoop(0.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, silence(1000))
    stream = start_stream(call, loop)
    await settle()
    loop.advance(0.045)  # frames 0-2
    call._end.set()
    loop.advance(0.06)  # frame 3 is not sent
    await settle()
    assert stream.done.done() and call.result.frames_sent == 3 and not call.result.errors


async def test_socket_closing_mid_stream_is_an_error() -> None:
    loop = FakeLoop(0.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, silence(1000))
    stream = start_stream(call, loop)
    await settle()
    loop.advance(0.02 + EPS)
    ws.closed = True
    loop.advance(0.04)
    await settle()
    assert stream.done.done() and call.result.frames_sent == 2
    assert call.result.errors == ["media send failed: socket closed"]


async def test_a_send_waiting_for_the_socket_holds_the_next_frame() -> None:
    """Flow control: when a write has to wait, the next frame waits for it (and is late)."""
    loop = FakeLoop(0.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, silence(100))
    stream = start_stream(call, loop)
    await settle()
    loop.advance(0.0)
    ws.hold = asyncio.get_running_loop().create_future()
    hold = ws.hold
    loop.advance(0.02 + EPS)  # frame 1 is written, then its send waits
    loop.advance(0.07)  # frames 2-3 would be due, but the send has not finished
    assert call.result.frames_sent == 2 and len(ws.sent) == 2
    hold.set_result(None)
    await settle()  # the send finishes: frame 2 is re-added to the pacer
    loop.advance(0.075)  # frames 2 and 3 go out, late
    loop.advance(0.08 + EPS)  # frame 4 on time
    await settle()
    assert stream.done.done()
    assert call.result.frames_sent == 5
    assert call.result.lateness_ms == pytest.approx([0, 0, 35, 15, 0], abs=1e-3)


async def test_cancelled_stream_sends_nothing_more() -> None:
    loop = FakeLoop(0.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, silence(1000))
    stream = start_stream(call, loop)
    await settle()
    loop.advance(0.02 + EPS)
    stream.stopped = True  # what stream_audio does when it is cancelled
    loop.advance(1.0)
    assert call.result.frames_sent == 2 and len(ws.sent) == 2


# -- sending without a task -----------------------------------------------------------------------


async def test_send_now_finishes_at_once_or_carries_on_in_a_task() -> None:
    done: list[str] = []

    async def quick() -> None:
        done.append("quick")

    assert send_now(quick()) is None and done == ["quick"]

    gate = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        done.append("written")
        await gate
        await asyncio.sleep(0)
        done.append("drained")

    task = send_now(waits())
    assert task is not None and done == ["quick", "written"]
    gate.set_result(None)
    await task
    assert done == ["quick", "written", "drained"]

    async def fails() -> None:
        raise ConnectionResetError("gone")

    with pytest.raises(ConnectionResetError):
        send_now(fails())


# -- Twilio's playout: marks ----------------------------------------------------------------------


def _outbound(sid: str, kind: str, **fields: Any) -> str:
    if kind == "media":
        return codec.OutboundEncoder(sid).media(fields["payload"])
    if kind == "mark":
        return codec.OutboundEncoder(sid).mark(fields["name"])
    return codec.OutboundEncoder(sid).clear()


def _echoes(ws: RecordingWs) -> list[str]:
    return [f["mark"]["name"] for f in ws.frames() if f["event"] == "mark"]


async def test_a_mark_is_echoed_only_after_its_audio_has_played() -> None:
    loop = FakeLoop(10.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, b"")
    sid = call.stream_sid
    call._on_text(_outbound(sid, "media", payload=b"\x00" * 800), 10.0)  # 100 ms of audio
    call._on_text(_outbound(sid, "mark", name="m1"), 10.0)
    call._on_text(_outbound(sid, "mark", name="m2"), 10.0)  # nothing between: same due time
    call._on_text(_outbound(sid, "media", payload=b"\x00" * 400), 10.05)  # 50 ms more
    call._on_text(_outbound(sid, "mark", name="m3"), 10.05)
    assert list(call._pending_marks) == [(10.1, "m1"), (10.1, "m2"), (10.15, "m3")]
    assert loop.armed() == [10.1]  # one timer, for the first mark
    loop.advance(10.099)
    assert _echoes(ws) == []
    loop.advance(10.1)
    assert _echoes(ws) == ["m1", "m2"] and loop.armed() == [10.15]
    loop.advance(10.2)
    assert _echoes(ws) == ["m1", "m2", "m3"]
    assert [json.loads(x)["sequenceNumber"] for x in ws.sent] == ["2", "3", "4"]
    r = call.result
    assert r.marks_received == [(0.0, "m1"), (0.0, "m2"), (pytest.approx(50.0), "m3")]
    # Each echo is recorded when it was sent: once the audio queued before it had played.
    assert r.marks_echoed == [
        (pytest.approx(100.0), "m1"),
        (pytest.approx(100.0), "m2"),
        (pytest.approx(200.0), "m3"),  # sent when the clock got there (10.2)
    ]
    assert r.playout_ms == [(0.0, pytest.approx(150.0))]


async def test_clear_returns_pending_marks_at_once() -> None:
    loop = FakeLoop(3.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, b"")
    sid = call.stream_sid
    call._on_text(_outbound(sid, "media", payload=b"\x00" * 80000), 3.0)  # 10 s of audio
    call._on_text(_outbound(sid, "mark", name="a"), 3.0)
    call._on_text(_outbound(sid, "media", payload=b"\x00" * 8000), 3.0)
    call._on_text(_outbound(sid, "mark", name="b"), 3.0)
    assert loop.armed() == [13.0]
    loop.advance(3.5)
    call._on_text(_outbound(sid, "clear"), 3.5)
    assert list(call._pending_marks) == [(3.5, "a"), (3.5, "b")]
    assert loop.armed() == [3.5]
    loop.advance(3.5)
    assert _echoes(ws) == ["a", "b"]  # returned by the clear, long before their audio ended
    r = call.result
    assert r.clears_ms == [pytest.approx(500.0)]
    assert r.marks_echoed == [(pytest.approx(500.0), "a"), (pytest.approx(500.0), "b")]
    assert r.playout_ms == [(0.0, pytest.approx(500.0))]  # cut by the clear
    assert loop.armed() == []


async def test_a_mark_with_nothing_playing_is_echoed_on_the_next_pass() -> None:
    loop = FakeLoop(1.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, b"")
    call._on_text(_outbound(call.stream_sid, "media", payload=b"\x00" * 160), 1.0)
    call._on_text(_outbound(call.stream_sid, "mark", name="idle"), 1.5)  # played by then
    assert loop.armed() == [1.5]
    assert _echoes(ws) == []  # not from inside the receive handler
    loop.advance(1.5)
    assert _echoes(ws) == ["idle"]


async def test_marks_stop_when_the_stream_ends() -> None:
    loop = FakeLoop(0.0)
    ws = RecordingWs()
    call = streaming_call(loop, ws, b"")
    call._on_text(_outbound(call.stream_sid, "media", payload=b"\x00" * 1600), 0.0)
    call._on_text(_outbound(call.stream_sid, "mark", name="never"), 0.0)
    await call._stop_tasks()
    assert loop.armed() == []
    loop.advance(1.0)
    assert _echoes(ws) == [] and call.result.marks_echoed == []

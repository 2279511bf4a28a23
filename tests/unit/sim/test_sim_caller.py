"""The simulated call against a scripted stand-in gateway: exactly what goes over the wire."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from voice_gateway.sim.audio import silence, tone
from voice_gateway.sim.caller import CallConfig, SimulatedCall
from voice_gateway.telephony import media as codec
from voice_gateway.telephony.signature import SignatureValidator
from voice_gateway.telephony.twiml import connect_stream, say_and_hangup

TOKEN = "unit-test-auth-token-0123456789"
ACCOUNT = "AC" + "a" * 32

StreamScript = Callable[[web.WebSocketResponse, "FakeGateway"], Awaitable[None]]


@dataclass
class FakeGateway:
    """Answers the webhook with TwiML, records every frame and every status callback."""

    url: str = ""
    twiml: Callable[[str], str] | None = None
    script: StreamScript | None = None
    webhooks: list[tuple[str, dict[str, str], str | None]] = field(default_factory=list)
    statuses: list[tuple[dict[str, str], bool]] = field(default_factory=list)
    frames: list[dict[str, Any]] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    handshake_signature: str | None = None
    close_code: int = codec.CLOSE_NORMAL

    def stream_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/twilio/stream"

    async def voice(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.webhooks.append((str(request.url), form, request.headers.get("X-Twilio-Signature")))
        body = (
            self.twiml(self.stream_url())
            if self.twiml
            else connect_stream(self.stream_url(), {"session_id": "s-1", "token": "tok"})
        )
        return web.Response(text=body, content_type="text/xml")

    async def status(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = self.url + request.path_qs
        ok = SignatureValidator(TOKEN).validate(
            url, form, request.headers.get("X-Twilio-Signature")
        )
        self.statuses.append((form, ok))
        return web.Response(status=204)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.handshake_signature = request.headers.get("X-Twilio-Signature")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        script = asyncio.create_task(self.script(ws, self)) if self.script else None
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            self.frames.append(json.loads(msg.data))
            self.frame_times.append(loop.time())
            if self.frames[-1]["event"] == "stop":
                break
        if script is not None:
            script.cancel()
        await ws.close(code=self.close_code)
        return ws


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    app = web.Application()
    app.router.add_post("/twilio/voice", fake.voice)
    app.router.add_post("/twilio/status", fake.status)
    app.router.add_get("/twilio/stream", fake.stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.url = f"http://127.0.0.1:{port}"
    yield fake
    await runner.cleanup()


def make_call(gw: FakeGateway, **options: Any) -> SimulatedCall:
    return SimulatedCall(
        CallConfig(base_url=gw.url, auth_token=TOKEN, account_sid=ACCOUNT, **options)
    )


async def test_webhook_is_twilios_signed_form(gateway: FakeGateway) -> None:
    call = make_call(gateway, webhook_query="test=1&x=a+b", realtime=False)
    result = await call.run()
    assert result.ok, result.errors
    url, form, signature = gateway.webhooks[0]
    assert url == gateway.url + "/twilio/voice?test=1&x=a+b"
    assert re.fullmatch(r"CA[0-9a-f]{32}", form["CallSid"])
    assert form["AccountSid"] == ACCOUNT
    assert form["CallStatus"] == "ringing" and form["Direction"] == "inbound"
    assert form["ApiVersion"] == "2010-04-01"
    assert form["Caller"] == form["From"] == "+14155550100"
    assert form["Called"] == form["To"] == "+18005550199"
    assert SignatureValidator(TOKEN).validate(url, form, signature)
    assert result.session_id == "s-1"


@pytest.mark.parametrize("mode", ["valid", "forged", "missing"])
async def test_stream_handshake_signature(gateway: FakeGateway, mode: str) -> None:
    result = await make_call(gateway, stream_signature=mode, realtime=False).run()
    assert result.ok
    valid = SignatureValidator(TOKEN).validate(
        gateway.stream_url(), {}, gateway.handshake_signature
    )
    assert valid is (mode == "valid")
    assert (gateway.handshake_signature is None) is (mode == "missing")


async def test_frames_are_numbered_like_twilios(gateway: FakeGateway) -> None:
    audio = tone(80) + b"\x7f" * 50  # 50 bytes past 4 whole frames: padded to a 5th
    call = make_call(gateway, audio=audio, dtmf=[(40, "5")], trailing_silence_ms=40)
    result = await call.run()
    assert result.ok, result.errors
    frames = gateway.frames
    assert frames[0] == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    start = frames[1]
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    sid = start["streamSid"]
    assert re.fullmatch(r"MZ[0-9a-f]{32}", sid)
    assert start["start"]["callSid"] == call.call_sid
    assert start["start"]["accountSid"] == ACCOUNT
    assert start["start"]["tracks"] == ["inbound"]
    assert start["start"]["customParameters"] == {"session_id": "s-1", "token": "tok"}
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    events = [f["event"] for f in frames[2:]]
    assert events == ["media", "media", "dtmf", "media", "media", "media", "media", "media", "stop"]
    seqs = [f["sequenceNumber"] for f in frames[1:]]
    assert seqs == [str(n) for n in range(1, len(frames))]
    media = [f for f in frames if f["event"] == "media"]
    assert [m["media"]["chunk"] for m in media] == [str(n) for n in range(1, 8)]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * n) for n in range(7)]
    assert all(m["streamSid"] == sid and m["media"]["track"] == "inbound" for m in media)
    payloads = [codec.parse_inbound(json.dumps(m)).payload for m in media]  # type: ignore[union-attr]
    assert all(len(p) == 160 for p in payloads)
    assert payloads[4][:50] == audio[640:] and payloads[4][50:] == b"\xff" * 110
    assert payloads[5] == payloads[6] == silence(20)
    dtmf = next(f for f in frames if f["event"] == "dtmf")
    assert dtmf["dtmf"] == {"track": "inbound_track", "digit": "5"}
    stop = frames[-1]
    assert stop["stop"] == {"accountSid": ACCOUNT, "callSid": call.call_sid}
    assert result.frames_sent == 7 and result.dtmf_sent[0][1] == "5"


async def test_media_is_paced_in_real_time_without_drift(gateway: FakeGateway) -> None:
    result = await make_call(gateway, audio=silence(500)).run()
    assert result.ok
    times = [
        t for f, t in zip(gateway.frames, gateway.frame_times, strict=True) if f["event"] == "media"
    ]
    assert len(times) == 25
    assert times[-1] - times[0] >= 0.48 - 0.005
    assert len(result.lateness_ms) == 25 and all(x >= 0 for x in result.lateness_ms)
    # absolute schedule: frame n was sent at (its schedule + its lateness)
    for n, (sent, late) in enumerate(zip(result.send_times_ms, result.lateness_ms, strict=True)):
        assert sent == pytest.approx(n * 20 + late, abs=0.5)


async def test_loop_cuts_or_repeats_the_audio(gateway: FakeGateway) -> None:
    result = await make_call(gateway, audio=tone(60), loop_seconds=0.2, realtime=False).run()
    assert result.frames_sent == 10
    result = await make_call(gateway, audio=tone(1000), loop_seconds=0.1, realtime=False).run()
    assert result.frames_sent == 5


async def test_playout_marks_and_clear(gateway: FakeGateway) -> None:
    """Marks come back when the audio before them has played; clear returns them at once."""
    sent_at: dict[str, float] = {}

    async def script(ws: web.WebSocketResponse, gw: FakeGateway) -> None:
        while len(gw.frames) < 2:  # noqa: ASYNC110 (connected, start)
            await asyncio.sleep(0.005)
        sid = gw.frames[1]["streamSid"]
        enc = codec.OutboundEncoder(sid)
        loop = asyncio.get_running_loop()
        await ws.send_str(enc.media(b"\x00" * 1600))  # 200 ms in one message
        await ws.send_str(enc.mark("m1"))
        sent_at["m1"] = loop.time()
        await asyncio.sleep(0.3)  # idle again: the next audio starts playing on arrival
        await ws.send_str(enc.media(b"\x00" * 8000))  # 1 s
        await ws.send_str(enc.mark("m2"))
        await asyncio.sleep(0.1)
        await ws.send_str(enc.clear())
        sent_at["clear"] = loop.time()

    gateway.script = script
    call = make_call(gateway, audio=silence(800))
    result = await call.run()
    assert result.ok, result.errors
    echoes = {
        f["mark"]["name"]: t
        for f, t in zip(gateway.frames, gateway.frame_times, strict=True)
        if f["event"] == "mark"
    }
    assert list(echoes) == ["m1", "m2"]
    assert 0.18 <= echoes["m1"] - sent_at["m1"] <= 0.26
    assert 0 <= echoes["m2"] - sent_at["clear"] <= 0.05  # returned by the clear, not played
    assert len(result.clears_ms) == 1
    assert result.media_received == 2 and result.media_bytes_received == 9600
    (first, second) = result.playout_ms
    assert first[1] - first[0] == pytest.approx(200, abs=5)
    assert second[1] - second[0] == pytest.approx(100, abs=30)  # cut by the clear
    assert [e.kind for e in result.events] == ["media", "mark", "media", "mark", "clear"]


async def test_gateway_closing_the_socket_ends_the_call(gateway: FakeGateway) -> None:
    async def script(ws: web.WebSocketResponse, gw: FakeGateway) -> None:
        await asyncio.sleep(0.1)
        await ws.close(code=codec.CLOSE_BAD_STREAM_TOKEN, message=b"stream token refused")

    gateway.script = script
    result = await make_call(gateway, audio=silence(2000)).run()
    assert result.close_code == codec.CLOSE_BAD_STREAM_TOKEN
    assert result.close_reason == "stream token refused"
    assert result.ended_by == "gateway" and result.refused
    assert result.frames_sent < 20
    assert not any(f["event"] == "stop" for f in gateway.frames)  # Twilio sends no stop then
    assert [form["CallStatus"] for form, _ in gateway.statuses] == ["completed"]


async def test_status_callbacks(gateway: FakeGateway) -> None:
    call = make_call(
        gateway,
        audio=silence(1100),
        status_callbacks=("completed", "completed", "in-progress"),
    )
    result = await call.run()
    assert result.ok, result.errors
    forms = [form for form, ok in gateway.statuses if ok]
    assert len(forms) == 3
    completed, retry, progress = forms
    assert completed["CallStatus"] == "completed" and completed["CallDuration"] == "2"
    assert completed["Duration"] == "1"
    assert completed["CallbackSource"] == "call-progress-events"
    assert completed["SequenceNumber"] == retry["SequenceNumber"] == "3"
    assert progress["CallStatus"] == "in-progress" and progress["SequenceNumber"] == "2"
    assert "CallDuration" not in progress
    assert parsedate_to_datetime(completed["Timestamp"]).utcoffset() is not None
    assert completed["CallSid"] == call.call_sid and completed["AccountSid"] == ACCOUNT
    assert result.call_duration == 2


async def test_say_hangup_and_reject(gateway: FakeGateway) -> None:
    gateway.twiml = lambda _url: say_and_hangup("Sorry, goodbye.")
    result = await make_call(gateway).run()
    assert result.refused and result.ended_by == "twiml"
    assert result.plan is not None and result.plan.said == ["Sorry, goodbye."]
    assert gateway.statuses[-1][0]["CallStatus"] == "completed"

    gateway.twiml = lambda _url: '<Response><Reject reason="busy"/></Response>'
    result = await make_call(gateway).run()
    assert result.refused and result.plan is not None and result.plan.reject == "busy"
    assert gateway.statuses[-1][0]["CallStatus"] == "busy"
    assert gateway.statuses[-1][0]["CallDuration"] == "0"


async def test_api_update_ends_the_stream(gateway: FakeGateway) -> None:
    call = make_call(gateway, audio=silence(3000))
    running = asyncio.create_task(call.run())
    while call.result.frames_sent < 5:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    call.api_update({"Twiml": "<Response><Dial>+15551234567</Dial></Response>"})
    result = await running
    assert result.ok
    assert result.ended_by == "api-redirect" and "Dial" in (result.redirect_twiml or "")
    assert result.frames_sent < 30
    assert gateway.frames[-1]["event"] == "stop"

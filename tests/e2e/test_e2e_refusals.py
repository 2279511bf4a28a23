"""What the gateway refuses, at each of Twilio's doors, and that a refusal leaves no trace."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import pytest

from tests.e2e.conftest import (
    UNROUTED_NUMBER,
    Harness,
    short_audio,
)
from voice_gateway.sessions.models import EndReason
from voice_gateway.sim.caller import SimulatedCall
from voice_gateway.telephony import media as codec
from voice_gateway.telephony.signature import SignatureValidator
from voice_gateway.telephony.tokens import issue_stream_token

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _wait_stream(h: Harness, call: SimulatedCall, wait_s: float = 5.0) -> str:
    """The session id of ``call`` once its stream is live in the store."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while loop.time() < deadline:
        sid = call.result.session_id
        if sid is not None:
            session = await h.store.get(sid)
            if session is not None and session.stream is not None:
                return sid
        await asyncio.sleep(0.02)
    raise AssertionError("the first stream never started")


# -- signatures -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["forged", "missing"])
async def test_voice_webhook_with_bad_signature_is_refused(shared: Harness, mode: str) -> None:
    h = shared
    result = await h.place(webhook_signature=mode, status_callbacks=())
    assert result.webhook_status == 403
    assert result.refused
    assert result.session_id is None
    assert await h.live(result.call_sid) is None


async def test_status_callback_with_forged_signature_is_refused(shared: Harness) -> None:
    h = shared
    call = h.call(status_signature="forged")
    assert await call.dial() is not None
    assert call.result.session_id is not None
    assert await call.post_status("completed", duration=7) == 403
    assert await call.post_status("in-progress") == 403
    live = await h.store.get(call.result.session_id)
    assert live is not None and live.is_active  # the forged "completed" did nothing
    call.config.status_signature = "valid"
    assert await call.post_status("completed", duration=3) == 204
    row = await h.archived(call.result.session_id)
    assert row.duration == 3


@pytest.mark.parametrize("mode", ["forged", "missing"])
async def test_stream_handshake_with_bad_signature_closes_1008(shared: Harness, mode: str) -> None:
    h = shared
    result = await h.place(audio=short_audio(300), stream_signature=mode, status_callbacks=())
    assert result.close_code == codec.CLOSE_POLICY_VIOLATION
    assert result.refused and result.ended_by == "gateway"
    assert result.session_id is not None
    session = await h.store.get(result.session_id)
    assert session is not None and session.is_active and session.stream is None


# -- stream tokens and sessions ---------------------------------------------------------------


async def test_bad_stream_token_closes_4401(shared: Harness) -> None:
    harness = shared
    call = harness.call(status_callbacks=())
    plan = await call.dial()
    assert plan is not None and plan.stream_url
    session_id = plan.stream_parameters["session_id"]
    await call.open_stream(custom_parameters={"session_id": session_id, "token": "x" * 55})
    assert await call.wait_closed() == codec.CLOSE_BAD_STREAM_TOKEN
    session = await harness.store.get(session_id)
    assert session is not None and session.stream is None
    await call.hang_up()


async def test_token_of_another_call_closes_4401(shared: Harness) -> None:
    harness = shared
    first, second = harness.call(), harness.call()
    plan1, plan2 = await first.dial(), await second.dial()
    assert plan1 is not None and plan2 is not None
    # The second call presents the first call's session and token: bound to the other CallSid.
    await second.open_stream(custom_parameters=plan1.stream_parameters)
    assert await second.wait_closed() == codec.CLOSE_BAD_STREAM_TOKEN
    await second.hang_up()


async def test_unknown_session_closes_4404(shared: Harness) -> None:
    harness = shared
    call = harness.call()
    plan = await call.dial()
    assert plan is not None and plan.stream_url
    token = issue_stream_token(
        harness.settings.stream_secret(), "no-such-session", call.call_sid, 60
    )
    await call.open_stream(custom_parameters={"session_id": "no-such-session", "token": token})
    assert await call.wait_closed() == codec.CLOSE_UNKNOWN_SESSION
    await call.hang_up()


@pytest.mark.slow
async def test_second_stream_for_a_live_call_closes_4409(
    shared: Harness,
) -> None:
    h = shared
    first = h.call(audio=short_audio(1500))
    running = asyncio.create_task(first.run())
    session_id = await _wait_stream(h, first)

    second = h.call(call_sid=first.call_sid, status_callbacks=())
    plan = await second.dial()  # Twilio retrying the webhook: same session, fresh token
    assert plan is not None and plan.stream_parameters["session_id"] == session_id
    await second.open_stream()
    assert await second.wait_closed() == codec.CLOSE_DUPLICATE_STREAM
    await second.hang_up()

    result = await running
    assert result.ok, result.errors
    row = await h.archived(session_id)
    assert row.stream is not None and row.stream.stream_sid == first.stream_sid
    assert row.stream.frames_in == result.frames_sent
    assert len(await h.rows_for_call(first.call_sid)) == 1


# -- webhooks ---------------------------------------------------------------------------------


async def test_retried_voice_webhook_returns_the_same_session(
    shared: Harness,
) -> None:
    h = shared
    call = h.call()
    first = await call.dial()
    again = await call.dial()
    assert first is not None and again is not None
    assert first.stream_parameters["session_id"] == again.stream_parameters["session_id"]
    assert await call.post_status("completed", duration=0) == 204
    row = await h.archived(first.stream_parameters["session_id"])
    assert len(await h.rows_for_call(call.call_sid)) == 1
    assert row.duration == 0


async def test_status_callback_for_unknown_call_is_204_and_creates_nothing(
    shared: Harness,
) -> None:
    h = shared
    call = h.call()
    assert await call.post_status("completed", duration=12) == 204
    assert await call.post_status("in-progress") == 204
    assert await h.live(call.call_sid) is None
    await asyncio.sleep(0.2)
    assert await h.rows_for_call(call.call_sid) == []


async def test_malformed_webhook_bodies_are_400(shared: Harness) -> None:
    h = shared
    signer = SignatureValidator(h.token)
    url = h.url + "/twilio/voice"
    good = {"CallSid": "CA" + "1" * 32, "From": "+14155550100", "To": "+18005550199"}
    form = "application/x-www-form-urlencoded"

    def signed(params: dict[str, str]) -> str:
        return signer.sign(url, params)

    for path in ("/twilio/voice", "/twilio/status"):
        # JSON instead of a form
        assert await h.post(path, '{"CallSid": "CA1"}', content_type="application/json") == 400
        # not a well-formed form
        assert await h.post(path, "CallSid=CA1&junk", content_type=form) == 400
        assert await h.post(path, b"CallSid=\xff\xfe", content_type=form) == 400
    # signed, well-formed, but no CallSid
    params = {"From": "+14155550100", "To": "+18005550199"}
    assert (
        await h.post(
            "/twilio/voice", urlencode(params), content_type=form, signature=signed(params)
        )
        == 400
    )
    assert await h.live(good["CallSid"]) is None


@pytest.mark.parametrize("path", ["/twilio/voice", "/twilio/status"])
async def test_oversized_webhook_body_is_400(shared: Harness, path: str) -> None:
    h = shared  # max_body_bytes=2048
    good = {"CallSid": "CA" + "1" * 32, "From": "+14155550100", "To": "+18005550199"}
    signature = SignatureValidator(h.token).sign(h.url + path, good)
    big = urlencode({**good, "Padding": "x" * 3000})
    status = await h.post(
        path, big, content_type="application/x-www-form-urlencoded", signature=signature
    )
    assert await h.live(good["CallSid"]) is None
    assert status == 400


async def test_unrouted_number_without_fallback_says_goodbye_and_fails(shared: Harness) -> None:
    h = shared  # fallback_agent=None
    result = await h.place(to_number=UNROUTED_NUMBER)
    assert result.webhook_status == 200
    assert result.plan is not None
    assert result.plan.verbs == ["Say", "Hangup"] and result.plan.said[0]
    assert result.plan.stream_url is None
    assert result.refused and result.ended_by == "twiml"
    session = await h.live(result.call_sid)
    assert session is not None
    row = await h.archived(session.id)
    assert row.end_reason is EndReason.FAILED
    assert row.agent_id == "unrouted" and row.target == UNROUTED_NUMBER
    assert len(await h.rows_for_call(result.call_sid)) == 1


# -- media-stream frames ----------------------------------------------------------------------


async def _streaming(h: Harness) -> SimulatedCall:
    call = h.call(status_callbacks=())
    plan = await call.dial()
    assert plan is not None and plan.stream_url
    assert await call.open_stream()
    return call


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", codec.CLOSE_PROTOCOL_ERROR),
        ('{"event": "media", "streamSid": "MZ1"}', codec.CLOSE_PROTOCOL_ERROR),
        (
            '{"event": "media", "sequenceNumber": "2", "streamSid": "MZ1", "media": '
            '{"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "%%%"}}',
            codec.CLOSE_PROTOCOL_ERROR,
        ),
        ("x" * 5000, codec.CLOSE_MESSAGE_TOO_BIG),
        (b"\x00\x01binary", codec.CLOSE_UNSUPPORTED_DATA),
    ],
    ids=["bad-json", "missing-fields", "bad-base64", "oversized", "binary"],
)
async def test_bad_media_frames_close_the_stream(
    shared: Harness, frame: str | bytes, code: int
) -> None:
    h = shared  # max_frame_bytes=4096
    call = await _streaming(h)
    ok = await call.send_media(b"\xff" * 160, chunk=1, timestamp_ms=0)
    assert ok
    if isinstance(frame, bytes):
        await call.send_bytes(frame)
    else:
        await call.send_text(frame)
    assert await call.wait_closed() == code
    await call.hang_up()
    # The call is not lost: with no status callback it completes after the grace period.
    assert call.result.session_id is not None
    row = await h.archived(call.result.session_id)
    assert row.stream is not None and row.stream.frames_in == 1


async def test_malformed_frame_before_start_closes_1002(shared: Harness) -> None:
    harness = shared
    call = harness.call(status_callbacks=())
    plan = await call.dial()
    assert plan is not None and plan.stream_url
    await call.open_stream(send_start=False)
    await call.send_text('{"event": "start", "sequenceNumber": "1"}')
    assert await call.wait_closed() == codec.CLOSE_PROTOCOL_ERROR
    assert call.result.session_id is not None
    session = await harness.store.get(call.result.session_id)
    assert session is not None and session.stream is None
    await call.hang_up()

"""TwilioRestClient against a local server that answers like api.twilio.com."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from voice_gateway.errors import CallAlreadyEnded, TwilioRestError, ValidationFailed
from voice_gateway.telephony.rest import TwilioRestClient
from voice_gateway.telephony.twiml import dial

AC = "AC3f2b9a4c1d8e7f60a5b4c3d2e1f0a9b8"
TOKEN = "f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8"
CA = "CA9c7b2e1f4a3d5c6b8e0f1a2b3c4d5e6f"
CA_ENDED = "CA00000000000000000000000000000404"
CA_NOT_IN_PROGRESS = "CA00000000000000000000000000021220"
CA_BROKEN = "CA00000000000000000000000000000500"
CA_HTML_ERROR = "CA00000000000000000000000000000502"
CA_SLOW = "CA0000000000000000000000000000s10w"
CA_NOT_JSON = "CA00000000000000000000000000000200"


@dataclass
class Recorded:
    method: str
    path: str
    form: dict[str, list[str]]
    authorization: str
    content_type: str
    accept: str


def _call_resource(call_sid: str, status: str) -> dict[str, Any]:
    """A Call resource as the 2010-04-01 API returns it."""
    uri = f"/2010-04-01/Accounts/{AC}/Calls/{call_sid}"
    return {
        "account_sid": AC,
        "annotation": None,
        "answered_by": None,
        "api_version": "2010-04-01",
        "caller_name": None,
        "date_created": "Sat, 21 Nov 2026 23:10:00 +0000",
        "date_updated": "Sat, 21 Nov 2026 23:11:13 +0000",
        "direction": "inbound",
        "duration": "73",
        "end_time": "Sat, 21 Nov 2026 23:11:13 +0000",
        "forwarded_from": None,
        "from": "+14155550100",
        "from_formatted": "(415) 555-0100",
        "group_sid": None,
        "parent_call_sid": None,
        "phone_number_sid": "PN2a0747eba6abf96b7e3c3ff0b4530f6e",
        "price": None,
        "price_unit": "USD",
        "queue_time": "0",
        "sid": call_sid,
        "start_time": "Sat, 21 Nov 2026 23:10:00 +0000",
        "status": status,
        "subresource_uris": {
            "notifications": f"{uri}/Notifications.json",
            "recordings": f"{uri}/Recordings.json",
            "streams": f"{uri}/Streams.json",
        },
        "to": "+18005550199",
        "to_formatted": "(800) 555-0199",
        "trunk_sid": None,
        "uri": f"{uri}.json",
    }


def _twilio_error(code: int, message: str, status: int) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


class FakeTwilio:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Calls/{call}.json", self.update_call)
        self.server = TestServer(app)

    async def update_call(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.requests.append(
            Recorded(
                method=request.method,
                path=request.path,
                form={k: [str(v) for v in form.getall(k)] for k in form},
                authorization=request.headers.get("Authorization", ""),
                content_type=request.headers.get("Content-Type", ""),
                accept=request.headers.get("Accept", ""),
            )
        )
        call = request.match_info["call"]
        path = request.path
        if call == CA_ENDED:
            return _twilio_error(20404, f"The requested resource {path} was not found", status=404)
        if call == CA_NOT_IN_PROGRESS:
            return _twilio_error(21220, "Call is not in-progress. Cannot redirect.", 400)
        if call == CA_BROKEN:
            return _twilio_error(20500, "An internal server error has occurred", 500)
        if call == CA_HTML_ERROR:
            return web.Response(
                status=502, text="<html>Bad Gateway</html>", content_type="text/html"
            )
        if call == CA_SLOW:
            await asyncio.sleep(5)
        if call == CA_NOT_JSON:
            return web.Response(status=200, text="OK")
        status = "completed" if "Status" in form else "in-progress"
        return web.json_response(_call_resource(call, status))


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio()
    await fake.server.start_server()
    yield fake
    await fake.server.close()


@pytest.fixture
async def client(twilio: FakeTwilio) -> AsyncIterator[TwilioRestClient]:
    rest = TwilioRestClient(AC, TOKEN, base_url=str(twilio.server.make_url("/")), timeout=2.0)
    yield rest
    await rest.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_hang_up_posts_status_completed(client: TwilioRestClient, twilio: FakeTwilio) -> None:
    await client.hang_up(CA)
    [request] = twilio.requests
    assert request.method == "POST"
    assert request.path == f"/2010-04-01/Accounts/{AC}/Calls/{CA}.json"
    assert request.form == {"Status": ["completed"]}
    assert request.authorization == _basic(AC, TOKEN)
    assert request.content_type.startswith("application/x-www-form-urlencoded")
    assert request.accept == "application/json"


async def test_redirect_posts_the_twiml(client: TwilioRestClient, twilio: FakeTwilio) -> None:
    twiml = dial("+15551234567", caller_id="+18005550199")
    await client.redirect(CA, twiml)
    [request] = twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{AC}/Calls/{CA}.json"
    assert request.form == {"Twiml": [twiml]}  # form-encoded and decoded intact
    assert request.authorization == _basic(AC, TOKEN)


async def test_session_is_reused_across_calls(client: TwilioRestClient, twilio: FakeTwilio) -> None:
    await client.hang_up(CA)
    await client.redirect(CA, "<Response><Hangup/></Response>")
    await asyncio.gather(*(client.hang_up(CA) for _ in range(5)))
    assert len(twilio.requests) == 7


async def test_20404_is_call_already_ended(client: TwilioRestClient) -> None:
    with pytest.raises(CallAlreadyEnded) as info:
        await client.hang_up(CA_ENDED)
    assert info.value.code == 20404
    assert info.value.http_status == 404
    assert "was not found" in info.value.message


async def test_21220_not_in_progress_is_call_already_ended(client: TwilioRestClient) -> None:
    with pytest.raises(CallAlreadyEnded) as info:
        await client.redirect(CA_NOT_IN_PROGRESS, "<Response><Hangup/></Response>")
    assert (info.value.code, info.value.http_status) == (21220, 400)


async def test_500_is_twilio_rest_error(client: TwilioRestClient) -> None:
    with pytest.raises(TwilioRestError) as info:
        await client.hang_up(CA_BROKEN)
    assert not isinstance(info.value, CallAlreadyEnded)
    assert (info.value.code, info.value.http_status) == (20500, 500)
    assert info.value.status == 502  # what the gateway's own API answers with


async def test_non_json_error_page_is_twilio_rest_error(client: TwilioRestClient) -> None:
    with pytest.raises(TwilioRestError) as info:
        await client.hang_up(CA_HTML_ERROR)
    assert not isinstance(info.value, CallAlreadyEnded)
    assert info.value.http_status == 502


async def test_non_json_success_is_twilio_rest_error(client: TwilioRestClient) -> None:
    with pytest.raises(TwilioRestError):
        await client.hang_up(CA_NOT_JSON)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_dead_port_is_twilio_rest_error() -> None:
    rest = TwilioRestClient(AC, TOKEN, base_url=f"http://127.0.0.1:{_dead_port()}", timeout=2.0)
    try:
        with pytest.raises(TwilioRestError) as info:
            await rest.hang_up(CA)
        assert not isinstance(info.value, CallAlreadyEnded)
        assert info.value.code is None
        assert info.value.http_status is None
    finally:
        await rest.close()


async def test_timeout_is_twilio_rest_error(twilio: FakeTwilio) -> None:
    rest = TwilioRestClient(AC, TOKEN, base_url=str(twilio.server.make_url("/")), timeout=0.3)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TwilioRestError):
            await rest.hang_up(CA_SLOW)
        assert loop.time() - started < 2.0  # the server would have answered after 5 s
    finally:
        await rest.close()


async def test_requests_do_not_block_the_event_loop(twilio: FakeTwilio) -> None:
    rest = TwilioRestClient(AC, TOKEN, base_url=str(twilio.server.make_url("/")), timeout=0.5)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        with pytest.raises(TwilioRestError):
            await rest.hang_up(CA_SLOW)  # waits ~0.5 s for the timeout
    finally:
        task.cancel()
        await rest.close()
    assert ticks >= 10  # the loop kept running other tasks meanwhile


async def test_invalid_call_sid_is_refused_before_any_request(
    client: TwilioRestClient, twilio: FakeTwilio
) -> None:
    for bad in ["", "../../Accounts/ACx/Calls/CAy", "CA123?Status=completed", "CA 1"]:
        with pytest.raises(ValidationFailed):
            await client.hang_up(bad)
    assert twilio.requests == []


async def test_closed_client_raises(twilio: FakeTwilio) -> None:
    rest = TwilioRestClient(AC, TOKEN, base_url=str(twilio.server.make_url("/")))
    await rest.close()
    with pytest.raises(TwilioRestError):
        await rest.hang_up(CA)
    assert twilio.requests == []


async def test_client_can_be_built_outside_the_event_loop(twilio: FakeTwilio) -> None:
    # Built synchronously (e.g. at start-up, no running loop needed) and used later.
    rest = await asyncio.to_thread(
        TwilioRestClient, AC, TOKEN, base_url=str(twilio.server.make_url("/"))
    )
    try:
        await rest.hang_up(CA)
    finally:
        await rest.close()
    assert len(twilio.requests) == 1


async def test_auth_token_is_not_logged(
    client: TwilioRestClient, twilio: FakeTwilio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await client.hang_up(CA)
    with pytest.raises(CallAlreadyEnded):
        await client.hang_up(CA_ENDED)
    with pytest.raises(TwilioRestError):
        await client.hang_up(CA_BROKEN)
    assert caplog.records  # something was logged...
    encoded = base64.b64encode(f"{AC}:{TOKEN}".encode()).decode()
    assert TOKEN not in caplog.text  # ...but never the token
    assert encoded not in caplog.text
    assert TOKEN not in repr(client)


async def test_environment_region_does_not_redirect_requests(
    twilio: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    rest = TwilioRestClient(AC, TOKEN, base_url=str(twilio.server.make_url("/")))
    try:
        await rest.hang_up(CA)
    finally:
        await rest.close()
    assert len(twilio.requests) == 1


def test_default_base_url_is_twilio() -> None:
    rest = TwilioRestClient(AC, TOKEN)
    assert rest._client.api.base_url == "https://api.twilio.com"


def test_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ValueError):
        TwilioRestClient(AC, TOKEN, timeout=0)

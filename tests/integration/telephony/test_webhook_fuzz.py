"""Fuzz both Twilio webhooks: whatever arrives, no 5xx and no session from invalid input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voice_gateway import appkeys
from voice_gateway.app import create_app
from voice_gateway.settings import Settings
from voice_gateway.telephony.signature import SignatureValidator

TOKEN = "fuzz-token-0123456789"
BASE = "http://127.0.0.1:8080"

field_names = st.sampled_from(
    ["CallSid", "AccountSid", "From", "To", "CallStatus", "CallDuration", "Direction", "X", ""]
)
field_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "CA" + "1" * 32, "+14155550100", "completed", "-5", "1e309", "nan"]),
)
forms = st.lists(st.tuples(field_names, field_values), max_size=8)
content_types = st.sampled_from(
    ["application/x-www-form-urlencoded", "application/json", "text/plain", ""]
)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    settings_ = Settings(
        public_url=BASE,
        twilio_auth_token=TOKEN,
        archive_url=f"sqlite:///{tmp_path / 'a.db'}",
        fallback_agent=None,
    )
    async with TestClient(TestServer(create_app(settings_))) as c:
        yield c


async def _no_sessions(client: TestClient) -> None:  # type: ignore[type-arg]
    assert await client.app[appkeys.STORE].count_active() == 0


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    form=forms,
    ctype=content_types,
    sig=st.one_of(
        st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
    ),
    path=st.sampled_from(["/twilio/voice", "/twilio/status"]),
    raw=st.binary(max_size=200),
)
async def test_unsigned_or_malformed_requests_never_open_a_session(
    client: TestClient,
    form: list[tuple[str, str]],
    ctype: str,
    sig: str | None,  # type: ignore[type-arg]
    path: str,
    raw: bytes,
) -> None:
    body = urlencode(form).encode() if ctype.endswith("urlencoded") else raw
    headers = {"Content-Type": ctype} if ctype else {}
    if sig is not None:
        headers["X-Twilio-Signature"] = sig
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status in (400, 403), (resp.status, await resp.text())
    await _no_sessions(client)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(form=forms)
async def test_correctly_signed_garbage_is_a_clean_4xx_or_a_real_call(
    client: TestClient,
    form: list[tuple[str, str]],  # type: ignore[type-arg]
) -> None:
    """Signed by Twilio but odd: 200/204 for what is a call, 400 otherwise, never a 5xx."""
    params: dict[str, list[str]] = {}
    for k, v in form:
        params.setdefault(k, []).append(v)
    for path in ("/twilio/voice", "/twilio/status"):
        sig = SignatureValidator(TOKEN).sign(BASE + path, params)
        resp = await client.post(
            path,
            data=urlencode(form).encode(),
            headers={
                "X-Twilio-Signature": sig,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        text = await resp.text()
        assert resp.status < 500, (path, resp.status, text)
        call_sid = params.get("CallSid", [""])[0]
        if resp.status == 400:
            continue
        if path == "/twilio/voice":
            assert resp.status == 200 and call_sid, text  # only a real CallSid opens a call
            assert "<Response>" in text


async def test_oversized_webhook_body_is_400_and_opens_nothing(client: TestClient) -> None:  # type: ignore[type-arg]
    form = {"CallSid": "CA" + "2" * 32, "From": "+1", "To": "+1", "Pad": "x" * 70_000}
    sig = SignatureValidator(TOKEN).sign(BASE + "/twilio/voice", form)
    resp = await client.post(
        "/twilio/voice",
        data=urlencode(form).encode(),
        headers={"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 400
    await _no_sessions(client)

"""The gateway ending calls over Twilio REST (the fake), and the simulated call reacting."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from tests.e2e.conftest import GatewayFactory, short_audio
from voice_gateway import appkeys
from voice_gateway.sessions.models import EndReason, Session
from voice_gateway.telephony import media as codec
from voice_gateway.telephony.bridge import CallBridge, CallControl, CallInfo, SilentBridge

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

TRANSFER_TARGET = "+15551234567"


class ActingBridge(SilentBridge):
    """A test bridge (our CallBridge interface) that hangs up or transfers after a delay."""

    def __init__(self, action: str, after_s: float) -> None:
        self.action = action
        self.after_s = after_s
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def start(self, call: CallInfo, control: CallControl) -> None:
        self.task = asyncio.create_task(self._act(control))

    async def _act(self, control: CallControl) -> None:
        await asyncio.sleep(self.after_s)
        try:
            if self.action == "hang-up":
                await control.hang_up()
            else:
                await control.transfer(TRANSFER_TARGET)
        except Exception as exc:  # surfaced by the test
            self.error = exc


def acting(action: str, after_s: float, bridges: list[ActingBridge]) -> object:
    def configure(app: web.Application) -> None:
        def factory(_app: web.Application, _session: Session) -> CallBridge:
            bridge = ActingBridge(action, after_s)
            bridges.append(bridge)
            return bridge

        app[appkeys.BRIDGE_FACTORY] = factory

    return configure


async def _settle(bridges: list[ActingBridge]) -> None:
    for bridge in bridges:
        if bridge.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(bridge.task, 5)
        assert bridge.error is None, repr(bridge.error)


async def test_agent_hang_up_goes_through_twilio_rest(
    gateway_factory: GatewayFactory, store_kind: str
) -> None:
    bridges: list[ActingBridge] = []
    h = await gateway_factory(store_kind, configure=acting("hang-up", 0.4, bridges))
    result = await h.place(audio=short_audio(3000))
    await _settle(bridges)

    assert result.ok, result.errors
    assert h.api.updates(result.call_sid) == [{"Status": "completed"}]
    assert result.ended_by == "api-hangup"  # the simulated call heard the REST hang-up
    assert result.frames_sent < 100  # and stopped streaming long before its 3 s of audio
    assert result.close_code == codec.CLOSE_NORMAL
    assert result.session_id is not None
    row = await h.archived(result.session_id)
    assert row.end_reason is EndReason.HANGUP_BY_AGENT
    assert row.stream is not None and row.stream.ended_at is not None
    assert row.stream.frames_in > 0
    assert len(await h.rows_for_call(result.call_sid)) == 1


async def test_hang_up_of_a_call_twilio_no_longer_has_20404(
    gateway_factory: GatewayFactory,
) -> None:
    bridges: list[ActingBridge] = []
    h = await gateway_factory(configure=acting("hang-up", 0.3, bridges))
    call = h.call(audio=short_audio(3000))
    h.api.fail(call.call_sid, status=404, code=20404)
    result = await call.run()
    await _settle(bridges)  # CallAlreadyEnded was handled inside hang_up

    assert [r.status for r in h.api.requests] == [404]
    assert result.ended_by == "gateway"  # Twilio did nothing; the gateway closed the socket
    assert result.close_code == codec.CLOSE_NORMAL and result.ok
    assert result.session_id is not None
    row = await h.archived(result.session_id)
    assert row.end_reason is EndReason.HANGUP_BY_AGENT
    assert len(await h.rows_for_call(result.call_sid)) == 1


async def test_transfer_redirects_the_call(gateway_factory: GatewayFactory) -> None:
    bridges: list[ActingBridge] = []
    h = await gateway_factory(configure=acting("transfer", 0.3, bridges))
    result = await h.place(audio=short_audio(3000))
    await _settle(bridges)

    assert result.ok, result.errors
    assert result.ended_by == "api-redirect"
    assert result.redirect_twiml is not None and TRANSFER_TARGET in result.redirect_twiml
    (update,) = h.api.updates(result.call_sid)
    assert set(update) == {"Twiml"} and "<Dial>" in update["Twiml"]
    assert result.session_id is not None
    row = await h.archived(result.session_id)
    assert row.end_reason is EndReason.TRANSFERRED
    assert len(await h.rows_for_call(result.call_sid)) == 1

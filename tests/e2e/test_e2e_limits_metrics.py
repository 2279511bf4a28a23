"""Capacity refusal and the Prometheus metrics a dashboard is built on."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.e2e.conftest import GatewayFactory, speech_audio
from voice_gateway import appkeys
from voice_gateway.sessions.models import EndReason
from voice_gateway.sim.audio import silence

pytestmark = pytest.mark.asyncio(loop_scope="module")


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_calls_over_capacity_hear_busy_and_end_busy(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory("memory", max_concurrent_calls=2)
    live = [asyncio.create_task(gw.place(audio=silence(3000))) for _ in range(2)]
    deadline = time.monotonic() + 10
    while len(gw.app[appkeys.CALLS]) < 2:
        assert time.monotonic() < deadline, "the two calls never went live"
        await asyncio.sleep(0.02)
    refused = await gw.place(audio=silence(500))
    assert refused.refused
    assert '<Reject reason="busy"' in (refused.twiml or "")
    row = await gw.archived(refused.session_id or "") if refused.session_id else None
    if row is None:  # <Reject> carries no session id: find it by CallSid
        deadline = time.monotonic() + 10
        while not (rows := await gw.rows_for_call(refused.call_sid)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        row = rows[0]
    assert row.end_reason is EndReason.BUSY
    assert all(r.ok for r in await asyncio.gather(*live))
    after = await gw.place(audio=silence(500))  # capacity is free again
    assert after.ok, after.errors
    async with gw.http.get(gw.url + "/metrics") as resp:
        text = await resp.text()
    assert metric(text, "vg_calls_rejected_total", '{reason="capacity"}') == 1.0


async def test_metrics_follow_a_call(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory("redis")
    result = await gw.place(audio=speech_audio())
    assert result.ok, result.errors
    await gw.archived(result.session_id or "")
    async with gw.http.get(gw.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert metric(text, "vg_calls_started_total") == 1.0
    assert metric(text, "vg_sessions_completed_total", '{end_reason="completed"}') == 1.0
    assert metric(text, "vg_frames_in_total") == result.frames_sent
    assert metric(text, "vg_frames_out_total") == result.media_received
    assert metric(text, "vg_turn_response_seconds_count") == 1.0
    assert metric(text, "vg_webhook_seconds_count", '{hook="voice"}') == 1.0
    assert metric(text, "vg_archived_sessions_total") == 1.0
    assert metric(text, "vg_calls_active") == 0.0
    assert "vg_event_loop_lag_seconds" in text and "vg_archive_backlog" in text

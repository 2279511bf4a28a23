"""Whole calls through a real gateway: what lands in the archive."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.conftest import (
    LEGACY_NUMBER,
    ROUTED_NUMBER,
    TEST_NUMBER,
    GatewayFactory,
    Harness,
    short_audio,
    speech_audio,
)
from voice_gateway.sessions.models import EndReason, SessionStatus
from voice_gateway.telephony import media as codec

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def test_full_call_lands_one_archive_row(shared: Harness) -> None:
    h = shared
    result = await h.place(audio=short_audio(1200), to_number=ROUTED_NUMBER)

    assert result.ok, result.errors
    assert result.close_code == codec.CLOSE_NORMAL
    assert result.frames_sent == 60
    assert result.session_id is not None
    row = await h.archived(result.session_id)
    assert row.status is SessionStatus.COMPLETED
    assert row.end_reason is EndReason.COMPLETED
    assert result.call_duration is not None and result.call_duration >= 1
    assert row.duration == result.call_duration
    assert (row.source, row.target) == ("+14155550100", ROUTED_NUMBER)
    assert row.customer is not None and row.customer.number == "+14155550100"
    assert (row.agent_id, row.agent_name, row.agent_type) == ("echo", "Echo", "echo")
    assert (row.channel.service, row.channel.type, row.channel.sid) == (
        "twilio",
        "voice",
        result.call_sid,
    )
    assert row.conversation_id == result.call_sid
    assert (row.is_test, row.is_legacy) == (False, False)
    assert row.stream is not None
    assert row.stream.stream_sid.startswith("MZ")
    assert row.stream.frames_in == result.frames_sent
    assert row.stream.sequence_gaps == 0
    assert row.stream.ended_at is not None
    assert len(await h.rows_for_call(result.call_sid)) == 1


async def test_test_and_legacy_flags(shared: Harness) -> None:
    harness = shared
    by_number, by_marker, legacy, plain = await asyncio.gather(
        harness.place(audio=short_audio(400), from_number=TEST_NUMBER),
        harness.place(audio=short_audio(400), webhook_query="test=1"),
        harness.place(audio=short_audio(400), to_number=LEGACY_NUMBER),
        harness.place(audio=short_audio(400), webhook_query="test=0"),
    )
    flags = {}
    for name, result in (
        ("number", by_number),
        ("marker", by_marker),
        ("legacy", legacy),
        ("plain", plain),
    ):
        assert result.ok, (name, result.errors)
        assert result.session_id is not None
        row = await harness.archived(result.session_id)
        flags[name] = (row.is_test, row.is_legacy)
    assert flags == {
        "number": (True, False),
        "marker": (True, False),
        "legacy": (False, True),
        "plain": (False, False),
    }


async def test_hang_up_without_status_callback_completes_after_grace(shared: Harness) -> None:
    h = shared
    result = await h.place(audio=short_audio(600), status_callbacks=())
    assert result.ok, result.errors
    assert result.status_responses == []
    assert result.session_id is not None
    live = await h.store.get(result.session_id)
    assert live is not None and live.is_active  # waiting for the callback
    row = await h.archived(result.session_id, wait_s=h.settings.status_grace_seconds + 5)
    assert row.end_reason is EndReason.COMPLETED
    assert row.duration is not None and row.duration > 0
    assert row.stream is not None and row.stream.frames_in == result.frames_sent
    assert len(await h.rows_for_call(result.call_sid)) == 1


async def test_duplicate_and_out_of_order_status_callbacks(shared: Harness) -> None:
    h = shared
    call = h.call(
        audio=short_audio(600), status_callbacks=("completed", "completed", "in-progress")
    )
    result = await call.run()
    assert result.ok, result.errors
    assert [code for _, code in result.status_responses] == [204, 204, 204]
    first = result.call_duration
    # A late retry with another duration changes nothing.
    assert await call.post_status("completed", duration=999) == 204
    assert result.session_id is not None
    row = await h.archived(result.session_id)
    assert row.end_reason is EndReason.COMPLETED
    assert row.duration == first
    await asyncio.sleep(0.3)  # give a wrong second write the time to land
    rows = await h.rows_for_call(result.call_sid)
    assert len(rows) == 1 and rows[0].duration == first


async def test_fifty_concurrent_calls(gateway_factory: GatewayFactory, store_kind: str) -> None:
    h = await gateway_factory(store_kind)
    results = await asyncio.gather(*(h.place(audio=short_audio(1000)) for _ in range(50)))
    failed = [r.summary() for r in results if not r.ok]
    assert not failed, failed
    sessions = {r.session_id for r in results}
    assert len(sessions) == 50 and None not in sessions
    for result in results:
        assert result.session_id is not None
        row = await h.archived(result.session_id)
        assert row.channel.sid == result.call_sid
        assert row.duration == result.call_duration
        assert row.stream is not None and row.stream.frames_in == result.frames_sent == 50
        assert row.stream.sequence_gaps == 0
    rows = await h.archive.list_sessions(limit=1000)
    assert len(rows) == 50
    assert sorted(r.channel.sid or "" for r in rows) == sorted(r.call_sid for r in results)


async def test_echo_agent_turn_latency_is_measured(shared: Harness) -> None:
    harness = shared
    """The simulator hears the agent's reply: media, marks echoed, a measurable turn."""
    result = await harness.place(audio=speech_audio())
    assert result.ok, result.errors
    assert len(result.utterances()) == 1
    assert result.media_received > 0
    latencies = result.turn_latencies_ms()
    assert len(latencies) == 1 and 0 < latencies[0] < 2000
    # Every mark the gateway sent came back once its audio had played (or the call ended).
    echoed = [name for _, name in result.marks_echoed]
    assert echoed == [name for _, name in result.marks_received][: len(echoed)]
    assert result.session_id is not None
    row = await harness.archived(result.session_id)
    assert row.stream is not None and row.stream.frames_out == result.media_received

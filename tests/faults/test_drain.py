"""SIGTERM: the instance drains (refuses new calls, lets live ones run) and exits 0."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.faults.conftest import FaultEnv, Gateway, eventually, speech_loop
from voice_gateway.sessions.models import EndReason, SessionStatus
from voice_gateway.sim.caller import SimulatedCall

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SHUTDOWN_NOTE = "call ended by gateway shutdown (drain timeout)"


async def _wait_live(faults: FaultEnv, calls: list[SimulatedCall], frames: int = 50) -> None:
    store = faults.store()

    async def live() -> bool:
        for call in calls:
            session = await store.get_by_call_sid(call.call_sid)
            if session is None or session.stream is None or call.result.frames_sent < frames:
                return False
        return True

    await eventually(live, within=30, what="live streams", diagnose=faults.logs)


async def _assert_draining(faults: FaultEnv, gw: Gateway) -> None:
    async def draining() -> bool:
        status, body = await gw.readyz(faults.http)
        return status == 503 and body["checks"].get("instance") == "draining"

    await eventually(draining, within=10, what="/readyz to report draining", diagnose=gw.log_tail)


async def test_sigterm_drain_refuses_new_calls_and_ends_live_ones_going_away(
    faults: FaultEnv,
) -> None:
    drain = 3.0
    gw = faults.gateway("gateway", drain_timeout_seconds=drain)
    await faults.start(gw)
    # Long calls (30 s): still talking when the drain timeout hits. Twilio's status callback
    # for them would reach another instance; none is sent here.
    live = [
        faults.call(gw, audio=speech_loop(), loop_seconds=30, status_callbacks=()) for _ in range(2)
    ]
    tasks = [asyncio.create_task(c.run()) for c in live]
    await _wait_live(faults, live)

    async def answered() -> bool:
        return all(c.result.media_received > 0 for c in live)

    await eventually(answered, within=15, what="the agent's first answers")
    gw.send(signal.SIGTERM)
    sigterm_at = time.monotonic()
    at_sigterm = [(c.result.frames_sent, c.result.media_received) for c in live]
    await _assert_draining(faults, gw)

    # A new call while draining: the listener is still open and answers busy.
    refused = await faults.call(gw, audio=speech_loop()).run()
    assert refused.webhook_status == 200
    assert refused.plan is not None and refused.plan.reject == "busy", refused.twiml
    assert refused.twiml is not None and '<Reject reason="busy"' in refused.twiml
    assert refused.outcome == "refused" and not refused.errors, refused.summary()

    results = await asyncio.wait_for(asyncio.gather(*tasks), drain + 20)
    closed_after = time.monotonic() - sigterm_at
    for r, (sent, received) in zip(results, at_sigterm, strict=True):
        assert r.ended_by == "gateway" and r.close_code == 1001, r.summary()
        # the calls went on while the instance drained: audio both ways
        assert r.frames_sent >= sent + (drain - 1) * 50, r.summary()
        assert r.media_received > received, r.summary()
    # the live calls ran to the drain timeout, not less (and not much more)
    assert drain - 0.5 <= closed_after <= drain + 10, closed_after

    assert await gw.wait_exit(within=20) == 0

    rows = await faults.wait_rows(3, within=15)
    by_sid = {r.channel.sid: r for r in rows}
    busy = by_sid[refused.call_sid]
    assert busy.end_reason is EndReason.BUSY
    for call in live:
        row = by_sid[call.call_sid]
        assert row.status is SessionStatus.COMPLETED and row.end_reason is EndReason.ERROR, row
        assert row.stream is not None and row.stream.ended_at is not None
        # every frame up to the close was counted (one or two were in flight as it closed)
        assert call.result.frames_sent - 2 <= row.stream.frames_in <= call.result.frames_sent
        assert row.turns >= 2
        history = await faults.archive.history(row.id, limit=1000)
        assert any(m.role == "event" and m.content == SHUTDOWN_NOTE for m in history), history
    store = faults.store()
    assert await store.count_active() == 0
    assert await store.completed_backlog() == (0, 0)


async def test_sigterm_drain_lets_calls_finish_and_exits_promptly(faults: FaultEnv) -> None:
    drain = 30.0
    gw = faults.gateway("gateway", drain_timeout_seconds=drain)
    await faults.start(gw)
    # 5 s: two utterances and their answers, then the caller hangs up by itself.
    calls = [faults.call(gw, audio=speech_loop(), loop_seconds=5) for _ in range(2)]
    tasks = [asyncio.create_task(c.run()) for c in calls]
    await _wait_live(faults, calls)

    gw.send(signal.SIGTERM)
    sigterm_at = time.monotonic()
    await _assert_draining(faults, gw)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for r in results:
        assert r.ok and r.ended_by == "caller", r.summary()
        assert r.status_responses == [("completed", 204)], r.summary()
        assert r.media_received > 0

    code = await gw.wait_exit(within=20)
    exited_after = time.monotonic() - sigterm_at
    assert code == 0
    assert exited_after < drain / 2, exited_after  # it did not sit out the drain timeout

    rows = await faults.wait_rows(2, within=15)
    by_sid = {r.channel.sid: r for r in rows}
    for call in calls:
        row = by_sid[call.call_sid]
        assert row.end_reason is EndReason.COMPLETED, row
        assert row.duration == float(call.result.call_duration or -1)
        assert row.stream is not None and row.stream.frames_in == call.result.frames_sent
        assert row.turns == 2
    store = faults.store()
    assert await store.count_active() == 0

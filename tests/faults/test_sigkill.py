"""SIGKILL of the instance carrying live calls: every call still ends exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import pytest

from tests.faults.conftest import FaultEnv, eventually
from voice_gateway.sessions.models import EndReason, SessionStatus
from voice_gateway.sim.audio import caller_recording

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE = 6.0
SWEEP = 0.5
#: Scheduling slack on a loaded machine, on top of lease + sweep interval.
SLACK = 4.0


async def test_sigkill_mid_call_status_callbacks_win_and_leases_end_the_rest(
    faults: FaultEnv,
) -> None:
    a = faults.gateway("gateway-a", call_lease_seconds=LEASE, sweep_interval_seconds=SWEEP)
    b = faults.gateway("gateway-b", call_lease_seconds=LEASE, sweep_interval_seconds=SWEEP)
    await faults.start(a, b)
    store = faults.store()
    audio = caller_recording()

    # Twilio posts the final status callback after the socket dropped; the load balancer sends
    # it to the surviving instance B. Two calls get one, two get none.
    with_callback = [
        faults.call(a, audio=audio, loop_seconds=10, status_url=b.url + "/twilio/status")
        for _ in range(2)
    ]
    without_callback = [
        faults.call(a, audio=audio, loop_seconds=10, status_callbacks=()) for _ in range(2)
    ]
    calls = with_callback + without_callback
    tasks = [asyncio.create_task(c.run()) for c in calls]

    async def mid_call() -> bool:
        for call in calls:
            live = await store.get_by_call_sid(call.call_sid)
            if live is None or live.stream is None or call.result.frames_sent < 75:
                return False
        return True

    await eventually(mid_call, within=30, what="4 live streams on A", diagnose=faults.logs)
    a.kill()
    killed_at = datetime.now(UTC)
    results = await asyncio.wait_for(asyncio.gather(*tasks), 30)

    for r in results:  # the socket dropped under every call, mid-audio
        assert r.ended_by == "gateway" and r.close_code not in (1000, 1001), r.summary()
        assert r.frames_sent < 10 * 50
    for call in with_callback:
        assert call.result.status_responses == [("completed", 204)], call.result.summary()

    rows = await faults.wait_rows(4, within=LEASE + SWEEP + SLACK + 5)
    assert Counter(r.channel.sid for r in rows) == Counter(c.call_sid for c in calls)
    by_sid = {r.channel.sid: r for r in rows}

    for call in with_callback:
        row = by_sid[call.call_sid]
        assert row.status is SessionStatus.COMPLETED
        assert row.end_reason is EndReason.COMPLETED
        assert call.result.call_duration is not None and call.result.call_duration > 0
        assert row.duration == float(call.result.call_duration)

    for call in without_callback:
        row = by_sid[call.call_sid]
        assert row.end_reason is EndReason.ERROR, row
        assert row.ended_at is not None
        after_kill = (row.ended_at - killed_at).total_seconds()
        # the lease was renewed at most LEASE/3 before the kill: it ran out within LEASE of it
        assert 0 < after_kill <= LEASE + SWEEP + SLACK, after_kill
    assert "sweeper expired" in b.log_text()  # B's sweeper ended the orphaned calls

    # nothing is left live in Redis
    assert await store.count_active() == 0
    for call in calls:
        live = await store.get_by_call_sid(call.call_sid)
        assert live is not None and live.status is SessionStatus.COMPLETED
    assert await store.completed_backlog() == (0, 0)

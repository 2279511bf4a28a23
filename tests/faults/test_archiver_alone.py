"""``voice-gateway archiver`` alone archives what a dead gateway left on the completed queue."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.faults.conftest import FaultEnv, eventually, speech_loop
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import EndReason, SessionStatus

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CALLS = 3


async def test_archiver_alone_archives_a_dead_gateways_calls_once_and_exits_0(
    faults: FaultEnv,
) -> None:
    # The gateway's sweeper runs once at startup and then not for an hour, so the calls stay
    # active after their streams end (no status callback comes: Twilio's were lost).
    gw = faults.gateway("gateway", sweep_interval_seconds=3600, status_grace_seconds=0.5)
    await faults.start(gw)
    store = faults.store()
    calls = [faults.call(gw, audio=speech_loop(), status_callbacks=()) for _ in range(CALLS)]
    results = await asyncio.gather(*(c.run() for c in calls))
    for r in results:
        assert r.ok and r.ended_by == "caller" and r.close_code == 1000, r.summary()

    raw = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)

    async def handed_to_sweepers() -> bool:
        """The gateway recorded each stream's end and replaced its lease (reason ``error``) by
        the status-callback grace (reason ``completed``)."""
        for call in calls:
            live = await store.get_by_call_sid(call.call_sid)
            if live is None or live.stream is None or live.stream.ended_at is None:
                return False
            reason = await raw.hget(store.keys.session(live.id), "_expiry_reason")
            if reason != '"completed"':
                return False
        return True

    try:
        await eventually(handed_to_sweepers, within=10, what="stream ends handed to sweepers")
    finally:
        await raw.aclose()
    gw.kill()  # right after the calls: nothing of theirs was completed or archived
    for call in calls:
        live = await store.get_by_call_sid(call.call_sid)
        assert live is not None and live.is_active
    assert await store.completed_backlog() == (0, 0)

    # Another instance's sweeper ends them (status grace over, reason "completed"). No
    # archiver runs anywhere now: the records wait on the completed stream.
    lifecycle = Lifecycle(store)
    ended: list[str] = []

    async def swept() -> bool:
        ended.extend(await lifecycle.sweep())
        return len(ended) >= CALLS

    await eventually(swept, within=10, what="the sweeper to end the calls")
    assert await store.completed_backlog() == (CALLS, 0)
    assert await faults.archive.count_sessions() == 0

    archiver = faults.archiver()
    archiver.start()
    rows = await faults.wait_rows(CALLS, within=30)
    assert Counter(r.channel.sid for r in rows) == Counter(c.call_sid for c in calls)
    by_sid = {r.channel.sid: r for r in rows}
    for call in calls:
        row = by_sid[call.call_sid]
        assert row.status is SessionStatus.COMPLETED and row.end_reason is EndReason.COMPLETED
        assert row.turns == 1
        assert row.stream is not None and row.stream.frames_in == call.result.frames_sent
        history = await faults.archive.history(row.id, limit=1000)
        assert Counter(m.role for m in history) == Counter({"user": 1, "assistant": 1}), history

    async def acknowledged() -> bool:
        return await store.completed_backlog() == (0, 0)

    await eventually(acknowledged, within=10, what="the completed stream to drain")
    assert await store.count_active() == 0

    archiver.send(signal.SIGTERM)
    assert await archiver.wait_exit(within=15) == 0
    assert f"written={CALLS}" in archiver.log_text()
    assert await faults.archive.count_sessions() == CALLS

"""Redis restarted under 20 live calls: audio keeps flowing, every call lands exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.conftest import FaultEnv, RedisServer, eventually
from voice_gateway.sessions.models import EndReason, SessionStatus
from voice_gateway.sim.audio import caller_recording

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CALLS = 20
#: The packaged recording cut to 10 s: two utterances (ending at 3.7 s and 8.2 s).
AUDIO_SECONDS = 10.0
UTTERANCES = 2


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        await server.wait_up()
        yield server
    finally:
        server.kill()


async def test_redis_restart_under_live_calls_loses_nothing(
    faults: FaultEnv, redis_server: RedisServer
) -> None:
    gw = faults.gateway("gateway", redis_url=redis_server.url, call_lease_seconds=6.0)
    await faults.start(gw)
    store = faults.store(redis_server.url)
    audio = caller_recording()
    calls = [
        faults.call(gw, audio=audio, loop_seconds=AUDIO_SECONDS, trailing_silence_ms=1000)
        for _ in range(CALLS)
    ]
    tasks = [asyncio.create_task(c.run()) for c in calls]

    async def all_live() -> bool:
        for call in calls:
            session = await store.get_by_call_sid(call.call_sid)
            if session is None or session.stream is None:
                return False
        return True

    await eventually(all_live, within=30, what=f"{CALLS} live streams", diagnose=faults.logs)

    async def into_the_first_turn() -> bool:  # 3.5 s in: the first utterance is ending
        return min(c.result.frames_sent for c in calls) >= 175

    await eventually(into_the_first_turn, within=15, what="3.5 s of audio on every call")
    await redis_server.stop()
    await asyncio.sleep(1.0)  # the outage itself
    redis_server.start()
    await redis_server.wait_up()
    replies_at_restart = [c.result.media_received for c in calls]
    assert all(c.result.frames_sent < AUDIO_SECONDS * 50 for c in calls)  # still mid-call

    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    for r, before in zip(results, replies_at_restart, strict=True):
        assert r.ok and r.close_code == 1000 and r.ended_by == "caller", r.summary()
        assert r.media_received > before, f"no reply media after the restart: {r.summary()}"
        assert len(r.turn_latencies_ms()) == UTTERANCES, r.summary()  # both turns answered
        # the simulator kept its 20 ms schedule through the restart (loose bounds: a loaded
        # machine delays a frame now and then; a stalled generator is what this catches)
        assert r.lateness_p99_ms < 50 and r.lateness_max_ms < 1000, r.summary()
        assert r.status_responses == [("completed", 204)], r.summary()
    log = gw.log_text()
    assert "unavailable" in log  # the gateway did see the outage

    rows = await faults.wait_rows(CALLS, within=30)
    assert Counter(r.channel.sid for r in rows) == Counter(c.call_sid for c in calls)
    by_sid = {r.channel.sid: r for r in rows}
    for call in calls:
        row = by_sid[call.call_sid]
        assert row.status is SessionStatus.COMPLETED and row.end_reason is EndReason.COMPLETED
        assert row.duration == float(call.result.call_duration or -1)
        assert row.turns == UTTERANCES, row
        assert row.stream is not None and row.stream.frames_in == call.result.frames_sent, row
        history = await faults.archive.history(row.id, limit=1000)
        roles = Counter(m.role for m in history)
        assert roles["user"] == UTTERANCES and roles["assistant"] == UTTERANCES, history

    assert await store.count_active() == 0
    assert await store.completed_backlog() == (0, 0)

"""Slow Redis under live calls: the media path never waits on Redis.

The fault: the gateway reaches Redis through a TCP relay (``tests/tcp_proxy.py``) that, one
second into 10 concurrent calls, starts holding every chunk 300 ms in each direction (600 ms
per round trip) and keeps doing so until every call has ended and been archived. A second
instance, with a fast path to Redis and no calls, runs its sweeper meanwhile.

What must hold: the caller hears every answer, on time and without a dropout (the gateway's
outbound audio keeps its ~100 ms mark-driven cadence, where a frame path that awaited Redis
would stall it for a whole round trip, >= 600 ms; and the answer comes ~600 ms after the turn,
not a round trip later); no inbound frame is lost (``frames_in`` of the archived stream equals
what the caller sent); no live call loses its lease to the other instance's sweeper; every
call lands exactly one archive row, ended ``completed`` with Twilio's duration and all its
turns.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.faults.conftest import FaultEnv, eventually, speech_loop
from tests.tcp_proxy import TcpProxy
from voice_gateway.sessions.models import EndReason, SessionStatus
from voice_gateway.sim.caller import CallResult, SimulatedCall

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CALLS = 10
#: Seconds each chunk is held, each way: a Redis round trip takes at least twice this.
DELAY = 0.3
ROUND_TRIP_MS = 2 * DELAY * 1000
#: Five 2.5 s speech loops: one utterance each (the echo answer is ~0.9 s, 1.6 s apart).
LOOP_SECONDS = 12.5
UTTERANCES = 5
#: Answers are at least 1.5 s apart; a longer silence than this splits two answers.
ANSWER_SPLIT_MS = 1000.0
#: Within an answer the gateway sends 5 frames per mark echo, i.e. every ~100 ms. A frame path
#: awaiting Redis would stall it >= ROUND_TRIP_MS; a loaded machine delays it now and then.
MAX_GAP_MS = 400.0
END_SILENCE_MS = 600  # the endpointer's default: a turn ends after this much silence


@pytest.fixture
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    url = urlsplit(REDIS_URL)
    proxy = TcpProxy(url.port or 6379, url.hostname or "127.0.0.1")
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def answers(times_ms: list[float]) -> list[list[float]]:
    """Received media frame times, grouped into answers (split at long silences)."""
    groups: list[list[float]] = []
    for t in times_ms:
        if groups and t - groups[-1][-1] <= ANSWER_SPLIT_MS:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def max_gap(group: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(group)), default=0.0)


async def test_slow_redis_does_not_touch_the_media_path(
    redis_proxy: TcpProxy,
    faults: FaultEnv,  # the relay outlives the gateways
) -> None:
    url = f"redis://127.0.0.1:{redis_proxy.port}/{urlsplit(REDIS_URL).path.lstrip('/') or 0}"
    # A status callback that loses to a sweeper still ends "completed", but with a measured
    # duration: give it the production default grace, as every write now takes ~0.6 s.
    gw = faults.gateway("gateway", redis_url=url, status_grace_seconds=10.0)
    # Another instance, with a fast path to Redis: its sweeper ends any call whose lease lapses.
    peer = faults.gateway("peer", status_grace_seconds=10.0)
    await faults.start(gw, peer)
    store = faults.store()  # straight to Redis, not through the relay
    calls = [
        faults.call(gw, audio=speech_loop(), loop_seconds=LOOP_SECONDS, trailing_silence_ms=1000)
        for _ in range(CALLS)
    ]
    tasks = [asyncio.create_task(c.run()) for c in calls]

    async def all_live() -> bool:
        for call in calls:
            session = await store.get_by_call_sid(call.call_sid)
            if session is None or session.stream is None or call.result.frames_sent < 50:
                return False
        return True

    await eventually(all_live, within=30, what=f"{CALLS} live streams", diagnose=faults.logs)
    redis_proxy.delay = DELAY
    try:
        await check_slow_calls(faults, calls, tasks, url)
    finally:
        redis_proxy.delay = 0.0  # the cleanup goes through the relay too


async def check_slow_calls(
    faults: FaultEnv, calls: list[SimulatedCall], tasks: list[asyncio.Task[CallResult]], url: str
) -> None:
    """Everything after Redis turned slow, until the rows are in."""
    slow_from_ms = [c.result.send_times_ms[-1] for c in calls]  # each call's clock, now
    probe = aioredis.Redis.from_url(url)
    try:
        await probe.ping()  # connects (a few round trips)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await probe.ping()
        assert loop.time() - started >= 2 * DELAY * 0.9  # the relay does slow Redis down
    finally:
        await probe.aclose()

    results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    slow_latencies: list[float] = []
    worst_gap = 0.0
    for r, slow_from in zip(results, slow_from_ms, strict=True):
        assert r.ok and r.close_code == 1000 and r.ended_by == "caller", r.summary()
        assert r.status_responses == [("completed", 204)], r.summary()
        latencies = r.turn_latencies_ms()
        assert len(latencies) == UTTERANCES, f"a turn went unanswered: {r.summary()}"
        # each answer arrives as one run of frames, with no stall inside it
        groups = answers(r.media_times_ms)
        assert len(groups) == UTTERANCES, [(g[0], len(g), max_gap(g)) for g in groups]
        gaps = [max_gap(g) for g in groups]
        worst_gap = max(worst_gap, *gaps)
        assert max(gaps) < MAX_GAP_MS, f"outbound audio stalled: gaps {gaps} ms: {r.summary()}"
        # ... and the caller heard each one without a dropout
        assert len(r.playout_ms) == UTTERANCES, r.playout_ms
        # the simulator itself kept its 20 ms schedule (loose: a loaded machine is late at times)
        assert r.lateness_p99_ms < 50 and r.lateness_max_ms < 1000, r.summary()
        slow_latencies += [
            lat
            for seg, lat in zip(r.utterances(), latencies, strict=True)
            if r.send_times_ms[seg.end_frame] > slow_from
        ]
    print(
        f"slow Redis: worst gap in an answer {worst_gap:.0f} ms, turn latency median "
        f"{statistics.median(slow_latencies):.0f} ms, max {max(slow_latencies):.0f} ms"
    )
    # Answering never waits on Redis: with a round trip on that path every answer would come
    # at least END_SILENCE_MS + ROUND_TRIP_MS after the turn (typically it takes ~620 ms), and
    # an answer queued behind the previous turn's history write came ~1.7 s after it.
    assert len(slow_latencies) >= CALLS * (UTTERANCES - 1)
    assert statistics.median(slow_latencies) < END_SILENCE_MS + ROUND_TRIP_MS, slow_latencies
    assert max(slow_latencies) < END_SILENCE_MS + 1.5 * ROUND_TRIP_MS, slow_latencies

    rows = await faults.wait_rows(CALLS, within=40)
    assert Counter(r.channel.sid for r in rows) == Counter(c.call_sid for c in calls)
    by_sid = {r.channel.sid: r for r in rows}
    for call in calls:
        row = by_sid[call.call_sid]
        assert row.status is SessionStatus.COMPLETED and row.end_reason is EndReason.COMPLETED
        assert row.duration == float(call.result.call_duration or -1), row
        assert row.turns == UTTERANCES, row
        assert row.stream is not None and row.stream.frames_in == call.result.frames_sent, row
        history = await faults.archive.history(row.id, limit=1000)
        roles = Counter(m.role for m in history)
        assert roles["user"] == UTTERANCES and roles["assistant"] == UTTERANCES, history
    assert await faults.store().count_active() == 0  # a client of its own, straight to Redis

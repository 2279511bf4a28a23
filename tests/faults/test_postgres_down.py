"""PostgreSQL unreachable while calls complete: the completed queue holds them, nothing lost."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.conftest import POSTGRES_URL
from tests.faults.conftest import FaultEnv, eventually, speech_loop
from tests.tcp_proxy import TcpProxy
from voice_gateway.sessions.models import EndReason

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CALLS = 5


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(urlsplit(POSTGRES_URL).port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def through(proxy: TcpProxy) -> str:
    """The archive URL with the proxy in place of the server."""
    parts = urlsplit(POSTGRES_URL)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{proxy.port}" if userinfo else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_postgres_down_while_calls_complete_rows_arrive_once_when_back(
    faults: FaultEnv, pg_proxy: TcpProxy
) -> None:
    gw = faults.gateway("gateway", archive_url=through(pg_proxy))
    await faults.start(gw)
    store = faults.store()

    await pg_proxy.stop()  # the archive goes away (live pool connections are cut too)

    async def archive_unavailable() -> bool:
        status, body = await gw.readyz(faults.http)
        return status == 503 and body["checks"]["archive"].startswith("unavailable")

    await eventually(archive_unavailable, within=15, what="/readyz: archive unavailable")

    # 5 calls of 2.5 s: one utterance and its answer, then the caller hangs up; signed status
    # callbacks complete them while the archive is down.
    calls = [faults.call(gw, audio=speech_loop()) for _ in range(CALLS)]
    results = await asyncio.gather(*(c.run() for c in calls))
    for r in results:
        assert r.ok and r.status_responses == [("completed", 204)], r.summary()

    async def all_queued() -> bool:  # completed, on the stream, not acknowledged
        waiting, _ = await store.completed_backlog()
        return waiting == CALLS

    await eventually(all_queued, within=10, what="5 records on the completed stream")
    for call in calls:
        live = await store.get_by_call_sid(call.call_sid)
        assert live is not None and not live.is_active
    assert await faults.archive.count_sessions() == 0
    status, body = await gw.readyz(faults.http)
    assert status == 503 and body["checks"]["store"] == "ok", body
    assert body["checks"]["archive"].startswith("unavailable"), body
    assert "archiver waiting" in gw.log_text()  # it is holding the batch, retrying

    await pg_proxy.start()  # PostgreSQL is back, on the same port

    rows = await faults.wait_rows(CALLS, within=30)  # back-off is capped at 5 s
    assert Counter(r.channel.sid for r in rows) == Counter(c.call_sid for c in calls)
    by_sid = {r.channel.sid: r for r in rows}
    for call in calls:
        row = by_sid[call.call_sid]
        assert row.end_reason is EndReason.COMPLETED
        assert row.duration == float(call.result.call_duration or -1)
        assert row.turns == 1
        assert row.stream is not None and row.stream.frames_in == call.result.frames_sent
        history = await faults.archive.history(row.id, limit=1000)
        assert Counter(m.role for m in history) == Counter({"user": 1, "assistant": 1}), history

    async def acknowledged() -> bool:
        return await store.completed_backlog() == (0, 0)

    await eventually(acknowledged, within=10, what="the completed stream to drain")

    async def ready() -> bool:
        status, _ = await gw.readyz(faults.http)
        return status == 200

    await eventually(ready, within=15, what="/readyz to recover")
    assert await faults.archive.count_sessions() == CALLS

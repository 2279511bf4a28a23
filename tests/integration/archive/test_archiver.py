"""The archiver against real stores (Redis and in-memory) and real archives (SQLite, PostgreSQL).

What a user cares about: every completed session ends up as exactly one archive row, however
completions race, whichever archiver crashes, and however long the archive is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from tests.conftest import REDIS_URL
from tests.integration.archive.helpers import Backend, complete_calls, open_call
from tests.tcp_proxy import TcpProxy

from voice_gateway.archive.archiver import Archiver
from voice_gateway.archive.db import Archive
from voice_gateway.errors import AlreadyCompleted
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.memory_store import MemorySessionStore
from voice_gateway.sessions.models import CompletedSession, EndReason, Message
from voice_gateway.sessions.redis_store import RedisSessionStore
from voice_gateway.sessions.store import SessionStore

ARCHIVER_LOG = "voice_gateway.archive.archiver"


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def drain(archiver: Archiver) -> int:
    total = 0
    while written := await archiver.drain_once():
        total += written
    return total


async def assert_archived_once(
    archive: Archive, backend: Backend, records: list[CompletedSession]
) -> None:
    """Each record is in the archive exactly once, as completed, with one copy of its history."""
    assert await archive.count_sessions() == len(records)
    assert await backend.scalar("SELECT count(*) FROM sessions") == len(records)
    assert await backend.scalar("SELECT count(*) FROM messages") == sum(
        len(r.messages) for r in records
    )
    for record in records:
        assert await archive.get(record.session.id) == record.session
        assert await archive.history(record.session.id) == record.messages


@contextlib.asynccontextmanager
async def running(archiver: Archiver) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(archiver.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# -- the happy path ------------------------------------------------------------------------------


async def test_completed_sessions_become_exactly_one_row_each(
    store: SessionStore, archive: Archive, backend: Backend
) -> None:
    lifecycle = Lifecycle(store)
    records = await complete_calls(lifecycle, 12)
    archiver = Archiver(store, archive, consumer="archiver-1", batch_size=5)

    assert await drain(archiver) == 12

    await assert_archived_once(archive, backend, records)
    assert await store.completed_backlog() == (0, 0)
    assert await archiver.drain_once() == 0  # nothing left, nothing rewritten


async def test_run_archives_as_sessions_complete_and_stops_promptly(
    store: SessionStore, archive: Archive, backend: Backend
) -> None:
    lifecycle = Lifecycle(store)
    archiver = Archiver(store, archive, consumer="archiver-1", block_ms=100)
    async with running(archiver) as task:
        records = await complete_calls(lifecycle, 5)

        async def all_archived() -> bool:
            return await archive.count_sessions() == 5

        await eventually(all_archived)
        started = time.monotonic()
    assert task.done() and time.monotonic() - started < 2
    await assert_archived_once(archive, backend, records)
    assert await store.completed_backlog() == (0, 0)


async def test_under_load_a_short_batch_lingers_and_sessions_share_a_transaction(
    store: SessionStore, archive: Archive, backend: Backend
) -> None:
    """Sessions completing close together are written together (one transaction, so one
    ``archived_at``), not one transaction each; an isolated one does not wait the linger."""
    lifecycle = Lifecycle(store)
    archiver = Archiver(store, archive, consumer="archiver-1", block_ms=100, linger_ms=1000)

    def count_is(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await archive.count_sessions() == n

        return check

    async with running(archiver):
        (first,) = await complete_calls(lifecycle, 1)
        await eventually(count_is(1), within=0.8)  # well inside the 1 s linger
        # the archiver has just written: three more sessions, 50 ms apart
        later = []
        for _ in range(3):
            later += await complete_calls(lifecycle, 1)
            await asyncio.sleep(0.05)
        await eventually(count_is(4))
    await assert_archived_once(archive, backend, [first, *later])
    stamps = await backend.scalar(
        f"SELECT count(DISTINCT archived_at) FROM sessions WHERE id <> '{first.session.id}'"
    )
    assert stamps == 1, "the three close completions went into one transaction"


async def test_two_archivers_on_one_archive_write_each_session_once(
    store: SessionStore, backend: Backend
) -> None:
    """Two gateway instances, each with its own archiver and connection pool."""
    lifecycle = Lifecycle(store)
    first, second = await backend.open(), await backend.open()
    try:
        a = Archiver(store, first, consumer="instance-a", batch_size=3, block_ms=50)
        b = Archiver(store, second, consumer="instance-b", batch_size=3, block_ms=50)
        async with running(a), running(b):
            records = await complete_calls(lifecycle, 30)

            async def all_archived() -> bool:
                return await store.completed_backlog() == (0, 0)

            await eventually(all_archived)
        assert a.written + b.written == 30
        await assert_archived_once(first, backend, records)
    finally:
        await first.close()
        await second.close()


# -- races -------------------------------------------------------------------------------------


async def test_fifty_concurrent_completions_give_one_winner_one_entry_one_row(
    store: SessionStore, archive: Archive, backend: Backend
) -> None:
    lifecycles = [Lifecycle(store)]
    other: RedisSessionStore | None = None
    if isinstance(store, RedisSessionStore):  # a second gateway instance: its own client
        other = RedisSessionStore.from_url(REDIS_URL, prefix=store.keys.prefix)
        lifecycles.append(Lifecycle(other))
    try:
        session = await open_call(lifecycles[0], n_messages=3)
        outcomes = await asyncio.gather(
            *(
                asyncio.create_task(
                    lifecycles[i % len(lifecycles)].complete(session.id, EndReason.COMPLETED)
                )
                for i in range(50)
            ),
            return_exceptions=True,
        )
    finally:
        if other is not None:
            await other.close()

    winners = [o for o in outcomes if isinstance(o, CompletedSession)]
    losers = [o for o in outcomes if isinstance(o, AlreadyCompleted)]
    assert len(winners) == 1 and len(losers) == 49
    assert await store.completed_backlog() == (1, 0)  # one queue entry

    assert await drain(Archiver(store, archive, consumer="archiver-1")) == 1
    await assert_archived_once(archive, backend, winners)
    assert len(await archive.history(session.id)) == 3


# -- a crashed archiver ----------------------------------------------------------------------------


async def test_entries_of_a_crashed_archiver_are_reclaimed_and_written_once(
    store: SessionStore, archive: Archive, backend: Backend
) -> None:
    lifecycle = Lifecycle(store)
    records = await complete_calls(lifecycle, 6)
    # Archiver A reads the entries, writes half of them, and dies before acknowledging any.
    taken = await store.read_completed("archiver-a", count=100, block_ms=0)
    assert len(taken) == 6
    await archive.upsert([e.record for e in taken[:3]])
    records += await complete_calls(lifecycle, 2)  # more work arrives meanwhile

    # B does not steal entries A has held for less than claim_idle_ms...
    patient = Archiver(store, archive, consumer="archiver-b", claim_idle_ms=60_000)
    assert await drain(patient) == 2
    assert await store.completed_backlog() == (6, 6)

    # ...and takes them over once they are idle longer than that.
    await asyncio.sleep(0.15)
    rescuer = Archiver(store, archive, consumer="archiver-b", claim_idle_ms=100)
    assert await drain(rescuer) == 6

    await assert_archived_once(archive, backend, records)
    assert await store.completed_backlog() == (0, 0)


# -- the archive is down ---------------------------------------------------------------------------


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@pytest.mark.postgres
async def test_postgres_down_then_back_every_session_lands_once(
    store: SessionStore,
    pg_backend: Backend,
    pg_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=ARCHIVER_LOG)
    behind_proxy = pg_backend.url.replace(":5432/", f":{pg_proxy.port}/")
    archive = await Archive.open(behind_proxy, schema=pg_backend.schema, connect_timeout=2)
    direct = await pg_backend.open()
    try:
        await pg_proxy.stop()  # the archive goes down (live connections cut too)
        lifecycle = Lifecycle(store)
        records = await complete_calls(lifecycle, 10)
        archiver = Archiver(store, archive, consumer="archiver-1", block_ms=100)
        async with running(archiver):

            async def retried_twice() -> bool:
                return sum("waiting" in r.getMessage() for r in caplog.records) >= 2

            await eventually(retried_twice)
            assert await direct.count_sessions() == 0
            assert await store.completed_backlog() == (10, 10)  # held, not acknowledged
            warning = next(r.getMessage() for r in caplog.records if "waiting" in r.getMessage())
            assert records[0].session.id in warning
            assert (records[0].session.channel.sid or "-") in warning

            await pg_proxy.start()  # back on the same port

            async def drained() -> bool:
                return await store.completed_backlog() == (0, 0)

            await eventually(drained)
        await assert_archived_once(direct, pg_backend, records)
    finally:
        await archive.close()
        await direct.close()


async def test_sqlite_locked_then_free_every_session_lands_once(
    store: SessionStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process (a backup, an operator's shell) holds the write lock for a while."""
    caplog.set_level(logging.WARNING, logger=ARCHIVER_LOG)
    path = tmp_path / "archive.db"
    backend = Backend("sqlite", f"sqlite:///{path}", path=path)
    archive = await backend.open(busy_timeout=0.1)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        records = await complete_calls(Lifecycle(store), 5)
        archiver = Archiver(store, archive, consumer="archiver-1", block_ms=100)
        async with running(archiver):

            async def retried_twice() -> bool:
                return sum("waiting" in r.getMessage() for r in caplog.records) >= 2

            await eventually(retried_twice)
            assert await store.completed_backlog() == (5, 5)
            waiting = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
            assert "database is locked" in waiting[0]
            assert records[0].session.id in waiting[0]

            locker.execute("COMMIT")

            async def drained() -> bool:
                return await store.completed_backlog() == (0, 0)

            await eventually(drained)
        await assert_archived_once(archive, backend, records)
    finally:
        locker.close()
        await archive.close()


# -- a record the archive refuses ------------------------------------------------------------------


@pytest.mark.postgres
async def test_a_refused_record_stays_pending_and_the_rest_of_its_batch_lands(
    store: SessionStore, pg_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=ARCHIVER_LOG)
    archive = await pg_backend.open()
    try:
        lifecycle = Lifecycle(store)
        good = await complete_calls(lifecycle, 2)
        # PostgreSQL text cannot hold NUL: this history can never be written there.
        poisoned = await open_call(lifecycle, n_messages=0)
        await lifecycle.append_messages(
            poisoned.id, [Message(role="user", content="before\x00after")]
        )
        bad = await lifecycle.complete(poisoned.id, EndReason.COMPLETED)
        good += await complete_calls(lifecycle, 2)

        archiver = Archiver(store, archive, consumer="archiver-1", claim_idle_ms=50)
        assert await archiver.drain_once() == 4

        await assert_archived_once(archive, pg_backend, good)
        assert await archive.get(bad.session.id) is None
        assert await store.completed_backlog() == (1, 1)  # pending, never acknowledged
        logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(bad.session.id in m and (bad.session.channel.sid or "") in m for m in logged)

        await asyncio.sleep(0.1)  # retried when claimed again; still refused, still pending
        assert await archiver.drain_once() == 0
        assert await store.completed_backlog() == (1, 1)
    finally:
        await archive.close()


async def test_memory_store_queue_is_shared_by_archivers_in_one_process(
    memory_store: MemorySessionStore, archive: Archive, backend: Backend
) -> None:
    """The embedded store hands each entry to one of several consumers, like Redis does."""
    records = await complete_calls(Lifecycle(memory_store), 4)
    first = Archiver(memory_store, archive, consumer="a", batch_size=2)
    second = Archiver(memory_store, archive, consumer="b", batch_size=2)
    assert await first.drain_once() == 2
    assert await second.drain_once() == 2
    assert await first.drain_once() == 0
    await assert_archived_once(archive, backend, records)

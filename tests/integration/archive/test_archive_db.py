"""The archive on both backends (a SQLite file and the real PostgreSQL server)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from tests.integration.archive.helpers import POSTGRES_URL, T0, Backend, make_record, make_session

from voice_gateway.archive.db import Archive, ArchiveRejected
from voice_gateway.archive.schema import LATEST_VERSION, SchemaTooNew
from voice_gateway.errors import ArchiveUnavailable, ConfigError
from voice_gateway.sessions.models import (
    ANALYTICS_COLUMNS,
    CompletedSession,
    EndReason,
    SessionStatus,
    analytics_row,
)

MINUTE = timedelta(minutes=1)


# -- get / upsert --------------------------------------------------------------------------------


async def test_upsert_then_get_returns_the_same_session_in_utc(archive: Archive) -> None:
    paris = timezone(timedelta(hours=1))
    record = make_record(
        created_at=T0.astimezone(paris),
        updated_at=(T0 + MINUTE).astimezone(paris),
        ended_at=(T0 + 2 * MINUTE).astimezone(paris),
    )
    assert await archive.upsert([record]) == 1

    got = await archive.get(record.session.id)

    assert got == record.session  # every field, nested models included
    assert got is not None
    for moment in (got.created_at, got.updated_at, got.ended_at):
        assert moment is not None and moment.utcoffset() == timedelta(0)
    assert got.created_at == T0  # same instant, microseconds kept
    assert await archive.history(record.session.id) == record.messages


async def test_get_is_scoped_to_the_org_when_one_is_given(archive: Archive) -> None:
    record = make_record(org_id="acme")
    await archive.upsert([record])
    assert await archive.get(record.session.id, org_id="acme") == record.session
    assert await archive.get(record.session.id, org_id="globex") is None
    assert await archive.get("no-such-session") is None


async def test_writing_a_record_twice_leaves_one_row_and_one_copy_of_its_messages(
    archive: Archive, backend: Backend
) -> None:
    record = make_record(n_messages=3)
    await archive.upsert([record])
    await archive.upsert([record])
    await archive.upsert([record, record])  # a duplicate inside one batch too

    assert await archive.count_sessions() == 1
    assert await backend.scalar("SELECT count(*) FROM sessions") == 1
    assert await backend.scalar("SELECT count(*) FROM messages") == 3
    assert await archive.history(record.session.id) == record.messages


async def test_a_newer_record_replaces_the_row_and_its_history(
    archive: Archive, backend: Backend
) -> None:
    record = make_record(n_messages=4)
    await archive.upsert([record])
    changed = CompletedSession(
        session=record.session.model_copy(update={"summary": "second thoughts", "turns": 9}),
        messages=record.messages[:2],
    )
    await archive.upsert([changed])

    got = await archive.get(record.session.id)
    assert got is not None and got.summary == "second thoughts" and got.turns == 9
    assert await archive.history(record.session.id) == record.messages[:2]
    assert await backend.scalar("SELECT count(*) FROM messages") == 2


async def test_a_record_that_does_not_validate_is_refused_and_nothing_is_written(
    archive: Archive,
) -> None:
    good = make_record()
    broken = CompletedSession.model_construct(
        session=make_session().model_copy(update={"name": "x" * 41}), messages=[]
    )  # built around the validators, as a buggy producer might
    with pytest.raises(ArchiveRejected) as caught:
        await archive.upsert([good, broken])
    assert broken.session.id in caught.value.message
    assert await archive.count_sessions() == 0  # the whole batch, not half of it


async def test_upsert_of_nothing_writes_nothing(archive: Archive) -> None:
    assert await archive.upsert([]) == 0
    assert await archive.count_sessions() == 0


# -- list / count --------------------------------------------------------------------------------


@pytest.fixture
async def seeded(archive: Archive) -> dict[str, str]:
    """Five sessions a minute apart; returns name -> session id."""
    specs: dict[str, dict[str, Any]] = {
        "s1": {"org_id": "acme", "agent_id": "support", "user_id": "u1",
               "metadata": {"tier": "gold", "n": 3}},
        "s2": {"org_id": "acme", "agent_id": "sales", "user_id": "u2",
               "end_reason": EndReason.BUSY, "metadata": {"tier": "silver", "vip": True}},
        "s3": {"org_id": "globex", "agent_id": "support", "user_id": "u1",
               "end_reason": EndReason.NO_ANSWER, "metadata": {"tier": "gold"}},
        "s4": {"org_id": "acme", "agent_id": "support", "user_id": None,
               "metadata": {"tier": "gold", "n": 4.5}},
        "s5": {"org_id": "acme", "agent_id": "support", "user_id": "u3",
               "status": SessionStatus.ACTIVE, "end_reason": None, "ended_at": None,
               "metadata": {}},
    }  # fmt: skip
    ids: dict[str, str] = {}
    records = []
    for i, (name, fields) in enumerate(specs.items()):
        record = make_record(T0 + i * MINUTE, **fields)
        ids[name] = record.session.id
        records.append(record)
    await archive.upsert(records)
    return ids


async def names(archive: Archive, ids: dict[str, str], **filters: object) -> list[str]:
    by_id = {v: k for k, v in ids.items()}
    return [by_id[s.id] for s in await archive.list_sessions(**filters)]  # type: ignore[arg-type]


async def test_list_is_newest_first_and_each_filter_narrows_it(
    archive: Archive, seeded: dict[str, str]
) -> None:
    assert await names(archive, seeded) == ["s5", "s4", "s3", "s2", "s1"]
    assert await names(archive, seeded, org_id="globex") == ["s3"]
    assert await names(archive, seeded, agent_id="sales") == ["s2"]
    assert await names(archive, seeded, user_id="u1") == ["s3", "s1"]
    assert await names(archive, seeded, status="active") == ["s5"]
    assert await names(archive, seeded, status=SessionStatus.COMPLETED) == ["s4", "s3", "s2", "s1"]
    assert await names(archive, seeded, end_reason=EndReason.BUSY) == ["s2"]
    assert await names(archive, seeded, end_reason="no-answer") == ["s3"]


async def test_list_time_range_is_inclusive_after_and_exclusive_before(
    archive: Archive, seeded: dict[str, str]
) -> None:
    window = {"created_after": T0 + MINUTE, "created_before": T0 + 3 * MINUTE}
    assert await names(archive, seeded, **window) == ["s3", "s2"]
    assert await names(archive, seeded, created_after=T0 + 4 * MINUTE) == ["s5"]
    assert await names(archive, seeded, created_before=T0) == []
    # the bound may be in any time zone: it is an instant
    tokyo = timezone(timedelta(hours=9))
    assert await names(archive, seeded, created_after=(T0 + 4 * MINUTE).astimezone(tokyo)) == ["s5"]


async def test_list_metadata_matches_values_as_strings(
    archive: Archive, seeded: dict[str, str]
) -> None:
    assert await names(archive, seeded, metadata={"tier": "gold"}) == ["s4", "s3", "s1"]
    assert await names(archive, seeded, metadata={"n": "3"}) == ["s1"]
    assert await names(archive, seeded, metadata={"n": "4.5"}) == ["s4"]
    assert await names(archive, seeded, metadata={"vip": "true"}) == ["s2"]
    assert await names(archive, seeded, metadata={"tier": "gold", "n": "3"}) == ["s1"]
    assert await names(archive, seeded, metadata={"tier": "platinum"}) == []
    assert await names(archive, seeded, metadata={"missing": "x"}) == []


async def test_list_filters_combine(archive: Archive, seeded: dict[str, str]) -> None:
    found = await names(
        archive,
        seeded,
        org_id="acme",
        agent_id="support",
        status="completed",
        metadata={"tier": "gold"},
        created_after=T0,
    )
    assert found == ["s4", "s1"]
    assert (
        await archive.count_sessions(
            org_id="acme", agent_id="support", status="completed", metadata={"tier": "gold"}
        )
        == 2
    )


async def test_count_matches_the_list(archive: Archive, seeded: dict[str, str]) -> None:
    assert await archive.count_sessions() == 5
    assert await archive.count_sessions(org_id="acme") == 4
    assert await archive.count_sessions(user_id="u1") == 2
    assert await archive.count_sessions(end_reason="busy", org_id="globex") == 0
    assert await archive.count_sessions(created_after=T0 + 2 * MINUTE) == 3


async def test_pagination_edges(archive: Archive, seeded: dict[str, str]) -> None:
    assert await names(archive, seeded, limit=1) == ["s5"]
    assert await names(archive, seeded, limit=2, offset=3) == ["s2", "s1"]
    assert await names(archive, seeded, limit=10, offset=4) == ["s1"]
    assert await names(archive, seeded, offset=5) == []
    assert await names(archive, seeded, offset=500) == []
    assert await names(archive, seeded, limit=0) == []
    with pytest.raises(ValueError):
        await archive.list_sessions(offset=-1)


async def test_equal_created_at_is_ordered_by_id_and_pages_never_overlap(
    archive: Archive,
) -> None:
    ids = [f"tie-{c}" for c in "dacbe"]
    await archive.upsert([make_record(T0, id=i) for i in ids])
    expected = sorted(ids, reverse=True)

    assert [s.id for s in await archive.list_sessions()] == expected
    paged: list[str] = []
    for offset in range(0, 6, 2):
        paged += [s.id for s in await archive.list_sessions(limit=2, offset=offset)]
    assert paged == expected


# -- history / delete ----------------------------------------------------------------------------


async def test_history_is_in_order_and_pages(archive: Archive) -> None:
    record = make_record(n_messages=7)
    await archive.upsert([record])
    sid = record.session.id

    assert await archive.history(sid) == record.messages
    assert await archive.history(sid, offset=2, limit=3) == record.messages[2:5]
    assert await archive.history(sid, offset=6, limit=10) == record.messages[6:]
    assert await archive.history(sid, offset=7) == []
    assert await archive.history("no-such-session") == []
    got = (await archive.history(sid, limit=1))[0]
    assert got.created_at.utcoffset() == timedelta(0)
    assert got.metadata == {"i": 0, "ok": True}


async def test_delete_removes_the_session_and_its_messages(
    archive: Archive, backend: Backend
) -> None:
    keep, gone = make_record(n_messages=2), make_record(n_messages=3, org_id="acme")
    await archive.upsert([keep, gone])

    assert await archive.delete(gone.session.id, org_id="globex") is False  # other org's
    assert await archive.get(gone.session.id) is not None
    assert await archive.delete(gone.session.id, org_id="acme") is True

    assert await archive.get(gone.session.id) is None
    assert await archive.history(gone.session.id) == []
    assert await archive.delete(gone.session.id) is False
    assert await archive.count_sessions() == 1
    assert await backend.scalar("SELECT count(*) FROM messages") == 2
    assert await archive.history(keep.session.id) == keep.messages


# -- analytics rows ------------------------------------------------------------------------------


async def test_analytics_rows_come_in_batches_ordered_and_typed(archive: Archive) -> None:
    records = [make_record(T0 + i * MINUTE, n_messages=1) for i in range(5)]
    records.append(make_record(T0 + 2 * MINUTE, n_messages=1, duration=None, ended_at=None))
    await archive.upsert(records)

    batches = [b async for b in archive.iter_analytics_rows(batch_size=2)]

    assert [len(b) for b in batches] == [2, 2, 2]
    rows = [row for batch in batches for row in batch]
    expected = sorted(records, key=lambda r: (r.session.created_at, r.session.id))
    assert rows == [analytics_row(r.session) for r in expected]
    for row in rows:
        assert list(row) == list(ANALYTICS_COLUMNS)
        assert row["timestamp"].tzinfo is not None and row["timestamp"].utcoffset() == timedelta(0)
        assert isinstance(row["isTest"], bool) and isinstance(row["turns"], int)
        assert row["duration"] is None or isinstance(row["duration"], float)


async def test_analytics_rows_exact_multiple_of_the_batch_size_ends_cleanly(
    archive: Archive,
) -> None:
    await archive.upsert([make_record(T0 + i * MINUTE, n_messages=0) for i in range(4)])
    assert [len(b) async for b in archive.iter_analytics_rows(batch_size=2)] == [2, 2]
    assert [b async for b in archive.iter_analytics_rows(since=T0 + 9 * MINUTE)] == []


async def test_analytics_rows_filters(archive: Archive) -> None:
    plain = make_record(T0, agent_id="support", org_id="acme")
    test = make_record(T0 + MINUTE, is_test=True, org_id="acme")
    legacy = make_record(T0 + 2 * MINUTE, is_legacy=True, agent_id="sales", org_id="acme")
    other_org = make_record(T0 + 3 * MINUTE, org_id="globex")
    await archive.upsert([plain, test, legacy, other_org])

    async def ids(**filters: object) -> list[str]:
        return [
            row["sessionId"]
            async for batch in archive.iter_analytics_rows(**filters)  # type: ignore[arg-type]
            for row in batch
        ]

    p, t, lg, o = (r.session.id for r in (plain, test, legacy, other_org))
    assert await ids() == [p, t, lg, o]
    assert await ids(exclude_test=True) == [p, lg, o]
    assert await ids(exclude_legacy=True) == [p, t, o]
    assert await ids(exclude_test=True, exclude_legacy=True) == [p, o]
    assert await ids(since=T0 + MINUTE, until=T0 + 3 * MINUTE) == [t, lg]
    assert await ids(agent_id="sales") == [lg]
    assert await ids(org_id="globex") == [o]
    assert await archive.count_analytics_rows(org_id="acme", exclude_test=True) == 2
    with pytest.raises(ValueError):
        await ids(since=T0.replace(tzinfo=None))


# -- schema versioning ---------------------------------------------------------------------------


async def test_opening_again_migrates_nothing_and_keeps_the_data(backend: Backend) -> None:
    first = await backend.open()
    record = make_record()
    await first.upsert([record])
    await first.close()

    again = await backend.open()
    try:
        assert await again.schema_version() == LATEST_VERSION
        assert await backend.scalar("SELECT count(*) FROM schema_version") == LATEST_VERSION
        assert await again.get(record.session.id) == record.session
    finally:
        await again.close()


async def test_instances_opening_at_once_migrate_exactly_once(backend: Backend) -> None:
    """Several gateway instances start together against a fresh database."""
    opened = await asyncio.gather(*(backend.open() for _ in range(4)))
    try:
        assert await backend.scalar("SELECT count(*) FROM schema_version") == LATEST_VERSION
        await opened[0].upsert([make_record()])
        assert [await a.count_sessions() for a in opened] == [1, 1, 1, 1]
    finally:
        for archive in opened:
            await archive.close()


async def test_a_newer_schema_version_is_refused(backend: Backend) -> None:
    archive = await backend.open()
    await archive.close()
    await backend.execute(
        "INSERT INTO schema_version (version, description, applied_at) "
        "VALUES (999, 'from the future', CURRENT_TIMESTAMP)"
    )

    with pytest.raises(SchemaTooNew) as caught:
        await backend.open()
    assert "999" in caught.value.message and str(LATEST_VERSION) in caught.value.message
    assert isinstance(caught.value, ConfigError)


async def test_ping_and_close(archive: Archive) -> None:
    await archive.ping()
    await archive.close()
    with pytest.raises(ArchiveUnavailable):
        await archive.ping()


# -- opening failures ----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_postgres_is_archive_unavailable_without_the_password() -> None:
    url = f"postgresql://postgres:hunter2-secret@127.0.0.1:{closed_port()}/test"
    with pytest.raises(ArchiveUnavailable) as caught:
        await Archive.open(url, connect_timeout=2)
    assert "hunter2-secret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


@pytest.mark.postgres
async def test_unknown_postgres_database_is_archive_unavailable() -> None:
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(ArchiveUnavailable, match="no_such_database_here"):
        await Archive.open(url)


async def test_sqlite_path_that_cannot_be_created_is_archive_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # where the archive's directory should be
    with pytest.raises(ArchiveUnavailable):
        await Archive.open(f"sqlite:///{blocker}/archive.db")


@pytest.mark.parametrize(
    "url", ["mysql://u:p@localhost/db", "redis://127.0.0.1:6379/0", "not a url at all"]
)
async def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        await Archive.open(url)
    assert ":p@" not in caught.value.message


async def test_a_schema_is_refused_on_sqlite(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PostgreSQL"):
        await Archive.open(f"sqlite:///{tmp_path}/a.db", schema="nope")


async def test_relative_sqlite_paths_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    archive = await Archive.open("sqlite:///var/archive.db")
    try:
        await archive.upsert([make_record()])
    finally:
        await archive.close()
    assert (tmp_path / "var" / "archive.db").is_file()


async def test_sessions_from_any_time_zone_sort_by_instant(archive: Archive) -> None:
    early = make_session(T0.astimezone(timezone(timedelta(hours=-8))))  # same instant as T0
    late = make_session((T0 + MINUTE).astimezone(timezone(timedelta(hours=9))))
    await archive.upsert([CompletedSession(session=late), CompletedSession(session=early)])
    listed = await archive.list_sessions()
    assert [s.id for s in listed] == [late.id, early.id]
    assert all(s.created_at.tzinfo is not None for s in listed)
    assert listed[1].created_at == T0.astimezone(UTC)


def _hold_write_lock(path: Path, seconds: float, held: threading.Event) -> None:
    """Another process's writer on a new (rollback-journal) SQLite file, for ``seconds``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS other (x)")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO other VALUES (1)")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_sqlite_open_waits_out_a_writer_holding_a_new_file(tmp_path: Path) -> None:
    """Switching a file to WAL is refused at once, without the busy timeout, while another
    connection writes (how instances opening a new archive together used to fail)."""
    path = tmp_path / "archive.db"
    held = threading.Event()
    writer = threading.Thread(target=_hold_write_lock, args=(path, 0.4, held))
    writer.start()
    try:
        assert await asyncio.to_thread(held.wait, 5)
        archive = await Archive.open(f"sqlite:///{path}", busy_timeout=5.0)
        try:
            await archive.upsert([make_record()])
            assert await archive.count_sessions() == 1
        finally:
            await archive.close()
    finally:
        await asyncio.to_thread(writer.join)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_open_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    held = threading.Event()
    writer = threading.Thread(target=_hold_write_lock, args=(path, 1.5, held))
    writer.start()
    try:
        assert await asyncio.to_thread(held.wait, 5)
        with pytest.raises(ArchiveUnavailable, match="locked"):
            await Archive.open(f"sqlite:///{path}", busy_timeout=0.3)
    finally:
        await asyncio.to_thread(writer.join)

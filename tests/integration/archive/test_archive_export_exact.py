"""The export's fast path is byte for byte the reference formatting, on both backends.

The reference is the straightforward implementation: the typed rows of
``Archive.iter_analytics_rows`` written with the ``csv`` module (``csv_value``), with
``json.dumps`` (``json_value``), and as a Parquet table built from Python values. The fast path
(CSV lines, Arrow parses them, Arrow kernels format them) must agree on every byte, for every
awkward value the archive can hold, whatever the chunk size, and whichever wrote the lines:
the archive at write time (``export_row``), the database at export time (rows archived before
``export_row`` existed), or both in one export.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq
import pytest
from tests.integration.archive.helpers import (
    POSTGRES_URL,
    T0,
    Backend,
    drop_schema,
    make_record,
)

from voice_gateway.archive import db as archive_db
from voice_gateway.archive.db import Archive
from voice_gateway.archive.export import ExportFormat, csv_value, export, json_value
from voice_gateway.archive.schema import LATEST_VERSION
from voice_gateway.sessions.models import ANALYTICS_COLUMNS, CompletedSession, analytics_row

TEXTS = [
    "plain",
    "",
    "comma, inside",
    'a "quoted" word',
    "line one\nline two",
    "windows\r\nline",
    "lone\rreturn",
    "tab\there",
    "back\\slash",
    "control\x01\x07\x1f char",
    "\x08backspace\x0cformfeed",
    "del\x7f",
    "ünïcödé ☎ 😀 \u2028 sep",
    "  spaced  ",
    "NULL",
    "null",
    "'",
    "''",
    "it's",
    '"',
    "\\N",
    "$v0$",
    "x$v0",
    "$$",
    ",",
    "trailing,",
]
DURATIONS = [
    None,
    0.0,
    95.0,
    180.25,
    0.1 + 0.2,
    1 / 3,
    1e-05,
    0.0001,
    123456789012345.6,
    1e16,
    2.5e300,
    5e-324,
    86400.0,
    1234.5678,
]


def awkward_records() -> list[CompletedSession]:
    records = []
    for i, text in enumerate(TEXTS):
        at = T0 + timedelta(seconds=i // 3)  # ties on created_at: the id decides the order
        if i % 5 == 0:
            at = at.replace(microsecond=0)
        fields: dict[str, Any] = {
            "name": text[:40],
            "summary": text * 3,
            "user_id": text or None,
            "session_label_id": None if i % 2 else text,
            "agent_name": text,
            "duration": DURATIONS[i % len(DURATIONS)],
            "ended_at": None if i % 4 == 0 else at + timedelta(minutes=3, microseconds=i),
            "is_test": i % 3 == 0,
            "is_legacy": i % 4 == 1,
            "turns": i,
            "interruptions": i * 1000,
        }
        if i % 6 == 0:
            fields["id"] = f"id,{i}'\"$v0$"  # an awkward key, also at a chunk boundary
        records.append(make_record(at, n_messages=0, **fields))
    return records


def reference(rows: list[dict[str, Any]], fmt: str) -> bytes:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(ANALYTICS_COLUMNS)
        writer.writerows([[csv_value(row[c]) for c in ANALYTICS_COLUMNS] for row in rows])
        return buffer.getvalue().encode("utf-8")
    return "".join(
        json.dumps(
            {c: json_value(row[c]) for c in ANALYTICS_COLUMNS},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for row in rows
    ).encode("utf-8")


async def exported(archive: Archive, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    await export(archive, fmt=cast(ExportFormat, fmt), out=out, **options)
    return out.getvalue()


#: Which rows have their ``export_row`` line: all (archived by this version), none (archived
#: before it existed: the database writes them at export time), or every other one.
LINES = {"stored": None, "legacy": "1 = 1", "mixed": "turns % 2 = 0"}


async def forget_lines(backend: Backend, where: str | None) -> None:
    """Make rows look archived before ``export_row`` existed."""
    if where is not None:
        await backend.execute(f"UPDATE sessions SET export_row = NULL WHERE {where}")


@pytest.fixture(params=list(LINES))
async def awkward(
    request: pytest.FixtureRequest, backend: Backend, archive: Archive
) -> list[dict[str, Any]]:
    records = awkward_records()
    await archive.upsert(records)
    await forget_lines(backend, LINES[request.param])
    rows = [row async for batch in archive.iter_analytics_rows() for row in batch]
    ordered = sorted(records, key=lambda r: (r.session.created_at, r.session.id))
    assert rows == [analytics_row(r.session) for r in ordered]
    return rows


async def test_the_archive_writes_the_line_of_every_row(archive: Archive) -> None:
    records = awkward_records()
    await archive.upsert(records)
    chunks = [c async for c in archive.iter_analytics_chunks(batch_size=7)]
    assert {c.dialect for c in chunks} == {archive_db.EXPORT_CSV}
    ordered = sorted(records, key=lambda r: (r.session.created_at, r.session.id))
    lines = "".join(archive_db.export_line(analytics_row(r.session)) for r in ordered)
    assert b"".join(c.csv or b"" for c in chunks) == lines.encode()


@pytest.mark.parametrize("batch_size", [1, 4, 10_000])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_text_formats_are_byte_for_byte_the_reference(
    archive: Archive, awkward: list[dict[str, Any]], fmt: str, batch_size: int
) -> None:
    assert await exported(archive, fmt, batch_size=batch_size) == reference(awkward, fmt)


@pytest.mark.parametrize("batch_size", [1, 4, 10_000])
async def test_parquet_holds_exactly_the_typed_rows(
    archive: Archive, awkward: list[dict[str, Any]], batch_size: int
) -> None:
    data = await exported(archive, "parquet", batch_size=batch_size)
    table = pq.read_table(io.BytesIO(data))
    assert table.to_pylist() == awkward
    groups = pq.ParquetFile(io.BytesIO(data)).metadata.num_row_groups
    assert groups == -(-len(awkward) // batch_size)  # one row group per chunk


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_filters_with_awkward_values_match_the_reference(
    archive: Archive, awkward: list[dict[str, Any]], fmt: str
) -> None:
    agent = "it's"
    await archive.upsert(
        [make_record(T0 + timedelta(hours=1), n_messages=0, agent_id=agent, org_id="o$v0$'")]
    )
    filters: dict[str, Any] = {
        "since": T0 + timedelta(seconds=2),
        "until": T0 + timedelta(hours=2),
        "agent_id": agent,
        "org_id": "o$v0$'",
    }
    rows = [row async for batch in archive.iter_analytics_rows(**filters) for row in batch]
    assert len(rows) == 1
    data = await exported(archive, fmt, batch_size=1, **filters)
    if fmt == "parquet":
        assert pq.read_table(io.BytesIO(data)).to_pylist() == rows
    else:
        assert data == reference(rows, fmt)


async def test_a_chunk_the_database_cannot_write_exactly_goes_typed(
    backend: Backend,
    archive: Archive,
    awkward: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await forget_lines(backend, LINES["legacy"])  # the database writes every chunk
    # Pretend SQLite cannot write any duration exactly: those chunks take the typed path.
    monkeypatch.setattr(archive_db, "_SQLITE_EXACT", "duration IS NULL")
    chunks = [c async for c in archive.iter_analytics_chunks(batch_size=1)]
    assert sum(c.rows for c in chunks) == len(awkward)
    if archive.backend == "sqlite":
        assert any(c.records is not None for c in chunks)
        assert any(c.csv is not None for c in chunks)  # the rows without a duration
    for batch_size in (1, 3):
        for fmt in ("csv", "jsonl"):
            assert await exported(archive, fmt, batch_size=batch_size) == reference(awkward, fmt)
        data = await exported(archive, "parquet", batch_size=batch_size)
        assert pq.read_table(io.BytesIO(data)).to_pylist() == awkward


async def test_stopping_early_leaves_nothing_running(
    archive: Archive, awkward: list[dict[str, Any]]
) -> None:
    chunks = archive.iter_analytics_chunks(batch_size=2, parallel=3)
    first = await chunks.__anext__()
    assert first.rows == 2
    await chunks.aclose()  # cancels the chunks in flight and the bound looked up ahead
    # The connections went back to the pool: the archive still works, and closes cleanly.
    assert sum([c.rows async for c in archive.iter_analytics_chunks(batch_size=5)]) == len(awkward)


@pytest.mark.parametrize("parallel", [1, 2, 5])
async def test_any_parallelism_gives_the_same_bytes(
    archive: Archive, awkward: list[dict[str, Any]], parallel: int
) -> None:
    got = [
        c.csv if c.csv is not None else c.records
        async for c in archive.iter_analytics_chunks(batch_size=3, parallel=parallel)
    ]
    want = [
        c.csv if c.csv is not None else c.records
        async for c in archive.iter_analytics_chunks(batch_size=3, parallel=1)
    ]
    assert got == want and len(got) == -(-len(awkward) // 3)


async def test_sqlite_reads_the_lines_from_the_export_index(
    backend: Backend, archive: Archive
) -> None:
    if backend.path is None:
        pytest.skip("SQLite only: PostgreSQL reads the table")
    records = awkward_records()
    await archive.upsert(records)
    query = archive_db._ExportQuery(
        "sqlite",
        None,
        since=T0,
        until=None,
        agent_id=None,
        org_id=None,
        exclude_test=False,
        exclude_legacy=False,
    )
    first = (T0, records[0].session.id)
    last = (T0 + timedelta(hours=1), "~")
    sql, params = query.stored_chunk((archive_db._sqlite_time(first[0]), first[1]), last)
    with contextlib.closing(sqlite3.connect(backend.path)) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert any("COVERING INDEX ix_sessions_export" in step for step in plan), plan


async def test_an_update_rewrites_the_line(archive: Archive) -> None:
    records = awkward_records()[:6]
    await archive.upsert(records)
    target = records[2].session.id
    await archive.update(target, {"name": 'after, "edit"', "summary": None})
    rows = [row async for batch in archive.iter_analytics_rows() for row in batch]
    assert [r["name"] for r in rows if r["sessionId"] == target] == ['after, "edit"']
    for fmt in ("csv", "jsonl"):
        assert await exported(archive, fmt, batch_size=4) == reference(rows, fmt)
    data = await exported(archive, "parquet", batch_size=4)
    assert pq.read_table(io.BytesIO(data)).to_pylist() == rows


async def test_an_archive_from_before_export_row_is_migrated_and_exported_the_same(
    backend: Backend,
) -> None:
    """A version-2 archive (no ``export_row``) opened by this version: the column is added,
    its old rows are written by the database, the new ones from their line, in one export."""
    archive = await backend.open()
    old = awkward_records()
    await archive.upsert(old[:12])
    await archive.close()
    await backend.execute("DROP INDEX IF EXISTS ix_sessions_export")  # SQLite's
    await backend.execute("ALTER TABLE sessions DROP COLUMN export_row")
    await backend.execute("DELETE FROM schema_version WHERE version >= 3")

    archive = await backend.open()
    try:
        assert await archive.schema_version() == LATEST_VERSION
        assert await backend.scalar("SELECT count(export_row) FROM sessions") == 0
        await archive.upsert(old[12:])
        assert await backend.scalar("SELECT count(export_row) FROM sessions") == len(old) - 12
        rows = [row async for batch in archive.iter_analytics_rows() for row in batch]
        assert len(rows) == len(old)
        chunks = [c async for c in archive.iter_analytics_chunks(batch_size=5)]
        dialects = {c.dialect for c in chunks} - {None}  # None: a typed chunk (SQLite)
        assert archive_db.EXPORT_CSV in dialects and len(dialects) == 2  # + the database's
        for batch_size in (1, 5, 10_000):
            for fmt in ("csv", "jsonl"):
                got = await exported(archive, fmt, batch_size=batch_size)
                assert got == reference(rows, fmt)
            data = await exported(archive, "parquet", batch_size=batch_size)
            assert pq.read_table(io.BytesIO(data)).to_pylist() == rows
    finally:
        await archive.close()


# -- the two backends side by side -------------------------------------------------------------


@pytest.fixture
async def both(tmp_path: Path) -> Any:
    """The same awkward sessions in a SQLite archive and in a PostgreSQL one."""
    schema = f"test_archive_{uuid.uuid4().hex[:12]}"
    backends = [
        Backend("sqlite", f"sqlite:///{tmp_path / 'archive.db'}", path=tmp_path / "archive.db"),
        Backend("postgres", POSTGRES_URL, schema=schema),
    ]
    records = awkward_records()  # the same sessions (ids are random) in both
    archives = []
    try:
        for backend in backends:
            archive = await backend.open()
            archives.append(archive)
            await archive.upsert(records)
        yield list(zip(backends, archives, strict=True))
    finally:
        for archive in archives:
            await archive.close()
        await drop_schema(schema)


@pytest.mark.postgres
@pytest.mark.parametrize("lines", list(LINES))
async def test_sqlite_and_postgresql_export_the_same_bytes(
    both: list[tuple[Backend, Archive]], lines: str
) -> None:
    for backend, _ in both:
        await forget_lines(backend, LINES[lines])
    options: list[dict[str, Any]] = [
        {"batch_size": 1},
        {"batch_size": 4},
        {"batch_size": 10_000},
        {"exclude_test": True, "since": T0 + timedelta(seconds=1), "batch_size": 3},
    ]
    for fmt in ("csv", "jsonl", "parquet"):
        for option in options:
            sqlite_bytes, postgres_bytes = [
                await exported(archive, fmt, **option) for _, archive in both
            ]
            assert sqlite_bytes == postgres_bytes, (fmt, option)
            assert len(sqlite_bytes) > 1000

"""Export benchmark: rows per second and peak memory of `voice-gateway export`.

    python -m benchmarks.export_bench --rows 1000000            # SQLite and PostgreSQL
    python -m benchmarks.export_bench --rows 200000 --backends sqlite
    python -m benchmarks.export_bench --rows 20000 --backends sqlite --smoke

Seeding (not timed into the results): the first ``--upsert-rows`` sessions go through
``Archive.upsert`` (the archiver's own write path); the rest are inserted with ``executemany``
into the same SQLAlchemy table, built from the same session template, and the bench checks that
such a row is column for column what ``Archive.upsert`` writes (``data`` included), so the
bulk rows are as realistic as the upserted ones, only much faster to write.

Each format is then exported by a separate ``voice-gateway export`` process (its own
interpreter start included: that is what a user waits for). Wall time, CPU time and peak RSS
come from ``os.wait4`` on that child, so they are that run's alone (not the maximum over every
child so far). Each export runs ``--repeat`` times (3 by default) and the median run is
reported, with the fastest and slowest wall times beside it; the seeded files are written back
to disk (``sync``) first, as an archive that grew over time would be. ``startup_s`` is the
same command exporting nothing (``--since`` after the last session): interpreter start,
imports, archive open. PostgreSQL uses its own schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.common import print_table, write_json
from voice_gateway.archive import schema as sc
from voice_gateway.archive.db import Archive, engine_url, export_line
from voice_gateway.sessions.models import (
    Channel,
    CompletedSession,
    EndReason,
    Session,
    SessionStatus,
)

POSTGRES_URL = os.environ.get(
    "VOICE_GATEWAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
FORMATS = ("csv", "jsonl", "parquet")
BASE = datetime(2026, 1, 1, tzinfo=UTC)
SUMMARIES = (
    None,
    "Caller asked about the invoice of March; agent explained the late fee, caller agreed.",
    'Wanted to "cancel everything", transferred to retention.\nFollow-up: call back Monday.',
    "Réservation modifiée pour deux personnes, confirmée par SMS ☎",
)


def _fields(i: int) -> dict[str, Any]:
    """What varies from session to session (everything else is the template's)."""
    created = BASE + timedelta(seconds=i, microseconds=(i * 7919) % 1_000_000)
    ended = created + timedelta(seconds=95 + i % 60)
    call_sid = f"CA{i:032x}"  # uuid.UUID(int=i).hex
    return {
        "id": f"04000000-0000-4000-8000-{i:012x}",  # uuid.UUID(int=(1 << 122) | i, version=4)
        "org_id": f"org-{i % 3}",
        "agent_id": f"agent-{i % 5}",
        "name": f"Call {i}, follow-up" if i % 4 == 1 else None,
        "summary": SUMMARIES[i % len(SUMMARIES)],
        "user_id": f"user-{i % 1000}" if i % 3 else None,
        "conversation_id": call_sid,
        "sid": call_sid,
        "created_at": created,
        "updated_at": ended,
        "ended_at": ended,
        "duration": None if i % 50 == 0 else 95.0 + (i % 60) + (i % 4) * 0.25,
        "is_test": i % 10 == 0,
        "is_legacy": i % 7 == 0,
        "turns": i % 12,
        "message_count": 2 * (i % 12),
        "interruptions": i % 3,
        "metadata": {"tier": "gold" if i % 2 else "silver"},
    }


def make_record(i: int) -> CompletedSession:
    f = _fields(i)
    session = Session(
        id=f["id"],
        org_id=f["org_id"],
        agent_id=f["agent_id"],
        agent_name="Support",
        agent_type="echo",
        agent_timezone="UTC",
        prompt_id="p1",
        prompt_name="Support prompt",
        prompt_version="3",
        channel=Channel(service="twilio", type="voice", sid=f["sid"]),
        conversation_id=f["conversation_id"],
        source="+14155550100",
        target="+18005550199",
        name=f["name"],
        summary=f["summary"],
        user_id=f["user_id"],
        status=SessionStatus.COMPLETED,
        end_reason=EndReason.COMPLETED,
        created_at=f["created_at"],
        updated_at=f["updated_at"],
        ended_at=f["ended_at"],
        duration=f["duration"],
        is_test=f["is_test"],
        is_legacy=f["is_legacy"],
        turns=f["turns"],
        message_count=f["message_count"],
        interruptions=f["interruptions"],
        metadata=f["metadata"],
    )
    return CompletedSession(session=session)


def _utc_text(value: datetime) -> str:
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")  # rfc3339, UTC


class RowMaker:
    """``sessions`` rows for the bulk part of the seed, without a pydantic model per row: the
    session JSON (``data``) is the template session's with the varying fields put in."""

    COLUMNS = tuple(c.name for c in sc.sessions.c)
    VARYING = (
        "id", "org_id", "agent_id", "name", "summary", "user_id", "conversation_id",
        "duration", "is_test", "is_legacy", "turns", "message_count", "interruptions",
        "metadata",
    )  # fmt: skip

    def __init__(self) -> None:
        self.template = make_record(0).session.model_dump(mode="json")
        self.archived_at = datetime.now(UTC)

    def row(self, i: int) -> dict[str, Any]:
        """The row as ``Archive.upsert`` writes it (Python values, as SQLAlchemy reads back)."""
        f = _fields(i)
        t = self.template
        doc = dict(t)
        for key in self.VARYING:
            doc[key] = f[key]
        for key in ("created_at", "updated_at", "ended_at"):
            doc[key] = _utc_text(f[key])
        doc["channel"] = {**t["channel"], "sid": f["sid"]}
        row: dict[str, Any] = {
            "created_at": f["created_at"],
            "id": f["id"],
            "conversation_id": f["conversation_id"],
            "channel_service": t["channel"]["service"],
            "channel_type": t["channel"]["type"],
            "channel_sid": f["sid"],
            "agent_id": f["agent_id"],
            "agent_name": t["agent_name"],
            "agent_type": t["agent_type"],
            "agent_timezone": t["agent_timezone"],
            "prompt_id": t["prompt_id"],
            "prompt_name": t["prompt_name"],
            "prompt_version": t["prompt_version"],
            "duration": f["duration"],
            "session_label_id": t["session_label_id"],
            "source": t["source"],
            "target": t["target"],
            "is_legacy": f["is_legacy"],
            "is_test": f["is_test"],
            "org_id": f["org_id"],
            "ended_at": f["ended_at"],
            "end_reason": t["end_reason"],
            "turns": f["turns"],
            "message_count": f["message_count"],
            "interruptions": f["interruptions"],
            "user_id": f["user_id"],
            "name": f["name"],
            "summary": f["summary"],
            "status": t["status"],
            "updated_at": f["updated_at"],
            "metadata": f["metadata"],
            "data": orjson.dumps(doc).decode(),
            "archived_at": self.archived_at,
        }
        row["export_row"] = export_line({key: row[column] for key, column in sc.ANALYTICS_SOURCE})
        return row

    def driver_values(self, i: int, backend: str) -> tuple[Any, ...]:
        """The row in ``sessions`` column order, as the driver stores it (what SQLAlchemy's
        types turn the Python values into: on SQLite naive UTC text, 0/1, JSON text)."""
        row = self.row(i)
        values = [row[name] for name in self.COLUMNS]
        values[_METADATA] = orjson.dumps(values[_METADATA]).decode()
        if backend == "sqlite":
            for k in _TIMES:  # UTC already: SQLAlchemy's "YYYY-MM-DD HH:MM:SS.ffffff"
                if values[k] is not None:
                    values[k] = values[k].isoformat(" ", "microseconds")[:26]
            for k in _FLAGS:
                values[k] = int(values[k])
        return tuple(values)


_METADATA = RowMaker.COLUMNS.index("metadata")
_TIMES = [k for k, c in enumerate(sc.sessions.c) if isinstance(c.type, sc.UtcDateTime)]
_FLAGS = [RowMaker.COLUMNS.index("is_test"), RowMaker.COLUMNS.index("is_legacy")]


async def _check_rows(engine: Any, make_row: RowMaker, ids: list[int]) -> None:
    """The rows with these numbers must read back (through SQLAlchemy's types) exactly as
    ``make_row.row`` builds them, ``data`` compared as JSON."""
    columns = [c for c in sc.sessions.c if c.name != "archived_at"]
    wanted = {make_row.row(i)["id"]: make_row.row(i) for i in ids}
    async with engine.connect() as conn:
        stmt = select(*columns).where(sc.sessions.c.id.in_(list(wanted)))
        stored = (await conn.execute(stmt)).all()
    if len(stored) != len(wanted):
        raise AssertionError(f"seed check: {len(stored)} of {len(wanted)} rows found")
    for got in stored:
        want = wanted[got.id]
        for column, value in zip(columns, got, strict=True):
            expected = want[column.name]
            if column.name == "data":
                value, expected = json.loads(value), json.loads(expected)
            if value != expected:
                raise AssertionError(
                    f"seed row {got.id} differs from Archive.upsert's in {column.name}: "
                    f"{expected!r} != {value!r}"
                )


async def seed(
    url: str, schema: str | None, rows: int, *, upsert_rows: int = 1000, batch: int = 50_000
) -> float:
    """``upsert_rows`` sessions through ``Archive.upsert``, the rest in bulk through the driver
    (SQLite ``executemany``, PostgreSQL ``COPY``), checked to be the rows upsert would write."""
    started = time.perf_counter()
    archive = await Archive.open(url, schema=schema)  # creates / migrates the schema
    upserted = min(rows, upsert_rows)
    try:
        for start in range(0, upserted, 500):
            await archive.upsert([make_record(i) for i in range(start, min(upserted, start + 500))])
    finally:
        await archive.close()

    make_row = RowMaker()
    engine = create_async_engine(engine_url(url)[0])
    if schema is not None:
        engine = engine.execution_options(schema_translate_map={None: schema})
    backend = "sqlite" if url.startswith("sqlite") else "postgresql"
    try:
        await _check_rows(engine, make_row, list(range(min(upserted, 50))))
        async with engine.connect() as conn:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            for start in range(upserted, rows, batch):
                values = [
                    make_row.driver_values(i, backend)
                    for i in range(start, min(rows, start + batch))
                ]
                if backend == "sqlite":
                    marks = ", ".join("?" * len(RowMaker.COLUMNS))
                    names = ", ".join(RowMaker.COLUMNS)
                    await raw.executemany(
                        f"INSERT INTO sessions ({names}) VALUES ({marks})", values
                    )
                    await raw.commit()
                else:
                    await raw.copy_records_to_table(
                        "sessions", records=values, columns=RowMaker.COLUMNS, schema_name=schema
                    )
        bulk = range(upserted, rows)
        if bulk:
            await _check_rows(engine, make_row, sorted({bulk[0], bulk[len(bulk) // 2], bulk[-1]}))
        # The steady state of an archive that grew over time: PostgreSQL's autovacuum has
        # been through it, SQLite's write-ahead log has been checkpointed.
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            if backend == "postgresql":
                table = "sessions" if schema is None else f'"{schema}".sessions'
                await raw.execute(f"VACUUM (ANALYZE) {table}")
                await raw.execute("CHECKPOINT")
            else:
                await raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        await engine.dispose()
    return time.perf_counter() - started


async def drop_schema(schema: str) -> None:
    import asyncpg  # type: ignore[import-untyped]  # the driver the archive already uses

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


#: Runs ``voice-gateway export`` in this interpreter and, at exit, writes the process's own
#: peak RSS (``VmHWM``) to the file named by ``EXPORT_BENCH_HWM``. ``ru_maxrss`` cannot give
#: it: Linux carries the parent's peak over into a child across fork/vfork and exec.
_WRAPPER = """
import atexit, os, runpy, sys

def _report():
    with open("/proc/self/status") as status:
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(os.environ["EXPORT_BENCH_HWM"], "w") as out:
        out.write(hwm)

atexit.register(_report)
sys.argv = ["voice-gateway", *sys.argv[1:]]
runpy.run_module("voice_gateway.cli", run_name="__main__", alter_sys=True)
"""


def run_export(
    archive_url: str, schema: str | None, fmt: str, out: Path, *extra: str
) -> dict[str, Any]:
    """One ``voice-gateway export`` process: its wall and CPU time (``wait4``: this child's
    alone) and its peak RSS (its own ``VmHWM``, reported at exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_GATEWAY_")}
    env["VOICE_GATEWAY_ARCHIVE_URL"] = archive_url
    if schema:
        env["VOICE_GATEWAY_ARCHIVE_SCHEMA"] = schema
    argv = [sys.executable, "-c", _WRAPPER, "export", "--format", fmt]
    argv += ["--output", str(out), *extra]
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as hwm:
        env["EXPORT_BENCH_HWM"] = hwm.name
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        if proc.returncode != 0:
            err.seek(0)
            message = err.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"export {fmt} failed ({proc.returncode}): {message}")
        peak_kib = int(hwm.read().strip())
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": peak_kib / 1024,
        "bytes": out.stat().st_size,
    }


async def bench_backend(
    backend: str, rows: int, workdir: Path, formats: list[str], upsert_rows: int, repeat: int = 3
) -> list[dict[str, Any]]:
    if backend == "sqlite":
        url, schema = f"sqlite:///{workdir / 'bench.db'}", None
    elif backend == "postgresql":
        url, schema = POSTGRES_URL, f"bench_{uuid.uuid4().hex[:8]}"
    else:
        raise SystemExit(f"unknown backend {backend!r}: sqlite or postgresql")
    try:
        seed_s = await seed(url, schema, rows, upsert_rows=upsert_rows)
        print(f"{backend}: seeded {rows:,} sessions in {seed_s:.1f}s", flush=True)
        # Seeding leaves gigabytes of dirty pages that the kernel writes back over the next
        # minute, under the first export (which then ran 30-60% slower): an archive that grew
        # over time has none. Write them now, before anything is timed.
        await asyncio.to_thread(os.sync)
        after_last = _utc_text(BASE + timedelta(seconds=rows + 1))
        empty = await asyncio.to_thread(
            run_export, url, schema, "csv", workdir / "empty.csv", "--since", after_last
        )
        results = []
        for fmt in formats:
            runs = []
            for _ in range(repeat):
                out = workdir / f"out.{fmt}"
                runs.append(await asyncio.to_thread(run_export, url, schema, fmt, out))
                out.unlink()
            runs.sort(key=lambda run: run["wall_s"])
            stats = runs[len(runs) // 2]  # the median run
            results.append(
                {
                    "backend": backend,
                    "format": fmt,
                    "rows": rows,
                    "rows_per_s": rows / stats["wall_s"],
                    "wall_s": stats["wall_s"],
                    "wall_min_s": runs[0]["wall_s"],
                    "wall_max_s": runs[-1]["wall_s"],
                    "startup_s": empty["wall_s"],
                    "cpu_s": stats["cpu_s"],
                    "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
                    "output_mb": stats["bytes"] / 1e6,
                }
            )
            print(f"{backend} {fmt}: {rows / stats['wall_s']:,.0f} rows/s", flush=True)
        return results
    finally:
        if schema:
            await drop_schema(schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument(
        "--upsert-rows",
        type=int,
        default=1000,
        help="sessions seeded through Archive.upsert (the rest in bulk; default 1000)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a quick run that only checks it works"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each export; the median is reported"
    )
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON result")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.repeat = min(args.rows, 2_000), 1
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            rows += asyncio.run(
                bench_backend(
                    backend.strip(), args.rows, Path(tmp), formats, args.upsert_rows, args.repeat
                )
            )
    print_table(f"export of {args.rows:,} archived sessions", rows)
    path = write_json("export", {"rows": args.rows, "results": rows}, args.json)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

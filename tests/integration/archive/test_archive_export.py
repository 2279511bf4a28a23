"""The analytics export (CSV, JSON Lines, Parquet) and the ``voice-gateway export`` CLI glue."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.integration.archive.helpers import T0, make_record

from voice_gateway.archive.db import Archive
from voice_gateway.archive.export import add_export_arguments, export, run_export
from voice_gateway.sessions.models import ANALYTICS_COLUMNS, CompletedSession, analytics_row

MINUTE = timedelta(minutes=1)


def sample_records() -> list[CompletedSession]:
    """Four sessions a minute apart, with the awkward values a CSV writer must survive."""
    return [
        make_record(T0, agent_id="support", name='Smith, "Jr"', summary="line one\nline two"),
        make_record(T0 + MINUTE, agent_id="sales", is_test=True, summary="ünïcödé ☎"),
        make_record(T0 + 2 * MINUTE, is_legacy=True, duration=None, ended_at=None, end_reason=None),
        make_record(T0 + 3 * MINUTE, org_id="globex", user_id=None, name=None, summary=None),
    ]


@pytest.fixture
async def filled(archive: Archive) -> list[CompletedSession]:
    records = sample_records()
    await archive.upsert(records)
    return records


async def exported(archive: Archive, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    await export(archive, fmt=fmt, out=out, **options)  # type: ignore[arg-type]
    return out.getvalue()


# -- formats -----------------------------------------------------------------------------------


async def test_csv_has_the_header_in_order_and_plain_values(
    archive: Archive, filled: list[CompletedSession]
) -> None:
    rows = list(csv.reader(io.StringIO((await exported(archive, "csv")).decode("utf-8"))))

    assert rows[0] == list(ANALYTICS_COLUMNS)
    body = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["sessionId"] for r in body] == [r.session.id for r in filled]
    first, second, third, fourth = body
    assert first["timestamp"] == "2026-01-15T12:00:00.123456Z"
    assert first["endedAt"] == "2026-01-15T12:03:00.123456Z"
    assert first["name"] == 'Smith, "Jr"' and first["summary"] == "line one\nline two"
    assert first["isTest"] == "false" and second["isTest"] == "true"
    assert third["isLegacy"] == "true" and third["duration"] == "" and third["endedAt"] == ""
    assert first["duration"] == "180.25" and first["turns"] == "4"
    assert second["summary"] == "ünïcödé ☎"
    assert fourth["userId"] == "" and fourth["orgId"] == "globex"


async def test_jsonl_has_one_typed_object_per_row(
    archive: Archive, filled: list[CompletedSession]
) -> None:
    lines = (await exported(archive, "jsonl")).decode("utf-8").splitlines()

    assert len(lines) == 4
    objects = [json.loads(line) for line in lines]
    for obj, record in zip(objects, filled, strict=True):
        assert list(obj) == list(ANALYTICS_COLUMNS)
        row = analytics_row(record.session)
        assert obj["sessionId"] == row["sessionId"]
        assert obj["isTest"] is row["isTest"] and obj["turns"] == row["turns"]
        assert obj["duration"] == row["duration"]
    assert objects[0]["timestamp"] == "2026-01-15T12:00:00.123456Z"
    assert objects[2]["endedAt"] is None and objects[2]["endReason"] is None
    assert objects[0]["summary"] == "line one\nline two"


async def test_parquet_has_an_explicit_typed_schema(
    archive: Archive, filled: list[CompletedSession]
) -> None:
    table = pq.read_table(io.BytesIO(await exported(archive, "parquet")))

    assert table.column_names == list(ANALYTICS_COLUMNS)
    schema = table.schema
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert schema.field("endedAt").type == pa.timestamp("us", tz="UTC")
    assert schema.field("duration").type == pa.float64()
    assert schema.field("isTest").type == pa.bool_()
    assert schema.field("isLegacy").type == pa.bool_()
    assert schema.field("turns").type == pa.int64()
    assert schema.field("sessionId").type == pa.string()
    rows = table.to_pylist()
    for got, record in zip(rows, filled, strict=True):
        assert got == analytics_row(record.session)  # same values, times as UTC instants


async def test_parquet_is_written_batch_by_batch(
    archive: Archive, filled: list[CompletedSession]
) -> None:
    data = await exported(archive, "parquet", batch_size=3)
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert meta.num_rows == 4
    assert meta.num_row_groups == 2  # one per batch: memory holds a batch, not the export


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
async def test_an_empty_export_is_still_a_valid_file(archive: Archive, fmt: str) -> None:
    data = await exported(archive, fmt)
    if fmt == "csv":
        assert data.decode().splitlines() == [",".join(ANALYTICS_COLUMNS)]
    elif fmt == "jsonl":
        assert data == b""
    else:
        table = pq.read_table(io.BytesIO(data))
        assert table.num_rows == 0 and table.column_names == list(ANALYTICS_COLUMNS)


async def test_export_filters(archive: Archive, filled: list[CompletedSession]) -> None:
    async def ids(**options: object) -> list[str]:
        lines = (await exported(archive, "jsonl", **options)).decode().splitlines()
        return [json.loads(line)["sessionId"] for line in lines]

    a, b, c, d = (r.session.id for r in filled)
    assert await ids(exclude_test=True) == [a, c, d]
    assert await ids(exclude_legacy=True, exclude_test=True) == [a, d]
    assert await ids(since=T0 + MINUTE, until=T0 + 3 * MINUTE) == [b, c]
    assert await ids(agent_id="sales") == [b]
    assert await ids(org_id="globex") == [d]


async def test_progress_bar_goes_to_stderr_only(
    archive: Archive, filled: list[CompletedSession], capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.BytesIO()
    assert await export(archive, fmt="csv", out=out, progress=True) == 4
    captured = capsys.readouterr()
    assert "4/4" in captured.err and captured.out == ""
    assert len(list(csv.reader(io.StringIO(out.getvalue().decode())))) == 5


# -- the CLI -------------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="voice-gateway export")
    add_export_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
async def archive_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/archive/archive.db"
    archive = await Archive.open(url)
    try:
        await archive.upsert(sample_records())
    finally:
        await archive.close()
    return url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_cli_writes_the_file_and_leaves_no_temporary_behind(
    archive_url: str, tmp_path: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "sessions.csv"

    code = await run_export(parse("--output", str(target), "--exclude-test"), archive_url)

    assert code == 0
    assert os.listdir(out_dir) == ["sessions.csv"]
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert rows[0] == list(ANALYTICS_COLUMNS) and len(rows) == 4
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not a temp's


async def test_cli_writes_parquet_with_date_filters(archive_url: str, tmp_path: Path) -> None:
    target = tmp_path / "s.parquet"
    code = await run_export(
        parse("--format", "parquet", "-o", str(target), "--since", "2026-01-15T12:01:00Z",
              "--until", "2026-01-15T13:02:00+01:00"),
        archive_url,
    )  # fmt: skip
    assert code == 0
    table = pq.read_table(target)
    assert table.num_rows == 1 and table.column("agentId").to_pylist() == ["sales"]


async def test_cli_writes_to_stdout_without_output(
    archive_url: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code = await run_export(parse("--format", "jsonl", "--org", "globex"), archive_url)
    captured = capsysbinary.readouterr()
    assert code == 0
    lines = captured.out.decode().splitlines()
    assert [json.loads(line)["orgId"] for line in lines] == ["globex"]

    assert await run_export(parse("--output", "-", "--since", "2026-01-16"), archive_url) == 0
    assert capsysbinary.readouterr().out.decode().splitlines() == [",".join(ANALYTICS_COLUMNS)]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--since", "2026-13-45"], "2026-13-45"),
        (["--until", "yesterday"], "yesterday"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "2026-02-01"),
        (["--format", "xml"], "xml"),
        (["--batch-size", "0"], "0"),
    ],
)
async def test_cli_bad_arguments_exit_2_naming_the_value(
    archive_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    named: str,
) -> None:
    target = tmp_path / "never.csv"
    code = await run_export(parse(*argv, "--output", str(target)), archive_url)
    assert code == 2
    assert named in capsys.readouterr().err
    assert not target.exists()


async def test_cli_refuses_parquet_to_a_terminal(
    archive_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal(io.BytesIO()))
    assert await run_export(parse("--format", "parquet"), archive_url) == 2
    assert "terminal" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["missing-dir/out.csv", "is-a-dir"])
async def test_cli_unwritable_output_exits_3_naming_the_path(
    archive_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    (tmp_path / "is-a-dir").mkdir()
    target = tmp_path / where
    before = sorted(os.listdir(tmp_path))

    code = await run_export(parse("--output", str(target)), archive_url)

    assert code == 3
    assert str(target) in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == before


async def test_cli_unreachable_archive_exits_4_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql://analyst:pa55-w0rd-xyz@127.0.0.1:{closed_port()}/test"
    target = tmp_path / "out.csv"

    code = await run_export(parse("--output", str(target)), url)

    err = capsys.readouterr().err
    assert code == 4
    assert "pa55-w0rd-xyz" not in err
    assert "127.0.0.1" in err and "analyst" in err
    assert os.listdir(tmp_path) == []  # no partial file, no temporary


def test_the_export_command_imports_only_what_it_needs(archive_url: str, tmp_path: Path) -> None:
    """``voice-gateway export`` starts without the web server, Twilio, the simulator, the
    agents or the archiver (lazy imports in the CLI): a second of start-up in every export."""
    heavy = ["aiohttp", "twilio", "voice_gateway.app", "voice_gateway.sim", "websockets"]
    heavy += ["voice_gateway.archive.archiver", "redis"]
    probe = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: print(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
        "sys.argv = ['voice-gateway', *sys.argv[1:]]\n"
        "runpy.run_module('voice_gateway.cli', run_name='__main__', alter_sys=True)\n"
    )
    target = tmp_path / "out.parquet"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_GATEWAY_")}
    env["VOICE_GATEWAY_ARCHIVE_URL"] = archive_url
    done = subprocess.run(
        [sys.executable, "-c", probe, "export", "--format", "parquet", "-o", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert pq.read_table(target).num_rows == 4

"""The analytics export: archived sessions as CSV, JSON Lines or Parquet, one row per session.

Columns are ``ANALYTICS_COLUMNS`` in order. Rows stream from the archive in batches
(``Archive.iter_analytics_rows``) and are written batch by batch, so memory stays at one batch
whatever the size of the export.

- CSV: a header row; times RFC 3339 UTC (``2026-01-31T12:00:00.000000Z``); booleans
  ``true``/``false``; an empty field for a missing value.
- JSON Lines: one object per row with the same keys; times as RFC 3339 strings, missing
  values as ``null``.
- Parquet: an explicit schema (``timestamp[us, tz=UTC]`` times, ``double`` duration, ``bool``
  flags, ``int64`` counters, ``string`` the rest); one row group per batch.

``add_export_arguments`` / ``run_export`` are the ``voice-gateway export`` command's glue.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol, cast, get_args

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from voice_gateway.archive.db import Archive
from voice_gateway.errors import ArchiveUnavailable, ConfigError, GatewayError
from voice_gateway.sessions.models import ANALYTICS_COLUMNS, rfc3339

ExportFormat = Literal["csv", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)

EXIT_OK = 0
EXIT_BAD_ARGUMENTS = 2
EXIT_OUTPUT_UNWRITABLE = 3
EXIT_ARCHIVE_UNAVAILABLE = 4

_TIMES = frozenset({"timestamp", "endedAt"})
_FLOATS = frozenset({"duration"})
_BOOLS = frozenset({"isLegacy", "isTest"})
_INTS = frozenset({"turns", "messages", "interruptions"})
#: Columns that always have a value (everything else may be null).
_REQUIRED = frozenset(
    {
        "timestamp",
        "sessionId",
        "channelManagerService",
        "channelManagerType",
        "agentId",
        "isLegacy",
        "isTest",
        "orgId",
        "turns",
        "messages",
        "interruptions",
    }
)


def parquet_schema() -> pa.Schema:
    """The Parquet schema of the analytics row (``ANALYTICS_COLUMNS`` order)."""
    fields = []
    for name in ANALYTICS_COLUMNS:
        if name in _TIMES:
            kind = pa.timestamp("us", tz="UTC")
        elif name in _FLOATS:
            kind = pa.float64()
        elif name in _BOOLS:
            kind = pa.bool_()
        elif name in _INTS:
            kind = pa.int64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind, nullable=name not in _REQUIRED))
    return pa.schema(fields)


def csv_value(value: Any) -> str:
    """One CSV field: RFC 3339 UTC times, ``true``/``false``, empty for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return rfc3339(value)
    return str(value)


def json_value(value: Any) -> Any:
    return rfc3339(value) if isinstance(value, datetime) else value


class _RowWriter(Protocol):
    def write(self, rows: Sequence[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


class _CsvWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._emit([list(ANALYTICS_COLUMNS)])

    def _emit(self, lines: list[list[str]]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerows(lines)
        self._out.write(buffer.getvalue().encode("utf-8"))

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._emit([[csv_value(row[c]) for c in ANALYTICS_COLUMNS] for row in rows])

    def close(self) -> None:
        self._out.flush()


class _JsonLinesWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        lines = [
            json.dumps(
                {c: json_value(row[c]) for c in ANALYTICS_COLUMNS},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            for row in rows
        ]
        self._out.write(("\n".join(lines) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._out.flush()


class _ParquetWriter:
    def __init__(self, out: BinaryIO) -> None:
        self._schema = parquet_schema()
        self._out = out
        self._writer = pq.ParquetWriter(out, self._schema, compression="zstd")

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._writer.write_table(pa.Table.from_pylist(list(rows), schema=self._schema))

    def close(self) -> None:
        self._writer.close()
        self._out.flush()


def _writer(fmt: str, out: BinaryIO) -> _RowWriter:
    if fmt == "csv":
        return _CsvWriter(out)
    if fmt == "jsonl":
        return _JsonLinesWriter(out)
    if fmt == "parquet":
        return _ParquetWriter(out)
    raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")


async def export(
    archive: Archive,
    *,
    fmt: ExportFormat,
    out: BinaryIO,
    since: datetime | None = None,
    until: datetime | None = None,
    agent_id: str | None = None,
    org_id: str | None = None,
    exclude_test: bool = False,
    exclude_legacy: bool = False,
    batch_size: int = 10_000,
    progress: bool = False,
) -> int:
    """Write the analytics rows of the matching sessions to ``out``; returns rows written.

    ``since`` inclusive, ``until`` exclusive, on the session's ``timestamp``. With
    ``progress``, a tqdm bar on stderr counts rows against the matching total.
    """
    writer = _writer(fmt, out)  # ValueError for an unknown format, before any query
    filters: dict[str, Any] = {
        "since": since,
        "until": until,
        "agent_id": agent_id,
        "org_id": org_id,
        "exclude_test": exclude_test,
        "exclude_legacy": exclude_legacy,
    }
    bar: tqdm[Any] | None = None
    if progress:
        total = await archive.count_analytics_rows(**filters)
        bar = tqdm(total=total, unit="rows", file=sys.stderr, desc="export")
    written = 0
    try:
        async for batch in archive.iter_analytics_rows(**filters, batch_size=batch_size):
            writer.write(batch)
            written += len(batch)
            if bar is not None:
                bar.update(len(batch))
        writer.close()
    finally:
        if bar is not None:
            bar.close()
    return written


# -- command-line glue -------------------------------------------------------------------------

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_time(value: str | None, option: str = "time") -> datetime | None:
    """``2026-01-31`` (UTC midnight) or an RFC 3339 / ISO 8601 time; no offset means UTC."""
    if value is None:
        return None
    text = value.strip().upper()
    try:
        if _DATE_ONLY.match(text):
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"invalid {option} value {value!r}: expected a date like 2026-01-31 "
            "or a time like 2026-01-31T12:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``voice-gateway export``."""
    parser.add_argument(
        "--since",
        metavar="TIME",
        help="sessions created at or after TIME: a date (2026-01-31 = UTC midnight) or an "
        "RFC 3339 time (2026-01-31T12:00:00+02:00; no offset = UTC)",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        help="sessions created before TIME (exclusive; same forms as --since)",
    )
    parser.add_argument(
        "--format",
        default="csv",
        metavar="FORMAT",
        help="csv (default), jsonl or parquet",
    )
    parser.add_argument(
        "--output",
        "-o",
        default="-",
        metavar="FILE",
        help="file to write (default: stdout, also '-'); written to a temporary file beside "
        "it and renamed when complete",
    )
    parser.add_argument("--agent", metavar="AGENT_ID", help="only this agent's sessions")
    parser.add_argument("--org", metavar="ORG_ID", help="only this org's sessions")
    parser.add_argument("--exclude-test", action="store_true", help="leave out test sessions")
    parser.add_argument("--exclude-legacy", action="store_true", help="leave out legacy sessions")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=10_000,
        metavar="N",
        help="rows fetched and written per batch (default 10000)",
    )


def _fail(code: int, message: str) -> int:
    print(f"voice-gateway export: error: {message}", file=sys.stderr)
    return code


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def run_export(
    args: argparse.Namespace, archive_url: str, *, schema: str | None = None
) -> int:
    """Run ``voice-gateway export``; returns the exit code.

    0 done; 2 bad arguments (or an unusable archive configuration); 3 the output cannot be
    written (no partial file is left behind); 4 the archive cannot be reached. Messages go to
    stderr and never show the archive password.
    """
    try:
        since = parse_time(args.since, "--since")
        until = parse_time(args.until, "--until")
    except ValueError as exc:
        return _fail(EXIT_BAD_ARGUMENTS, str(exc))
    if since is not None and until is not None and since > until:
        return _fail(EXIT_BAD_ARGUMENTS, f"--since {args.since!r} is after --until {args.until!r}")
    fmt = str(args.format)
    if fmt not in FORMATS:
        return _fail(
            EXIT_BAD_ARGUMENTS, f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS)}"
        )
    batch_size = int(args.batch_size)
    if batch_size <= 0:
        return _fail(EXIT_BAD_ARGUMENTS, f"--batch-size must be positive, not {batch_size}")
    output = args.output
    to_stdout = output in (None, "", "-")
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        return _fail(
            EXIT_BAD_ARGUMENTS,
            "will not write Parquet to a terminal: use --output FILE or redirect stdout",
        )

    target: Path | None = None
    temp: Path | None = None
    sink: BinaryIO
    if to_stdout:
        sink = sys.stdout.buffer
        shown = "stdout"
    else:
        target = Path(output)
        shown = str(target)
        if target.is_dir():
            return _fail(EXIT_OUTPUT_UNWRITABLE, f"cannot write {shown}: it is a directory")
        try:
            fd, temp_name = tempfile.mkstemp(
                dir=target.parent, prefix=f".{target.name}.", suffix=".part"
            )
        except OSError as exc:
            return _fail(EXIT_OUTPUT_UNWRITABLE, f"cannot write {shown}: {_reason(exc)}")
        temp = Path(temp_name)
        sink = cast(BinaryIO, os.fdopen(fd, "wb"))

    try:
        try:
            archive = await Archive.open(archive_url, schema=schema)
        except ArchiveUnavailable as exc:
            return _fail(EXIT_ARCHIVE_UNAVAILABLE, f"archive unavailable: {exc.message}")
        except ConfigError as exc:
            return _fail(EXIT_BAD_ARGUMENTS, f"archive: {exc.message}")
        try:
            rows = await export(
                archive,
                fmt=cast(ExportFormat, fmt),
                out=sink,
                since=since,
                until=until,
                agent_id=args.agent,
                org_id=args.org,
                exclude_test=bool(args.exclude_test),
                exclude_legacy=bool(args.exclude_legacy),
                batch_size=batch_size,
                progress=sys.stderr.isatty(),
            )
        except ArchiveUnavailable as exc:
            return _fail(EXIT_ARCHIVE_UNAVAILABLE, f"archive unavailable: {exc.message}")
        except GatewayError as exc:
            return _fail(EXIT_ARCHIVE_UNAVAILABLE, f"archive: {exc.message}")
        except OSError as exc:
            return _fail(EXIT_OUTPUT_UNWRITABLE, f"cannot write {shown}: {_reason(exc)}")
        finally:
            await archive.close()

        if temp is not None and target is not None:
            try:
                sink.close()
                os.chmod(temp, 0o666 & ~_umask())
                os.replace(temp, target)
            except OSError as exc:
                return _fail(EXIT_OUTPUT_UNWRITABLE, f"cannot write {shown}: {_reason(exc)}")
            temp = None
        if sys.stderr.isatty():
            print(f"exported {rows} rows ({fmt}) to {shown}", file=sys.stderr)
        return EXIT_OK
    finally:
        if temp is not None:  # failed: leave nothing behind
            with contextlib.suppress(OSError):
                sink.close()
            with contextlib.suppress(OSError):
                temp.unlink()

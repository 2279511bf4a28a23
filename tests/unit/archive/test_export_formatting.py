"""The export's column formatting with Arrow kernels equals the reference, value by value.

``csv_lines`` / ``jsonl_lines`` must write exactly what ``csv.writer`` on ``csv_value`` and
``json.dumps`` on ``json_value`` write; the database-side helpers (SQLite's stored time text,
PostgreSQL literals) must agree with what SQLAlchemy stores and what PostgreSQL reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from sqlalchemy.dialects import sqlite

from voice_gateway.archive import db as archive_db
from voice_gateway.archive.db import POSTGRES_CSV, SQLITE_CSV, AnalyticsChunk
from voice_gateway.archive.export import (
    SCHEMA,
    csv_lines,
    csv_value,
    json_value,
    jsonl_lines,
    table_from_chunk,
)
from voice_gateway.sessions.models import ANALYTICS_COLUMNS

TEXTS = [
    "plain",
    "",
    None,
    "a,b",
    'say "hi"',
    "two\nlines",
    "crlf\r\n",
    "cr\r",
    "tab\t",
    "back\\slash \\n",
    "bell\x07 nul\x00 esc\x1b us\x1f",
    "\x08\x0c",
    "del\x7f",
    "ünïcödé ☎ 😀 \u2028\u2029",
    " pad ",
    "NULL",
    "'quoted'",
]
FLOATS = [
    None,
    0.0,
    -0.0,
    1.0,
    95.0,
    180.25,
    0.1,
    0.1 + 0.2,
    1 / 3,
    1e-05,
    0.0001,
    0.00012,
    1e15,
    1e16,
    123456789012345.6,
    9999999999999998.0,
    6e10,
    2.5e300,
    5e-324,
    1.7976931348623157e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    -42.5,
]


def some_floats(n: int = 3000) -> list[float]:
    rnd = random.Random(7)
    out = []
    for _ in range(n):
        out.append(struct.unpack("<d", rnd.randbytes(8))[0])  # any double at all
        digits = rnd.randint(1, 17)
        out.append(float(f"{rnd.randint(1, 10**digits - 1)}e{rnd.randint(-8, 18) - digits}"))
        out.append(round(rnd.uniform(0, 90_000), rnd.randint(0, 6)))
    return out


def rows_for(texts: list[Any], floats: list[Any]) -> list[dict[str, Any]]:
    base = datetime(2026, 1, 31, 12, 0, 0, 500_000, tzinfo=UTC)
    n = max(len(texts), len(floats))
    rows = []
    for i in range(n):
        text = texts[i % len(texts)]
        rows.append(
            {
                "timestamp": base + timedelta(seconds=i, microseconds=i * 7),
                "sessionId": f"s-{i}",
                "conversationId": text,
                "channelManagerService": "twilio",
                "channelManagerType": "voice",
                "channelManagerSid": None,
                "agentId": text if text is not None else "agent",
                "agentName": text,
                "agentType": None,
                "agentTimezone": "Europe/Paris",
                "promptId": None,
                "promptName": text,
                "promptVersion": "3",
                "duration": floats[i % len(floats)],
                "sessionLabelId": None,
                "source": "+14155550100",
                "target": text,
                "isLegacy": i % 2 == 0,
                "isTest": i % 3 == 0,
                "orgId": "acme",
                "endedAt": None if i % 4 == 0 else base.replace(microsecond=0),
                "endReason": "completed",
                "turns": i,
                "messages": 2 * i,
                "interruptions": -i,
                "userId": text,
                "name": text,
                "summary": None if text is None else text * 3,
            }
        )
    return rows


def reference_csv(rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows([[csv_value(r[c]) for c in ANALYTICS_COLUMNS] for r in rows])
    return buffer.getvalue().encode("utf-8")


def reference_jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(
        json.dumps(
            {c: json_value(r[c]) for c in ANALYTICS_COLUMNS},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        + "\n"
        for r in rows
    ).encode("utf-8")


def joined(buffers: Any) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def test_csv_lines_are_what_the_csv_module_writes() -> None:
    rows = rows_for(TEXTS, FLOATS)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert joined(csv_lines(table)) == reference_csv(rows)


def test_json_lines_are_what_json_dumps_writes() -> None:
    rows = rows_for(TEXTS, FLOATS)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert joined(jsonl_lines(table)) == reference_jsonl(rows)


def test_doubles_are_written_as_python_writes_them() -> None:
    rows = rows_for(["x"], some_floats())
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert joined(csv_lines(table)) == reference_csv(rows)
    assert joined(jsonl_lines(table)) == reference_jsonl(rows)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_any_time_is_written_as_rfc3339(moment: datetime) -> None:
    rows = rows_for(["x"], [1.0])
    rows[0]["timestamp"] = rows[0]["endedAt"] = moment
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    assert joined(csv_lines(table)) == reference_csv(rows)
    assert joined(jsonl_lines(table)) == reference_jsonl(rows)


def test_a_table_in_several_chunks_is_written_whole() -> None:
    rows = rows_for(TEXTS, FLOATS)
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=5))
    assert joined(csv_lines(chunked)) == reference_csv(rows)
    assert joined(jsonl_lines(chunked)) == reference_jsonl(rows)


def test_an_empty_table_writes_nothing() -> None:
    empty = SCHEMA.empty_table()
    assert joined(csv_lines(empty)) == b"" and joined(jsonl_lines(empty)) == b""


def written_by(dialect: archive_db.CsvDialect, rows: list[dict[str, Any]]) -> bytes:
    """Rows as the database writes them in this dialect."""
    q = dialect.quote

    def field(value: Any) -> str:
        if value is None:
            return dialect.nulls[0]
        if isinstance(value, bool):
            return dialect.true if value else dialect.false
        if isinstance(value, datetime):
            return archive_db._sqlite_time(value)  # naive UTC
        if isinstance(value, str):
            return q + value.replace(q, q + q) + q
        return str(value)

    return "\n".join(",".join(field(r[c]) for c in ANALYTICS_COLUMNS) for r in rows).encode()


@pytest.mark.parametrize("dialect", [SQLITE_CSV, POSTGRES_CSV], ids=["sqlite", "postgres"])
def test_the_databases_csv_reads_back_as_the_typed_rows(dialect: archive_db.CsvDialect) -> None:
    rows = rows_for([t for t in TEXTS if t is None or "\x00" not in t], [95.0, None, 0.5])
    chunk = AnalyticsChunk(len(rows), csv=written_by(dialect, rows), dialect=dialect)
    assert table_from_chunk(chunk).to_pylist() == rows


def lines_of(rows: list[dict[str, Any]]) -> AnalyticsChunk:
    data = "".join(archive_db.export_line(row) for row in rows).encode()
    return AnalyticsChunk(len(rows), csv=data, dialect=archive_db.EXPORT_CSV)


def test_the_archives_lines_read_back_as_the_typed_rows() -> None:
    """``export_row`` holds every value exactly: text (empty is not missing), any double."""
    finite = [f for f in FLOATS if f is None or math.isfinite(f)]
    doubles = [f for f in some_floats() if not math.isnan(f)]  # nan != nan
    for rows in (rows_for(TEXTS, finite), rows_for(["x", None, ""], doubles)):
        assert table_from_chunk(lines_of(rows)).to_pylist() == rows


def test_the_archives_lines_read_back_nan_and_infinities() -> None:
    # The archive never holds them (a session's JSON has no NaN), but they would read back.
    rows = rows_for(["x"], [float("inf"), float("-inf"), float("nan"), -0.0])
    got = table_from_chunk(lines_of(rows)).column("duration").to_pylist()
    assert got[:2] == [float("inf"), float("-inf")] and math.isnan(got[2])
    assert math.copysign(1.0, got[3]) == -1.0


def test_an_archives_line_is_one_csv_row() -> None:
    row = rows_for(['say "hi", twice\nor not'], [180.25])[0]
    line = archive_db.export_line(row)
    assert line.endswith("\n")
    fields = next(csv.reader(io.StringIO(line)))
    assert len(fields) == len(ANALYTICS_COLUMNS)
    assert dict(zip(ANALYTICS_COLUMNS, fields, strict=True)) | {"isTest": "?"} == {
        "timestamp": "2026-01-31 12:00:00.500000",
        "sessionId": "s-0",
        "conversationId": 'say "hi", twice\nor not',
        "channelManagerService": "twilio",
        "channelManagerType": "voice",
        "channelManagerSid": "",
        "agentId": 'say "hi", twice\nor not',
        "agentName": 'say "hi", twice\nor not',
        "agentType": "",
        "agentTimezone": "Europe/Paris",
        "promptId": "",
        "promptName": 'say "hi", twice\nor not',
        "promptVersion": "3",
        "duration": "180.25",
        "sessionLabelId": "",
        "source": "+14155550100",
        "target": 'say "hi", twice\nor not',
        "isLegacy": "true",
        "isTest": "?",
        "orgId": "acme",
        "endedAt": "",
        "endReason": "completed",
        "turns": "0",
        "messages": "0",
        "interruptions": "0",
        "userId": 'say "hi", twice\nor not',
        "name": 'say "hi", twice\nor not',
        "summary": 'say "hi", twice\nor not' * 3,
    }


def test_a_chunk_that_parses_to_another_row_count_is_an_error() -> None:
    data = written_by(SQLITE_CSV, rows_for(["a\nb"], [1.0]))
    with pytest.raises(RuntimeError, match="1 rows, not 2"):
        table_from_chunk(AnalyticsChunk(2, csv=data, dialect=SQLITE_CSV))


def test_typed_chunks_become_tables_too() -> None:
    rows = rows_for(TEXTS, FLOATS)
    table = table_from_chunk(AnalyticsChunk(len(rows), records=rows))
    assert table.schema == SCHEMA and table.num_rows == len(rows)


# -- the database side -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 31, 12, 0, tzinfo=UTC),
        datetime(2026, 1, 31, 13, 0, 0, 123, tzinfo=timezone(timedelta(hours=1))),
        datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ],
)
def test_sqlite_times_are_the_text_sqlalchemy_stores(moment: datetime) -> None:
    store = sqlite.DATETIME().bind_processor(sqlite.dialect())  # type: ignore[no-untyped-call]
    assert store is not None
    assert archive_db._sqlite_time(moment) == store(moment.astimezone(UTC).replace(tzinfo=None))


@pytest.mark.parametrize("text", ["plain", "it's", "$v0$", "x$v0", "$v0", "$$", "a\\b", ""])
def test_postgres_literals_quote_any_text(text: str) -> None:
    literal = archive_db._pg_literal(text)
    tag = literal[: literal.index("$", 1) + 1]
    body = literal[len(tag) : -len(tag + "::varchar")]
    assert body == text and literal.endswith(tag + "::varchar")
    assert tag not in text + tag[:-1]  # the tag closes only where it should


def test_postgres_time_literals_are_utc() -> None:
    paris = datetime(2026, 1, 31, 13, 0, 0, 5, tzinfo=timezone(timedelta(hours=1)))
    assert archive_db._pg_literal(paris) == "'2026-01-31T12:00:00.000005+00:00'::timestamptz"


def test_sqlite_line_writes_every_column_in_order() -> None:
    line = archive_db._sqlite_line()
    for column in archive_db._EXPORT_COLUMNS:
        assert column in line
    assert line.count("%") == len(ANALYTICS_COLUMNS)


def test_arrow_reads_what_the_dialects_promise() -> None:
    """Quoted empty text is text, an unquoted null token is missing (both dialects)."""
    for dialect in (SQLITE_CSV, POSTGRES_CSV):
        q = dialect.quote
        data = f"{q}{q},{dialect.nulls[0]}\n{q}a{q}{q}b{q},{q}{dialect.nulls[0]}{q}"
        table = pa_csv.read_csv(
            pa.py_buffer(data.encode()),
            read_options=pa_csv.ReadOptions(column_names=["a", "b"]),
            parse_options=pa_csv.ParseOptions(quote_char=q, double_quote=True),
            convert_options=pa_csv.ConvertOptions(
                column_types={"a": pa.string(), "b": pa.string()},
                null_values=list(dialect.nulls),
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
        assert table.to_pylist() == [
            {"a": "", "b": None},
            {"a": f"a{q}b", "b": dialect.nulls[0]},
        ]

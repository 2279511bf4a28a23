"""Pure parts of the archive: URL handling, the schema's shape, error classes, export values."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from sqlalchemy import Boolean, Float, Integer
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from voice_gateway.archive import schema as sc
from voice_gateway.archive.db import ArchiveRejected, classify, engine_url, redact_url
from voice_gateway.archive.export import (
    add_export_arguments,
    csv_value,
    parquet_schema,
    parse_time,
)
from voice_gateway.errors import ArchiveUnavailable, ConfigError
from voice_gateway.sessions.models import ANALYTICS_COLUMNS

SQLITE = sqlite.base.SQLiteDialect()
POSTGRES = postgresql.base.PGDialect()  # type: ignore[no-untyped-call]

# -- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "driver", "backend", "database"),
    [
        ("sqlite:///var/archive.db", "sqlite+aiosqlite", "sqlite", "var/archive.db"),
        ("sqlite:////srv/archive.db", "sqlite+aiosqlite", "sqlite", "/srv/archive.db"),
        ("postgresql://u:p@db:5433/archive", "postgresql+asyncpg", "postgresql", "archive"),
        ("postgres://u@db/archive", "postgresql+asyncpg", "postgresql", "archive"),
    ],
)
def test_archive_urls_map_onto_async_drivers(
    url: str, driver: str, backend: str, database: str
) -> None:
    mapped, kind = engine_url(url)
    assert (mapped.drivername, kind, mapped.database) == (driver, backend, database)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:p@h/db",
        "postgresql+psycopg2://u@h/db",
        "postgresql://u@h",
        "sqlite:///:memory:",
        "sqlite://",
        "nonsense",
    ],
)
def test_unsupported_archive_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        engine_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://analyst:s3cr%40t@db.internal:5432/archive",
        "postgres://analyst:s3cr%40t@db.internal/archive?sslmode=require",
        "weird-scheme://analyst:s3cr%40t@db.internal/%%%",
    ],
)
def test_redacted_urls_keep_the_user_and_host_but_not_the_password(url: str) -> None:
    shown = redact_url(url)
    assert "s3cr" not in shown
    assert "analyst" in shown and "db.internal" in shown


# -- the schema --------------------------------------------------------------------------------


def test_sessions_columns_follow_the_analytics_row_in_order() -> None:
    assert tuple(key for key, _ in sc.ANALYTICS_SOURCE) == ANALYTICS_COLUMNS
    first = [c.name for c in sc.sessions.columns][: len(ANALYTICS_COLUMNS)]
    assert first == [column for _, column in sc.ANALYTICS_SOURCE]


def test_sessions_columns_have_real_types() -> None:
    c = sc.sessions.c
    for name in ("created_at", "updated_at", "ended_at", "archived_at"):
        assert isinstance(c[name].type, sc.UtcDateTime)
    assert isinstance(c.duration.type, Float)
    assert isinstance(c.is_test.type, Boolean) and isinstance(c.is_legacy.type, Boolean)
    for name in ("turns", "message_count", "interruptions"):
        assert isinstance(c[name].type, Integer)
    assert [col.name for col in sc.sessions.primary_key] == ["id"]
    assert [col.name for col in sc.messages.primary_key] == ["session_id", "seq"]


def test_list_and_export_filters_are_indexed() -> None:
    indexed = {tuple(col.name for col in ix.columns) for ix in sc.sessions.indexes}
    assert {
        ("org_id", "created_at"),
        ("created_at", "id"),
        ("agent_id",),
        ("user_id",),
        ("ended_at",),
    } <= indexed


def test_migrations_are_numbered_without_gaps() -> None:
    assert [m.version for m in sc.MIGRATIONS] == list(range(1, sc.LATEST_VERSION + 1))


def test_utc_datetime_refuses_naive_times_and_stores_utc_on_sqlite() -> None:
    kind = sc.UtcDateTime()
    paris = datetime(2026, 1, 1, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    stored = kind.process_bind_param(paris, SQLITE)
    assert stored == datetime(2026, 1, 1, 12, 0)  # naive UTC text on SQLite
    assert kind.process_bind_param(paris, POSTGRES) == paris
    back = kind.process_result_value(stored, SQLITE)
    assert back == paris and back is not None and back.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="naive"):
        kind.process_bind_param(datetime(2026, 1, 1), SQLITE)


# -- error classes -----------------------------------------------------------------------------


class FakePgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"state {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (sa_exc.OperationalError("SELECT 1", {}, Exception("database is locked")), "unavailable"),
        (sa_exc.InterfaceError("SELECT 1", {}, Exception("connection closed")), "unavailable"),
        (sa_exc.IntegrityError("INSERT", {}, Exception("constraint")), "rejected"),
        (sa_exc.DBAPIError("INSERT", {}, FakePgError("22021")), "rejected"),  # bad encoding
        (sa_exc.DBAPIError("INSERT", {}, FakePgError("08006")), "unavailable"),  # link failure
        (sa_exc.DBAPIError("INSERT", {}, FakePgError("57P01")), "unavailable"),  # admin shutdown
        (sa_exc.DBAPIError("INSERT", {}, FakePgError("40001")), "unavailable"),  # serialization
        (ConnectionRefusedError(111, "refused"), "unavailable"),
        (TimeoutError(), "unavailable"),
        (KeyError("a bug"), None),
    ],
)
def test_errors_are_classified_as_outage_or_bad_data(
    error: BaseException, expected: str | None
) -> None:
    kinds = {"unavailable": ArchiveUnavailable, "rejected": ArchiveRejected, None: None}
    assert classify(error) is kinds[expected]


# -- export values and arguments ---------------------------------------------------------------


def test_csv_values() -> None:
    moment = datetime(2026, 1, 31, 13, 0, 0, 500000, tzinfo=timezone(timedelta(hours=1)))
    assert csv_value(moment) == "2026-01-31T12:00:00.500000Z"
    assert csv_value(True) == "true" and csv_value(False) == "false"
    assert csv_value(None) == ""
    assert csv_value(12.5) == "12.5" and csv_value(3) == "3" and csv_value("a,b") == "a,b"


def test_parquet_schema_types() -> None:
    schema = parquet_schema()
    assert schema.names == list(ANALYTICS_COLUMNS)
    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert not schema.field("timestamp").nullable
    assert schema.field("endedAt").nullable
    assert schema.field("duration").type == pa.float64()
    assert schema.field("isTest").type == pa.bool_()
    assert schema.field("messages").type == pa.int64()
    assert schema.field("summary").type == pa.string()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-31", datetime(2026, 1, 31, tzinfo=UTC)),
        ("2026-01-31T12:30:00Z", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("2026-01-31t12:30:00z", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("2026-01-31T12:30:00+02:00", datetime(2026, 1, 31, 10, 30, tzinfo=UTC)),
        ("2026-01-31T12:30:00", datetime(2026, 1, 31, 12, 30, tzinfo=UTC)),
        ("2026-01-31 12:30:00.250-05:00", datetime(2026, 1, 31, 17, 30, 0, 250000, tzinfo=UTC)),
    ],
)
def test_times_on_the_command_line(text: str, expected: datetime) -> None:
    parsed = parse_time(text, "--since")
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["2026-02-30", "31/01/2026", "tomorrow", ""])
def test_bad_times_name_the_option_and_the_value(text: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_time(text, "--until")
    assert "--until" in str(caught.value) and repr(text) in str(caught.value)


def test_export_arguments_defaults() -> None:
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args([])
    assert (args.format, args.output, args.batch_size) == ("csv", "-", 10_000)
    assert (args.since, args.until, args.agent, args.org) == (None, None, None, None)
    assert not args.exclude_test and not args.exclude_legacy
    args = parser.parse_args(
        ["--agent", "a", "--org", "o", "--exclude-test", "--exclude-legacy", "-o", "x.csv"]
    )
    assert (args.agent, args.org, args.exclude_test, args.exclude_legacy, args.output) == (
        "a",
        "o",
        True,
        True,
        "x.csv",
    )

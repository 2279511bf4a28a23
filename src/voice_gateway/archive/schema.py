"""The archive's tables (SQLAlchemy Core) and their versioned migrations.

One code path serves SQLite and PostgreSQL. The ``Table`` objects below always describe the
**latest** schema; ``MIGRATIONS`` is the ordered list of steps that brings a database of any
older version up to it. ``migrate`` runs inside the caller's transaction, so a step either
lands whole (with its ``schema_version`` row) or not at all, and a second open finds nothing
to do. A database whose version is newer than ``LATEST_VERSION`` is refused
(``SchemaTooNew``): an old gateway must not write into a schema it does not understand.

Adding a change: append ``Migration(N + 1, "what", step)`` whose step alters the tables
(``op``-style DDL via ``conn.execute(DDL(...))`` or ``Table.create``), and update the Table
objects to the new shape. Step 1 creates ``sessions`` and ``messages`` from frozen copies of
their version-1 definitions (``_v1_tables``; version 3 altered ``sessions``).

``sessions`` holds one row per completed session: the analytics row's fields as typed columns
(in ``ANALYTICS_COLUMNS`` order; ``ANALYTICS_SOURCE`` maps each analytics key to its column),
then the other columns list filters need, and the full session as JSON text (``data``), which
is what ``Archive.get`` returns, and the analytics row once more as one CSV line
(``export_row``, version 3: what the export reads, see ``db.export_line``; on SQLite also in
the index ``ix_sessions_export``, which the export reads instead of the table). ``messages``
holds each session's history, one row per message, keyed by (session_id, seq).
``deleted_sessions`` holds a tombstone per session deleted over the API (version 2).

``export_row`` is derived from the typed columns: every write of a row rewrites it (``upsert``,
``update``). A migration that changes the analytics row must set it to NULL (the export then
renders those rows in the database, as it does for rows archived before version 3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    insert,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.schema import CreateIndex
from sqlalchemy.types import TypeDecorator

from voice_gateway.errors import ConfigError
from voice_gateway.sessions.models import ANALYTICS_COLUMNS


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every dialect.

    PostgreSQL stores ``timestamptz``. SQLite has no time zone type: values are stored as
    naive UTC text (fixed width, so text order is time order) and come back marked UTC.
    Naive datetimes are refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the archive stores aware UTC times")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSON on SQLite (stored as text), JSONB on PostgreSQL (``->>`` filters, compact).
JsonType = JSON().with_variant(JSONB(), "postgresql")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String, nullable=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    # -- the analytics row, in ANALYTICS_COLUMNS order -------------------------------------
    Column("created_at", UtcDateTime, nullable=False),  # timestamp
    Column("id", String, primary_key=True),  # sessionId
    Column("conversation_id", String),
    Column("channel_service", String, nullable=False),
    Column("channel_type", String, nullable=False),
    Column("channel_sid", String),
    Column("agent_id", String, nullable=False),
    Column("agent_name", String),
    Column("agent_type", String),
    Column("agent_timezone", String),
    Column("prompt_id", String),
    Column("prompt_name", String),
    Column("prompt_version", String),
    Column("duration", Float),
    Column("session_label_id", String),
    Column("source", String),
    Column("target", String),
    Column("is_legacy", Boolean, nullable=False),
    Column("is_test", Boolean, nullable=False),
    Column("org_id", String, nullable=False),
    Column("ended_at", UtcDateTime),
    Column("end_reason", String),
    Column("turns", Integer, nullable=False),
    Column("message_count", Integer, nullable=False),  # messages
    Column("interruptions", Integer, nullable=False),
    Column("user_id", String),
    Column("name", String),
    Column("summary", Text),
    # -- the rest ----------------------------------------------------------------------------
    Column("status", String, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("metadata", JsonType, nullable=False),
    Column("data", Text, nullable=False),  # the full Session as JSON
    Column("archived_at", UtcDateTime, nullable=False),
    # the analytics row as one CSV line (db.export_line); NULL in rows archived before v3
    Column("export_row", Text),
    Index("ix_sessions_org_created", "org_id", "created_at"),
    Index("ix_sessions_created_id", "created_at", "id"),
    Index("ix_sessions_agent", "agent_id"),
    Index("ix_sessions_user", "user_id"),
    Index("ix_sessions_ended", "ended_at"),
    # SQLite: the export reads the lines in key order from this index alone (not from table
    # pages holding ``data``: a third of SQLite's time). PostgreSQL has no room for long
    # lines in an index entry (at most a third of a page), and reads the table.
    Index("ix_sessions_export", "created_at", "id", "export_row").ddl_if(dialect="sqlite"),
)

messages = Table(
    "messages",
    metadata,
    Column(
        "session_id",
        String,
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", Integer, nullable=False, autoincrement=False),
    Column("id", String, nullable=False),
    Column("role", String, nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("turn_id", Integer),
    Column("metadata", JsonType, nullable=False),
    PrimaryKeyConstraint("session_id", "seq", name="pk_messages"),
)

#: Tombstones: sessions deleted over the API. ``upsert`` skips these ids, so a completion record
#: still queued for the archive (or delivered again later) never brings a deleted session back.
deleted_sessions = Table(
    "deleted_sessions",
    metadata,
    Column("session_id", String, primary_key=True),
    Column("org_id", String),
    Column("deleted_at", UtcDateTime, nullable=False),
)

#: Analytics key -> ``sessions`` column, in ``ANALYTICS_COLUMNS`` order.
ANALYTICS_SOURCE: tuple[tuple[str, str], ...] = (
    ("timestamp", "created_at"),
    ("sessionId", "id"),
    ("conversationId", "conversation_id"),
    ("channelManagerService", "channel_service"),
    ("channelManagerType", "channel_type"),
    ("channelManagerSid", "channel_sid"),
    ("agentId", "agent_id"),
    ("agentName", "agent_name"),
    ("agentType", "agent_type"),
    ("agentTimezone", "agent_timezone"),
    ("promptId", "prompt_id"),
    ("promptName", "prompt_name"),
    ("promptVersion", "prompt_version"),
    ("duration", "duration"),
    ("sessionLabelId", "session_label_id"),
    ("source", "source"),
    ("target", "target"),
    ("isLegacy", "is_legacy"),
    ("isTest", "is_test"),
    ("orgId", "org_id"),
    ("endedAt", "ended_at"),
    ("endReason", "end_reason"),
    ("turns", "turns"),
    ("messages", "message_count"),
    ("interruptions", "interruptions"),
    ("userId", "user_id"),
    ("name", "name"),
    ("summary", "summary"),
)

if tuple(key for key, _ in ANALYTICS_SOURCE) != ANALYTICS_COLUMNS:  # pragma: no cover
    raise RuntimeError("archive.schema.ANALYTICS_SOURCE is out of step with ANALYTICS_COLUMNS")


# -- migrations ------------------------------------------------------------------------------


class SchemaTooNew(ConfigError):
    """The database was migrated by a newer gateway than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"archive schema version {found} is newer than this gateway supports ({known}); "
            "upgrade the gateway (or point it at another archive)",
            key="archive_url",
        )
        self.found = found
        self.known = known


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_tables() -> list[Table]:
    """``sessions`` and ``messages`` as version 1 created them (frozen: the Table objects above
    are the latest shape)."""
    v1 = MetaData()
    v1_sessions = Table(
        "sessions",
        v1,
        Column("created_at", UtcDateTime, nullable=False),
        Column("id", String, primary_key=True),
        Column("conversation_id", String),
        Column("channel_service", String, nullable=False),
        Column("channel_type", String, nullable=False),
        Column("channel_sid", String),
        Column("agent_id", String, nullable=False),
        Column("agent_name", String),
        Column("agent_type", String),
        Column("agent_timezone", String),
        Column("prompt_id", String),
        Column("prompt_name", String),
        Column("prompt_version", String),
        Column("duration", Float),
        Column("session_label_id", String),
        Column("source", String),
        Column("target", String),
        Column("is_legacy", Boolean, nullable=False),
        Column("is_test", Boolean, nullable=False),
        Column("org_id", String, nullable=False),
        Column("ended_at", UtcDateTime),
        Column("end_reason", String),
        Column("turns", Integer, nullable=False),
        Column("message_count", Integer, nullable=False),
        Column("interruptions", Integer, nullable=False),
        Column("user_id", String),
        Column("name", String),
        Column("summary", Text),
        Column("status", String, nullable=False),
        Column("updated_at", UtcDateTime, nullable=False),
        Column("metadata", JsonType, nullable=False),
        Column("data", Text, nullable=False),
        Column("archived_at", UtcDateTime, nullable=False),
        Index("ix_sessions_org_created", "org_id", "created_at"),
        Index("ix_sessions_created_id", "created_at", "id"),
        Index("ix_sessions_agent", "agent_id"),
        Index("ix_sessions_user", "user_id"),
        Index("ix_sessions_ended", "ended_at"),
    )
    v1_messages = Table(
        "messages",
        v1,
        Column("session_id", String, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        Column("seq", Integer, nullable=False, autoincrement=False),
        Column("id", String, nullable=False),
        Column("role", String, nullable=False),
        Column("content", Text, nullable=False),
        Column("created_at", UtcDateTime, nullable=False),
        Column("turn_id", Integer),
        Column("metadata", JsonType, nullable=False),
        PrimaryKeyConstraint("session_id", "seq", name="pk_messages"),
    )
    return [v1_sessions, v1_messages]


def _v1_initial(conn: Connection) -> None:
    tables = _v1_tables()
    tables[0].metadata.create_all(conn, tables=tables, checkfirst=False)


def _v2_tombstones(conn: Connection) -> None:
    metadata.create_all(conn, tables=[deleted_sessions], checkfirst=False)


def _v3_export_row(conn: Connection) -> None:
    # Nullable, no default: a change of the catalogue only, whatever the size of the table.
    # Rows archived before keep NULL (the export renders those in the database).
    add = DDL("ALTER TABLE %(fullname)s ADD COLUMN export_row TEXT")  # type: ignore[no-untyped-call]
    conn.execute(add.against(sessions))
    if conn.dialect.name == "sqlite":
        conn.execute(CreateIndex(_EXPORT_INDEX))


_EXPORT_INDEX = next(ix for ix in sessions.indexes if ix.name == "ix_sessions_export")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sessions and messages tables with list/export indexes", _v1_initial),
    Migration(2, "deleted_sessions: tombstones that upsert skips", _v2_tombstones),
    Migration(3, "sessions.export_row: the analytics row as the export reads it", _v3_export_row),
)

LATEST_VERSION = MIGRATIONS[-1].version

if [m.version for m in MIGRATIONS] != list(range(1, LATEST_VERSION + 1)):  # pragma: no cover
    raise RuntimeError("archive migrations must be numbered 1, 2, 3, ... without gaps")


def current_version(conn: Connection) -> int:
    """The highest applied migration (0 for an empty database)."""
    metadata.create_all(conn, tables=[schema_version], checkfirst=True)
    found: Any = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return int(found or 0)


def migrate(conn: Connection, *, now: datetime | None = None) -> list[int]:
    """Apply the missing migrations inside the caller's transaction; returns those applied."""
    found = current_version(conn)
    if found > LATEST_VERSION:
        raise SchemaTooNew(found, LATEST_VERSION)
    applied: list[int] = []
    for step in MIGRATIONS:
        if step.version <= found:
            continue
        step.apply(conn)
        conn.execute(
            insert(schema_version).values(
                version=step.version,
                description=step.description,
                applied_at=now or datetime.now(UTC),
            )
        )
        applied.append(step.version)
    return applied

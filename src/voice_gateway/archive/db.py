"""The archive of completed sessions: SQLite (embedded default) or PostgreSQL, one code path.

``Archive.open(url)`` maps the configured URL onto an async driver (``sqlite:///path`` ->
aiosqlite, ``postgresql://`` / ``postgres://`` -> asyncpg), applies the schema migrations
(``schema.py``) and returns a ready archive. Library errors are converted here, at the
boundary:

- the database cannot be reached or used right now (connection refused or lost, locked,
  read-only, out of resources, timed out) -> ``ArchiveUnavailable``: retry later;
- the database refused the data itself (constraint, encoding, value too large) ->
  ``ArchiveRejected``: retrying the same data will not help.

Messages never carry the password of the archive URL (``redact_url``), nor SQL parameters
(session contents, phone numbers).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    and_,
    case,
    cast,
    delete,
    event,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateSchema

from voice_gateway.archive import schema as sc
from voice_gateway.errors import ArchiveUnavailable, ConfigError, GatewayError
from voice_gateway.sessions.models import (
    ANALYTICS_COLUMNS,
    CompletedSession,
    Message,
    Session,
    analytics_row,
)

log = logging.getLogger(__name__)

Backend = Literal["sqlite", "postgresql"]
_M = TypeVar("_M", bound=BaseModel)

#: Execution option that makes the SQLite ``begin`` hook take the write lock up front.
_WRITE_OPTION = "voice_gateway_archive_write"
#: PostgreSQL SQLSTATE classes that mean "this data", not "this database": 22 data exception,
#: 23 integrity constraint violation, 54 program limit exceeded (e.g. a value too large).
_REJECTED_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
#: Ids per ``IN (...)`` list, well under SQLite's bound-parameter limit.
_IN_CHUNK = 500
_REASON_MAX = 300


#: Session fields ``Archive.update`` may change (what the REST API lets users edit).
UPDATABLE_FIELDS = frozenset(
    {"name", "summary", "session_label_id", "metadata", "situation", "situation_template"}
)


class ArchiveRejected(GatewayError):
    """The database refused the data itself; retrying the same record will not help."""

    status = 500
    type = "archive_rejected"


# -- URLs ------------------------------------------------------------------------------------

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@]*):[^@/]*@")


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe to log and to show)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: strip any user:password@ by pattern
        return _USERINFO.sub(r"\g<scheme>\g<user>:***@", url)


def engine_url(url: str) -> tuple[URL, Backend]:
    """The SQLAlchemy async URL for a configured archive URL, and its backend.

    ``sqlite:///relative.db`` (relative to the working directory), ``sqlite:////absolute.db``;
    ``postgresql://user[:password]@host[:port]/db`` (also ``postgres://``). Anything else is a
    ``ConfigError``, and so is an in-memory SQLite database: one connection shared by every
    task cannot keep their transactions apart, and an archive that vanishes on exit is no
    archive (tests use a file in a temporary directory).
    """
    try:
        parsed = make_url(url)
    except Exception:
        # the library's message repeats the URL, password included: do not chain it
        raise ConfigError(f"not a database URL: {redact_url(url)!r}", key="archive_url") from None
    driver = parsed.drivername
    if driver in ("sqlite", "sqlite+aiosqlite"):
        if parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.database):
            raise ConfigError(
                "an in-memory SQLite archive is not supported: use sqlite:///path/to/archive.db",
                key="archive_url",
            )
        return parsed.set(drivername="sqlite+aiosqlite"), "sqlite"
    if driver in ("postgresql", "postgres", "postgresql+asyncpg"):
        if not parsed.database:
            raise ConfigError(
                f"the archive URL names no database: {redact_url(url)!r}", key="archive_url"
            )
        return parsed.set(drivername="postgresql+asyncpg"), "postgresql"
    raise ConfigError(
        f"unsupported archive URL scheme {driver!r} in {redact_url(url)!r}: "
        "use sqlite:///path or postgresql://user@host/db",
        key="archive_url",
    )


# -- error conversion ------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """A short reason without SQL parameters (they would carry session contents)."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        cause: BaseException = exc.orig
        inner = cause.__cause__
        name = type(inner).__name__ if inner is not None else type(cause).__name__
        text = str(cause)
    else:
        name, text = type(exc).__name__, str(exc)
    text = " ".join(text.split())
    if len(text) > _REASON_MAX:
        text = text[: _REASON_MAX - 3] + "..."
    return f"{name}: {text}" if text else name


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    for source in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(source, "sqlstate", None) or getattr(source, "pgcode", None)
        if isinstance(state, str) and len(state) == 5:
            return state
    return None


def classify(exc: BaseException) -> type[GatewayError] | None:
    """``ArchiveUnavailable``, ``ArchiveRejected``, or None for errors that are our bugs."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return ArchiveUnavailable
        state = _sqlstate(exc)
        if state is not None:
            return (
                ArchiveRejected if state[:2] in _REJECTED_SQLSTATE_CLASSES else ArchiveUnavailable
            )
        if isinstance(exc, sa_exc.IntegrityError | sa_exc.DataError):
            return ArchiveRejected
        return ArchiveUnavailable
    if isinstance(exc, sa_exc.StatementError):  # a value failed to bind (before the database)
        return ArchiveRejected
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return ArchiveUnavailable
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return ArchiveUnavailable
    if type(exc).__module__.partition(".")[0] == "asyncpg":  # raised by the driver unwrapped
        return ArchiveUnavailable
    return None


def _canonical(model: _M) -> _M:
    """The model as it reads back from its JSON (UTC times at the model's precision)."""
    return type(model).model_validate_json(model.model_dump_json())


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware")
    return value


def _session_row(session: Session, data: str, archived_at: datetime) -> dict[str, Any]:
    """The ``sessions`` row of a session read back from ``data``, its JSON."""
    analytics = analytics_row(session)
    row = {column: analytics[key] for key, column in sc.ANALYTICS_SOURCE}
    row.update(
        status=session.status.value,
        updated_at=session.updated_at,
        metadata=session.metadata,
        data=data,
        archived_at=archived_at,
        export_row=export_line(analytics),
    )
    return row


def _message_row(session_id: str, seq: int, message: Message) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "seq": seq,
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "created_at": message.created_at,
        "turn_id": message.turn_id,
        "metadata": message.metadata,
    }


# -- analytics export: rows as CSV lines ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CsvDialect:
    """How the analytics rows of a chunk are written as CSV, for a CSV parser.

    One line per row, ``\\n`` between lines, fields separated by ``,`` in ``ANALYTICS_COLUMNS``
    order. Text is always quoted with ``quote`` (doubled inside) and may span lines; a missing
    value is one of ``nulls``, unquoted (a quoted value is never missing). Times are naive UTC
    (``YYYY-MM-DD HH:MM:SS[.ffffff]``), flags ``true`` / ``false``, counters decimal, and the
    duration has the digits that parse back to the exact stored double.
    """

    quote: str
    nulls: tuple[str, ...]
    true: str
    false: str


#: ``sessions.export_row``, written at archive time by ``export_line``.
EXPORT_CSV = CsvDialect(quote='"', nulls=("",), true="true", false="false")
#: SQLite: ``printf``'s ``%Q`` (``'it''s'``, ``NULL``), times as stored, flags 0/1.
SQLITE_CSV = CsvDialect(quote="'", nulls=("NULL", ""), true="1", false="0")
#: PostgreSQL: ``COPY ... (FORMAT csv)`` (``"a ""b"""``, empty for NULL), flags t/f.
POSTGRES_CSV = CsvDialect(quote='"', nulls=("",), true="t", false="f")

_LINE_TIMES = frozenset({"timestamp", "endedAt"})
_LINE_FLAGS = frozenset({"isLegacy", "isTest"})
_LINE_NUMBERS = frozenset({"duration", "turns", "messages", "interruptions"})


def export_line(analytics: Mapping[str, Any]) -> str:
    """The analytics row as one ``EXPORT_CSV`` line, ``\\n`` included: what ``export_row``
    holds. Text quoted with ``"`` (so ``""`` is an empty text and an empty field a missing
    value), times naive UTC with microseconds, numbers as ``repr`` writes them (a double's
    shortest digits, which parse back to the same double)."""
    fields: list[str] = []
    for key in ANALYTICS_COLUMNS:
        value = analytics[key]
        if value is None:
            fields.append("")
        elif key in _LINE_TIMES:
            fields.append(_sqlite_time(value))
        elif key in _LINE_FLAGS:
            fields.append("true" if value else "false")
        elif key in _LINE_NUMBERS:
            fields.append(repr(float(value)) if key == "duration" else str(int(value)))
        else:
            fields.append('"' + str(value).replace('"', '""') + '"')
    return ",".join(fields) + "\n"


@dataclass(frozen=True, slots=True)
class AnalyticsChunk:
    """One batch of analytics rows: CSV lines (``csv``, in ``dialect``) or typed (``records``).

    The lines are the rows' ``export_row`` (``EXPORT_CSV``), or, for a batch with rows archived
    before ``export_row`` existed, written by the database (``SQLITE_CSV`` / ``POSTGRES_CSV``).
    ``records`` (the ``iter_analytics_rows`` form) stands in for a batch the database cannot
    write exactly: on SQLite, a duration whose 15 significant digits do not read back as the
    same double (e.g. ``0.1 + 0.2``).
    """

    rows: int
    csv: bytes | None = None
    records: list[dict[str, Any]] | None = None
    dialect: CsvDialect | None = None


#: ``sessions`` columns of the analytics row, in ``ANALYTICS_COLUMNS`` order.
_EXPORT_COLUMNS: tuple[str, ...] = tuple(column for _, column in sc.ANALYTICS_SOURCE)
_EXPORT_TIMES = frozenset({"created_at", "ended_at"})
_EXPORT_PLAIN = frozenset({"is_legacy", "is_test", "turns", "message_count", "interruptions"})
#: A batch boundary: the (created_at, id) of its last row, in the driver's form (SQLite: the
#: stored text; PostgreSQL: an aware datetime).
_Key = tuple[Any, str]


def _sqlite_time(value: datetime) -> str:
    """An aware time as the archive stores it on SQLite (SQLAlchemy's fixed-width UTC text)."""
    v = value.astimezone(UTC)
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    )


def _sqlite_line() -> str:
    """One row as a line of ``SQLITE_CSV``: one ``printf`` per row, the cheapest way found to
    have SQLite write a row (``||`` chains or ``json_array`` cost more). ``%Q`` ends a text at
    a NUL character: such a text (PostgreSQL refuses them) is cut there in the export."""
    formats: list[str] = []
    values: list[str] = []
    for column in _EXPORT_COLUMNS:
        if column in _EXPORT_TIMES or column in _EXPORT_PLAIN or column == "duration":
            formats.append("%s")
            values.append(column)
        else:
            formats.append("%Q")
            values.append(column)
    return f"printf('{','.join(formats)}', {', '.join(values)})"


#: Whether the row's duration, as SQLite writes it (15 significant digits), reads back as the
#: same double (NULL for no duration): true of any duration with up to 15 significant digits
#: (Twilio's whole seconds, measured microseconds); a chunk with another goes typed.
_SQLITE_EXACT = "CAST(CAST(duration AS TEXT) AS REAL) = duration"


def _postgres_columns() -> str:
    out = []
    for column in _EXPORT_COLUMNS:
        out.append(f"{column} AT TIME ZONE 'UTC'" if column in _EXPORT_TIMES else column)
    return ", ".join(out)


def _pg_literal(value: Any) -> str:
    """A PostgreSQL literal for a key or filter value (COPY takes no parameters)."""
    if isinstance(value, datetime):
        return f"'{value.astimezone(UTC).isoformat()}'::timestamptz"
    text = str(value)
    n = 0
    while (text + f"$v{n}$").find(f"$v{n}$") != len(text):  # the tag must close only at the end
        n += 1
    return f"$v{n}${text}$v{n}$::varchar"  # the columns' type: comparisons stay indexable


class _ExportQuery:
    """The SQL of the export's fast path for one backend and one set of filters."""

    def __init__(
        self,
        backend: Backend,
        schema: str | None,
        *,
        since: datetime | None,
        until: datetime | None,
        agent_id: str | None,
        org_id: str | None,
        exclude_test: bool,
        exclude_legacy: bool,
    ) -> None:
        self.backend = backend
        self.filters: dict[str, Any] = {
            "since": since,
            "until": until,
            "agent_id": agent_id,
            "org_id": org_id,
            "exclude_test": exclude_test,
            "exclude_legacy": exclude_legacy,
        }
        name = "sessions"
        if schema is not None:
            name = '"' + schema.replace('"', '""') + '".sessions'
        self.table = name
        self._filters: list[tuple[str, Any]] = []
        if _aware("since", since) is not None:
            self._filters.append(("created_at >= {}", since))
        if _aware("until", until) is not None:
            self._filters.append(("created_at < {}", until))
        if agent_id is not None:
            self._filters.append(("agent_id = {}", agent_id))
        if org_id is not None:
            self._filters.append(("org_id = {}", org_id))
        self._flags: list[str] = []
        if exclude_test:
            self._flags.append("NOT is_test")
        if exclude_legacy:
            self._flags.append("NOT is_legacy")

    def where(
        self, after: _Key | None, upto: _Key | None, *, inline: bool = False
    ) -> tuple[str, list[Any]]:
        """``WHERE ...`` for the filters and the key range ``(after, upto]``, and its parameters
        (``?`` on SQLite, ``$n`` on PostgreSQL; ``inline`` writes literals instead)."""
        params: list[Any] = []

        def p(value: Any) -> str:
            if self.backend == "sqlite" and isinstance(value, datetime):
                value = _sqlite_time(value)
            if inline:
                return _pg_literal(value)
            params.append(value)
            return "?" if self.backend == "sqlite" else f"${len(params)}"

        conditions = [template.format(p(value)) for template, value in self._filters]
        conditions += self._flags
        # The plain time bound is implied by the row comparison; it is there for the planner
        # (PostgreSQL misjudges a row comparison's selectivity and may leave the index).
        if after is not None:
            conditions.append(f"created_at >= {p(after[0])}")
            conditions.append(f"(created_at, id) > ({p(after[0])}, {p(after[1])})")
        if upto is not None:
            conditions.append(f"created_at <= {p(upto[0])}")
            conditions.append(f"(created_at, id) <= ({p(upto[0])}, {p(upto[1])})")
        return (" WHERE " + " AND ".join(conditions)) if conditions else "", params

    def bound(self, after: _Key | None, batch_size: int) -> tuple[str, list[Any]]:
        """The key of the ``batch_size``-th matching row after ``after`` (none: fewer left)."""
        where, params = self.where(after, None)
        sql = (
            f"SELECT created_at, id FROM {self.table}{where} "
            f"ORDER BY created_at, id LIMIT 1 OFFSET {int(batch_size) - 1}"
        )
        return sql, params

    def stored_chunk(self, after: _Key | None, upto: _Key | None) -> tuple[str, list[Any]]:
        """The chunk's ``export_row`` lines in one value, its row count, and how many rows have
        a line. The ordered subquery is not flattened into the aggregate (neither database
        flattens a subquery with ORDER BY), which consumes its rows in order."""
        where, params = self.where(after, upto)
        rows = f"SELECT export_row FROM {self.table}{where} ORDER BY created_at, id"
        if self.backend == "sqlite":
            lines = "CAST(group_concat(export_row, '') AS BLOB)"
        else:
            lines = "convert_to(string_agg(export_row, ''), 'UTF8')"  # bytes, not a str
        return f"SELECT {lines}, count(*), count(export_row) FROM ({rows}) AS chunk", params

    def sqlite_chunk(self, after: _Key | None, upto: _Key | None) -> tuple[str, list[Any]]:
        """The chunk's lines in one value, written by SQLite (rows without ``export_row``). The
        ordered subquery is not flattened into the aggregate, which consumes its rows in order
        (the tests check it on every chunk size)."""
        where, params = self.where(after, upto)
        sql = (
            "SELECT CAST(group_concat(line, char(10)) AS BLOB), count(*), min(exact) FROM ("
            f"SELECT {_sqlite_line()} AS line, {_SQLITE_EXACT} AS exact FROM {self.table}{where} "
            "ORDER BY created_at, id)"
        )
        return sql, params

    def postgres_select(self, after: _Key | None, upto: _Key | None) -> str:
        """The SELECT to ``COPY ... TO STDOUT (FORMAT csv)``, its values written inline."""
        where, _ = self.where(after, upto, inline=True)
        return f"SELECT {_postgres_columns()} FROM {self.table}{where} ORDER BY created_at, id"


#: Pauses between attempts to switch a new SQLite archive to WAL (see ``_enable_wal``).
_WAL_RETRY_DELAYS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def _enable_wal(path: str, busy_timeout: float) -> None:
    """Put the SQLite file in WAL mode, waiting up to ``busy_timeout`` for other connections.

    Switching the journal mode needs the write lock, and SQLite refuses it at once (no busy
    handler, "database is locked") while another connection holds it, to avoid a deadlock:
    instances that open a new archive together hit that. WAL is then persistent, so this runs
    once per ``open``, in a thread (it sleeps), before the engine's first connection.
    """
    deadline = time.monotonic() + busy_timeout
    attempt = 0
    while True:
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            finally:
                conn.close()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise ArchiveUnavailable(
                    f"cannot open the SQLite archive {path}: {_reason(exc)}"
                ) from exc
            if time.monotonic() >= deadline:
                raise ArchiveUnavailable(
                    f"the SQLite archive {path} stayed locked for {busy_timeout:.1f}s: "
                    f"{_reason(exc)}"
                ) from exc
            time.sleep(_WAL_RETRY_DELAYS[min(attempt, len(_WAL_RETRY_DELAYS) - 1)])
            attempt += 1
            continue
        if mode is None or str(mode[0]).lower() != "wal":
            log.warning("SQLite archive %s kept journal mode %s (WAL not available)", path, mode)
        return


class Archive:
    """Completed sessions and their history; the source of the analytics export."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        backend: Backend,
        display_url: str,
        schema: str | None = None,
        base_engine: AsyncEngine | None = None,
    ) -> None:
        self._engine = engine
        self._base_engine = base_engine or engine
        self.backend: Backend = backend
        #: The archive URL with its password hidden.
        self.display_url = display_url
        self.schema = schema
        self._closed = False

    # -- opening ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        schema: str | None = None,
        busy_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> Archive:
        """Connect, migrate the schema, and return the archive.

        ``schema`` (PostgreSQL only) keeps the tables in that schema, created if missing.
        ``busy_timeout`` (SQLite) is how long a write waits for another writer's lock.
        Raises ``ConfigError`` for an unsupported URL or a schema newer than this code, and
        ``ArchiveUnavailable`` when the database cannot be reached.
        """
        sa_url, backend = engine_url(url)
        display = redact_url(url)
        if schema is not None and backend != "postgresql":
            raise ConfigError("an archive schema is supported on PostgreSQL only", key="schema")
        if backend == "sqlite":
            base = cls._sqlite_engine(sa_url, display, busy_timeout)
            try:
                await asyncio.to_thread(_enable_wal, str(sa_url.database), busy_timeout)
            except BaseException:
                await base.dispose()
                raise
        else:
            base = create_async_engine(
                sa_url,
                pool_pre_ping=True,
                pool_size=5,
                max_overflow=5,
                pool_timeout=connect_timeout * 2,
                connect_args={
                    "timeout": connect_timeout,
                    "command_timeout": 60,
                    "server_settings": {"application_name": "voice-gateway-archive"},
                },
            )
        engine = base
        if schema is not None:
            engine = base.execution_options(schema_translate_map={None: schema})
        archive = cls(engine, backend=backend, display_url=display, schema=schema, base_engine=base)
        try:
            applied = await archive._migrate()
        except BaseException:
            await base.dispose()
            raise
        if applied:
            log.info(
                "archive migrated url=%s schema=%s applied=%s version=%d",
                display,
                schema or "-",
                applied,
                sc.LATEST_VERSION,
            )
        return archive

    @staticmethod
    def _sqlite_engine(url: URL, display: str, busy_timeout: float) -> AsyncEngine:
        path = Path(str(url.database))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveUnavailable(
                f"cannot create the directory of the archive {display}: {_reason(exc)}"
            ) from exc
        engine = create_async_engine(url, connect_args={"timeout": busy_timeout})
        busy_ms = max(0, int(busy_timeout * 1000))

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module (see ``_on_begin``).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                # WAL is a property of the file, switched on once by ``_enable_wal`` at open.
                cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the lock at BEGIN, so a busy database waits ``busy_timeout`` there
            # instead of failing at the first write; readers never block a writer (WAL).
            write = conn.get_execution_options().get(_WRITE_OPTION, False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    async def _migrate(self) -> list[int]:
        async with self._guard("open"), self._transaction(write=True) as conn:
            if self.backend == "postgresql":
                key = zlib.crc32(f"voice_gateway.archive:{self.schema or ''}".encode())
                await conn.execute(select(func.pg_advisory_xact_lock(literal(key))))
                if self.schema is not None:
                    await conn.execute(CreateSchema(self.schema, if_not_exists=True))
            return await conn.run_sync(sc.migrate)

    # -- plumbing -----------------------------------------------------------------------

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        if self._closed:
            raise ArchiveUnavailable(f"archive {self.display_url} is closed")
        try:
            yield
        except GatewayError:
            raise
        except Exception as exc:
            kind = classify(exc)
            if kind is None:
                raise
            where = f" ({self.display_url})" if kind is ArchiveUnavailable else ""
            raise kind(f"archive {what} failed{where}: {_reason(exc)}") from exc

    @asynccontextmanager
    async def _transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            if write:
                await conn.execution_options(**{_WRITE_OPTION: True})
            async with conn.begin():
                yield conn

    # -- writing ------------------------------------------------------------------------

    def _insert(self, table: Any) -> Any:
        return pg.insert(table) if self.backend == "postgresql" else sqlite.insert(table)

    def _upsert_statement(self) -> Any:
        ins = self._insert(sc.sessions)
        updates = {c.name: ins.excluded[c.name] for c in sc.sessions.c if c.name != "id"}
        # An archived row is never replaced by an older copy of its session (a record
        # delivered again after ``update`` changed the row).
        return ins.on_conflict_do_update(
            index_elements=[sc.sessions.c.id],
            set_=updates,
            where=sc.sessions.c.updated_at <= ins.excluded.updated_at,
        )

    async def _lock_tombstones(self, conn: AsyncConnection, *, exclusive: bool) -> None:
        """Deletes (exclusive) and upserts (shared) take turns on PostgreSQL, so an upsert
        never writes a session that a concurrent delete has just tombstoned. SQLite writers
        are serialised by ``BEGIN IMMEDIATE`` already."""
        if self.backend != "postgresql":
            return
        key = zlib.crc32(f"voice_gateway.archive.tombstones:{self.schema or ''}".encode())
        lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
        await conn.execute(select(lock(literal(key))))

    async def _tombstoned(self, conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        column = sc.deleted_sessions.c.session_id
        for chunk in _chunks(ids, _IN_CHUNK):
            found.update((await conn.execute(select(column).where(column.in_(chunk)))).scalars())
        return found

    async def upsert(self, records: Sequence[CompletedSession]) -> int:
        """Write completed sessions (and replace their history) in one transaction.

        Idempotent on the session id: writing a record again leaves one row and one copy of
        its messages. Within one call, the last record for an id wins; a row is not replaced
        by a record older (``updated_at``) than it. Sessions deleted with ``delete`` are
        skipped (their tombstone outlives them). Returns the number of sessions written.
        """
        latest: dict[str, CompletedSession] = {}
        for record in records:
            latest[record.session.id] = record
        if not latest:
            return 0
        archived_at = datetime.now(UTC)
        session_rows: list[dict[str, Any]] = []
        message_rows: list[dict[str, Any]] = []
        for session_id, record in latest.items():
            try:
                data = record.session.model_dump_json()
                session = Session.model_validate_json(data)
                history = [_canonical(m) for m in record.messages]
            except ValueError as exc:  # pydantic validation / serialisation errors
                raise ArchiveRejected(
                    f"session {session_id} does not round-trip through its model: "
                    f"{type(exc).__name__}",
                    details={"session_id": session_id},
                ) from exc
            session_rows.append(_session_row(session, data, archived_at))
            message_rows.extend(_message_row(session_id, i, m) for i, m in enumerate(history))
        ids = list(latest)
        async with self._guard("upsert"), self._transaction(write=True) as conn:
            await self._lock_tombstones(conn, exclusive=False)
            deleted = await self._tombstoned(conn, ids)
            if deleted:
                log.info("archive skips deleted sessions session_ids=%s", ",".join(sorted(deleted)))
                ids = [i for i in ids if i not in deleted]
                session_rows = [r for r in session_rows if r["id"] not in deleted]
                message_rows = [r for r in message_rows if r["session_id"] not in deleted]
            if not ids:
                return 0
            for chunk in _chunks(ids, _IN_CHUNK):
                await conn.execute(delete(sc.messages).where(sc.messages.c.session_id.in_(chunk)))
            await conn.execute(self._upsert_statement(), session_rows)
            if message_rows:
                await conn.execute(insert(sc.messages), message_rows)
        return len(ids)

    async def update(
        self, session_id: str, fields: Mapping[str, Any], org_id: str | None = None
    ) -> Session | None:
        """Change fields of an archived session (only in ``org_id`` when given).

        For the REST API's updates of completed sessions: ``UPDATABLE_FIELDS`` only (else
        ``ValueError``, as for a value the model refuses). ``updated_at`` becomes now, so a
        late copy of the completion record cannot undo the change (see ``upsert``). Returns
        the updated session, or None when there is no such row.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise ValueError(f"archived sessions cannot change {sorted(unknown)}")
        c = sc.sessions.c
        stmt = select(c.data).where(c.id == session_id)
        if org_id is not None:
            stmt = stmt.where(c.org_id == org_id)
        now = datetime.now(UTC)
        async with self._guard("update"), self._transaction(write=True) as conn:
            data = (await conn.execute(stmt.with_for_update())).scalar_one_or_none()
            if data is None:
                return None
            current = Session.model_validate_json(data)
            changed = Session.model_validate(
                {**current.model_dump(), **fields, "updated_at": max(now, current.updated_at)}
            )
            data = changed.model_dump_json()
            session = Session.model_validate_json(data)
            row = _session_row(session, data, now)
            del row["id"]
            await conn.execute(sc.sessions.update().where(c.id == session_id).values(**row))
        return session

    async def delete(self, session_id: str, org_id: str | None = None) -> bool:
        """Remove a session and its history (only from ``org_id`` when given), for good.

        A tombstone stays behind, also when the session is not archived (yet): ``upsert``
        skips the id from then on, so the completion record of a session deleted while it was
        still on its way here never brings it back. Returns whether a row was removed; another
        org's session is left alone (False, no tombstone).
        """
        c = sc.sessions.c
        async with self._guard("delete"), self._transaction(write=True) as conn:
            await self._lock_tombstones(conn, exclusive=True)
            owner = (
                await conn.execute(select(c.org_id).where(c.id == session_id))
            ).scalar_one_or_none()
            if owner is not None and org_id is not None and owner != org_id:
                return False
            tombstone = self._insert(sc.deleted_sessions).values(
                session_id=session_id, org_id=owner or org_id, deleted_at=datetime.now(UTC)
            )
            await conn.execute(tombstone.on_conflict_do_nothing(index_elements=["session_id"]))
            if owner is None:
                return False
            await conn.execute(delete(sc.messages).where(sc.messages.c.session_id == session_id))
            await conn.execute(delete(sc.sessions).where(c.id == session_id))
        return True

    # -- reading ------------------------------------------------------------------------

    async def get(self, session_id: str, org_id: str | None = None) -> Session | None:
        """The archived session (only from ``org_id`` when given), or None."""
        stmt = select(sc.sessions.c.data).where(sc.sessions.c.id == session_id)
        if org_id is not None:
            stmt = stmt.where(sc.sessions.c.org_id == org_id)
        async with self._guard("get"), self._transaction(write=False) as conn:
            data = (await conn.execute(stmt)).scalar_one_or_none()
        return None if data is None else Session.model_validate_json(data)

    def _metadata_equals(self, key: str, value: str) -> ColumnElement[bool]:
        """The metadata value under ``key``, as text, equals ``value``.

        Scalars only, the same on both backends: a string as itself, a number as written
        (``3``, ``2.5``), ``true``/``false``. Null, objects and arrays never match.
        """
        column = sc.sessions.c["metadata"]
        if self.backend == "postgresql":
            return and_(
                func.jsonb_typeof(column[key]).in_(["string", "number", "boolean"]),
                column[key].as_string() == value,
            )
        each = func.json_each(column).table_valued("key", "type", "atom")
        as_text = case(
            (each.c.type == "true", literal("true")),
            (each.c.type == "false", literal("false")),
            else_=cast(each.c.atom, Text),
        )
        scalar = each.c.type.in_(["text", "integer", "real", "true", "false"])
        return exists(
            select(literal(1)).select_from(each).where(each.c.key == key, scalar, as_text == value)
        )

    def _session_filters(
        self,
        *,
        org_id: str | None,
        agent_id: str | None,
        user_id: str | None,
        status: str | None,
        end_reason: str | None,
        created_after: datetime | None,
        created_before: datetime | None,
        metadata: Mapping[str, str] | None,
    ) -> list[ColumnElement[bool]]:
        c = sc.sessions.c
        out: list[ColumnElement[bool]] = []
        if org_id is not None:
            out.append(c.org_id == org_id)
        if agent_id is not None:
            out.append(c.agent_id == agent_id)
        if user_id is not None:
            out.append(c.user_id == user_id)
        if status is not None:
            out.append(c.status == str(status))
        if end_reason is not None:
            out.append(c.end_reason == str(end_reason))
        if _aware("created_after", created_after) is not None:
            out.append(c.created_at >= created_after)
        if _aware("created_before", created_before) is not None:
            out.append(c.created_at < created_before)
        for key, value in (metadata or {}).items():
            out.append(self._metadata_equals(str(key), str(value)))
        return out

    async def list_sessions(
        self,
        *,
        org_id: str | None = None,
        agent_id: str | None = None,
        user_id: str | None = None,
        status: str | None = None,
        end_reason: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Session]:
        """Archived sessions matching every filter, newest first (ties: higher id first).

        ``created_after`` is inclusive, ``created_before`` exclusive; ``metadata`` matches when
        every key holds that value (compared as text, see ``_metadata_equals``).
        """
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if limit == 0:
            return []
        filters = self._session_filters(
            org_id=org_id,
            agent_id=agent_id,
            user_id=user_id,
            status=status,
            end_reason=end_reason,
            created_after=created_after,
            created_before=created_before,
            metadata=metadata,
        )
        stmt = (
            select(sc.sessions.c.data)
            .where(*filters)
            .order_by(sc.sessions.c.created_at.desc(), sc.sessions.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._guard("list"), self._transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).scalars().all()
        return [Session.model_validate_json(data) for data in rows]

    async def count_sessions(
        self,
        *,
        org_id: str | None = None,
        agent_id: str | None = None,
        user_id: str | None = None,
        status: str | None = None,
        end_reason: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """How many sessions ``list_sessions`` would page through with these filters."""
        filters = self._session_filters(
            org_id=org_id,
            agent_id=agent_id,
            user_id=user_id,
            status=status,
            end_reason=end_reason,
            created_after=created_after,
            created_before=created_before,
            metadata=metadata,
        )
        stmt = select(func.count()).select_from(sc.sessions).where(*filters)
        async with self._guard("count"), self._transaction(write=False) as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def history(self, session_id: str, offset: int = 0, limit: int = 100) -> list[Message]:
        """The session's messages in order (empty for an unknown session)."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must not be negative")
        if limit == 0:
            return []
        m = sc.messages.c
        stmt = (
            select(m.id, m.role, m.content, m.created_at, m.turn_id, m["metadata"])
            .where(m.session_id == session_id)
            .order_by(m.seq)
            .limit(limit)
            .offset(offset)
        )
        async with self._guard("history"), self._transaction(write=False) as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [Message.model_validate(dict(row)) for row in rows]

    # -- analytics export ---------------------------------------------------------------

    @staticmethod
    def _analytics_filters(
        *,
        since: datetime | None,
        until: datetime | None,
        agent_id: str | None,
        org_id: str | None,
        exclude_test: bool,
        exclude_legacy: bool,
    ) -> list[ColumnElement[bool]]:
        c = sc.sessions.c
        out: list[ColumnElement[bool]] = []
        if _aware("since", since) is not None:
            out.append(c.created_at >= since)
        if _aware("until", until) is not None:
            out.append(c.created_at < until)
        if agent_id is not None:
            out.append(c.agent_id == agent_id)
        if org_id is not None:
            out.append(c.org_id == org_id)
        if exclude_test:
            out.append(c.is_test.is_(False))
        if exclude_legacy:
            out.append(c.is_legacy.is_(False))
        return out

    async def count_analytics_rows(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent_id: str | None = None,
        org_id: str | None = None,
        exclude_test: bool = False,
        exclude_legacy: bool = False,
    ) -> int:
        """How many rows ``iter_analytics_rows`` yields with these filters."""
        filters = self._analytics_filters(
            since=since,
            until=until,
            agent_id=agent_id,
            org_id=org_id,
            exclude_test=exclude_test,
            exclude_legacy=exclude_legacy,
        )
        stmt = select(func.count()).select_from(sc.sessions).where(*filters)
        async with self._guard("count"), self._transaction(write=False) as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def iter_analytics_rows(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent_id: str | None = None,
        org_id: str | None = None,
        exclude_test: bool = False,
        exclude_legacy: bool = False,
        batch_size: int = 10_000,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Analytics rows of the matching sessions, in batches, ordered by (created_at, id).

        ``since`` is inclusive and ``until`` exclusive, on the session's ``timestamp``
        (created_at). Keyset pagination: each batch is one short indexed query, so memory stays
        at one batch and no transaction is held open between batches (writers never wait for
        an export). Keys are ``ANALYTICS_COLUMNS``; times are aware UTC datetimes.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        filters = self._analytics_filters(
            since=since,
            until=until,
            agent_id=agent_id,
            org_id=org_id,
            exclude_test=exclude_test,
            exclude_legacy=exclude_legacy,
        )
        c = sc.sessions.c
        columns = [c[column] for _, column in sc.ANALYTICS_SOURCE]
        after: tuple[datetime, str] | None = None
        while True:
            stmt = select(*columns).where(*filters)
            if after is not None:  # the plain bound is implied; it keeps the planner on the index
                stmt = stmt.where(
                    c.created_at >= after[0],
                    or_(c.created_at > after[0], and_(c.created_at == after[0], c.id > after[1])),
                )
            stmt = stmt.order_by(c.created_at, c.id).limit(batch_size)
            async with self._guard("export"), self._transaction(write=False) as conn:
                rows = (await conn.execute(stmt)).all()
            if not rows:
                return
            yield [dict(zip(ANALYTICS_COLUMNS, row, strict=True)) for row in rows]
            if len(rows) < batch_size:
                return
            last = rows[-1]
            after = (last[0], last[1])

    async def iter_analytics_chunks(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        agent_id: str | None = None,
        org_id: str | None = None,
        exclude_test: bool = False,
        exclude_legacy: bool = False,
        batch_size: int = 10_000,
        parallel: int = 2,
    ) -> AsyncGenerator[AnalyticsChunk, None]:
        """The rows of ``iter_analytics_rows`` (same filters, same order) as CSV lines, in chunks
        of about ``batch_size`` rows.

        This is the export's fast path: no Python object per value. A chunk is its rows'
        ``export_row`` lines, joined by the database (``EXPORT_CSV``); a chunk with a row
        archived before that column existed is written as CSV by the database instead
        (``SQLITE_CSV`` / ``POSTGRES_CSV``; ``AnalyticsChunk.dialect`` says which). Each chunk is
        the key range ``(last key of the previous chunk, last key of this one]``: a cheap
        indexed query finds where a chunk ends, then up to ``parallel`` chunks are read at once
        (separate connections; SQLite releases the GIL while it works), handed out in order.
        Every query is short and on its own (no transaction spans chunks), so a session
        archived during the export is in it or not, but never twice, and nothing is skipped.
        Close the iterator (``contextlib.aclosing``) when stopping early.
        """
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if parallel <= 0:
            raise ValueError("parallel must be positive")
        query = _ExportQuery(
            self.backend,
            self.schema,
            since=since,
            until=until,
            agent_id=agent_id,
            org_id=org_id,
            exclude_test=exclude_test,
            exclude_legacy=exclude_legacy,
        )
        pending: deque[asyncio.Task[AnalyticsChunk]] = deque()
        # The next chunk's end, looked up ahead (while the caller works on a chunk).
        bound: asyncio.Task[_Key | None] | None = asyncio.create_task(
            self._export_bound(query, None, batch_size)
        )
        after: _Key | None = None

        async def fill() -> None:
            nonlocal bound, after
            while bound is not None and len(pending) < parallel:
                upto = await bound
                pending.append(asyncio.create_task(self._export_chunk(query, after, upto)))
                after = upto
                bound = None
                if upto is not None:
                    bound = asyncio.create_task(self._export_bound(query, upto, batch_size))

        try:
            while True:
                await fill()
                if not pending:
                    return
                chunk = await pending.popleft()
                await fill()  # keep the database busy while the caller writes this chunk
                if chunk.rows:
                    yield chunk
        finally:
            tasks = [*pending, *([bound] if bound is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _export_bound(
        self, query: _ExportQuery, after: _Key | None, batch_size: int
    ) -> _Key | None:
        sql, params = query.bound(after, batch_size)
        async with self._guard("export"), self._transaction(write=False) as conn:
            row: Any = (await conn.exec_driver_sql(sql, tuple(params))).first()
        return None if row is None else (row[0], row[1])

    async def _export_chunk(
        self, query: _ExportQuery, after: _Key | None, upto: _Key | None
    ) -> AnalyticsChunk:
        async with self._guard("export"), self._transaction(write=False) as conn:
            # The lines written at archive time, when every row of the chunk has one.
            sql, params = query.stored_chunk(after, upto)
            found: Any = (await conn.exec_driver_sql(sql, tuple(params))).one()
            data, rows, stored = found
            if not rows:
                return AnalyticsChunk(0)
            if stored == rows:
                return AnalyticsChunk(int(rows), csv=bytes(data), dialect=EXPORT_CSV)
            # Rows archived before ``export_row`` existed: the database writes the chunk.
            if self.backend == "sqlite":
                sql, params = query.sqlite_chunk(after, upto)
                found = (await conn.exec_driver_sql(sql, tuple(params))).one()
                data, rows, exact = found
                if not rows:
                    return AnalyticsChunk(0)
                if exact is None or exact:
                    return AnalyticsChunk(int(rows), csv=bytes(data), dialect=SQLITE_CSV)
                # A duration SQLite cannot write exactly: this chunk goes typed.
                records = await self._analytics_records(conn, query, after, upto)
                return AnalyticsChunk(len(records), records=records)
            # PostgreSQL: COPY writes CSV in C. Pin the settings its text depends on.
            await conn.exec_driver_sql(
                "SELECT set_config('datestyle', 'ISO, YMD', true), "
                "set_config('extra_float_digits', '3', true)"
            )
            raw = await conn.get_raw_connection()
            parts: list[bytes] = []

            async def sink(data: bytes) -> None:
                parts.append(data)

            status = await raw.driver_connection.copy_from_query(  # type: ignore[union-attr]
                query.postgres_select(after, upto), output=sink, format="csv"
            )
            rows = int(str(status).rsplit(" ", 1)[-1])
            if not rows:
                return AnalyticsChunk(0)
            return AnalyticsChunk(rows, csv=b"".join(parts), dialect=POSTGRES_CSV)

    async def _analytics_records(
        self, conn: AsyncConnection, query: _ExportQuery, after: _Key | None, upto: _Key | None
    ) -> list[dict[str, Any]]:
        """The typed rows of a chunk's key range (SQLite keys are the stored text)."""
        c = sc.sessions.c
        stmt = select(*[c[column] for column in _EXPORT_COLUMNS]).where(
            *self._analytics_filters(**query.filters)
        )
        for key, newer in ((after, True), (upto, False)):
            if key is None:
                continue
            at = key[0]
            if isinstance(at, str):
                at = datetime.fromisoformat(at).replace(tzinfo=UTC)
            if newer:
                stmt = stmt.where(
                    c.created_at >= at,
                    or_(c.created_at > at, and_(c.created_at == at, c.id > key[1])),
                )
            else:
                stmt = stmt.where(
                    c.created_at <= at,
                    or_(c.created_at < at, and_(c.created_at == at, c.id <= key[1])),
                )
        stmt = stmt.order_by(c.created_at, c.id)
        rows = (await conn.execute(stmt)).all()
        return [dict(zip(ANALYTICS_COLUMNS, row, strict=True)) for row in rows]

    # -- the archive itself ---------------------------------------------------------------

    async def schema_version(self) -> int:
        """The schema version of the database (``schema.LATEST_VERSION`` once opened)."""
        stmt = select(func.max(sc.schema_version.c.version))
        async with self._guard("schema version"), self._transaction(write=False) as conn:
            return int((await conn.execute(stmt)).scalar_one() or 0)

    async def ping(self) -> None:
        """Raise ``ArchiveUnavailable`` if the database cannot be reached."""
        async with self._guard("ping"), self._transaction(write=False) as conn:
            await conn.execute(select(literal(1)))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._base_engine.dispose()

    async def __aenter__(self) -> Archive:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Archive({self.display_url!r}, schema={self.schema!r})"

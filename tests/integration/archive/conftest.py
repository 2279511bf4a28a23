"""Archive suite fixtures: an open ``Archive`` on SQLite and on PostgreSQL, and session stores.

``backend`` / ``archive`` run each test on a SQLite file in ``tmp_path`` and on the real
PostgreSQL server in a schema of its own (created by ``Archive.open``, dropped afterwards), so
tests never see each other's rows. ``redis_store`` uses a unique key prefix whose keys are
deleted after the test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.integration.archive.helpers import POSTGRES_URL, Backend, drop_schema

from voice_gateway.archive.db import Archive
from voice_gateway.sessions.store import SessionStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "var" / "archive.db"  # the parent directory does not exist yet
        yield Backend("sqlite", f"sqlite:///{path}", path=path)
        return
    schema = f"test_archive_{uuid.uuid4().hex[:12]}"
    try:
        yield Backend("postgres", POSTGRES_URL, schema=schema)
    finally:
        await drop_schema(schema)


@pytest.fixture
async def archive(backend: Backend) -> AsyncIterator[Archive]:
    opened = await backend.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def pg_schema() -> str:
    return f"test_archive_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def pg_backend(pg_schema: str) -> AsyncIterator[Backend]:
    """PostgreSQL only (tests that exercise a PostgreSQL-specific failure)."""
    try:
        yield Backend("postgres", POSTGRES_URL, schema=pg_schema)
    finally:
        await drop_schema(pg_schema)


# -- session stores ----------------------------------------------------------------------------


# redis_prefix, redis_store and memory_store come from tests/conftest.py. The archiver tests
# run on the two store kinds an archive deployment uses (the cluster is covered by the store
# contract suite).


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    chosen: SessionStore = request.getfixturevalue(f"{request.param}_store")
    return chosen

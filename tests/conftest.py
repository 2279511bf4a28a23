"""Shared fixtures: real Redis and PostgreSQL, a unique key prefix / schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from voice_gateway.sessions.memory_store import MemorySessionStore
from voice_gateway.sessions.redis_store import RedisSessionStore
from voice_gateway.sessions.store import SessionStore

REDIS_URL = os.environ.get("VOICE_GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("VOICE_GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def delete_prefix(prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def redis_prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def redis_store(redis_prefix: str) -> AsyncIterator[RedisSessionStore]:
    store = RedisSessionStore.from_url(
        REDIS_URL, prefix=redis_prefix, expiry_grace=300, completed_retention=3600
    )
    yield store
    await store.close()
    await delete_prefix(redis_prefix)


@pytest.fixture
async def memory_store() -> AsyncIterator[MemorySessionStore]:
    store = MemorySessionStore(expiry_grace=300, completed_retention=3600)
    yield store
    await store.close()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    fixture: SessionStore = request.getfixturevalue(f"{request.param}_store")
    return fixture

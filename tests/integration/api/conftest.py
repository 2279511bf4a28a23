"""REST API fixtures: the real app (``create_app``) on real Redis and a real archive.

``api`` runs each test against an archive on SQLite (a file in ``tmp_path``) and on the
PostgreSQL server (a schema of its own, dropped afterwards); ``api_sqlite`` is the SQLite one
alone, for tests where the archive does not matter. Redis keys live under a unique prefix,
deleted afterwards. Two orgs, ``acme`` and ``globex``, each have an API key.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from tests.conftest import POSTGRES_URL, REDIS_URL, delete_prefix
from tests.integration.archive.helpers import drop_schema

from voice_gateway import appkeys
from voice_gateway.api.keys import hash_key
from voice_gateway.app import create_app
from voice_gateway.archive.archiver import Archiver
from voice_gateway.archive.db import Archive
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import EndReason
from voice_gateway.sessions.store import SessionStore
from voice_gateway.settings import AgentConfig, ApiKeyConfig, Settings

ORG_A = "acme"
ORG_B = "globex"
KEY_A = "vgk_test-acme-" + "a" * 32
KEY_B = "vgk_test-globex-" + "b" * 32
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}

AGENTS = [
    AgentConfig(
        id="support",
        name="Support line",
        type="echo",
        org_id=ORG_A,
        timezone="Europe/Paris",
        prompt_id="support-v1",
        prompt_name="Support greeting",
        prompt_version="3",
    ),
    AgentConfig(id="triage", name="Triage IVR", type="echo", org_id=ORG_A, legacy=True),
    AgentConfig(id="globex-bot", name="Globex", type="echo", org_id=ORG_B),
]


def settings_for(archive_url: str, prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "redis_prefix": prefix,
        "archive_url": archive_url,
        "agents": AGENTS,
        "fallback_agent": None,
        "api_keys": [
            ApiKeyConfig(org_id=ORG_A, sha256=hash_key(KEY_A), name="acme tests"),
            ApiKeyConfig(org_id=ORG_B, sha256=hash_key(KEY_B), name="globex tests"),
        ],
        "api_keys_file": None,
        "log_format": "text",
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    """The running app and a client for it (send ``headers=A`` or ``headers=B``)."""

    app: web.Application
    client: TestClient[web.Request, web.Application]
    backend: str
    archive_url: str = ""
    archive_schema: str | None = None
    _archiver: Archiver | None = field(default=None, repr=False)

    @property
    def store(self) -> SessionStore:
        return self.app[appkeys.STORE]

    @property
    def lifecycle(self) -> Lifecycle:
        return self.app[appkeys.LIFECYCLE]

    @property
    def archive(self) -> Archive:
        return self.app[appkeys.ARCHIVE]

    async def drain(self, within: float = 10.0) -> None:
        """Archive every completed session waiting in the queue, as the archiver does.

        The app's own archiver runs too and may hold some entries: wait until the queue is
        empty (every entry written and acknowledged) either way.
        """
        if self._archiver is None:
            self._archiver = Archiver(self.store, self.archive, consumer="api-tests")
        deadline = asyncio.get_running_loop().time() + within
        while True:
            await self._archiver.drain_once()
            if await self.store.completed_backlog() == (0, 0):
                return
            assert asyncio.get_running_loop().time() < deadline, "the archive queue never drained"
            await asyncio.sleep(0.05)

    async def create(self, headers: dict[str, str] = A, **body: Any) -> dict[str, Any]:
        """A session made over the API (agent ``support``, or ``globex-bot`` for org B)."""
        body.setdefault("agent_id", "globex-bot" if headers == B else "support")
        resp = await self.client.post("/v1/sessions", json=body, headers=headers)
        assert resp.status == 201, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data

    async def archived(self, session_id: str) -> None:
        """Complete a live session, archive it, and drop its live copy (retention over)."""
        await self.lifecycle.complete_if_active(session_id, EndReason.COMPLETED)
        await self.drain()
        assert await self.archive.get(session_id) is not None
        await self.store.delete(session_id)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def api_on(backend: str, tmp_path: Path, prefix: str, **overrides: Any) -> AsyncIterator[Api]:
    schema: str | None = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'archive.db'}"
    else:
        url = POSTGRES_URL
        schema = f"test_api_{uuid.uuid4().hex[:12]}"
        overrides.setdefault("archive_schema", schema)
    settings = settings_for(overrides.pop("archive_url", url), prefix, **overrides)
    try:
        async with running(settings) as client:
            yield Api(client.app, client, backend, url, schema)
    finally:
        await delete_prefix(prefix)
        if schema is not None:
            await drop_schema(schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def api(
    request: pytest.FixtureRequest, tmp_path: Path, redis_prefix: str
) -> AsyncIterator[Api]:
    async with api_on(request.param, tmp_path, redis_prefix) as running_api:
        yield running_api


@pytest.fixture
async def api_sqlite(tmp_path: Path, redis_prefix: str) -> AsyncIterator[Api]:
    async with api_on("sqlite", tmp_path, redis_prefix) as running_api:
        yield running_api

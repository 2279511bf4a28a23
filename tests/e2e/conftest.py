"""End-to-end harness: a real gateway on a real port, the call simulator, the fake Twilio API.

A gateway is ``create_app`` served on a free port (SQLite archive in a temporary directory,
signatures on, short grace and sweep intervals) with a ``FakeTwilioApi`` it talks to, wrapped
in a :class:`Harness`:

- ``shared`` (module scope, memory and Redis stores): one gateway for the tests of a module
  that need no special settings (starting and stopping a gateway costs about a second);
- ``gateway_factory(store, configure=..., **settings)``: a gateway of the test's own.

Every e2e module runs its tests in the module's event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")``), where the shared gateway lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from tests.conftest import REDIS_URL, delete_prefix
from voice_gateway import appkeys
from voice_gateway.archive.db import Archive
from voice_gateway.sessions.models import Session
from voice_gateway.sessions.store import SessionStore
from voice_gateway.settings import NumberRoute, Settings, load_settings
from voice_gateway.sim.audio import silence, tone
from voice_gateway.sim.caller import CallConfig, CallResult, SimRegistry, SimulatedCall
from voice_gateway.sim.gateway import RunningGateway, running_gateway
from voice_gateway.sim.twilio_api import FakeTwilioApi

TEST_NUMBER = "+15005550006"
LEGACY_NUMBER = "+18005550111"
ROUTED_NUMBER = "+18005550199"
UNROUTED_NUMBER = "+18005550777"
ACCOUNT_SID = "AC" + "5" * 32


def short_audio(ms: int = 1000) -> bytes:
    """Silence (the echo agent hears nothing and stays quiet)."""
    return silence(ms)


def speech_audio() -> bytes:
    """Half a second of silence, 0.8 s of tone ("speech"), 1.2 s of silence."""
    return silence(500) + tone(800) + silence(1200)


@dataclass
class Harness:
    gateway: RunningGateway
    api: FakeTwilioApi
    registry: SimRegistry
    token: str
    http: aiohttp.ClientSession

    @property
    def app(self) -> web.Application:
        return self.gateway.app

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def settings(self) -> Settings:
        return self.gateway.settings

    @property
    def store(self) -> SessionStore:
        return self.app[appkeys.STORE]

    @property
    def archive(self) -> Archive:
        return self.app[appkeys.ARCHIVE]

    def config(self, **options: Any) -> CallConfig:
        options.setdefault("account_sid", ACCOUNT_SID)
        options.setdefault("registry", self.registry)
        return CallConfig(base_url=self.url, auth_token=self.token, **options)

    def call(self, **options: Any) -> SimulatedCall:
        return SimulatedCall(self.config(**options), http=self.http)

    async def place(self, **options: Any) -> CallResult:
        return await self.call(**options).run()

    async def archived(self, session_id: str, wait_s: float = 10.0) -> Session:
        """The archived row of ``session_id``, waiting for the gateway's archiver."""
        deadline = time.monotonic() + wait_s
        while True:
            row = await self.archive.get(session_id)
            if row is not None:
                return row
            if time.monotonic() > deadline:
                live = await self.store.get(session_id)
                raise AssertionError(f"session {session_id} not archived; live: {live!r}")
            await asyncio.sleep(0.05)

    async def rows_for_call(self, call_sid: str) -> list[Session]:
        rows = await self.archive.list_sessions(limit=10_000)
        return [r for r in rows if r.channel.sid == call_sid]

    async def live(self, call_sid: str) -> Session | None:
        return await self.store.get_by_call_sid(call_sid)

    async def post(
        self, path: str, body: bytes | str, *, content_type: str, signature: str | None = None
    ) -> int:
        headers = {"Content-Type": content_type}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        async with self.http.post(self.url + path, data=body, headers=headers) as resp:
            await resp.read()
            return resp.status


GatewayFactory = Callable[..., Awaitable[Harness]]


def _empty_config(directory: Path) -> Path:
    """An empty config file: keeps config/gateway.toml of the checkout out of the settings."""
    directory.mkdir(parents=True, exist_ok=True)
    empty = directory / "empty.toml"
    empty.write_text("")
    return empty


async def start_harness(
    stack: contextlib.AsyncExitStack,
    directory: Path,
    http: aiohttp.ClientSession,
    *,
    store: str = "memory",
    redis_prefix: str | None = None,
    configure: Callable[[web.Application], None] | None = None,
    strict_api: bool = True,
    **overrides: Any,
) -> Harness:
    token = secrets.token_hex(16)
    registry = SimRegistry()
    api = FakeTwilioApi(ACCOUNT_SID, token, registry=registry, strict=strict_api)
    await stack.enter_async_context(api)
    empty = _empty_config(directory)
    values: dict[str, Any] = {
        "archive_url": f"sqlite:///{directory}/archive-{secrets.token_hex(4)}.db",
        "twilio_auth_token": token,
        "twilio_account_sid": ACCOUNT_SID,
        "twilio_api_base_url": api.url,
        "validate_signatures": True,
        "status_grace_seconds": 0.5,
        "sweep_interval_seconds": 0.2,
        "api_keys_file": None,
        "test_numbers": [TEST_NUMBER],
        "numbers": [
            NumberRoute(number=LEGACY_NUMBER, agent="echo", legacy=True),
            NumberRoute(number=ROUTED_NUMBER, agent="echo"),
        ],
        "log_level": "WARNING",
    }
    if store == "redis":
        assert redis_prefix is not None
        values["redis_url"] = REDIS_URL
        values["redis_prefix"] = redis_prefix
    values.update(overrides)
    settings = load_settings(empty, **values)
    gateway = await stack.enter_async_context(running_gateway(settings, configure=configure))
    return Harness(gateway=gateway, api=api, registry=registry, token=token, http=http)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["memory", "redis"])
async def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Harness]:
    """A gateway shared by the tests of one module: fallback_agent=None (only the routed
    numbers have an agent), max_body_bytes=2048, max_frame_bytes=4096."""
    prefix = f"test-e2e-{secrets.token_hex(6)}:"
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        )
        yield await start_harness(
            stack,
            tmp_path_factory.mktemp("e2e"),
            http,
            store=request.param,
            redis_prefix=prefix,
            fallback_agent=None,
            max_body_bytes=2048,
            max_frame_bytes=4096,
        )
    if request.param == "redis":
        await delete_prefix(prefix)


@pytest_asyncio.fixture(loop_scope="module")
async def gateway_factory(tmp_path: Path, redis_prefix: str) -> AsyncIterator[GatewayFactory]:
    stack = contextlib.AsyncExitStack()
    used_redis = False
    http = await stack.enter_async_context(
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    )

    async def start(store: str = "memory", **options: Any) -> Harness:
        nonlocal used_redis
        used_redis = used_redis or store == "redis"
        return await start_harness(
            stack, tmp_path, http, store=store, redis_prefix=redis_prefix, **options
        )

    try:
        yield start
    finally:
        await stack.aclose()
        if used_redis:
            await delete_prefix(redis_prefix)


@pytest.fixture(params=["memory", "redis"])
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind

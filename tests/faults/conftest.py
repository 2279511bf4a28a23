"""Fault-test harness: gateways and archivers as real processes, state in real Redis/PostgreSQL.

Each test gets a :class:`FaultEnv` (fixture ``faults``):

- a unique Redis key prefix and a unique PostgreSQL schema (created here by opening the archive,
  dropped afterwards) that every process of the test shares;
- a generated Twilio auth token and a :class:`FakeTwilioApi` in the test process, which the
  gateways use as their Twilio REST API;
- ``faults.gateway(name, **settings)``: ``python -m voice_gateway.cli serve`` configured only
  by ``VOICE_GATEWAY_*`` environment variables (public URL = its own ``http://127.0.0.1:<port>``,
  short status grace, sweep interval and lease unless a test says otherwise), run in a temporary
  directory so no config file of the checkout is read, logging (text, INFO) to a file;
- ``faults.archiver()``: ``python -m voice_gateway.cli archiver`` with the same settings;
- ``faults.archive``: the archive, opened directly by the test, to read the rows back.

Every process is killed at teardown if the test left it running, and the last lines of every
process's log are printed (pytest shows them when a test fails). The simulator runs in the
test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
import redis.asyncio as aioredis

from tests.conftest import POSTGRES_URL, REDIS_URL, delete_prefix
from voice_gateway.archive.db import Archive
from voice_gateway.sessions.models import Session
from voice_gateway.sessions.redis_store import RedisSessionStore
from voice_gateway.sim.audio import silence, tone
from voice_gateway.sim.caller import CallConfig, SimRegistry, SimulatedCall
from voice_gateway.sim.twilio_api import FakeTwilioApi

ACCOUNT_SID = "AC" + "fa" * 16
#: Settings every fault-test gateway starts with (a test may override any of them).
GATEWAY_DEFAULTS: dict[str, Any] = {
    "status_grace_seconds": 1.0,
    "sweep_interval_seconds": 0.5,
    "call_lease_seconds": 6.0,
    "validate_signatures": True,
    "log_level": "INFO",
    "log_format": "text",
}
START_TIMEOUT = 45.0  # a loaded 2-core machine imports the app in 2-3 s; leave room


def speech_loop() -> bytes:
    """2.5 s of caller audio: a 0.6 s utterance (a tone any VAD hears as speech), then a pause
    long enough for the turn to end and the echo agent's answer to play. Loop it with
    ``loop_seconds`` for a call with a turn every 2.5 s."""
    return silence(200) + tone(600) + silence(1700)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    within: float,
    what: str,
    interval: float = 0.1,
    diagnose: Callable[[], str] | None = None,
) -> float:
    """Poll ``check`` until it is true; returns how long that took (AssertionError on timeout)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        if await check():
            return loop.time() - started
        if loop.time() - started > within:
            extra = f"\n{diagnose()}" if diagnose is not None else ""
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}{extra}")
        await asyncio.sleep(interval)


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class ManagedProcess:
    """A child process whose output goes to a log file; never outlives its test."""

    def __init__(
        self, name: str, argv: list[str], *, env: Mapping[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, f"{self.name} already started"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    async def wait_exit(self, within: float) -> int:
        """The exit code, polling up to ``within`` s (AssertionError if still running)."""
        assert self.proc is not None
        proc = self.proc
        await eventually(
            lambda: _true(proc.poll() is not None),
            within=within,
            what=f"{self.name} to exit",
            interval=0.05,
            diagnose=self.log_tail,
        )
        code = proc.poll()
        assert code is not None
        return code

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return f"--- {self.name} log ({self.log_path}) ---\n{self.log_text()[-chars:]}"

    def cleanup(self) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None


async def _true(value: bool) -> bool:
    return value


class Gateway(ManagedProcess):
    """``voice-gateway serve`` on its own port."""

    def __init__(self, name: str, port: int, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_healthy(
        self, http: aiohttp.ClientSession, within: float = START_TIMEOUT
    ) -> None:
        async def healthy() -> bool:
            if not self.running:
                raise AssertionError(f"{self.name} exited while starting\n{self.log_tail()}")
            try:
                async with http.get(
                    self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    return resp.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await eventually(
            healthy, within=within, what=f"{self.name} to serve", diagnose=self.log_tail
        )

    async def readyz(self, http: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with http.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            body: dict[str, Any] = await resp.json()
            return resp.status, body


class RedisServer:
    """A dedicated ``redis-server`` on a free port, with AOF persistence (``appendfsync always``)
    in ``directory``, so that a restart keeps everything acknowledged before it."""

    def __init__(self, directory: Path) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.fail("redis-server is needed for the Redis restart test")
        self.server = server
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                self.server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
                str(self.directory),
                "--logfile",
                "redis.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def wait_up(self, within: float = 15.0) -> None:
        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1)

        async def up() -> bool:
            try:
                return bool(await client.ping())
            except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                return False
            except aioredis.ResponseError:  # still loading the AOF
                return False

        try:
            await eventually(up, within=within, what=f"redis-server on port {self.port}")
        finally:
            await client.aclose()

    async def stop(self, within: float = 15.0) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits) and reap."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        await eventually(
            lambda: _true(proc.poll() is not None),
            within=within,
            what="redis-server to stop",
            interval=0.02,
        )
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class FaultEnv:
    """What one fault test shares between its processes; see the module docstring."""

    def __init__(
        self,
        tmp_path: Path,
        http: aiohttp.ClientSession,
        api: FakeTwilioApi,
        registry: SimRegistry,
        archive: Archive,
        *,
        token: str,
        prefix: str,
        schema: str,
    ) -> None:
        self.tmp_path = tmp_path
        self.http = http
        self.api = api
        self.registry = registry
        self.archive = archive
        self.token = token
        self.prefix = prefix
        self.schema = schema
        self.processes: list[ManagedProcess] = []
        self._stores: list[RedisSessionStore] = []
        self.redis_urls: set[str] = {REDIS_URL}

    # -- processes ---------------------------------------------------------------------------

    def _env(
        self, *, redis_url: str | None, archive_url: str | None, settings: Mapping[str, Any]
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOICE_GATEWAY_")}
        values: dict[str, Any] = {
            "redis_url": redis_url or REDIS_URL,
            "redis_prefix": self.prefix,
            "archive_url": archive_url or POSTGRES_URL,
            "archive_schema": self.schema,
            "twilio_auth_token": self.token,
            "twilio_account_sid": ACCOUNT_SID,
            "twilio_api_base_url": self.api.url,
            **GATEWAY_DEFAULTS,
            **settings,
        }
        env.update({f"VOICE_GATEWAY_{k.upper()}": _env_value(v) for k, v in values.items()})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def gateway(
        self,
        name: str,
        *,
        redis_url: str | None = None,
        archive_url: str | None = None,
        **settings: Any,
    ) -> Gateway:
        """A gateway process (not started yet: see :meth:`start`)."""
        port = free_port()
        if redis_url is not None:
            self.redis_urls.add(redis_url)
        env = self._env(
            redis_url=redis_url,
            archive_url=archive_url,
            settings={"public_url": f"http://127.0.0.1:{port}", "port": port, **settings},
        )
        gw = Gateway(
            name,
            port,
            argv=[sys.executable, "-m", "voice_gateway.cli", "serve"],
            env=env,
            cwd=self.tmp_path / name,
            log_path=self.tmp_path / f"{name}.log",
        )
        self.processes.append(gw)
        return gw

    def archiver(self, name: str = "archiver", **settings: Any) -> ManagedProcess:
        """``voice-gateway archiver`` with this test's Redis and archive (not started yet)."""
        proc = ManagedProcess(
            name,
            [sys.executable, "-m", "voice_gateway.cli", "archiver"],
            env=self._env(redis_url=None, archive_url=None, settings=settings),
            cwd=self.tmp_path / name,
            log_path=self.tmp_path / f"{name}.log",
        )
        self.processes.append(proc)
        return proc

    async def start(self, *gateways: Gateway) -> None:
        """Start the gateways side by side and wait until each serves HTTP."""
        for gw in gateways:
            gw.start()
        await asyncio.gather(*(gw.wait_healthy(self.http) for gw in gateways))

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.processes)

    # -- calls -------------------------------------------------------------------------------

    def call(self, gateway: Gateway, **options: Any) -> SimulatedCall:
        options.setdefault("account_sid", ACCOUNT_SID)
        options.setdefault("registry", self.registry)
        options.setdefault("http_timeout", 30.0)
        config = CallConfig(base_url=gateway.url, auth_token=self.token, **options)
        return SimulatedCall(config, http=self.http)

    # -- state -------------------------------------------------------------------------------

    def store(self, redis_url: str | None = None) -> RedisSessionStore:
        """A store client on this test's keys (closed at teardown)."""
        store = RedisSessionStore.from_url(redis_url or REDIS_URL, prefix=self.prefix)
        self._stores.append(store)
        return store

    async def rows(self) -> list[Session]:
        return await self.archive.list_sessions(limit=10_000)

    async def wait_rows(self, n: int, *, within: float) -> list[Session]:
        """Poll the archive until it holds ``n`` rows (AssertionError on timeout, or more)."""

        async def enough() -> bool:
            return await self.archive.count_sessions() >= n

        await eventually(enough, within=within, what=f"{n} archived sessions", diagnose=self.logs)
        rows = await self.rows()
        assert len(rows) == n, f"expected {n} archived rows, found {len(rows)}"
        return rows

    async def close(self) -> None:
        for proc in self.processes:
            proc.cleanup()
        for store in self._stores:
            with contextlib.suppress(Exception):
                await store.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def delete_prefix_at(url: str, prefix: str) -> None:
    if url == REDIS_URL:
        await delete_prefix(prefix)
        return
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    except (aioredis.ConnectionError, OSError):
        pass  # a dedicated server that is gone already took its keys with it
    finally:
        await client.aclose()


@pytest.fixture
async def faults(tmp_path: Path) -> AsyncIterator[FaultEnv]:
    token = secrets.token_hex(16)
    prefix = f"test-faults-{uuid.uuid4().hex[:10]}:"
    schema = f"test_faults_{uuid.uuid4().hex[:12]}"
    registry = SimRegistry()
    env: FaultEnv | None = None
    started = time.monotonic()
    try:
        archive = await Archive.open(POSTGRES_URL, schema=schema)  # creates and migrates it
        async with (
            FakeTwilioApi(ACCOUNT_SID, token, registry=registry) as api,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http,
        ):
            env = FaultEnv(
                tmp_path, http, api, registry, archive, token=token, prefix=prefix, schema=schema
            )
            try:
                yield env
            finally:
                await env.close()
                await archive.close()
    finally:
        if env is not None:
            print(f"fault test ran {time.monotonic() - started:.1f}s")
            print(env.logs())
            for url in env.redis_urls:
                await delete_prefix_at(url, prefix)
        await drop_schema(schema)

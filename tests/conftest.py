"""Shared fixtures: real Redis and PostgreSQL, a unique key prefix / schema per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from voice_gateway.sessions.memory_store import MemorySessionStore
from voice_gateway.sessions.redis_store import RedisSessionStore
from voice_gateway.sessions.store import SessionStore

REDIS_URL = os.environ.get("VOICE_GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "VOICE_GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


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


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> SessionStore:
    fixture: SessionStore = request.getfixturevalue(f"{request.param}_store")
    return fixture


# -- a real Redis Cluster (three masters on loopback), started once per test session ----------


def _free_port_pair() -> int:
    """A port p with p and p + 10000 (the cluster bus) both free."""
    import socket

    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import shutil
    import subprocess
    import time

    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if not server or not cli:
        pytest.fail("redis-server and redis-cli are needed for the cluster tests")
    workdir = tmp_path_factory.mktemp("redis-cluster")
    ports = [_free_port_pair() for _ in range(3)]
    procs = [
        subprocess.Popen(
            [
                server,
                "--port",
                str(p),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{p}.conf",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--logfile",
                f"node-{p}.log",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    try:
        for p in ports:
            for _ in range(50):
                if (
                    subprocess.run(
                        [cli, "-p", str(p), "ping"], capture_output=True, text=True
                    ).stdout.strip()
                    == "PONG"
                ):
                    break
                time.sleep(0.1)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for _ in range(100):
            info = subprocess.run(
                [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True
            ).stdout
            if "cluster_state:ok" in info:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the test Redis Cluster did not come up")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)


@pytest.fixture
async def cluster_store(
    redis_cluster_url: str, redis_prefix: str
) -> AsyncIterator[RedisSessionStore]:
    store = RedisSessionStore.from_url(redis_cluster_url, prefix=redis_prefix)
    yield store
    await store.close()

"""Who may call the API and what it sees: keys, org isolation, body limits, dependencies down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.integration.api.conftest import A, Api, B, api_on
from tests.tcp_proxy import TcpProxy

# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer vgk_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": A["Authorization"].replace("Bearer ", "Bearer x")},
    ],
)
async def test_requests_without_a_valid_key_are_401_with_a_bearer_challenge(
    api_sqlite: Api, headers: dict[str, str]
) -> None:
    created = await api_sqlite.create()
    for method, path in (
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("GET", f"/v1/sessions/{created['id']}"),
        ("DELETE", f"/v1/sessions/{created['id']}"),
    ):
        resp = await api_sqlite.client.request(method, path, headers=headers, json={})
        assert resp.status == 401, (method, path)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
        assert body["error"]["type"] == "unauthorized"
    # Nothing happened to the session.
    assert (await api_sqlite.lifecycle.get(created["id"])).is_active


async def test_keys_from_the_keys_file_work_after_a_start(
    tmp_path: Path, redis_prefix: str
) -> None:
    from voice_gateway.api.keys import append_key, generate_key, hash_key
    from voice_gateway.settings import ApiKeyConfig

    key_file = tmp_path / "keys.toml"
    key = generate_key()
    append_key(key_file, ApiKeyConfig(org_id="acme", sha256=hash_key(key), name="ops"))
    async with api_on("sqlite", tmp_path, redis_prefix, api_keys_file=key_file) as api:
        resp = await api.client.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
        assert resp.status == 200
        # The settings' keys still work alongside.
        assert (await api.client.get("/v1/sessions", headers=A)).status == 200


async def test_the_openapi_document_needs_no_key(api_sqlite: Api) -> None:
    resp = await api_sqlite.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


# -- org isolation --------------------------------------------------------------------------------


async def test_another_orgs_session_is_404_on_every_endpoint(api: Api) -> None:
    created = await api.create(name="acme only", tools=[{"name": "lookup"}])
    sid = created["id"]
    await api.client.post(
        f"/v1/sessions/{sid}/documents", headers=A, json={"title": "t", "content": "secret plan"}
    )
    base = f"/v1/sessions/{sid}"
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", base, None),
        ("PATCH", base, {"name": "hijacked"}),
        ("GET", f"{base}/history", None),
        ("GET", f"{base}/tools", None),
        ("POST", f"{base}/tools", {"name": "evil"}),
        ("DELETE", f"{base}/tools/lookup", None),
        ("POST", f"{base}/documents", {"title": "x", "content": "y"}),
        ("GET", f"{base}/documents/search?query=secret", None),
        ("DELETE", base, None),
    ]

    async def org_b_sees_nothing() -> None:
        for method, path, body in calls:
            resp = await api.client.request(method, path, headers=B, json=body)
            assert resp.status == 404, (method, path, await resp.text())
            assert (await resp.json())["error"]["type"] == "not_found"
        listed = await (await api.client.get("/v1/sessions", headers=B)).json()
        assert listed["data"] == [] and listed["total"] == 0

    await org_b_sees_nothing()
    # Org A's session is untouched.
    got = await (await api.client.get(base, headers=A)).json()
    assert got["name"] == "acme only" and got["status"] == "active"
    assert [t["name"] for t in got["tools"]] == ["lookup"]

    # The same once the session is archived.
    await api.archived(sid)
    await org_b_sees_nothing()
    got = await (await api.client.get(base, headers=A)).json()
    assert got["name"] == "acme only" and got["status"] == "completed"


async def test_each_org_lists_only_its_own_sessions(api: Api) -> None:
    a = await api.create()
    b = await api.create(headers=B)
    done = await api.create(headers=B)
    await api.archived(done["id"])
    listed_a = await (await api.client.get("/v1/sessions", headers=A)).json()
    listed_b = await (await api.client.get("/v1/sessions", headers=B)).json()
    assert [s["id"] for s in listed_a["data"]] == [a["id"]] and listed_a["total"] == 1
    assert {s["id"] for s in listed_b["data"]} == {b["id"], done["id"]}
    assert listed_b["total"] == 2
    assert all(s["org_id"] == "globex" for s in listed_b["data"])


# -- body size ------------------------------------------------------------------------------------


@pytest.fixture
async def small_limit(tmp_path: Path, redis_prefix: str) -> AsyncIterator[Api]:
    async with api_on("sqlite", tmp_path, redis_prefix, api_max_body_bytes=4096) as api:
        yield api


async def test_bodies_over_the_api_limit_are_413(small_limit: Api) -> None:
    client = small_limit.client
    ok = await client.post(
        "/v1/sessions", headers=A, json={"agent_id": "support", "situation": "s" * 3000}
    )
    assert ok.status == 201
    big = {"agent_id": "support", "situation": "s" * 5000}
    resp = await client.post("/v1/sessions", headers=A, json=big)
    assert resp.status == 413
    body = await resp.json()
    assert body["error"]["type"] == "payload_too_large"
    assert body["error"]["details"]["limit"] == 4096

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        yield b'{"agent_id": "support", "situation": "'
        for _ in range(10):
            yield b"s" * 1000
        yield b'"}'

    resp = await client.post("/v1/sessions", headers=A, data=chunks())
    assert resp.status == 413
    sid = (await ok.json())["id"]
    resp = await client.patch(f"/v1/sessions/{sid}", headers=A, json={"summary": "x" * 5000})
    assert resp.status == 413
    listed = await (await client.get("/v1/sessions", headers=A)).json()
    assert listed["total"] == 1


# -- dependencies down ----------------------------------------------------------------------------


async def test_redis_unreachable_is_503(tmp_path: Path, redis_prefix: str) -> None:
    redis = urlsplit(REDIS_URL)
    proxy = await TcpProxy(redis.port or 6379, redis.hostname or "127.0.0.1").start()
    url = f"redis://127.0.0.1:{proxy.port}{redis.path}"
    try:
        async with api_on("sqlite", tmp_path, redis_prefix, redis_url=url) as api:
            created = await api.create()
            await proxy.stop()
            for method, path in (
                ("GET", f"/v1/sessions/{created['id']}"),
                ("GET", "/v1/sessions"),
                ("POST", "/v1/sessions"),
            ):
                resp = await api.client.request(
                    method, path, headers=A, json={"agent_id": "support"}
                )
                assert resp.status == 503, (method, path, await resp.text())
                assert (await resp.json())["error"]["type"] == "store_unavailable"
    finally:
        await proxy.stop()


@pytest.mark.postgres
async def test_archive_unreachable_is_503(tmp_path: Path, redis_prefix: str) -> None:
    pg = urlsplit(POSTGRES_URL)
    proxy = await TcpProxy(pg.port or 5432, pg.hostname or "127.0.0.1").start()
    netloc = f"{pg.username}@127.0.0.1:{proxy.port}" if pg.username else f"127.0.0.1:{proxy.port}"
    url = pg._replace(netloc=netloc).geturl()
    try:
        async with api_on("postgres", tmp_path, redis_prefix, archive_url=url) as api:
            live = await api.create()
            done = await api.create()
            await api.archived(done["id"])
            await proxy.stop()
            resp = await api.client.get(f"/v1/sessions/{done['id']}", headers=A)
            assert resp.status == 503
            assert (await resp.json())["error"]["type"] == "archive_unavailable"
            resp = await api.client.get("/v1/sessions", headers=A)
            assert resp.status == 503
            # A live session is still served from the store.
            resp = await api.client.get(f"/v1/sessions/{live['id']}", headers=A)
            assert resp.status == 200
    finally:
        await proxy.stop()

"""Schemathesis against the running gateway: every operation of /openapi.json, generated requests.

The app runs on a real port in a thread of its own (schemathesis calls it synchronously), on
real Redis and a SQLite archive. Each operation gets a bounded number of examples; every
response must be a documented status, match its documented schema and content type, and never
be a 5xx. Half of the generated session ids are swapped for ids of real sessions, so the
handlers behind the 404 are exercised too.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.conftest import delete_prefix
from tests.integration.api.conftest import A, settings_for

from voice_gateway.app import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

EVERY_OPERATION = {
    "POST /v1/sessions",
    "GET /v1/sessions",
    "GET /v1/sessions/{session_id}",
    "PATCH /v1/sessions/{session_id}",
    "DELETE /v1/sessions/{session_id}",
    "GET /v1/sessions/{session_id}/history",
    "POST /v1/sessions/{session_id}/tools",
    "GET /v1/sessions/{session_id}/tools",
    "DELETE /v1/sessions/{session_id}/tools/{name}",
    "POST /v1/sessions/{session_id}/documents",
    "GET /v1/sessions/{session_id}/documents/search",
}  # (schemathesis leaves out GET /openapi.json, the document it was loaded from)


@dataclass
class LiveServer:
    url: str
    session_ids: list[str]


class ThreadedApp:
    """The app on a real port, served by an event loop in a thread of its own."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> str:
        self._thread.start()
        assert self._ready.wait(30), "the gateway did not start"
        return self.url

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        runner = web.AppRunner(self.app)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    archive = Path(tmp_path_factory.mktemp("schemathesis")) / "archive.db"
    # Hundreds of requests in seconds from one address: above the per-IP rate limit.
    server = ThreadedApp(
        create_app(settings_for(f"sqlite:///{archive}", prefix, api_rate_limit_per_second=1e4))
    )
    url = server.start()
    try:
        session_ids = []
        for i in range(4):
            resp = requests.post(
                f"{url}/v1/sessions",
                json={
                    "agent_id": "support",
                    "name": f"seed {i}",
                    "metadata": {"n": i},
                    "tools": [{"name": "lookup"}],
                },
                headers=A,
                timeout=10,
            )
            assert resp.status_code == 201, resp.text
            session_ids.append(resp.json()["id"])
        yield LiveServer(url, session_ids)
    finally:
        server.stop()
        asyncio.run(delete_prefix(prefix))


def _swap_session_id(case: schemathesis.Case[Any], live_ids: list[str]) -> None:
    """Half the generated session ids become ids of real sessions (deterministically)."""
    session_id = (case.path_parameters or {}).get("session_id")
    if isinstance(session_id, str):
        pick = zlib.crc32(session_id.encode())
        if pick % 2:
            case.path_parameters["session_id"] = live_ids[pick % len(live_ids)]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_behaves_as_its_openapi_document_says(
    live_server: LiveServer, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    http = requests.Session()
    failures: dict[str, str] = {}
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operations.append(result.ok())
    assert {op.label for op in operations} == EVERY_OPERATION

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=20,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case[Any]) -> None:
            _swap_session_id(case, live_server.session_ids)
            case.call_and_validate(base_url=live_server.url, session=http, headers=A, checks=CHECKS)

        try:
            exercise()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:4000]
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())

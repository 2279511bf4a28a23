"""Fixtures for the websocket agent client's tests: a real example agent service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from voice_gateway.agents.example_server import ExampleAgentServer


@pytest.fixture
async def server() -> AsyncIterator[ExampleAgentServer]:
    srv = ExampleAgentServer()
    yield srv
    await srv.close()

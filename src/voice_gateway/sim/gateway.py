"""Run a real gateway in this process, on a free port, for the simulator and the end-to-end tests.

The listening socket is bound *before* the app is built, so ``public_url`` (which Twilio signs
and which goes into the ``<Stream url>``) names the real port.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from voice_gateway.settings import Settings

__all__ = ["RunningGateway", "free_socket", "running_gateway"]


@dataclass
class RunningGateway:
    app: web.Application
    settings: Settings
    runner: web.AppRunner
    #: The gateway's ``public_url`` (``http://127.0.0.1:<port>``).
    url: str
    port: int


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket bound to a free port on ``host``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@asynccontextmanager
async def running_gateway(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    configure: Callable[[web.Application], None] | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningGateway]:
    """``create_app(settings)`` served on a free port of ``host`` until the block exits.

    ``public_url`` is set to ``http://<host>:<port>``; ``overrides`` replace other settings
    (not validated again: pass values of the right type). ``configure`` may change the app
    before it starts (e.g. ``app[appkeys.BRIDGE_FACTORY]`` in tests).
    """
    from voice_gateway.app import create_app

    sock = free_socket(host)
    port = int(sock.getsockname()[1])
    url = f"http://{host}:{port}"
    settings = settings.model_copy(
        update={"public_url": url, "host": host, "port": port, **overrides}
    )
    app = create_app(settings)
    if configure is not None:
        configure(app)
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=settings.drain_timeout_seconds + 5
    )
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        yield RunningGateway(app=app, settings=settings, runner=runner, url=url, port=port)
    finally:
        await runner.cleanup()
        sock.close()

"""The sessions REST API (``/v1``): see docs/api.md.

``setup_api(app)`` mounts it; it is imported lazily so that ``voice_gateway.api.keys`` (the
``keys`` command) loads without the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web


def setup_api(app: web.Application) -> None:
    """Mount ``/v1/...`` and ``/openapi.json`` on ``app`` (see ``routes.setup_api``)."""
    from voice_gateway.api.routes import setup_api as setup

    setup(app)


__all__ = ["setup_api"]

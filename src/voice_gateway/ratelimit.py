"""Per-client-IP rate limit for the REST API: a token bucket per address, bounded memory.

Requests over the limit get 429 with ``Retry-After``. Behind a proxy, set
``api_client_ip_header`` (e.g. ``X-Forwarded-For``) so the limit applies to the caller, not
the proxy; the first address in that header is used.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from voice_gateway.errors import GatewayError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RateLimited(GatewayError):
    status = 429
    type = "rate_limited"


class TokenBuckets:
    """``rate`` tokens per second up to ``burst``, per key; at most ``max_keys`` keys kept."""

    def __init__(self, rate: float, burst: int, max_keys: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, now: float | None = None) -> float:
        """Take one token; returns 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)  # forget the least recently seen address
        return wait


def rate_limit_middleware(
    prefix: str, rate: float, burst: int, client_ip_header: str | None = None
) -> Middleware:
    buckets = TokenBuckets(rate, burst)

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not (request.path == prefix or request.path.startswith(prefix + "/")):
            return await handler(request)
        client = request.remote or "-"
        if client_ip_header:
            forwarded = request.headers.get(client_ip_header, "")
            if forwarded:
                client = forwarded.split(",")[0].strip() or client
        wait = buckets.take(client)
        if wait > 0:
            raise RateLimited(
                f"too many requests from {client}: limit {rate:g}/s, burst {burst}",
                details={"retry_after": math.ceil(wait)},
            )
        return await handler(request)

    return limit

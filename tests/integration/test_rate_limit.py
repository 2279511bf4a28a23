"""The REST API's per-IP rate limit: 429 with Retry-After, other doors untouched."""

from __future__ import annotations

from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from voice_gateway.app import create_app
from voice_gateway.ratelimit import TokenBuckets
from voice_gateway.settings import Settings


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=2)
    assert [buckets.take("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a", now=0.0) == 0.5  # next token in 1/rate s
    assert buckets.take("a", now=0.5) == 0.0
    assert buckets.take("b", now=0.5) == 0.0  # another caller has its own bucket
    buckets.take("c", now=0.5)  # a third address pushes out the least recently seen ("a")
    assert buckets.take("a", now=0.5) == 0.0  # "a" starts over with a full burst


async def test_api_requests_over_the_limit_get_429_and_webhooks_do_not(tmp_path: Path) -> None:
    settings = Settings(
        archive_url=f"sqlite:///{tmp_path / 'a.db'}",
        api_rate_limit_per_second=0.5,
        api_rate_limit_burst=3,
        api_client_ip_header="X-Forwarded-For",
    )
    async with TestClient(TestServer(create_app(settings))) as client:
        statuses = [(await client.get("/v1/sessions")).status for _ in range(3)]
        assert statuses == [401, 401, 401]  # no key: refused, but counted
        limited = await client.get("/v1/sessions")
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        body = await limited.json()
        assert body["error"]["type"] == "rate_limited"
        other = await client.get("/v1/sessions", headers={"X-Forwarded-For": "203.0.113.9"})
        assert other.status == 401  # a different caller behind the proxy is not limited
        for _ in range(5):
            assert (await client.get("/healthz")).status == 200
            assert (await client.post("/twilio/voice")).status in (400, 403)

"""No secrets in Redis or logs; phone numbers masked in every log line of a call."""

from __future__ import annotations

import io
import logging
import re

import pytest
import redis.asyncio as aioredis

from tests.conftest import REDIS_URL
from tests.e2e.conftest import GatewayFactory, speech_audio
from voice_gateway.logs import JsonFormatter, masking_filter

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLER = "+14155550123"


async def test_a_call_leaves_no_secret_in_redis_or_logs(
    gateway_factory: GatewayFactory, redis_prefix: str
) -> None:
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(masking_filter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        gw = await gateway_factory("redis")
        result = await gw.place(audio=speech_audio(), from_number=CALLER)
        assert result.ok, result.errors
        row = await gw.archived(result.session_id or "")
        token_params = re.findall(r'name="token" value="([^"]+)"', result.twiml or "")
        assert token_params, "the TwiML carries a stream token"
        secrets_ = [gw.token, token_params[0]]
        client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            dump = []
            async for key in client.scan_iter(match=f"{redis_prefix}*"):
                kind = await client.type(key)
                if kind == "hash":
                    dump.append(str(await client.hgetall(key)))
                elif kind == "list":
                    dump.append(str(await client.lrange(key, 0, -1)))
                elif kind == "string":
                    dump.append(str(await client.get(key)))
                elif kind == "zset":
                    dump.append(str(await client.zrange(key, 0, -1)))
                elif kind == "stream":
                    dump.append(str(await client.xrange(key)))
                assert await client.ttl(key) > 0, key  # every key expires
        finally:
            await client.aclose()
        stored = "\n".join(dump)
        assert row.id in stored  # we did look at the session's keys
        for secret in secrets_:
            assert secret not in stored
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = sink.getvalue().splitlines()
    assert any(result.call_sid in line for line in lines)
    logged = "\n".join(lines)
    for secret in secrets_:
        assert secret not in logged
    assert CALLER not in logged
    assert "from +*******0123 to" in logged  # the incoming-call line, masked
    call_lines = [line for line in lines if '"session_id"' in line]
    assert call_lines and all(result.call_sid in line for line in call_lines)

"""Webhook benchmark: incoming-call webhooks per second and latency, signatures and sessions on.

    python -m benchmarks.webhooks_bench                       # 500/s fixed rate, then saturation
    python -m benchmarks.webhooks_bench --rate 500 --seconds 10 --saturation-seconds 10
    python -m benchmarks.webhooks_bench --smoke

One gateway process (Redis-backed, SQLite archive) pinned to core 0; the generator runs here,
pinned to core 1. Every request is a distinct, correctly signed incoming call (signed before the
clock starts), so each one checks a signature, opens a session in Redis and answers TwiML.

- Fixed rate: requests are sent on an open-loop schedule; latency is measured from the moment
  each request was *due*, so a slow server cannot hide queueing (no coordinated omission).
- Saturation: ``--connections`` closed-loop workers send back to back; throughput is what the
  gateway sustains.

Before both, a short warm-up (not reported) opens the gateway's connections and loads its
scripts. ``cpu_us_per_req`` is the gateway's CPU time (user + system) per request: on a shared
machine it moves less than throughput does with the neighbours' load.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from benchmarks.common import print_table, write_json
from benchmarks.gateway_proc import GatewayProcess, cpu_seconds
from voice_gateway.telephony.signature import SignatureValidator


def signed_requests(gw: GatewayProcess, n: int) -> list[tuple[bytes, str]]:
    validator = SignatureValidator(gw.auth_token)
    url = gw.base_url + "/twilio/voice"
    out = []
    for _ in range(n):
        form = {
            "CallSid": "CA" + uuid.uuid4().hex,
            "AccountSid": gw.account_sid,
            "From": "+14155550100",
            "To": "+18005550199",
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        out.append((urlencode(form).encode(), validator.sign(url, form)))
    return out


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    s = sorted(values)

    def pick(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))] * 1000

    return {
        "p50_ms": pick(0.50),
        "p95_ms": pick(0.95),
        "p99_ms": pick(0.99),
        "max_ms": s[-1] * 1000,
    }


async def post(http: aiohttp.ClientSession, url: str, body: bytes, sig: str) -> bool:
    async with http.post(
        url,
        data=body,
        headers={"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        await resp.read()
        return resp.status == 200


async def fixed_rate(gw: GatewayProcess, rate: float, seconds: float) -> dict[str, Any]:
    reqs = signed_requests(gw, int(rate * seconds))
    url = gw.base_url + "/twilio/voice"
    latencies: list[float] = []
    errors = 0
    lag: list[float] = []
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector) as http:
        cpu0 = cpu_seconds(gw.pid)
        t0 = time.perf_counter() + 0.2

        async def one(i: int, body: bytes, sig: str) -> None:
            nonlocal errors
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lag.append(max(0.0, time.perf_counter() - due))
            try:
                ok = await post(http, url, body, sig)
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - due)
            errors += 0 if ok else 1

        await asyncio.gather(*(one(i, b, s) for i, (b, s) in enumerate(reqs)))
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(gw.pid) - cpu0
    return {
        "mode": f"fixed {rate:.0f}/s",
        "requests": len(reqs),
        "achieved_per_s": len(reqs) / elapsed,
        **percentiles(latencies),
        "errors": errors,
        "gateway_cpu_s": cpu,
        "cpu_us_per_req": cpu / len(reqs) * 1e6,
        "gen_lag_p99_ms": percentiles(lag)["p99_ms"],
    }


async def saturation(
    gw: GatewayProcess, seconds: float, connections: int, *, max_requests: int | None = None
) -> dict[str, Any]:
    reqs = signed_requests(gw, max_requests or int(4000 * seconds))
    url = gw.base_url + "/twilio/voice"
    latencies: list[float] = []
    errors = 0
    next_req = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        cpu0 = cpu_seconds(gw.pid)
        start = time.perf_counter()
        stop_at = start + seconds

        async def worker() -> None:
            nonlocal next_req, errors
            while time.perf_counter() < stop_at and next_req < len(reqs):
                body, sig = reqs[next_req]
                next_req += 1
                sent = time.perf_counter()
                try:
                    ok = await post(http, url, body, sig)
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - sent)
                errors += 0 if ok else 1

        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(gw.pid) - cpu0
    return {
        "mode": f"saturation x{connections}",
        "requests": len(latencies),
        "achieved_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
        "errors": errors,
        "gateway_cpu_s": cpu,
        "cpu_us_per_req": cpu / max(1, len(latencies)) * 1e6,
        "gen_lag_p99_ms": 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--saturation-seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="2 s at 100/s and 2 s saturated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.rate, args.seconds, args.saturation_seconds = 100, 2, 2
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the generator stays off the gateway's core
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp))
        gw.start()
        try:
            asyncio.run(saturation(gw, 2.0, 8, max_requests=300))  # warm-up, not reported
            rows.append(asyncio.run(fixed_rate(gw, args.rate, args.seconds)))
            rows.append(asyncio.run(saturation(gw, args.saturation_seconds, args.connections)))
        finally:
            gw.stop()
    print_table(
        "incoming-call webhooks (signature check + Redis session + TwiML), one gateway core", rows
    )
    path = write_json("webhooks", {"results": rows}, args.json)
    print(f"\nresults: {path}")
    failed = sum(r["errors"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Call-capacity benchmark: N concurrent simulated Twilio calls through the whole gateway.

    python -m benchmarks.calls_bench                          # N = 50, 100, 200
    python -m benchmarks.calls_bench --calls 50,100,200,300 --workers 4
    python -m benchmarks.calls_bench --smoke                  # 10 s, 5 calls

One gateway process (``voice-gateway serve``: echo agent, Redis live state, SQLite archive,
signatures on, default VAD) is pinned to core 0. The simulator (``voice_gateway.sim``) runs in
``--workers`` processes pinned to core 1; each places its share of the calls, staggered over
``--ramp`` seconds, every call playing the spoken fixture (4 utterances, 18.4 s) at real 20 ms
pace through the signed webhook, TwiML, the media stream and the status callback.

Reported per N:
- gateway CPU-seconds per call-minute of caller audio (utime+stime of the gateway and its
  children from /proc, over the whole wave);
- turn response latency p50/p95/p99: last speech frame sent -> first reply frame received
  (it includes the configured end-of-turn silence, 600 ms by default); the last speech frame
  is the fixture's exact turn boundary, not the simulator's energy detector's guess;
- unanswered turns (utterances with no reply before the next one started);
- generator lateness (how far behind its 20 ms schedule the simulator sent); a run whose
  generator fell behind (p99 > 20 ms or max > 200 ms) is marked INVALID: its latencies
  describe the generator, not the gateway;
- generator CPU: CPU-seconds (user + system) of the simulator worker processes, whole
  lifetime, and ``gen_cpu_share``, that over the wave's wall time, as a share of one core
  (the workers share core 1): the generator's headroom;
- peak RSS of the gateway (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_table, write_json
from benchmarks.gateway_proc import GatewayProcess, cpu_split, peak_rss_mb

FIXTURE_UTTERANCES = 4
LATE_P99_LIMIT_MS = 20.0
LATE_MAX_LIMIT_MS = 200.0


def _worker(
    base_url: str,
    token: str,
    account_sid: str,
    calls: int,
    ramp: float,
    seconds: float | None,
    cpu: int | None,
    out: Any,
) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    results = asyncio.run(_run_calls(base_url, token, account_sid, calls, ramp, seconds))
    usage = resource.getrusage(resource.RUSAGE_SELF)  # this worker's whole life, imports too
    out.put({"results": results, "cpu_s": usage.ru_utime + usage.ru_stime, "sys_s": usage.ru_stime})


async def _run_calls(
    base_url: str, token: str, account_sid: str, calls: int, ramp: float, seconds: float | None
) -> list[dict[str, Any]]:
    import aiohttp

    from voice_gateway.sim.audio import caller_recording, caller_recording_speech
    from voice_gateway.sim.caller import CallConfig, SimulatedCall

    audio = caller_recording()
    speech = caller_recording_speech()  # the fixture's exact turn boundaries
    results: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def one(i: int) -> None:
            await asyncio.sleep(ramp * i / max(1, calls))
            config = CallConfig(
                base_url=base_url,
                auth_token=token,
                account_sid=account_sid,
                audio=audio,
                speech=speech,
                loop_seconds=seconds,
                trailing_silence_ms=1500,
                http_timeout=60.0,
            )
            r = await SimulatedCall(config, http=http).run()
            results.append(
                {
                    "ok": r.ok,
                    "errors": r.errors[:3],
                    "utterances": len(r.utterances()),
                    "latencies": r.turn_latencies_ms(),
                    "barge_ins": r.barge_in_ms(),
                    "lateness": r.lateness_ms,
                    "audio_s": r.frames_sent * 0.02,
                }
            )

        await asyncio.gather(*(one(i) for i in range(calls)))
    return results


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def run_wave(
    gw: GatewayProcess,
    calls: int,
    workers: int,
    ramp: float,
    seconds: float | None,
    gen_cpu: int | None,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    shares = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]
    user0, sys0 = cpu_split(gw.pid)
    started = time.perf_counter()
    procs = [
        ctx.Process(
            target=_worker,
            args=(gw.base_url, gw.auth_token, gw.account_sid, n, ramp, seconds, gen_cpu, queue),
        )
        for n in shares
        if n
    ]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    gen_cpu_s = gen_sys_s = 0.0
    for _ in procs:
        done = queue.get(timeout=600)
        results += done["results"]
        gen_cpu_s += done["cpu_s"]
        gen_sys_s += done["sys_s"]
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    time.sleep(2.0)  # the status-callback grace and archiver finish their share of the work
    user1, sys1 = cpu_split(gw.pid)
    cpu = (user1 - user0) + (sys1 - sys0)
    latencies = [x for r in results for x in r["latencies"]]
    lateness = [x for r in results for x in r["lateness"]]
    audio_min = sum(r["audio_s"] for r in results) / 60
    expected_turns = sum(r["utterances"] for r in results)
    late_p99, late_max = pct(lateness, 99), max(lateness, default=0.0)
    valid = late_p99 <= LATE_P99_LIMIT_MS and late_max <= LATE_MAX_LIMIT_MS
    return {
        "calls": calls,
        "ok": sum(1 for r in results if r["ok"]),
        "cpu_s_per_call_min": cpu / audio_min if audio_min else float("nan"),
        "sys_share": (sys1 - sys0) / cpu if cpu else float("nan"),
        "turn_p50_ms": pct(latencies, 50),
        "turn_p95_ms": pct(latencies, 95),
        "turn_p99_ms": pct(latencies, 99),
        "unanswered": expected_turns - len(latencies),
        "barge_in_p95_ms": pct([x for r in results for x in r["barge_ins"]], 95),
        "gen_late_p99_ms": late_p99,
        "gen_late_max_ms": late_max,
        "gen_cpu_s": gen_cpu_s,
        "gen_sys_share": gen_sys_s / gen_cpu_s if gen_cpu_s else float("nan"),
        "gen_cpu_share": gen_cpu_s / wall,
        "peak_rss_mb": peak_rss_mb(gw.pid),
        "wall_s": wall,
        "valid": "yes" if valid else "INVALID",
        "errors": sorted({e for r in results for e in r["errors"]})[:5],
    }


def run_waves(
    server: GatewayProcess, calls: str, workers: int, ramp: float, seconds: float, multi_core: bool
) -> list[dict[str, Any]]:
    """One ``run_wave`` per N of the comma-separated ``calls``, each printed as it ends; the
    simulator on core 1 when there is one (the server is on core 0)."""
    rows = []
    for n in (int(x) for x in calls.split(",")):
        row = run_wave(server, n, max(1, min(workers, n)), ramp, seconds, 1 if multi_core else None)
        print(f"N={n}: {row}", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="50,100,200", help="comma-separated N values")
    parser.add_argument("--workers", type=int, default=4, help="simulator processes")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which calls start")
    parser.add_argument("--seconds", type=float, default=None, help="loop/cut the audio to this")
    parser.add_argument(
        "--outbound-frame-ms", type=int, default=None, help="gateway setting outbound_frame_ms"
    )
    parser.add_argument(
        "--inbound-read-interval-ms",
        type=int,
        default=None,
        help="gateway setting inbound_read_interval_ms (read coalescing)",
    )
    parser.add_argument("--smoke", action="store_true", help="5 calls of 10 s: checks it works")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.workers, args.ramp, args.seconds = "5", 1, 1.0, 10.0
    multi_core = (os.cpu_count() or 1) > 1
    with tempfile.TemporaryDirectory() as tmp:
        extra = {}
        if args.outbound_frame_ms:
            extra["VOICE_GATEWAY_OUTBOUND_FRAME_MS"] = str(args.outbound_frame_ms)
        if args.inbound_read_interval_ms is not None:
            extra["VOICE_GATEWAY_INBOUND_READ_INTERVAL_MS"] = str(args.inbound_read_interval_ms)
        gw = GatewayProcess(Path(tmp), cpu=0 if multi_core else None, extra_env=extra)
        gw.start()
        try:
            # Warm-up (not reported): the first calls import and initialise what the gateway
            # loads lazily (agents, VAD, codecs), ~2 CPU-s that would be charged to the first N.
            run_wave(gw, 2, 1, 0.0, 3.0, 1 if multi_core else None)
            rows = run_waves(gw, args.calls, args.workers, args.ramp, args.seconds, multi_core)
        finally:
            gw.stop()
    print_table(
        "concurrent calls: echo agent, Redis state, default VAD; gateway core 0, simulator core 1",
        [{k: v for k, v in r.items() if k != "errors"} for r in rows],
    )
    path = write_json(
        "calls", {"results": rows, "args": vars(args) | {"json": str(args.json)}}, args.json
    )
    print(f"\nresults: {path}")
    return 0 if all(r["ok"] == r["calls"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak benchmark: about N concurrent calls for a long time against one gateway. Is memory flat?

    python -m benchmarks.soak_bench --minutes 60 --calls 30
    python -m benchmarks.soak_bench --smoke                   # ~20 s, 3 calls: checks it works

One gateway process (``voice-gateway serve``: echo agent, Redis live state, SQLite archive,
signatures on) is pinned to core 0 when there are two or more. The simulator runs in
``--workers`` processes (pinned to core 1): each keeps its share of ``--calls`` call slots busy,
starting a new call as soon as one ends, until ``--minutes`` have passed; every call plays the
spoken fixture (4 utterances, 18.4 s; ``--call-seconds`` cuts or loops it) at real 20 ms pace
through the signed webhook, the media stream and the status callback.

Every ``--sample-seconds`` (10) the gateway's resident memory (VmRSS) and CPU (utime + stime,
as % of one core over the interval) are read from /proc. The table has one row per minute
(calls done so far, RSS, mean CPU of the minute). The verdict fits a line through the RSS
samples of the second half of the run (the first half includes warm-up: pools, caches,
allocator arenas) and calls memory flat when the slope stays under ``--max-slope`` MB per hour.
Results go to ``benchmarks/results/soak-<time>.json`` (or ``--json``).

Exit status: 0 when every call completed normally and memory is flat (a smoke run is too short
for a verdict, so only the calls count), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import print_table, write_json
from benchmarks.gateway_proc import GatewayProcess, cpu_seconds

#: A smoke run places calls for this long (the last ones then finish: ~20 s in all).
SMOKE_SECONDS = 12.0
LATE_P99_LIMIT_MS = 20.0
LATE_MAX_LIMIT_MS = 200.0


def rss_mb(pid: int) -> float:
    """Resident memory of the process now (VmRSS), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the simulator (worker processes) --------------------------------------------------------


def _worker(
    base_url: str,
    token: str,
    account_sid: str,
    slots: int,
    seconds: float,
    call_seconds: float | None,
    cpu: int | None,
    out: Any,
) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    try:
        asyncio.run(_run_slots(base_url, token, account_sid, slots, seconds, call_seconds, out))
    finally:
        out.put(None)  # this worker is done


async def _run_slots(
    base_url: str,
    token: str,
    account_sid: str,
    slots: int,
    seconds: float,
    call_seconds: float | None,
    out: Any,
) -> None:
    import aiohttp

    from voice_gateway.sim.audio import caller_recording, caller_recording_speech
    from voice_gateway.sim.caller import CallConfig, SimulatedCall

    audio = caller_recording()
    speech = caller_recording_speech()  # the fixture's exact turn boundaries
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    # Stagger the first calls over one call's length, so the slots do not end (and start)
    # in lockstep.
    spread = min(10.0, call_seconds or len(audio) / 8000)

    async def slot(i: int, http: aiohttp.ClientSession) -> None:
        await asyncio.sleep(spread * i / max(1, slots))
        while loop.time() < stop_at:
            config = CallConfig(
                base_url=base_url,
                auth_token=token,
                account_sid=account_sid,
                audio=audio,
                speech=speech,
                loop_seconds=call_seconds,
                trailing_silence_ms=1000,
                http_timeout=60.0,
            )
            r = await SimulatedCall(config, http=http).run()
            out.put(
                {
                    "ok": r.ok,
                    "errors": r.errors[:3],
                    "utterances": len(r.utterances()),
                    "replies": len(r.turn_latencies_ms()),
                    "late_p99_ms": r.lateness_p99_ms,
                    "late_max_ms": r.lateness_max_ms,
                    "audio_s": r.frames_sent * 0.02,
                }
            )

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        await asyncio.gather(*(slot(i, http) for i in range(slots)))


# -- sampling --------------------------------------------------------------------------------


def run_soak(
    gw: GatewayProcess,
    *,
    calls: int,
    workers: int,
    seconds: float,
    call_seconds: float | None,
    sample_seconds: float,
    gen_cpu: int | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the soak; returns the samples and one summary per finished call."""
    ctx = mp.get_context("spawn")
    results: Any = ctx.Queue()
    shares = [calls // workers + (1 if i < calls % workers else 0) for i in range(workers)]
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                gw.base_url,
                gw.auth_token,
                gw.account_sid,
                n,
                seconds,
                call_seconds,
                gen_cpu,
                results,
            ),
            daemon=True,
        )
        for n in shares
        if n
    ]
    started = time.monotonic()
    last_t, last_cpu = started, cpu_seconds(gw.pid)
    samples: list[dict[str, Any]] = [
        {"t_s": 0.0, "calls_done": 0, "rss_mb": rss_mb(gw.pid), "cpu_pct": 0.0}
    ]
    done: list[dict[str, Any]] = []
    for p in procs:
        p.start()
    running = len(procs)
    next_sample = started + sample_seconds
    try:
        while running:
            try:
                item = results.get(timeout=max(0.0, next_sample - time.monotonic()))
                if item is None:
                    running -= 1
                else:
                    done.append(item)
            except queue.Empty:
                if not any(p.is_alive() for p in procs):  # a worker died without a word
                    break
            now = time.monotonic()
            if now < next_sample:
                continue
            if gw.proc is not None and gw.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited with {gw.proc.returncode} mid-soak")
            cpu = cpu_seconds(gw.pid)
            sample = {
                "t_s": round(now - started, 1),
                "calls_done": len(done),
                "rss_mb": round(rss_mb(gw.pid), 2),
                "cpu_pct": round(100 * (cpu - last_cpu) / (now - last_t), 1),
            }
            samples.append(sample)
            last_t, last_cpu = now, cpu
            next_sample += sample_seconds
            if int(sample["t_s"] // 60) > int(samples[-2]["t_s"] // 60):  # a minute passed
                print(
                    f"  {sample['t_s'] / 60:5.1f} min: {len(done)} calls, "
                    f"RSS {sample['rss_mb']:.1f} MB, CPU {sample['cpu_pct']:.0f}%",
                    flush=True,
                )
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    if gw.proc is not None and gw.proc.poll() is None:  # the last sample counts every call
        now, cpu = time.monotonic(), cpu_seconds(gw.pid)
        samples.append(
            {
                "t_s": round(now - started, 1),
                "calls_done": len(done),
                "rss_mb": round(rss_mb(gw.pid), 2),
                "cpu_pct": round(100 * (cpu - last_cpu) / max(1e-9, now - last_t), 1),
            }
        )
    return samples, done


def per_minute(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per minute of the run (the last, partial one too): calls done by its end, RSS at
    its end, mean CPU over it."""
    rows: list[dict[str, Any]] = []
    bucket: list[dict[str, Any]] = []
    boundary = 60.0
    measured = samples[1:]
    for i, s in enumerate(measured):
        bucket.append(s)
        if s["t_s"] >= boundary or i == len(measured) - 1:
            rows.append(
                {
                    "minute": f"{s['t_s'] / 60:.1f}",
                    "calls done": s["calls_done"],
                    "RSS MB": f"{s['rss_mb']:.1f}",
                    "CPU %": f"{sum(b['cpu_pct'] for b in bucket) / len(bucket):.1f}",
                }
            )
            bucket = []
            while boundary <= s["t_s"]:
                boundary += 60.0
    return rows


def rss_slope_mb_per_hour(samples: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of RSS over the second half of the run, in MB per hour."""
    if not samples:
        return None
    half = samples[-1]["t_s"] / 2
    points = [(float(s["t_s"]) / 3600, float(s["rss_mb"])) for s in samples if s["t_s"] >= half]
    if len(points) < 3:
        return None
    mean_t = sum(t for t, _ in points) / len(points)
    mean_m = sum(m for _, m in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mean_t) * (m - mean_m) for t, m in points) / var


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to keep calling")
    parser.add_argument("--calls", type=int, default=30, help="concurrent calls to keep going")
    parser.add_argument("--workers", type=int, default=1, help="simulator processes")
    parser.add_argument("--call-seconds", type=float, default=None, help="cut/loop the audio")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS/CPU interval")
    parser.add_argument(
        "--max-slope", type=float, default=10.0, help="flat memory: RSS slope under this MB/h"
    )
    parser.add_argument("--smoke", action="store_true", help="~20 s, 3 calls: checks it works")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes, args.calls, args.workers = SMOKE_SECONDS / 60, 3, 1
        args.call_seconds, args.sample_seconds = 5.0, 2.0
    if args.calls <= 0 or args.minutes <= 0 or args.sample_seconds <= 0:
        parser.error("--calls, --minutes and --sample-seconds must be positive")
    workers = max(1, min(args.workers, args.calls))
    multi_core = (os.cpu_count() or 1) > 1
    print(
        f"soak: {args.calls} concurrent calls for {args.minutes:g} min, "
        f"sampling every {args.sample_seconds:g} s",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        gw = GatewayProcess(Path(tmp), cpu=0 if multi_core else None)
        gw.start()
        try:
            samples, calls = run_soak(
                gw,
                calls=args.calls,
                workers=workers,
                seconds=args.minutes * 60,
                call_seconds=args.call_seconds,
                sample_seconds=args.sample_seconds,
                gen_cpu=1 if multi_core else None,
            )
        finally:
            gw.stop()

    rows = per_minute(samples)
    print_table(
        f"soak: {args.calls} concurrent calls, echo agent, Redis state (gateway on core 0)", rows
    )
    ok = sum(1 for c in calls if c["ok"])
    failed = len(calls) - ok
    errors = sorted({e for c in calls for e in c["errors"]})[:5]
    utterances = sum(c["utterances"] for c in calls)
    replies = sum(c["replies"] for c in calls)
    late_p99 = max((c["late_p99_ms"] for c in calls), default=0.0)
    late_max = max((c["late_max_ms"] for c in calls), default=0.0)
    generator_ok = late_p99 <= LATE_P99_LIMIT_MS and late_max <= LATE_MAX_LIMIT_MS
    slope = rss_slope_mb_per_hour(samples)
    start_rss, end_rss = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    trend = (
        "n/a" if slope is None else f"{slope:+.1f} MB/h over the second half"
    ) + f" (limit {args.max_slope:g} MB/h); RSS {start_rss:.1f} -> {end_rss:.1f} MB"
    flat: bool | None = None
    if args.smoke:
        verdict = f"no verdict, a smoke run is too short: RSS slope {trend}"
    elif slope is None:
        verdict = f"no verdict, too few samples in the second half: {trend}"
    else:
        flat = slope <= args.max_slope
        verdict = f"memory {'flat' if flat else 'GROWING'}: RSS slope {trend}"
    print(
        f"\ncalls: {len(calls)} done, {ok} ok, {failed} failed; "
        f"replies {replies}/{utterances} utterances; "
        f"generator lateness: worst call's p99 {late_p99:.1f} ms, max {late_max:.1f} ms"
        + ("" if generator_ok else " (generator overloaded: calls were not real-time)")
    )
    if errors:
        print(f"errors: {errors}")
    print(f"verdict: {verdict}")
    path = write_json(
        "soak",
        {
            "args": vars(args) | {"json": str(args.json)},
            "samples": samples,
            "minutes": rows,
            "calls": {
                "done": len(calls),
                "ok": ok,
                "failed": failed,
                "errors": errors,
                "utterances": utterances,
                "replies": replies,
                "generator_late_p99_ms": late_p99,
                "generator_late_max_ms": late_max,
                "generator_ok": generator_ok,
            },
            "rss_slope_mb_per_hour": slope,
            "memory_flat": flat,
            "verdict": verdict,
        },
        args.json,
    )
    print(f"results: {path}")
    calls_ok = bool(calls) and failed == 0
    return 0 if calls_ok and (args.smoke or flat) else 1


if __name__ == "__main__":
    sys.exit(main())

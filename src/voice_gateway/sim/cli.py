"""``voice-gateway simulate``: place simulated Twilio calls against a gateway and report.

Without ``--url`` it starts a gateway in this process (from the config, on a free port, with
signature checks on and a generated auth token shared with the simulator) plus the fake Twilio
REST API, so ``voice-gateway simulate --calls 3`` works on a fresh machine with no setup.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from voice_gateway.sim.audio import caller_recording, caller_recording_speech
from voice_gateway.sim.caller import (
    DEFAULT_FROM,
    DEFAULT_TO,
    CallConfig,
    CallResult,
    SimRegistry,
    SimulatedCall,
    new_account_sid,
    percentile,
)

__all__ = ["SimulationReport", "register", "run_simulation", "summary_lines"]

log = logging.getLogger(__name__)


def register(
    subparsers: Any, config_arg: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add the ``simulate`` subcommand to the ``voice-gateway`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="place simulated Twilio calls (exact wire protocol) and report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_arg(parser)
    parser.add_argument(
        "--url",
        help="public URL of a running gateway (default: start one in this process)",
    )
    parser.add_argument("--calls", type=_positive_int, default=1, help="calls to place (1)")
    parser.add_argument(
        "--concurrency", type=_positive_int, default=10, help="calls in flight at once (10)"
    )
    parser.add_argument(
        "--audio",
        type=Path,
        help="raw mu-law 8 kHz mono file for the caller (default: the packaged recording)",
    )
    parser.add_argument(
        "--loop", type=float, metavar="SECONDS", help="loop (or cut) the audio to SECONDS"
    )
    parser.add_argument(
        "--trailing-silence",
        type=int,
        default=0,
        metavar="MS",
        help="silence after the audio before hanging up (0)",
    )
    parser.add_argument("--from", dest="from_number", default=DEFAULT_FROM, help="caller number")
    parser.add_argument("--to", dest="to_number", default=DEFAULT_TO, help="called number")
    parser.add_argument(
        "--auth-token", help="Twilio auth token to sign with (default: from the settings)"
    )
    parser.add_argument(
        "--account-sid", help="Twilio account SID (default: from the settings, else generated)"
    )
    parser.add_argument("--test", action="store_true", help="mark the calls as test calls")
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level of the in-process gateway and the simulator (WARNING)",
    )
    parser.set_defaults(func=cmd_simulate)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


class SimulationReport:
    """The results of a run and what the summary is computed from."""

    def __init__(self, results: Sequence[CallResult], elapsed_s: float) -> None:
        self.results = list(results)
        self.elapsed_s = elapsed_s

    @property
    def failed(self) -> list[CallResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.failed


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def summary_lines(report: SimulationReport) -> list[str]:
    results = report.results
    n = len(results) or 1
    codes = Counter("-" if r.close_code is None else str(r.close_code) for r in results)
    latencies = [x for r in results for x in r.turn_latencies_ms()]
    barge = [x for r in results for x in r.barge_in_ms()]
    lateness = [x for r in results for x in r.lateness_ms]
    late_max = max(lateness, default=0.0)
    late_p99 = percentile(lateness, 99) or 0.0
    rows = [
        ("calls", str(len(results))),
        ("completed", str(sum(r.ok for r in results))),
        ("refused", str(sum(r.refused for r in results))),
        ("failed", str(len(report.failed))),
        ("close codes", ", ".join(f"{c} x{k}" for c, k in sorted(codes.items())) or "-"),
        ("media frames sent", str(sum(r.frames_sent for r in results))),
        ("media frames received", str(sum(r.media_received for r in results))),
        ("replies per call", f"{len(latencies) / n:.1f}"),
        ("turn latency p50", _ms(percentile(latencies, 50))),
        ("turn latency p95", _ms(percentile(latencies, 95))),
        ("barge-in reaction p50", _ms(percentile(barge, 50))),
        ("generator lateness", f"max {late_max:.1f} ms, p99 {late_p99:.1f} ms"),
        ("wall time", f"{report.elapsed_s:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    return [f"  {k.ljust(width)}  {v}" for k, v in rows]


async def run_simulation(
    base_url: str,
    auth_token: str,
    *,
    calls: int,
    concurrency: int,
    make_config: Callable[[int], dict[str, Any]],
    registry: SimRegistry | None = None,
    on_result: Callable[[int, CallResult], None] | None = None,
) -> SimulationReport:
    """Place ``calls`` calls, at most ``concurrency`` at once; ``make_config(i)`` gives the
    :class:`CallConfig` fields of call ``i`` (besides ``base_url``/``auth_token``)."""
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)
    results: list[CallResult | None] = [None] * calls
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            async with gate:
                config = CallConfig(
                    base_url=base_url, auth_token=auth_token, registry=registry, **make_config(i)
                )
                result = await SimulatedCall(config, http=http).run()
                results[i] = result
                if on_result is not None:
                    on_result(i, result)

        await asyncio.gather(*(one(i) for i in range(calls)))
    done = [r for r in results if r is not None]
    return SimulationReport(done, time.perf_counter() - started)


def cmd_simulate(args: argparse.Namespace) -> int:
    from voice_gateway.settings import load_settings

    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.audio is not None:
        try:
            audio = args.audio.read_bytes()
        except OSError as exc:
            print(f"cannot read --audio {args.audio}: {exc}", file=sys.stderr)
            return 2
    else:
        audio = caller_recording()
    if not audio and not args.loop:
        print("the audio is empty", file=sys.stderr)
        return 2
    if args.url:
        settings = load_settings(args.config)
        token = args.auth_token or (
            settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
        )
        if not token:
            print(
                "no auth token: pass --auth-token or set twilio_auth_token in the config",
                file=sys.stderr,
            )
            return 2
        account_sid = args.account_sid or settings.twilio_account_sid or new_account_sid()
        return asyncio.run(
            _simulate(args, args.url.rstrip("/"), token, account_sid, audio, settings.test_marker)
        )
    return asyncio.run(_simulate_in_process(args, audio))


async def _simulate_in_process(args: argparse.Namespace, audio: bytes) -> int:
    from voice_gateway.settings import load_settings
    from voice_gateway.sim.gateway import running_gateway
    from voice_gateway.sim.twilio_api import FakeTwilioApi

    token = args.auth_token or secrets.token_urlsafe(24)
    account_sid = args.account_sid or new_account_sid()
    registry = SimRegistry()
    async with FakeTwilioApi(account_sid, token, registry=registry) as api:
        settings = load_settings(
            args.config,
            validate_signatures=True,
            twilio_auth_token=token,
            twilio_account_sid=account_sid,
            twilio_api_base_url=api.url,
            log_level=args.log_level,
        )
        logging.getLogger("voice_gateway").setLevel(args.log_level)
        async with running_gateway(settings) as gateway:
            print(f"in-process gateway at {gateway.url} (fake Twilio API at {api.url})")
            return await _simulate(
                args, gateway.url, token, account_sid, audio, settings.test_marker, registry
            )


async def _simulate(
    args: argparse.Namespace,
    base_url: str,
    token: str,
    account_sid: str,
    audio: bytes,
    test_marker: str,
    registry: SimRegistry | None = None,
) -> int:
    def make_config(_i: int) -> dict[str, Any]:
        return {
            "account_sid": account_sid,
            "from_number": args.from_number,
            "to_number": args.to_number,
            "audio": audio,
            # The packaged recording comes with its exact turn boundaries; other audio is
            # segmented by the energy detector.
            "speech": caller_recording_speech() if args.audio is None else None,
            "loop_seconds": args.loop,
            "trailing_silence_ms": args.trailing_silence,
            "webhook_query": f"{test_marker}=1" if args.test else "",
        }

    def on_result(i: int, result: CallResult) -> None:
        print(f"call {i + 1}/{args.calls}: {result.summary()}", flush=True)

    report = await run_simulation(
        base_url,
        token,
        calls=args.calls,
        concurrency=args.concurrency,
        make_config=make_config,
        registry=registry,
        on_result=on_result,
    )
    print("summary:")
    for line in summary_lines(report):
        print(line)
    return 0 if report.ok else 1

"""``voice-gateway`` command line: serve, config check, export, archiver, keys, simulate."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voice_gateway.errors import ConfigError
from voice_gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from aiohttp import web

# Each command imports what it needs when it runs: ``voice-gateway export`` (an analyst's
# command, run often, in scripts) should not pay for importing the web server, the simulator
# and the agents (about a second).

log = logging.getLogger("voice_gateway")


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default: $VOICE_GATEWAY_CONFIG, else config/gateway.toml)",
    )


def _load(args: argparse.Namespace, **overrides: Any) -> Settings:
    return load_settings(args.config, **{k: v for k, v in overrides.items() if v is not None})


def cmd_serve(args: argparse.Namespace) -> int:
    from voice_gateway.app import create_app
    from voice_gateway.logs import setup_logging

    settings = _load(args, host=args.host, port=args.port)
    setup_logging(settings.log_level, settings.log_format)
    log.info(
        "voice-gateway listening on http://%s:%d (public URL %s)",
        settings.host,
        settings.port,
        settings.public_url,
    )
    asyncio.run(serve(create_app(settings), settings.host, settings.port))
    return 0


def freeze_startup_heap() -> None:
    """Move everything allocated so far (modules, the app, pools: ~130k objects in ``serve``)
    out of the cyclic GC's reach. They live as long as the process, and every full collection
    would scan them again: in ``serve``, 60-70 ms pauses every ~10 s under webhook load
    (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()


#: How long a drained instance keeps listening after its last call, for the status callbacks.
CALLBACK_LINGER_SECONDS = 2.0


async def serve(app: web.Application, host: str, port: int) -> None:
    """Run until SIGTERM/SIGINT, then drain: readiness goes false while the listener stays
    open (new calls are refused with a busy signal, load balancers see /readyz fail), live
    calls run up to ``drain_timeout_seconds``, the rest end going-away, and we return."""
    from aiohttp import web

    from voice_gateway import appkeys

    settings = app[appkeys.SETTINGS]
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        freeze_startup_heap()
        log.info("voice-gateway ready on http://%s:%d", host, port)
        await stop.wait()
        log.info("shutdown requested: draining (up to %.0fs)", settings.drain_timeout_seconds)
        app[appkeys.DRAINING].set()
        if await app[appkeys.CALLS].drain(settings.drain_timeout_seconds):
            # Twilio posts a call's status callback just after its stream ends: stay up a
            # moment to take it (a lone instance would otherwise leave it to the sweeper).
            await asyncio.sleep(min(CALLBACK_LINGER_SECONDS, settings.status_grace_seconds))
    finally:
        await runner.cleanup()
        log.info("voice-gateway stopped")


def cmd_config_check(args: argparse.Namespace) -> int:
    from voice_gateway.archive.db import redact_url

    settings = _load(args)
    source = args.config or "embedded defaults / environment"
    print(f"{source}: OK")
    print(f"  public URL: {settings.public_url}")
    print(f"  listen: {settings.host}:{settings.port}")
    print(f"  store: {'redis' if settings.redis_url else 'in-memory (embedded)'}")
    print(f"  archive: {redact_url(settings.archive_url.get_secret_value())}")
    print(f"  agents: {', '.join(a.id for a in settings.agents)}")
    print(f"  numbers: {len(settings.numbers)} routed; fallback agent: {settings.fallback_agent}")
    if settings.twilio_auth_token is None:
        print(
            "  warning: no Twilio auth token: every signed webhook will be refused", file=sys.stderr
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from voice_gateway.archive.export import run_export

    settings = _load(args)
    freeze_startup_heap()  # the export's main thread allocates briskly: ~8% of it went to GC
    return asyncio.run(
        run_export(args, settings.archive_url.get_secret_value(), schema=settings.archive_schema)
    )


def cmd_archiver(args: argparse.Namespace) -> int:
    """Run only the archiver (for deployments that separate it from the web instances)."""
    from voice_gateway.app import instance_name
    from voice_gateway.archive.archiver import Archiver
    from voice_gateway.archive.db import Archive
    from voice_gateway.logs import setup_logging
    from voice_gateway.sessions.store import create_store

    settings = _load(args)
    setup_logging(settings.log_level, settings.log_format)
    if not settings.redis_url:
        raise ConfigError("the archiver alone needs a shared store: set VOICE_GATEWAY_REDIS_URL")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        store = create_store(settings)
        archive = await Archive.open(
            settings.archive_url.get_secret_value(), schema=settings.archive_schema
        )
        try:
            await Archiver(store, archive, consumer=f"archiver-{instance_name()}").run(stop)
        finally:
            await archive.close()
            await store.close()

    asyncio.run(main())
    return 0


def _register_simulate(sub: Any) -> None:
    from voice_gateway.sim.cli import register

    register(sub, _config_arg)


def _register_keys(sub: Any) -> None:
    from voice_gateway.api.keys import register

    register(sub, _config_arg)


#: The commands ``build_parser`` defines itself.
_OWN = frozenset({"serve", "config", "export", "archiver"})
#: Commands whose options live (and are imported) elsewhere: registered only when they can be
#: the one that runs (see ``build_parser``).
_ELSEWHERE: dict[str, Callable[[Any], None]] = {
    "simulate": _register_simulate,
    "keys": _register_keys,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``voice-gateway`` parser. ``command``: the subcommand that will run, when it is
    known to be one of this module's (then the others' modules are not imported)."""
    parser = argparse.ArgumentParser(prog="voice-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    _config_arg(serve)
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 8080)")
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate a config and print what is wrong")
    _config_arg(check)
    check.set_defaults(func=cmd_config_check)

    export = sub.add_parser("export", help="write archived sessions as CSV, JSON Lines or Parquet")
    _config_arg(export)
    if command in (None, "export") or command not in _OWN:  # its module imports pyarrow
        from voice_gateway.archive.export import add_export_arguments

        add_export_arguments(export)
    export.set_defaults(func=cmd_export)

    archiver = sub.add_parser("archiver", help="run only the archiver (Redis store required)")
    _config_arg(archiver)
    archiver.set_defaults(func=cmd_archiver)

    if command is None or command not in _OWN:
        for register in _ELSEWHERE.values():
            register(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (the first argument not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"config error:\n{exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `voice-gateway export | head`: the reader left
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

"""The aiohttp application: one factory, one error middleware, a cleanup context per resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from voice_gateway import appkeys
from voice_gateway.agents.bridge import AgentBridge
from voice_gateway.agents.registry import build_agents
from voice_gateway.api import setup_api
from voice_gateway.archive.archiver import Archiver
from voice_gateway.archive.db import Archive
from voice_gateway.errors import GatewayError
from voice_gateway.metrics import Metrics
from voice_gateway.ratelimit import rate_limit_middleware
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import Session
from voice_gateway.sessions.store import create_store
from voice_gateway.sessions.sweeper import run_sweeper
from voice_gateway.settings import Settings
from voice_gateway.telephony.bridge import CallBridge, SilentBridge
from voice_gateway.telephony.calls import CallRegistry
from voice_gateway.telephony.rest import TwilioRestClient
from voice_gateway.telephony.webhooks import setup_routes as setup_telephony

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(
    exc_type: str, message: str, details: dict[str, object] | None = None
) -> dict[str, object]:
    return {"error": {"type": exc_type, "message": message, "details": details or {}}}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as ``{"error": {"type", "message", "details"}}`` with its status."""
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.path, exc.message)
        headers = {"Retry-After": str(exc.details["retry_after"])} if exc.status == 429 else None
        return web.json_response(
            error_body(exc.type, exc.message, exc.details), status=exc.status, headers=headers
        )
    except web.HTTPException as exc:
        if exc.status < 400 or exc.empty_body:
            raise
        kind = {
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status, "http_error")
        return web.json_response(
            error_body(kind, exc.reason),
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"},
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response(error_body("internal_error", "internal server error"), status=500)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, str] = {}
    if app[appkeys.DRAINING].is_set():
        checks["instance"] = "draining"
    for name, ping in (("store", app[appkeys.STORE].ping), ("archive", app[appkeys.ARCHIVE].ping)):
        try:
            await asyncio.wait_for(ping(), 2.0)
            checks[name] = "ok"
        except (GatewayError, TimeoutError) as exc:
            checks[name] = f"unavailable: {getattr(exc, 'message', 'timeout')}"
    ready = all(v == "ok" for v in checks.values() if v) and "instance" not in checks
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[appkeys.METRICS]
    try:
        waiting, pending = await request.app[appkeys.STORE].completed_backlog()
        metrics.archive_backlog.labels("waiting").set(waiting)
        metrics.archive_backlog.labels("pending").set(pending)
    except GatewayError:
        metrics.store_errors.inc()
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})


def instance_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def _state_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    store = create_store(settings)
    await store.ping()
    app[appkeys.STORE] = store
    lifecycle = Lifecycle(store)
    metrics = app[appkeys.METRICS]
    lifecycle.on_complete(
        lambda rec: metrics.sessions_completed.labels(
            rec.session.end_reason.value if rec.session.end_reason else "unknown"
        ).inc()
    )
    app[appkeys.LIFECYCLE] = lifecycle
    archive = await Archive.open(
        settings.archive_url.get_secret_value(), schema=settings.archive_schema
    )
    app[appkeys.ARCHIVE] = archive
    log.info(
        "state ready: store=%s",
        "redis" if store.shared else "memory (embedded; not shared, not durable)",
    )
    yield
    await archive.close()
    await store.close()


def agent_bridge(app: web.Application, session: Session) -> CallBridge:
    """The bridge for a call: the session's agent with its turn settings."""
    settings = app[appkeys.SETTINGS]
    agent = settings.agent(session.agent_id)
    if agent is None:  # the catalogue changed since the call was opened
        log.error("no agent %r for session %s: the call stays silent", session.agent_id, session.id)
        return SilentBridge()
    return AgentBridge(
        session,
        agent,
        app[appkeys.AGENTS],
        {a.id: a for a in settings.agents},
        app[appkeys.LIFECYCLE],
        app[appkeys.METRICS],
        settings.turn_config(agent),
        max_history=settings.max_history_messages,
    )


async def _telephony_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[appkeys.SETTINGS]
    app[appkeys.AGENTS] = build_agents(settings.agents)
    registry = CallRegistry(app[appkeys.LIFECYCLE], lease_seconds=settings.call_lease_seconds)
    app[appkeys.CALLS] = registry
    twilio: TwilioRestClient | None = None
    if settings.twilio_account_sid and settings.twilio_auth_token:
        twilio = TwilioRestClient(
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            base_url=settings.twilio_api_base_url,
        )
    app[appkeys.TWILIO] = twilio
    stopping = app[appkeys.STOPPING]
    tasks = [
        asyncio.create_task(registry.renew_leases(stopping), name="leases"),
        asyncio.create_task(registry.watch_pacing(stopping), name="pacing-watchdog"),
    ]
    yield
    stopping.set()
    await asyncio.gather(*tasks)
    if twilio is not None:
        await twilio.close()


async def _drain(app: web.Application) -> None:
    """On app shutdown: refuse new calls, let live ones run up to the drain timeout. ``serve``
    drains before it shuts the app down (listener still open); this covers any other runner,
    and finds nothing left to drain after ``serve``."""
    app[appkeys.DRAINING].set()
    calls = app[appkeys.CALLS]
    if len(calls):
        log.info(
            "draining %d live calls (up to %.0fs)",
            len(calls),
            app[appkeys.SETTINGS].drain_timeout_seconds,
        )
    await calls.drain(app[appkeys.SETTINGS].drain_timeout_seconds)


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    """The archiver, the expiry sweeper and the loop-lag probe run in every instance."""
    settings = app[appkeys.SETTINGS]
    stop = app[appkeys.STOPPING]
    archiver = Archiver(
        app[appkeys.STORE],
        app[appkeys.ARCHIVE],
        consumer=instance_name(),
        metrics=app[appkeys.METRICS],
    )
    tasks = [
        asyncio.create_task(archiver.run(stop), name="archiver"),
        asyncio.create_task(
            run_sweeper(app[appkeys.LIFECYCLE], settings.sweep_interval_seconds, stop),
            name="sweeper",
        ),
        asyncio.create_task(_loop_lag(app[appkeys.METRICS], stop), name="loop-lag"),
    ]
    yield
    stop.set()
    for task in tasks:
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            log.warning("background task %s did not stop in time", task.get_name())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _loop_lag(metrics: Metrics, stop: asyncio.Event, interval: float = 0.5) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if not stop.is_set():
            metrics.loop_lag.set(max(0.0, time.perf_counter() - start - interval))


def create_app(settings: Settings) -> web.Application:
    # The largest body any route takes; each route enforces its own limit (Twilio webhooks:
    # max_body_bytes -> 400; /v1: api_max_body_bytes -> 413).
    limiter = rate_limit_middleware(
        "/v1",
        settings.api_rate_limit_per_second,
        settings.api_rate_limit_burst,
        settings.api_client_ip_header,
    )
    app = web.Application(
        middlewares=[error_middleware, limiter],
        client_max_size=max(settings.max_body_bytes, settings.api_max_body_bytes),
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.METRICS] = Metrics()
    app[appkeys.DRAINING] = asyncio.Event()
    app[appkeys.STOPPING] = asyncio.Event()
    app[appkeys.BRIDGE_FACTORY] = agent_bridge
    app.cleanup_ctx.append(_state_ctx)
    app.cleanup_ctx.append(_telephony_ctx)
    app.cleanup_ctx.append(_background_ctx)
    app.on_shutdown.append(_drain)
    setup_telephony(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    setup_api(app)
    return app

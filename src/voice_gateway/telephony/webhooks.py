"""Twilio's doors: the incoming-call webhook, the status callback and the stream socket.

Paths to paste into the Twilio console (relative to ``public_url``):

- ``POST /twilio/voice``   "A call comes in" webhook
- ``POST /twilio/status``  status callback (any events; terminal ones complete the session)
- ``GET  /twilio/stream``  the Media Streams websocket (put in the TwiML by the voice webhook)

Every request must carry a valid ``X-Twilio-Signature`` computed over the public URL (what
Twilio called, not what the socket saw). Forged or missing: 403, nothing opened. Bodies other
than a well-formed form, or over ``max_body_bytes``: 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping
from typing import Final
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiDict

from voice_gateway import appkeys
from voice_gateway.errors import AlreadyCompleted, Forbidden, ProtocolError, SessionNotFound
from voice_gateway.logs import bind
from voice_gateway.sessions.keys import mint_session_id
from voice_gateway.sessions.models import Channel, Customer, EndReason, Session
from voice_gateway.sessions.store import SessionStore
from voice_gateway.settings import AgentConfig, Settings
from voice_gateway.telephony.signature import (
    SIGNATURE_HEADER,
    SignatureValidator,
    public_url,
    stream_url,
)
from voice_gateway.telephony.stream import media_stream_handler
from voice_gateway.telephony.tokens import issue_stream_token
from voice_gateway.telephony.twiml import ConnectStreamTemplate, busy, say_and_hangup

log = logging.getLogger(__name__)

VOICE_PATH: Final = "/twilio/voice"
STATUS_PATH: Final = "/twilio/status"
STREAM_PATH: Final = "/twilio/stream"

TERMINAL_STATUSES: Final = {
    "completed": EndReason.COMPLETED,
    "busy": EndReason.BUSY,
    "failed": EndReason.FAILED,
    "no-answer": EndReason.NO_ANSWER,
    "canceled": EndReason.CANCELED,
}
PROGRESS_STATUSES: Final = frozenset({"queued", "initiated", "ringing", "in-progress", "answered"})
UNROUTED_AGENT: Final = "unrouted"
UNROUTED_MESSAGE: Final = "Sorry, this number is not in service. Goodbye."
XML: Final = "text/xml"
#: Twilio posts the final status callback and sends the stream's ``stop`` independently, so the
#: callback often arrives first. It waits up to this long for the stream handler to record the
#: stream's end (its frame counters), which completing the session first would lose.
STREAM_END_WAIT_SECONDS: Final = 2.0


async def read_form(request: web.Request, settings: Settings) -> MultiDict[str]:
    """The form Twilio posted, or ProtocolError (400) for anything Twilio would not send."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise ProtocolError(f"expected a form body, got {ctype or 'no content type'!r}")
    if request.content_length is not None and request.content_length > settings.max_body_bytes:
        raise ProtocolError(f"body over {settings.max_body_bytes} bytes")
    limit = settings.max_body_bytes
    body = await request.content.read(limit + 1)
    if body and not request.content.at_eof():  # in several chunks: read to EOF or the limit
        buf = bytearray(body)
        while len(buf) <= limit:
            chunk = await request.content.read(limit + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
        body = bytes(buf)
    if len(body) > limit:
        raise ProtocolError(f"body over {limit} bytes")
    try:
        pairs = parse_form(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError("malformed form body") from exc
    return MultiDict(pairs)


def parse_form(text: str) -> list[tuple[str, str]]:
    """``parse_qsl(text, keep_blank_values=True, strict_parsing=True)`` for a non-empty body
    (every field ``name=value``, else ValueError; ``+`` is a space, ``%XX`` decoded as UTF-8
    with replacement), without its per-call generality; ``[]`` for an empty one."""
    if not text:
        return []
    pairs = []
    for field in text.split("&"):
        name, eq, value = field.partition("=")
        if not eq:
            raise ValueError(f"bad query field: {field!r}")
        if "+" in name or "%" in name:
            name = unquote(name.replace("+", " "))
        if "+" in value or "%" in value:
            value = unquote(value.replace("+", " "))
        pairs.append((name, value))
    return pairs


def check_signature(request: web.Request, settings: Settings, form: Mapping[str, str]) -> None:
    if not settings.validate_signatures:
        return
    if settings.twilio_auth_token is None:
        raise Forbidden("no Twilio auth token configured: signed requests cannot be checked")
    url = public_url(
        settings.public_url, request.rel_url.raw_path, request.rel_url.raw_query_string
    )
    token = settings.twilio_auth_token.get_secret_value()
    if not SignatureValidator.check(token, url, form, request.headers.get(SIGNATURE_HEADER)):
        raise Forbidden("invalid X-Twilio-Signature")


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name, "")
    if not value:
        raise ProtocolError(f"missing form field {name}")
    return value


async def _twilio_request(request: web.Request, hook: str) -> MultiDict[str]:
    settings = request.app[appkeys.SETTINGS]
    form = await read_form(request, settings)
    try:
        check_signature(request, settings, form)
    except Forbidden:
        log.warning(
            "%s webhook refused: invalid signature call_sid=%s remote=%s",
            hook,
            form.get("CallSid", "-"),
            request.remote,
        )
        raise
    bind(call_sid=form.get("CallSid"))
    return form


def _is_test(request: web.Request, settings: Settings, caller: str, called: str) -> bool:
    if caller in settings.test_numbers or called in settings.test_numbers:
        return True
    marker = request.rel_url.query.get(settings.test_marker)
    return marker is not None and marker.lower() not in ("0", "false", "no")


def _twiml(body: str) -> web.Response:
    return web.Response(text=body, content_type=XML)


async def voice_webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    app = request.app
    settings = app[appkeys.SETTINGS]
    metrics = app[appkeys.METRICS]
    form = await _twilio_request(request, "voice")
    call_sid = _required(form, "CallSid")
    caller = form.get("From", "")
    called = form.get("To", "")
    lifecycle = app[appkeys.LIFECYCLE]

    route = settings.route(called)
    agent_id = route.agent if route else settings.fallback_agent
    agent: AgentConfig | None = settings.agent(agent_id) if agent_id else None
    # Validated construction (pydantic-core) is the cheap way here: ``model_construct`` costs
    # more than twice as much (it inspects each default factory's signature on every call).
    session = Session(
        id=mint_session_id(call_sid),
        org_id=(route.org_id if route and route.org_id else None)
        or (agent.org_id if agent else settings.default_org),
        agent_id=agent.id if agent else UNROUTED_AGENT,
        agent_name=agent.name if agent else None,
        agent_type=agent.type if agent else None,
        agent_timezone=agent.timezone if agent else None,
        prompt_id=agent.prompt_id if agent else None,
        prompt_name=agent.prompt_name if agent else None,
        prompt_version=agent.prompt_version if agent else None,
        customer=Customer(number=caller or None, name=form.get("CallerName") or None),
        channel=Channel(service="twilio", type="voice", sid=call_sid),
        conversation_id=form.get("ParentCallSid") or call_sid,
        source=caller or None,
        target=called or None,
        expiration_seconds=settings.expiration_seconds,
        is_test=_is_test(request, settings, caller, called) or bool(route and route.test),
        is_legacy=bool(route and route.legacy) or bool(agent and agent.legacy),
        metadata={"direction": form.get("Direction", "inbound")},
    )

    at_capacity = len(app[appkeys.CALLS]) >= settings.max_concurrent_calls
    draining = app[appkeys.DRAINING].is_set()
    session, created = await lifecycle.open(session, call_sid=call_sid)
    bind(session_id=session.id)
    try:
        if created and (agent is None or at_capacity or draining):
            reason = EndReason.FAILED if agent is None else EndReason.BUSY
            await lifecycle.complete_if_active(session.id, reason)
            label = "unrouted" if agent is None else ("draining" if draining else "capacity")
            metrics.calls_rejected.labels(label).inc()
            log.warning("incoming call refused (%s) call_sid=%s to=%s", label, call_sid, called)
            return _twiml(_unrouted_twiml() if agent is None else _busy_twiml())
        if not session.is_active:
            log.info("voice webhook for a completed call call_sid=%s", call_sid)
            return _twiml(_goodbye_twiml() if agent else _unrouted_twiml())
        if created:
            metrics.calls_started.inc()
            log.info(
                "incoming call from %s to %s agent=%s call_sid=%s",
                caller,
                called,
                session.agent_id,
                call_sid,
            )
        else:
            log.info("voice webhook retried: same session call_sid=%s", call_sid)
        token = issue_stream_token(
            settings.stream_secret(), session.id, call_sid, settings.stream_token_ttl_seconds
        )
        body = _stream_twiml(stream_url(settings.public_url, STREAM_PATH)).render(
            {"session_id": session.id, "token": token}
        )
        return _twiml(body)
    finally:
        metrics.webhook_seconds.labels("voice").observe(time.perf_counter() - started)


async def status_callback(request: web.Request) -> web.Response:
    started = time.perf_counter()
    app = request.app
    metrics = app[appkeys.METRICS]
    form = await _twilio_request(request, "status")
    call_sid = _required(form, "CallSid")
    status = form.get("CallStatus", "")
    lifecycle = app[appkeys.LIFECYCLE]
    try:
        session = await lifecycle.store.get_by_call_sid(call_sid)
        if session is None:
            log.warning("status callback for an unknown CallSid (%s) call_sid=%s", status, call_sid)
            return web.Response(status=204)
        bind(session_id=session.id)
        end_reason = TERMINAL_STATUSES.get(status)
        if end_reason is not None:
            duration = _duration(form.get("CallDuration"))
            recorded = app[appkeys.CALLS].recording(session.id)
            await _await_stream_end(lifecycle.store, session, recorded)
            try:
                await lifecycle.complete(session.id, end_reason, duration=duration)
            except (AlreadyCompleted, SessionNotFound):
                log.info(
                    "status callback %s: session already completed call_sid=%s", status, call_sid
                )
        elif status in PROGRESS_STATUSES:
            log.info("call status %s call_sid=%s", status, call_sid)
        else:
            log.warning("unknown CallStatus %r ignored call_sid=%s", status, call_sid)
        return web.Response(status=204)
    finally:
        metrics.webhook_seconds.labels("status").observe(time.perf_counter() - started)


async def _await_stream_end(
    store: SessionStore, session: Session, recorded: asyncio.Event | None
) -> None:
    """Wait (up to ``STREAM_END_WAIT_SECONDS``) while the session's stream is live, so its
    counters are in the session before it completes. A stream of this process says when it
    has recorded its end (``recorded``); one on another instance is polled, 20 ms doubling to
    200 ms between reads."""
    deadline = time.monotonic() + STREAM_END_WAIT_SECONDS
    current: Session | None = session
    delay = 0.02
    while (
        current is not None
        and current.is_active
        and current.stream is not None
        and current.stream.ended_at is None
    ):
        left = deadline - time.monotonic()
        if left <= 0:
            log.info("final status before the stream ended call_sid=%s", session.channel.sid)
            return
        if recorded is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorded.wait(), left)
            recorded = None  # recorded (or timed out): read the session once more
        else:
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.2)
        current = await store.get(session.id)


@functools.lru_cache(maxsize=8)
def _stream_twiml(url: str) -> ConnectStreamTemplate:
    return ConnectStreamTemplate(url, ("session_id", "token"))


# Refusals answer the same document every time: built once (the TwiML builder costs ~100 us,
# which matters most when the gateway is turning a burst of calls away).
@functools.cache
def _busy_twiml() -> str:
    return busy()


@functools.cache
def _unrouted_twiml() -> str:
    return say_and_hangup(UNROUTED_MESSAGE)


@functools.cache
def _goodbye_twiml() -> str:
    return say_and_hangup("Goodbye.")


def _duration(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def setup_routes(app: web.Application) -> None:
    app.router.add_post(VOICE_PATH, voice_webhook)
    app.router.add_post(STATUS_PATH, status_callback)
    app.router.add_get(STREAM_PATH, media_stream_handler)

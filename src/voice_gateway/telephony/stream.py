"""The Media Streams websocket: one ``MediaStream`` per call.

It owns the socket and its tasks; parsing is the pure codec's (``media.py``), pacing and the
playback clock are ``playback.py``'s, and the audio goes to a ``CallBridge``. Nothing on the
per-frame path awaits Redis: the session is written when the stream starts and ends.

Refusals (each logged with the CallSid when known; the session is never touched):
bad handshake signature -> close 1008; no ``start`` in time -> 4408; bad or missing stream
token -> 4401; unknown or completed session -> 4404; a second live stream for the call -> 4409;
malformed frame -> 1002; binary frame -> 1003; frame over ``max_frame_bytes`` -> 1009.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from voice_gateway import appkeys
from voice_gateway.errors import (
    AlreadyCompleted,
    CallAlreadyEnded,
    Forbidden,
    GatewayError,
    PayloadTooLarge,
    ProtocolError,
    SessionNotFound,
    TwilioRestError,
)
from voice_gateway.logs import bind
from voice_gateway.sessions.lifecycle import with_retry
from voice_gateway.sessions.models import EndReason, Session, StreamInfo, utcnow
from voice_gateway.telephony import media as codec
from voice_gateway.telephony.bridge import CallBridge, CallInfo, SilentBridge
from voice_gateway.telephony.pacing import InboundPacer
from voice_gateway.telephony.playback import FRAME_MS, Playback
from voice_gateway.telephony.rest import TwilioRestClient
from voice_gateway.telephony.signature import SignatureValidator, stream_url
from voice_gateway.telephony.tokens import verify_stream_token
from voice_gateway.telephony.twiml import dial

log = logging.getLogger(__name__)

START_TIMEOUT = 10.0
#: Playback clock marks: one per 200 ms of agent audio (each comes back as a message). What
#: the caller heard when they barge in is estimated between marks from the time since the last.
MARK_MS = 200
METRICS_EVERY_FRAMES = 50  # flush frame counters to Prometheus once a second of audio


def handshake_ok(request: web.Request) -> bool:
    settings = request.app[appkeys.SETTINGS]
    if not settings.validate_signatures:
        return True
    if settings.twilio_auth_token is None:
        return False
    signature = request.headers.get("X-Twilio-Signature")
    url = stream_url(settings.public_url, request.rel_url.raw_path)
    # Twilio signs the wss URL of the <Stream>; a proxy may have rewritten ws -> http.
    token = settings.twilio_auth_token.get_secret_value()
    return SignatureValidator.check(token, url, None, signature)


async def media_stream_handler(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[appkeys.SETTINGS]
    ws = web.WebSocketResponse(max_msg_size=settings.max_frame_bytes, autoping=True)
    signed = handshake_ok(request)
    await ws.prepare(request)
    if not signed:
        log.warning(
            "media stream refused: bad X-Twilio-Signature on the handshake from %s", request.remote
        )
        app[appkeys.METRICS].stream_errors.labels("signature").inc()
        await ws.close(code=codec.CLOSE_POLICY_VIOLATION, message=b"invalid signature")
        return ws
    stream = MediaStream(app, ws)
    if settings.inbound_read_interval_ms:
        stream.pacer = InboundPacer.for_transport(
            request.transport, settings.inbound_read_interval_ms
        )
        if stream.pacer is not None:
            _ReadCounter.install(request, stream)
    await stream.run()
    return ws


class _ReadCounter(asyncio.Protocol):
    """Counts a paced stream's socket reads (``reads=`` in its end-of-stream log line: frames
    per read is what pacing saves). It sits in front of aiohttp's protocol and forwards every
    call unchanged."""

    def __init__(self, inner: asyncio.Protocol, stream: MediaStream) -> None:
        self.inner = inner
        self.stream = stream

    @classmethod
    def install(cls, request: web.Request, stream: MediaStream) -> None:
        transport = request.transport
        if not isinstance(transport, asyncio.Transport):
            return
        inner = transport.get_protocol()
        if isinstance(inner, asyncio.BufferedProtocol) or not isinstance(inner, asyncio.Protocol):
            return  # a transport that reads into the protocol's buffer: leave it alone
        transport.set_protocol(cls(inner, stream))

    def data_received(self, data: bytes) -> None:
        self.stream.socket_reads += 1
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class MediaStream:
    """One call's media stream; also the ``CallControl`` its bridge speaks through."""

    def __init__(self, app: web.Application, ws: web.WebSocketResponse) -> None:
        self.app = app
        self.ws = ws
        self.settings = app[appkeys.SETTINGS]
        self.lifecycle = app[appkeys.LIFECYCLE]
        self.metrics = app[appkeys.METRICS]
        self.registry = app[appkeys.CALLS]
        frame_ms = self.settings.outbound_frame_ms
        self.playback = Playback(frame_ms=frame_ms, mark_ms=max(MARK_MS, frame_ms))
        self.bridge: CallBridge = SilentBridge()
        self.session: Session | None = None
        self.call_sid = ""
        self.stream_sid = ""
        self.encoder: codec.OutboundEncoder | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.sequence_gaps = 0
        self.socket_reads = 0  # counted when reads are paced (inbound_read_interval_ms)
        self.pacer: InboundPacer | None = None
        self._last_seq = 0
        self._clock_ms = 0
        self._unflushed_in = 0
        self._wake = asyncio.Event()
        self._clear_pending = False
        self._sender: asyncio.Task[None] | None = None
        self._ended_by: EndReason | None = None
        self.started_at = utcnow()

    # -- CallControl ------------------------------------------------------------------------

    def play(self, ulaw: bytes, *, label: str | None = None) -> None:
        starts = not self.playback.queued_ms
        self.playback.enqueue(ulaw)
        if starts and self.pacer is not None:  # from now on, a frame could barge in
            self.pacer.tighten(self.audio_slack_ms())
        if label is not None:
            self.playback.end_of_answer(label)
        self._wake.set()

    def end_of_answer(self, label: str) -> None:
        self.playback.end_of_answer(label)
        self._wake.set()

    def clear(self) -> int:
        queued = self.playback.queued_ms
        _, unsent = self.playback.clear(time.monotonic())
        self._clear_pending = True
        self._wake.set()
        for label in unsent:
            self.bridge.on_played(label)
        return queued

    @property
    def played_ms(self) -> int:
        return self.playback.played_ms

    @property
    def queued_ms(self) -> int:
        return self.playback.queued_ms

    @property
    def clock_ms(self) -> int:
        return self._clock_ms

    def audio_slack_ms(self) -> float:
        """How late the caller's next audio may be handled without delaying anything."""
        if self._clear_pending:
            return 0.0
        return self.bridge.audio_slack_ms()

    def _unpace(self) -> None:
        """Stop pacing for good: the stream is closing."""
        if self.pacer is not None:
            self.pacer.stop()

    def pacing_watchdog(self) -> None:
        """Periodic: a paced stream that read no frame since the last call reads on arrival."""
        if self.pacer is not None:
            self.pacer.watchdog(self.frames_in)

    async def _complete(self, end_reason: EndReason) -> None:
        """Complete this call's session, retrying through a short store outage."""
        assert self.session is not None
        sid = self.session.id
        await with_retry(
            lambda: self.lifecycle.complete_if_active(sid, end_reason), what="completion"
        )

    def _twilio(self) -> TwilioRestClient:
        twilio = self.app[appkeys.TWILIO]
        if twilio is None:
            raise TwilioRestError("Twilio REST is not configured (account SID and auth token)")
        return twilio

    async def hang_up(self, end_reason: EndReason = EndReason.HANGUP_BY_AGENT) -> None:
        twilio = self._twilio()
        # Frames held in the socket by pacing are read (and counted) before the end is written.
        self._unpace()
        self._ended_by = end_reason
        if self.session is not None:
            # The hang-up's status callback may reach the gateway (any instance) before Twilio's
            # API answers, or between the two writes below: marked first, the session then
            # ends with this reason whoever completes it.
            sid = self.session.id
            try:
                await with_retry(
                    lambda: self.lifecycle.mark_ending(sid, end_reason), what="end reason"
                )
            except (AlreadyCompleted, SessionNotFound):
                log.info("hang-up: session already completed call_sid=%s", self.call_sid)
            except GatewayError as exc:  # the store is down: hang up all the same
                log.warning(
                    "hang-up: could not mark the end reason: %s call_sid=%s",
                    exc.message,
                    self.call_sid,
                )
        try:
            await twilio.hang_up(self.call_sid)
        except CallAlreadyEnded:
            log.info("hang-up: call already ended call_sid=%s", self.call_sid)
        finally:
            if self.session is not None:
                await self._record_stream_end()  # before completing, or the counters are lost
                await self._complete(end_reason)
            await self.ws.close(code=codec.CLOSE_NORMAL, message=b"hang-up")

    async def transfer(self, target: str) -> None:
        twilio = self._twilio()
        self._unpace()
        await twilio.redirect(self.call_sid, dial(target))
        self._ended_by = EndReason.TRANSFERRED
        if self.session is not None:
            await self._record_stream_end()
            await self._complete(EndReason.TRANSFERRED)

    # -- the stream -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            start = await asyncio.wait_for(self._await_start(), START_TIMEOUT)
            if start is None:
                return
            await self._accept(start)
        except TimeoutError:
            await self._refuse(_Refused(codec.CLOSE_START_TIMEOUT, "no start event in time"))
            return
        except _Refused as refusal:
            await self._refuse(refusal)
            return
        except ProtocolError as exc:
            await self._refuse(
                _Refused(codec.CLOSE_PROTOCOL_ERROR, f"malformed frame: {exc.message}")
            )
            return
        except BaseException:
            if self.session is not None:  # claimed, then failed to start: let it go again
                await self._finish("start failed")
            raise
        reason = "socket closed"
        try:
            reason = await self._pump()
        finally:
            await self._finish(reason)

    async def _await_start(self) -> codec.Start | None:
        async for msg in self.ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    raise _Refused(codec.CLOSE_UNSUPPORTED_DATA, "binary frame")
                return None
            event = codec.parse_inbound(msg.data, max_bytes=self.settings.max_frame_bytes)
            if isinstance(event, codec.Start):
                return event
            if isinstance(event, codec.Connected | codec.Unknown):
                continue
            raise _Refused(codec.CLOSE_PROTOCOL_ERROR, f"{type(event).__name__} before start")
        return None

    async def _accept(self, start: codec.Start) -> None:
        self.call_sid = start.call_sid
        self.stream_sid = start.stream_sid
        self._last_seq = start.sequence_number
        bind(call_sid=start.call_sid, stream_sid=start.stream_sid)
        session_id = start.custom_parameters.get("session_id", "")
        token = start.custom_parameters.get("token", "")
        try:
            verify_stream_token(self.settings.stream_secret(), token, session_id, start.call_sid)
        except Forbidden as exc:
            raise _Refused(
                codec.CLOSE_BAD_STREAM_TOKEN, f"stream token refused: {exc.message}"
            ) from exc
        bind(session_id=session_id)
        session = await self.lifecycle.store.get(session_id)
        if session is None or not session.is_active:
            raise _Refused(codec.CLOSE_UNKNOWN_SESSION, "unknown or completed session")
        info = StreamInfo(
            stream_sid=start.stream_sid,
            started_at=utcnow(),
            encoding=start.media_format.encoding,
            sample_rate=start.media_format.sample_rate,
            channels=start.media_format.channels,
        )
        if not self.registry.claim(session_id, self):
            raise _Refused(codec.CLOSE_DUPLICATE_STREAM, "the call already has a live stream")
        try:
            claimed = await self.lifecycle.claim_stream(session_id, info)
        except BaseException:
            self._unclaim(session_id)
            raise
        if not claimed:
            self._unclaim(session_id)
            raise _Refused(codec.CLOSE_DUPLICATE_STREAM, "the call already has a live stream")
        self.session = session.model_copy(update={"stream": info})
        try:
            await self.registry.lease(session_id)
        except GatewayError as exc:  # the renewal loop tries again; the call goes on
            log.warning(
                "could not take the call's lease: %s call_sid=%s", exc.message, self.call_sid
            )
        self.encoder = codec.OutboundEncoder(start.stream_sid)
        self.metrics.calls_active.inc()
        log.info("media stream started call_sid=%s stream_sid=%s", start.call_sid, start.stream_sid)
        self.bridge = self.app[appkeys.BRIDGE_FACTORY](self.app, self.session)
        self._sender = asyncio.create_task(self._send_loop(), name=f"sender-{start.call_sid}")
        await self.bridge.start(
            CallInfo(self.session, start.call_sid, start.stream_sid, start.account_sid), self
        )

    def _unclaim(self, session_id: str) -> None:
        self.registry.release(session_id, self)
        self.registry.stream_recorded(session_id)

    async def _refuse(self, refusal: _Refused) -> None:
        log.warning(
            "media stream refused (%d): %s call_sid=%s",
            refusal.code,
            refusal.reason,
            self.call_sid or "-",
        )
        self.metrics.stream_errors.labels(str(refusal.code)).inc()
        await self.ws.close(code=refusal.code, message=refusal.reason.encode()[:120])

    async def _pump(self) -> str:
        """Read frames until the stream ends; returns why it ended."""
        ws = self.ws
        max_bytes = self.settings.max_frame_bytes
        parse = codec.parse_inbound
        media_type = codec.Media
        bridge_audio = self.bridge.on_audio
        pacer = self.pacer
        slack = self.audio_slack_ms
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                if msg.type is WSMsgType.BINARY:
                    await self._close_with(codec.CLOSE_UNSUPPORTED_DATA, "binary frame")
                    return "binary frame"
                break
            try:
                event = parse(msg.data, max_bytes=max_bytes)
            except (ProtocolError, PayloadTooLarge) as exc:
                code = (
                    codec.CLOSE_MESSAGE_TOO_BIG
                    if isinstance(exc, PayloadTooLarge)
                    else codec.CLOSE_PROTOCOL_ERROR
                )
                log.warning(
                    "malformed media-stream frame, closing: %s call_sid=%s",
                    exc.message,
                    self.call_sid,
                )
                await self._close_with(code, "malformed frame")
                return "protocol error"
            if type(event) is media_type:
                seq = event.sequence_number
                if seq != self._last_seq + 1 and seq > self._last_seq:
                    self.sequence_gaps += seq - self._last_seq - 1
                self._last_seq = seq
                self.frames_in += 1
                self._clock_ms += len(event.payload) * FRAME_MS // 160
                self._unflushed_in += 1
                if self._unflushed_in >= METRICS_EVERY_FRAMES:
                    self.metrics.frames_in.inc(self._unflushed_in)
                    self._unflushed_in = 0
                bridge_audio(event.payload)
                if pacer is not None:
                    pacer.after_frame(len(msg.data), slack())
            elif isinstance(event, codec.Mark):
                self._last_seq = max(self._last_seq, event.sequence_number)
                for label in self.playback.on_mark(event.name, time.monotonic()):
                    self.bridge.on_played(label)
                self._wake.set()
            elif isinstance(event, codec.Dtmf):
                self._last_seq = max(self._last_seq, event.sequence_number)
                self.bridge.on_dtmf(event.digit)
            elif isinstance(event, codec.Stop):
                return "stop"
            elif isinstance(event, codec.Unknown):
                log.info(
                    "unknown media-stream event %r skipped call_sid=%s", event.event, self.call_sid
                )
        if ws.close_code == codec.CLOSE_MESSAGE_TOO_BIG:
            log.warning(
                "media-stream frame over %d bytes refused call_sid=%s", max_bytes, self.call_sid
            )
            self.metrics.stream_errors.labels(str(codec.CLOSE_MESSAGE_TOO_BIG)).inc()
            return "frame too big"
        return "socket closed"

    async def _close_with(self, code: int, reason: str) -> None:
        self.metrics.stream_errors.labels(str(code)).inc()
        self._unpace()
        await self.ws.close(code=code, message=reason.encode())

    async def _send_loop(self) -> None:
        ws = self.ws
        assert self.encoder is not None
        enc = self.encoder
        while not ws.closed:
            await self._wake.wait()
            self._wake.clear()
            if self._clear_pending:
                self._clear_pending = False
                await ws.send_str(enc.clear())
            sent = 0
            for kind, item in self.playback.take(time.monotonic()):
                if kind == "media":
                    await ws.send_str(enc.media(item))  # type: ignore[arg-type]
                    sent += 1
                else:
                    await ws.send_str(enc.mark(item))  # type: ignore[arg-type]
            if sent:
                self.frames_out += sent
                self.metrics.frames_out.inc(sent)

    async def _finish(self, reason: str) -> None:
        self._unpace()
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionResetError):
                await self._sender
        if self._unflushed_in:
            self.metrics.frames_in.inc(self._unflushed_in)
        for label in self.playback.drop_unsent_labels():
            self.bridge.on_played(label)
        try:
            await self.bridge.stop(reason)
        except Exception:
            log.exception("bridge stop failed call_sid=%s", self.call_sid)
        if self.session is None:
            return
        self.metrics.calls_active.dec()
        self.registry.release(self.session.id, self)
        log.info(
            "media stream ended (%s) call_sid=%s frames_in=%d frames_out=%d gaps=%d reads=%s",
            reason,
            self.call_sid,
            self.frames_in,
            self.frames_out,
            self.sequence_gaps,
            self.socket_reads or "-",
        )
        try:
            if self._ended_by is None:
                # hang-up / transfer / shutdown recorded the end before completing the session.
                await self._record_stream_end()
        finally:
            # A status callback that came first waits for this (webhooks._await_stream_end).
            self.registry.stream_recorded(self.session.id)
        if self._ended_by is None:
            # The call completes on its status callback; if none comes in time, a sweeper
            # (of any instance) completes it from here.
            await self.registry.stream_ended(
                self.session.id, self.settings.status_grace_seconds, self.call_sid
            )
        if not self.ws.closed:
            await self.ws.close(code=codec.CLOSE_NORMAL)

    async def _record_stream_end(self) -> None:
        """Write the stream's final counters into the (still active) session."""
        assert self.session is not None and self.session.stream is not None
        final = self.session.stream.model_copy(
            update={
                "ended_at": utcnow(),
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "sequence_gaps": self.sequence_gaps,
            }
        )
        sid = self.session.id
        try:
            await with_retry(
                lambda: self.lifecycle.attach_stream(sid, final), what="stream end record"
            )
        except (AlreadyCompleted, SessionNotFound):
            log.info(
                "stream end not recorded: session already completed call_sid=%s", self.call_sid
            )
        except GatewayError as exc:
            log.warning("could not record stream end: %s call_sid=%s", exc.message, self.call_sid)

    async def shutdown(self) -> None:
        """Drain timeout: end this call cleanly. The stream end and the reason go into the
        session (history event, end reason ``error``), then the socket closes going-away."""
        self._ended_by = EndReason.ERROR
        self._unpace()
        if self.session is not None:
            await self.bridge.stop("gateway shutting down")
            await self._record_stream_end()
            with contextlib.suppress(AlreadyCompleted, SessionNotFound, GatewayError):
                await self.lifecycle.append_message(
                    self.session.id, "event", "call ended by gateway shutdown (drain timeout)"
                )
            await self._complete(EndReason.ERROR)
        await self.ws.close(code=codec.CLOSE_GOING_AWAY, message=b"gateway shutting down")

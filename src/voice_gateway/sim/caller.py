"""A simulated Twilio call: webhook, TwiML, Media Stream, Twilio's playout, status callback.

:class:`SimulatedCall` does what Twilio does for one inbound call to a number whose "A call
comes in" webhook is the gateway:

1. POST the signed incoming-call form to ``<base_url>/twilio/voice`` (optionally with a query
   string such as ``test=1``);
2. read the TwiML: ``<Connect><Stream>`` with its ``<Parameter>``s, or ``<Say>``/``<Hangup>``/
   ``<Reject>``, which end the call;
3. open the websocket to the ``<Stream url>`` with ``X-Twilio-Signature`` over that URL;
4. send ``connected``, ``start`` and 20 ms ``media`` frames at real-time pace on an absolute
   schedule (frame *n* is due at ``t0 + n * 20 ms``; how late each send was is recorded);
5. play the gateway's audio out like Twilio: a playout buffer drained in real time, ``mark``
   echoed once the audio queued before it has played, ``clear`` empties the buffer and returns
   every pending mark at once;
6. send ``dtmf`` events at given times;
7. end with ``stop`` (or react to the gateway closing the socket, or to a hang-up / redirect
   through the fake REST API), then POST the signed status callback.

Every message the gateway sends is recorded with the simulator clock (ms since ``start`` was
sent) in :class:`CallResult`, which also computes turn latency and barge-in reaction time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final, Literal

import aiohttp

from voice_gateway.errors import PayloadTooLarge, ProtocolError
from voice_gateway.sim.audio import (
    FRAME_BYTES,
    FRAME_MS,
    SAMPLE_RATE,
    SpeechSegment,
    speech_segments,
)
from voice_gateway.sim.frames import FramePlan, MediaRenderer, frame_plan
from voice_gateway.sim.pacer import pacer_for, send_now
from voice_gateway.telephony import media as codec
from voice_gateway.telephony.signature import SIGNATURE_HEADER, SignatureValidator

__all__ = [
    "DEFAULT_FROM",
    "DEFAULT_TO",
    "CallConfig",
    "CallResult",
    "OutboundRecord",
    "SignatureMode",
    "SimRegistry",
    "SimulatedCall",
    "TwimlPlan",
    "new_account_sid",
    "new_call_sid",
    "new_stream_sid",
    "parse_twiml",
    "percentile",
    "place_call",
]

log = logging.getLogger(__name__)

DEFAULT_FROM: Final = "+14155550100"
DEFAULT_TO: Final = "+18005550199"
VOICE_PATH: Final = "/twilio/voice"
STATUS_PATH: Final = "/twilio/status"
API_VERSION: Final = "2010-04-01"

#: ``valid``: Twilio's signature; ``missing``: no header; ``forged``: a wrong signature.
SignatureMode = Literal["valid", "missing", "forged"]

#: Order of the call-progress events, which gives their ``SequenceNumber``.
_STATUS_ORDER: Final = ("initiated", "ringing", "in-progress", "completed")
_TERMINAL: Final = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
_FRAME_S: Final = FRAME_MS / 1000


def new_call_sid() -> str:
    """``CA`` + 32 hex digits, like Twilio's."""
    return "CA" + secrets.token_hex(16)


def new_stream_sid() -> str:
    return "MZ" + secrets.token_hex(16)


def new_account_sid() -> str:
    return "AC" + secrets.token_hex(16)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --------------------------------------------------------------------------- TwiML


@dataclass
class TwimlPlan:
    """What a TwiML document tells Twilio to do, as far as the simulator models it."""

    verbs: list[str] = field(default_factory=list)
    stream_url: str | None = None
    stream_parameters: dict[str, str] = field(default_factory=dict)
    said: list[str] = field(default_factory=list)
    hangup: bool = False
    reject: str | None = None  # the <Reject reason>
    dial: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def parse_twiml(text: str) -> TwimlPlan:
    """Read a TwiML ``<Response>``. Raises ``ProtocolError`` if it is not TwiML.

    Verbs after one that ends the call (``<Hangup>``, ``<Reject>``) or that blocks for the rest
    of it in this model (``<Connect><Stream>``) are still listed in ``verbs``.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ProtocolError(f"TwiML is not well-formed XML: {exc}") from None
    if root.tag != "Response":
        raise ProtocolError(f"TwiML root is <{root.tag}>, not <Response>")
    plan = TwimlPlan()
    for verb in root:
        plan.verbs.append(verb.tag)
        if verb.tag == "Connect":
            for noun in verb:
                if noun.tag == "Stream" and plan.stream_url is None:
                    plan.stream_url = noun.get("url")
                    for param in noun.iter("Parameter"):
                        name = param.get("name")
                        if name:
                            plan.stream_parameters[name] = param.get("value", "")
                else:
                    plan.unsupported.append(f"Connect/{noun.tag}")
        elif verb.tag == "Say":
            plan.said.append((verb.text or "").strip())
        elif verb.tag == "Hangup":
            plan.hangup = True
        elif verb.tag == "Reject":
            plan.reject = verb.get("reason", "rejected")
        elif verb.tag == "Dial":
            targets = [(n.text or "").strip() for n in verb] or [(verb.text or "").strip()]
            plan.dial.extend(t for t in targets if t)
        elif verb.tag != "Pause":
            plan.unsupported.append(verb.tag)
    return plan


# --------------------------------------------------------------------------- configuration


@dataclass
class CallConfig:
    """One simulated call. Only ``base_url`` and ``auth_token`` are required.

    ``base_url`` is the gateway's ``public_url``: the origin Twilio would call, which is also
    the URL the signatures are computed over.
    """

    base_url: str
    auth_token: str
    account_sid: str = field(default_factory=new_account_sid)
    call_sid: str = field(default_factory=new_call_sid)
    from_number: str = DEFAULT_FROM
    to_number: str = DEFAULT_TO
    #: Raw mu-law, 8 kHz mono, streamed as the caller's voice.
    audio: bytes = b""
    #: Loop ``audio`` for this many seconds (cut or repeated); None = play it once.
    loop_seconds: float | None = None
    #: Silence streamed after the audio, before the caller hangs up.
    trailing_silence_ms: int = 0
    #: Query string of the webhook URL, without ``?`` (e.g. ``"test=1"``).
    webhook_query: str = ""
    voice_path: str = VOICE_PATH
    #: Where status callbacks go; default ``<base_url>/twilio/status``.
    status_url: str | None = None
    #: Call-progress events to POST once the call has ended, in this order. ``()`` = none (a
    #: hang-up with no status callback); ``("completed", "completed")`` = a retried callback;
    #: ``("completed", "in-progress")`` = out of order. Each carries the ``SequenceNumber`` of
    #: its event, so a retry repeats it. ``completed`` of a rejected call becomes ``busy``.
    status_callbacks: Sequence[str] = ("completed",)
    #: Wait this long after the call ends before posting the status callbacks.
    status_delay_ms: int = 0
    webhook_signature: SignatureMode = "valid"
    status_signature: SignatureMode = "valid"
    stream_signature: SignatureMode = "valid"
    #: Key presses: (ms since the stream started, digit).
    dtmf: Sequence[tuple[int, str]] = ()
    #: Extra or replacement form fields for the incoming-call webhook.
    extra_params: Mapping[str, str] = field(default_factory=dict)
    caller_name: str | None = None
    #: Where the speech in ``audio`` is, as inclusive frame ranges (the fixture's exact turn
    #: boundaries: :func:`~voice_gateway.sim.audio.caller_recording_speech`); repeated with the
    #: audio when it loops. None = find it with the energy detector, which misplaces a soft
    #: ending (a decay below its threshold) by up to ~120 ms.
    speech: Sequence[tuple[int, int]] | None = None
    #: Pace media at 20 ms per frame (True), or send as fast as possible (False).
    realtime: bool = True
    http_timeout: float = 15.0
    #: How long to wait for the gateway's close frame once the simulator closes.
    close_timeout: float = 5.0
    #: Where the fake REST API finds this call (hang-up, redirect). None = not reachable.
    registry: SimRegistry | None = None


def _known_speech(config: CallConfig) -> list[SpeechSegment]:
    """``config.speech`` as segments of the frames the call sends (the audio looped or cut to
    ``loop_seconds``, as :meth:`SimulatedCall._frames` does)."""
    assert config.speech is not None
    period = -(-len(config.audio) // FRAME_BYTES)  # frames of one pass of the audio
    total = period if config.loop_seconds is None else round(config.loop_seconds * 1000 / FRAME_MS)
    out: list[SpeechSegment] = []
    for offset in range(0, total, period or 1):
        for start, end in config.speech:
            if offset + end < total:
                out.append(SpeechSegment(offset + start, offset + end))
    return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class OutboundRecord:
    """One message from the gateway: simulator time (ms since ``start``), kind and content."""

    t_ms: float
    kind: Literal["media", "mark", "clear"]
    size: int = 0
    name: str | None = None


@dataclass
class CallResult:
    call_sid: str
    account_sid: str
    stream_sid: str | None = None
    #: The ``session_id`` ``<Parameter>`` of the TwiML (the gateway's session).
    session_id: str | None = None
    webhook_status: int | None = None
    twiml: str | None = None
    plan: TwimlPlan | None = None
    #: ``completed`` (streamed and ended normally), ``refused`` (403 / <Reject> / <Say><Hangup>
    #: / stream refused), ``failed`` (anything unexpected: see ``errors``), ``pending``.
    outcome: str = "pending"
    #: ``caller`` (stop sent), ``gateway`` (it closed the socket), ``api-hangup``,
    #: ``api-redirect``, ``twiml`` (the TwiML ended the call), ``webhook`` (it failed).
    ended_by: str | None = None
    close_code: int | None = None
    close_reason: str | None = None
    frames_sent: int = 0
    #: Actual send time of every media frame sent (ms since start).
    send_times_ms: list[float] = field(default_factory=list)
    #: Whether each sent frame carried speech (energy detector).
    speech_flags: list[bool] = field(default_factory=list)
    #: The known speech of the audio (``CallConfig.speech``), looped; None = use ``speech_flags``.
    known_speech: list[SpeechSegment] | None = None
    #: How late each frame was sent relative to its schedule (ms).
    lateness_ms: list[float] = field(default_factory=list)
    media_received: int = 0
    media_bytes_received: int = 0
    media_times_ms: list[float] = field(default_factory=list)
    marks_received: list[tuple[float, str]] = field(default_factory=list)
    marks_echoed: list[tuple[float, str]] = field(default_factory=list)
    clears_ms: list[float] = field(default_factory=list)
    dtmf_sent: list[tuple[float, str]] = field(default_factory=list)
    events: list[OutboundRecord] = field(default_factory=list)
    #: Intervals (ms) during which gateway audio was playing to the caller.
    playout_ms: list[tuple[float, float]] = field(default_factory=list)
    call_duration: int | None = None
    status_responses: list[tuple[str, int]] = field(default_factory=list)
    api_updates: list[dict[str, str]] = field(default_factory=list)
    redirect_twiml: str | None = None
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "completed" and not self.errors

    @property
    def refused(self) -> bool:
        return self.outcome == "refused"

    @property
    def lateness_max_ms(self) -> float:
        return max(self.lateness_ms, default=0.0)

    @property
    def lateness_p99_ms(self) -> float:
        return percentile(self.lateness_ms, 99) or 0.0

    def utterances(self) -> list[SpeechSegment]:
        """The caller's utterances, as frame indices into what was sent: the known speech
        boundaries when the call had them, else what the energy detector heard."""
        if self.known_speech is not None:
            sent = self.frames_sent
            return [seg for seg in self.known_speech if seg.end_frame < sent]
        return speech_segments(self.speech_flags)

    def turn_latencies_ms(self) -> list[float]:
        """Per utterance: from sending its last speech frame to the first reply media frame
        received after it (before the next utterance started); unanswered ones are left out."""
        out: list[float] = []
        segments = self.utterances()
        for i, seg in enumerate(segments):
            end = self.send_times_ms[seg.end_frame]
            limit = (
                self.send_times_ms[segments[i + 1].start_frame]
                if i + 1 < len(segments)
                else math.inf
            )
            first = next((t for t in self.media_times_ms if t > end), None)
            if first is not None and first < limit:
                out.append(first - end)
        return out

    def barge_in_ms(self) -> list[float]:
        """Per utterance that began while gateway audio was playing: from its first speech
        frame sent to the next ``clear`` received (utterances never cleared are left out)."""
        out: list[float] = []
        for seg in self.utterances():
            onset = self.send_times_ms[seg.start_frame]
            if not any(a <= onset < b for a, b in self.playout_ms):
                continue
            first = next((t for t in self.clears_ms if t >= onset), None)
            if first is not None:
                out.append(first - onset)
        return out

    def summary(self) -> str:
        latency = self.turn_latencies_ms()
        return (
            f"{self.call_sid} session={self.session_id or '-'} outcome={self.outcome} "
            f"ended_by={self.ended_by or '-'} close={self.close_code} sent={self.frames_sent} "
            f"recv={self.media_received} marks={len(self.marks_echoed)} "
            f"clears={len(self.clears_ms)} replies={len(latency)} "
            f"late_max={self.lateness_max_ms:.1f}ms"
            + (f" errors={'; '.join(self.errors)}" if self.errors else "")
        )


# --------------------------------------------------------------------------- registry


class SimRegistry:
    """Running simulated calls by CallSid, shared with the fake REST API of the same process."""

    def __init__(self) -> None:
        self._calls: dict[str, SimulatedCall] = {}
        #: CallSid -> final status of calls that have ended.
        self.ended: dict[str, str] = {}

    def add(self, call: SimulatedCall) -> None:
        self._calls[call.call_sid] = call

    def remove(self, call: SimulatedCall, final_status: str) -> None:
        if self._calls.get(call.call_sid) is call:
            del self._calls[call.call_sid]
        self.ended[call.call_sid] = final_status

    def get(self, call_sid: str) -> SimulatedCall | None:
        return self._calls.get(call_sid)

    def __len__(self) -> int:
        return len(self._calls)


# --------------------------------------------------------------------------- the call


class SimulatedCall:
    """One call, driven step by step (``dial``, ``open_stream``, ``stream_audio``, ``hang_up``,
    ``post_status``) or all at once with :meth:`run`."""

    def __init__(self, config: CallConfig, *, http: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self.call_sid = config.call_sid
        self.stream_sid = new_stream_sid()
        self.result = CallResult(
            call_sid=self.call_sid, account_sid=config.account_sid, stream_sid=self.stream_sid
        )
        if config.speech is not None:
            self.result.known_speech = _known_speech(config)
        self._http = http
        self._own_http = http is None
        self._validator = SignatureValidator(config.auth_token)
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._seq = 0
        #: The rest of a send that had to wait for the socket (flow control), if any.
        self._flushing: asyncio.Task[None] | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._renderer: MediaRenderer | None = None
        #: The loop the stream runs on (its clock and timers), from ``open_stream``.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0  # loop time when ``start`` was sent
        self._answered_at: float | None = None
        self._ended_at: float | None = None
        self._end = asyncio.Event()  # the stream must end (gateway close, API update)
        self._closed_by_us = False
        # Twilio's playout model: the buffer plays until ``_play_end``; each pending mark is
        # echoed at its due time by a timer armed for the first one.
        self._play_end = 0.0
        self._pending_marks: deque[tuple[float, str]] = deque()
        self._marks_timer: asyncio.TimerHandle | None = None

    # -- helpers ------------------------------------------------------------------------------

    @property
    def _loop_time(self) -> float:
        return (self._loop or asyncio.get_running_loop()).time()

    def _ms(self, at: float | None = None) -> float:
        """Simulator clock: ms since ``start`` was sent."""
        return ((self._loop_time if at is None else at) - self._t0) * 1000

    def _error(self, message: str) -> None:
        log.warning("simulated call %s: %s", self.call_sid, message)
        self.result.errors.append(message)

    async def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=self.config.http_timeout),
            )
        return self._http

    def _signature(
        self, mode: SignatureMode, url: str, params: Mapping[str, str]
    ) -> dict[str, str]:
        if mode == "missing":
            return {}
        if mode == "forged":
            forged = SignatureValidator("not-the-auth-token-" + secrets.token_hex(4))
            return {SIGNATURE_HEADER: forged.sign(url, dict(params))}
        return {SIGNATURE_HEADER: self._validator.sign(url, dict(params))}

    def _base_params(self) -> dict[str, str]:
        cfg = self.config
        params = {
            "CallSid": self.call_sid,
            "AccountSid": cfg.account_sid,
            "From": cfg.from_number,
            "To": cfg.to_number,
            "Caller": cfg.from_number,
            "Called": cfg.to_number,
            "Direction": "inbound",
            "ApiVersion": API_VERSION,
            "FromCity": "SAN FRANCISCO",
            "FromState": "CA",
            "FromZip": "94105",
            "FromCountry": "US",
            "ToCity": "",
            "ToState": "",
            "ToZip": "",
            "ToCountry": "US",
            "CallerCity": "SAN FRANCISCO",
            "CallerState": "CA",
            "CallerZip": "94105",
            "CallerCountry": "US",
            "CalledCity": "",
            "CalledState": "",
            "CalledZip": "",
            "CalledCountry": "US",
        }
        if cfg.caller_name:
            params["CallerName"] = cfg.caller_name
        return params

    async def _post_form(
        self, url: str, params: Mapping[str, str], mode: SignatureMode
    ) -> tuple[int, str, str]:
        http = await self._session()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": secrets.token_hex(16),
            **self._signature(mode, url, params),
        }
        async with http.post(
            url,
            data=aiohttp.FormData(dict(params)),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.config.http_timeout),
        ) as resp:
            body = await resp.text()
            return resp.status, resp.headers.get("Content-Type", ""), body

    # -- 1-2: the incoming-call webhook and its TwiML ----------------------------------------

    async def dial(self) -> TwimlPlan | None:
        """POST the incoming-call webhook; returns the TwiML plan (None if the webhook failed)."""
        cfg = self.config
        url = cfg.base_url.rstrip("/") + cfg.voice_path
        if cfg.webhook_query:
            url += "?" + cfg.webhook_query
        params = {**self._base_params(), "CallStatus": "ringing", **cfg.extra_params}
        status, ctype, body = await self._post_form(url, params, cfg.webhook_signature)
        self.result.webhook_status = status
        self.result.twiml = body
        if status != 200:
            self.result.outcome = "refused" if status in (401, 403) else "failed"
            self.result.ended_by = "webhook"
            if status not in (401, 403):
                self._error(f"voice webhook answered HTTP {status}")
            return None
        mime = ctype.split(";")[0].strip().lower()
        if mime not in ("text/xml", "application/xml", "text/html"):
            self._error(f"voice webhook answered {mime!r}, not TwiML")
            self.result.outcome = "failed"
            return None
        try:
            plan = parse_twiml(body)
        except ProtocolError as exc:
            self._error(exc.message)
            self.result.outcome = "failed"
            return None
        self.result.plan = plan
        self.result.session_id = plan.stream_parameters.get("session_id")
        if plan.reject is None:
            self._answered_at = self._loop_time
        return plan

    # -- 3-4: the stream ----------------------------------------------------------------------

    async def open_stream(
        self,
        url: str | None = None,
        *,
        send_start: bool = True,
        custom_parameters: Mapping[str, str] | None = None,
    ) -> bool:
        """Open the websocket (signed per ``stream_signature``) and send ``connected`` and
        ``start``. Returns False if the socket could not be opened."""
        plan = self.result.plan
        url = url or (plan.stream_url if plan else None)
        if not url:
            raise ValueError("no stream URL: dial() first or pass url")
        params = custom_parameters
        if params is None:
            params = plan.stream_parameters if plan else {}
        http = await self._session()
        headers = self._signature(self.config.stream_signature, url, {})
        try:
            self.ws = await http.ws_connect(
                url,
                headers=headers,
                max_msg_size=codec.MAX_OUTBOUND_BYTES,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=self.config.close_timeout),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error(f"websocket to {url} failed: {exc!r}")
            self.result.outcome = "failed"
            return False
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop_time
        self._play_end = self._t0
        self._receiver = asyncio.create_task(self._receive(), name=f"sim-recv-{self.call_sid}")
        await self.send_text(codec.twilio_connected())
        if send_start:
            await self.send_start(params)
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def send_text(self, text: str) -> bool:
        """Send one raw text frame; False if the socket is closed."""
        ws = self.ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False
        return True

    def _send_text_now(self, text: str) -> bool:
        """Write one text frame now, without awaiting (see :func:`send_now`); False if the
        socket is closed. If the writer has to wait for the socket, the rest of the send runs
        in ``_flushing``."""
        ws = self.ws
        if ws is None or ws.closed:
            return False
        try:
            flushing = send_now(ws.send_str(text))
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False
        if flushing is not None:
            self._flushing = flushing
        return True

    async def send_bytes(self, data: bytes) -> bool:
        """Send one binary frame (Twilio never does: for refusal tests)."""
        ws = self.ws
        if ws is None or ws.closed:
            return False
        try:
            await ws.send_bytes(data)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False
        return True

    # Frames leave in sequence order whichever path sends them (paced media, mark echoes,
    # dtmf, stop): the sequence number is taken and the frame written in one synchronous step.
    # aiohttp writes an uncompressed frame to the transport before its first ``await`` (the
    # simulator never offers permessage-deflate), so no lock is needed.

    async def _send_numbered(self, build: Callable[[int], str]) -> bool:
        return await self.send_text(build(self._next_seq()))

    def _send_numbered_now(self, build: Callable[[int], str]) -> bool:
        return self._send_text_now(build(self._next_seq()))

    async def send_start(self, custom_parameters: Mapping[str, str]) -> bool:
        self._t0 = self._loop_time
        self._play_end = self._t0
        return await self._send_numbered(
            lambda seq: codec.twilio_start(
                self.stream_sid,
                self.config.account_sid,
                self.call_sid,
                custom_parameters=custom_parameters,
                sequence_number=seq,
            )
        )

    async def send_media(self, payload: bytes, *, chunk: int, timestamp_ms: int) -> bool:
        return await self._send_numbered(
            lambda seq: codec.twilio_media(self.stream_sid, seq, chunk, timestamp_ms, payload)
        )

    async def send_dtmf(self, digit: str) -> bool:
        ok = await self._send_numbered(lambda seq: codec.twilio_dtmf(self.stream_sid, seq, digit))
        if ok:
            self.result.dtmf_sent.append((self._ms(), digit))
        return ok

    def _send_dtmf_now(self, digit: str) -> bool:
        ok = self._send_numbered_now(lambda seq: codec.twilio_dtmf(self.stream_sid, seq, digit))
        if ok:
            self.result.dtmf_sent.append((self._ms(), digit))
        return ok

    async def send_stop(self) -> bool:
        return await self._send_numbered(
            lambda seq: codec.twilio_stop(
                self.stream_sid, seq, self.config.account_sid, self.call_sid
            )
        )

    def _frame_plan(self) -> FramePlan:
        cfg = self.config
        return frame_plan(cfg.audio, cfg.loop_seconds, cfg.trailing_silence_ms)

    def _frames(self) -> Iterator[bytes]:
        """The frames the call streams: the audio looped or cut to ``loop_seconds``, the last
        frame padded with silence, then ``trailing_silence_ms`` of silence."""
        return iter(self._frame_plan().frames)

    def _media_renderer(self) -> MediaRenderer:
        renderer = self._renderer
        if renderer is None or renderer.stream_sid != self.stream_sid:
            renderer = self._renderer = MediaRenderer(self.stream_sid)
        return renderer

    async def stream_audio(self) -> None:
        """Send the configured audio (and DTMF) at 20 ms pace until done or the stream ends.

        Frame n is due at ``t0 + n * 20 ms`` (``t0``: when ``start`` was sent). In real time
        the frames are sent by the loop's shared :class:`~voice_gateway.sim.pacer.FramePacer`;
        each send's lateness against its due time is recorded."""
        plan = self._frame_plan()
        dtmf = sorted(self.config.dtmf)
        if not self.config.realtime:
            await self._stream_fast(plan, dtmf)
            return
        if not len(plan):
            for _, digit in dtmf:
                await self.send_dtmf(digit)
            return
        stream = _PacedStream(self, plan, dtmf, asyncio.get_running_loop())
        stream.start()
        try:
            await stream.done
        except asyncio.CancelledError:
            stream.stopped = True
            raise

    async def _stream_fast(self, plan: FramePlan, dtmf: list[tuple[int, str]]) -> None:
        """``realtime=False``: every frame at once, letting the loop run every 50 frames."""
        renderer = self._media_renderer()
        frames, payloads, speech = plan.frames, plan.payloads, plan.speech
        res = self.result
        t0 = self._t0
        clock = asyncio.get_running_loop().time
        for n in range(len(frames)):
            if self._end.is_set():
                return
            while dtmf and dtmf[0][0] <= n * FRAME_MS:
                _, digit = dtmf.pop(0)
                await self.send_dtmf(digit)
            sent_at = clock()
            text = renderer.render(self._next_seq(), n + 1, n * FRAME_MS, frames[n], payloads[n])
            if not await self.send_text(text):
                if not self._end.is_set():
                    self._error("media send failed: socket closed")
                return
            res.frames_sent += 1
            res.send_times_ms.append((sent_at - t0) * 1000)
            res.lateness_ms.append(0.0)
            res.speech_flags.append(speech[n])
            if n % 50 == 49:
                await asyncio.sleep(0)
        for _, digit in dtmf:
            await self.send_dtmf(digit)

    # -- 5: Twilio's side of the gateway's messages -----------------------------------------

    async def _receive(self) -> None:
        ws = self.ws
        assert ws is not None
        res = self.result
        clock = asyncio.get_running_loop().time
        text_type = aiohttp.WSMsgType.TEXT
        while True:
            try:
                msg = await ws.receive()
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                self._error(f"websocket receive failed: {exc!r}")
                break
            if msg.type is text_type:
                self._on_text(msg.data, clock())
                continue
            if msg.type is aiohttp.WSMsgType.BINARY:
                self._error("the gateway sent a binary frame (Twilio error 31950)")
                continue
            if msg.type is aiohttp.WSMsgType.CLOSE:
                res.close_code = int(msg.data) if msg.data is not None else None
                res.close_reason = msg.extra or None
            elif msg.type is aiohttp.WSMsgType.ERROR:
                self._error(f"websocket error: {msg.data!r}")
            break
        if res.close_code is None and ws.close_code is not None:
            res.close_code = ws.close_code
        self._stop_playout(now=self._loop_time)
        if not self._closed_by_us:
            if res.ended_by is None:
                res.ended_by = "gateway"
            self._end.set()

    def _on_text(self, text: str, now: float) -> None:
        res = self.result
        t_ms = (now - self._t0) * 1000
        try:
            event = codec.parse_outbound(text)
        except (ProtocolError, PayloadTooLarge) as exc:
            self._error(f"gateway sent a frame Twilio refuses (31951): {exc.message}")
            return
        if event.stream_sid != self.stream_sid:
            self._error(f"gateway sent streamSid {event.stream_sid!r} (31951)")
            return
        if isinstance(event, codec.OutboundMedia):
            size = len(event.payload)
            res.media_received += 1
            res.media_bytes_received += size
            res.media_times_ms.append(t_ms)
            res.events.append(OutboundRecord(t_ms, "media", size=size))
            if self._play_end <= now:  # idle: playback starts now
                self._play_end = now
                res.playout_ms.append((t_ms, t_ms))
            self._play_end += size / SAMPLE_RATE
            start, _ = res.playout_ms[-1]
            res.playout_ms[-1] = (start, self._ms(self._play_end))
        elif isinstance(event, codec.OutboundMark):
            res.marks_received.append((t_ms, event.name))
            res.events.append(OutboundRecord(t_ms, "mark", name=event.name))
            # Echoed once the audio queued before it has played.
            self._pending_marks.append((max(now, self._play_end), event.name))
            if len(self._pending_marks) == 1:
                self._arm_marks()
        else:
            res.clears_ms.append(t_ms)
            res.events.append(OutboundRecord(t_ms, "clear"))
            self._stop_playout(now)
            # Twilio returns every pending mark at once after a clear.
            if self._pending_marks:
                self._pending_marks = deque((now, name) for _, name in self._pending_marks)
                self._arm_marks()

    def _stop_playout(self, now: float) -> None:
        res = self.result
        if self._play_end > now and res.playout_ms:
            start, _ = res.playout_ms[-1]
            res.playout_ms[-1] = (start, self._ms(now))
        self._play_end = min(self._play_end, now)

    def _arm_marks(self) -> None:
        """(Re)arm the mark timer for the first pending mark."""
        if self._marks_timer is not None:
            self._marks_timer.cancel()
        due = self._pending_marks[0][0]
        loop = self._loop or asyncio.get_running_loop()
        self._marks_timer = loop.call_at(due, self._echo_marks)

    def _echo_marks(self) -> None:
        """Echo every mark whose audio has played (the timer armed for the first one)."""
        self._marks_timer = None
        marks = self._pending_marks
        now = self._loop_time
        while marks and marks[0][0] <= now:
            _, name = marks.popleft()
            if self._send_text_now(codec.twilio_mark(self.stream_sid, self._next_seq(), name)):
                self.result.marks_echoed.append((self._ms(), name))
        if marks:
            self._arm_marks()

    # -- 7-8: ending ----------------------------------------------------------------------------

    async def hang_up(self, *, send_stop: bool = True) -> None:
        """End the stream from Twilio's side: ``stop``, then close the socket."""
        if self._ended_at is None:
            self._ended_at = self._loop_time
        ws = self.ws
        if ws is None:
            return
        self._closed_by_us = True
        if self.result.ended_by is None:
            self.result.ended_by = "caller"
        if not ws.closed:
            if send_stop:
                await self.send_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), self.config.close_timeout)
        await self._stop_tasks()
        if self.result.close_code is None:
            self.result.close_code = ws.close_code

    async def wait_closed(self, wait_s: float = 5.0) -> int | None:
        """Wait up to ``wait_s`` for the gateway to close the socket; returns the close code."""
        if self._receiver is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._receiver), wait_s)
        return self.result.close_code

    async def _stop_tasks(self) -> None:
        if self._receiver is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._receiver), self.config.close_timeout)
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver
        if self._marks_timer is not None:
            self._marks_timer.cancel()
            self._marks_timer = None
        if self._flushing is not None:
            self._flushing.cancel()

    def api_update(self, fields: Mapping[str, str]) -> None:
        """What the fake REST API calls for ``POST .../Calls/{sid}.json`` on this call: a
        hang-up (``Status=completed|canceled``) or new instructions (``Twiml`` / ``Url``) end
        the media stream, as Twilio does."""
        self.result.api_updates.append(dict(fields))
        if fields.get("Status") in ("completed", "canceled"):
            self.result.ended_by = self.result.ended_by or "api-hangup"
        elif "Twiml" in fields or "Url" in fields:
            self.result.ended_by = self.result.ended_by or "api-redirect"
            self.result.redirect_twiml = fields.get("Twiml") or fields.get("Url")
        else:
            return
        self._end.set()

    def call_duration(self) -> int:
        """``CallDuration``: whole seconds from answer to end, rounded up."""
        if self._answered_at is None:
            return 0
        end = self._ended_at if self._ended_at is not None else self._loop_time
        return max(0, math.ceil(end - self._answered_at - 1e-6))

    async def post_status(self, status: str, *, duration: int | None = None) -> int | None:
        """POST one signed call-progress status callback; returns the HTTP status."""
        cfg = self.config
        url = cfg.status_url or cfg.base_url.rstrip("/") + STATUS_PATH
        seq = _STATUS_ORDER.index(status) if status in _STATUS_ORDER else len(_STATUS_ORDER)
        params = {
            **self._base_params(),
            "CallStatus": status,
            "CallbackSource": "call-progress-events",
            "SequenceNumber": str(seq),
            "Timestamp": format_datetime(datetime.now(UTC)),
        }
        if status in _TERMINAL:
            seconds = self.call_duration() if duration is None else duration
            self.result.call_duration = seconds
            params["CallDuration"] = str(seconds)
            params["Duration"] = str(math.ceil(seconds / 60))
            params["SipResponseCode"] = "200" if status == "completed" else "486"
        try:
            code, _, _ = await self._post_form(url, params, cfg.status_signature)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._error(f"status callback {status} failed: {exc!r}")
            return None
        self.result.status_responses.append((status, code))
        if code >= 300 and cfg.status_signature == "valid":
            self._error(f"status callback {status} answered HTTP {code}")
        return code

    async def post_status_callbacks(self, *, rejected: bool = False) -> None:
        if self.config.status_delay_ms:
            await asyncio.sleep(self.config.status_delay_ms / 1000)
        for status in self.config.status_callbacks:
            await self.post_status("busy" if rejected and status == "completed" else status)

    # -- everything ---------------------------------------------------------------------------

    async def run(self) -> CallResult:
        """Place the whole call and return what happened."""
        started = time.perf_counter()
        registry = self.config.registry
        if registry is not None:
            registry.add(self)
        res = self.result
        rejected = False
        closing: asyncio.Task[None] | None = None
        try:
            plan = await self.dial()
            if plan is not None:
                if plan.stream_url:
                    closing = await self._run_stream(plan.stream_url)
                else:
                    rejected = plan.reject is not None
                    res.outcome = "refused" if (plan.reject or plan.hangup) else "completed"
                    res.ended_by = "twiml"
                    if plan.unsupported:
                        self._error(f"TwiML verbs not simulated: {plan.unsupported}")
                    words = sum(len(s.split()) for s in plan.said)
                    if self._answered_at is not None:
                        self._ended_at = self._answered_at + 0.4 * words
            await self.post_status_callbacks(rejected=rejected)
            if closing is not None:
                await closing
                self._settle_stream_outcome()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self._error(f"call failed: {exc!r}")
        finally:
            if closing is not None and not closing.done():
                closing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await closing
            await self._stop_tasks()
            if self.ws is not None and not self.ws.closed:
                await self.ws.close()
            if res.errors and res.outcome in ("pending", "completed"):
                res.outcome = "failed"
            res.elapsed_s = time.perf_counter() - started
            if registry is not None:
                registry.remove(self, "completed")
            if self._own_http and self._http is not None:
                await self._http.close()
                self._http = None
        return res

    async def _run_stream(self, url: str) -> asyncio.Task[None] | None:
        """Stream until the audio is done or something ends the stream; returns the task that
        finishes closing the socket (the status callback does not wait for it, as in Twilio)."""
        if not await self.open_stream(url):
            return None
        sender = asyncio.create_task(self.stream_audio(), name=f"sim-send-{self.call_sid}")
        ender = asyncio.create_task(self._end.wait())
        await asyncio.wait({sender, ender}, return_when=asyncio.FIRST_COMPLETED)
        ender.cancel()
        if not sender.done():
            self._end.set()  # stream_audio returns at its next frame
        await sender
        self._ended_at = self._loop_time
        if self.result.ended_by == "gateway":
            return asyncio.create_task(self._stop_tasks())
        return asyncio.create_task(self.hang_up())

    def _settle_stream_outcome(self) -> None:
        res = self.result
        code = res.close_code
        if res.ended_by == "gateway" and code not in (codec.CLOSE_NORMAL, codec.CLOSE_GOING_AWAY):
            res.outcome = "refused" if code in _REFUSALS else "failed"
            if res.outcome == "failed":
                self._error(f"gateway closed the stream with {code} {res.close_reason or ''}")
        else:
            res.outcome = "completed"


class _PacedStream:
    """One call's real-time media stream, stepped by the loop's shared pacer: each step sends
    the frame that is due (after any DTMF due before it) and returns the next one's due time."""

    __slots__ = ("call", "done", "dtmf", "loop", "n", "plan", "renderer", "stopped", "t0")

    def __init__(
        self,
        call: SimulatedCall,
        plan: FramePlan,
        dtmf: list[tuple[int, str]],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.call = call
        self.plan = plan
        self.dtmf = dtmf
        self.loop = loop
        self.renderer = call._media_renderer()
        self.t0 = call._t0
        self.n = 0  # the next frame to send
        #: Set when the stream is over (all sent, the stream ended, or a send failed).
        self.done: asyncio.Future[None] = loop.create_future()
        #: Set when whoever awaited ``done`` stopped waiting (cancelled).
        self.stopped = False

    def start(self) -> None:
        pacer_for(self.loop).add(self.t0, self.step)

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def step(self) -> float | None:
        if self.stopped or self.done.done():
            return None
        try:
            return self._send_due()
        except Exception as exc:  # raised where the stream is awaited
            if not self.done.done():
                self.done.set_exception(exc)
            return None

    def _send_due(self) -> float | None:
        call = self.call
        if call._end.is_set():
            self._finish()
            return None
        n = self.n
        ms = n * FRAME_MS
        dtmf = self.dtmf
        while dtmf and dtmf[0][0] <= ms:
            _, digit = dtmf.pop(0)
            call._send_dtmf_now(digit)
        plan = self.plan
        sent_at = self.loop.time()
        text = self.renderer.render(call._next_seq(), n + 1, ms, plan.frames[n], plan.payloads[n])
        if not call._send_text_now(text):
            if not call._end.is_set():
                call._error("media send failed: socket closed")
            self._finish()
            return None
        t0 = self.t0
        res = call.result
        res.frames_sent += 1
        res.send_times_ms.append((sent_at - t0) * 1000)
        res.lateness_ms.append(max(0.0, (sent_at - (t0 + n * _FRAME_S)) * 1000))
        res.speech_flags.append(plan.speech[n])
        n = self.n = n + 1
        if n == len(plan.frames):
            for _, digit in dtmf:
                call._send_dtmf_now(digit)
            self._finish()
            return None
        due = t0 + n * _FRAME_S
        flushing = call._flushing
        if flushing is not None and not flushing.done():
            # The socket is full: the next frame waits for this send to finish, as an awaited
            # send would (its lateness then shows it).
            flushing.add_done_callback(lambda _: pacer_for(self.loop).add(due, self.step))
            return None
        return due


#: Close codes by which the gateway refuses a stream (see ``telephony/media.py``).
_REFUSALS: Final = frozenset(
    {
        codec.CLOSE_POLICY_VIOLATION,
        codec.CLOSE_BAD_STREAM_TOKEN,
        codec.CLOSE_UNKNOWN_SESSION,
        codec.CLOSE_START_TIMEOUT,
        codec.CLOSE_DUPLICATE_STREAM,
    }
)


async def place_call(
    base_url: str,
    auth_token: str,
    *,
    http: aiohttp.ClientSession | None = None,
    **options: Any,
) -> CallResult:
    """Place one simulated call (``options`` are :class:`CallConfig` fields)."""
    call = SimulatedCall(CallConfig(base_url=base_url, auth_token=auth_token, **options), http=http)
    return await call.run()

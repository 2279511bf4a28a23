"""Twilio Media Streams wire codec (pure: no I/O, no awaits, no logging).

Two directions, two sides:

* **Gateway side.** :func:`parse_inbound` turns a text frame from Twilio into a typed event
  (:class:`Connected`, :class:`Start`, :class:`Media`, :class:`Mark`, :class:`Dtmf`,
  :class:`Stop`, or :class:`Unknown` for event names this module does not know, which the
  caller logs and skips). :class:`OutboundEncoder` builds the three messages Twilio accepts
  from us (``media``, ``mark``, ``clear``) from string templates made once per stream.
* **Simulator side.** ``twilio_*`` build frames exactly as Twilio sends them (``sequenceNumber``,
  ``chunk`` and ``timestamp`` as *strings*) and :func:`parse_outbound` reads what the gateway
  sent, rejecting anything Twilio itself would reject.

``parse_inbound`` runs for every 20 ms frame of every call, so the ``media`` event has a fast
path (one ``json.loads``, direct dict access, strict ``binascii.a2b_base64``) that checks the
same things as the general path. Every malformed input raises :class:`~voice_gateway.errors.
ProtocolError`; input over ``max_bytes`` raises :class:`~voice_gateway.errors.PayloadTooLarge`.
Nothing else escapes.

WebSocket close codes
---------------------

The gateway closes the Media Streams socket with one of these. Twilio itself only records
that the server closed the socket (error 31921); the codes are for our logs, metrics and the
call simulator.

=====  ============================  ==============================================================
code   constant                      when
=====  ============================  ==============================================================
1000   ``CLOSE_NORMAL``              the session ended normally (agent hung up, call completed)
1001   ``CLOSE_GOING_AWAY``          the gateway is shutting down / draining this instance
1002   ``CLOSE_PROTOCOL_ERROR``      malformed frame: bad JSON, bad base64, missing/invalid field
1003   ``CLOSE_UNSUPPORTED_DATA``    a binary frame (Twilio only sends JSON text frames)
1008   ``CLOSE_POLICY_VIOLATION``    the upgrade request failed the ``X-Twilio-Signature`` check
1009   ``CLOSE_MESSAGE_TOO_BIG``     a frame over the configured size limit (``PayloadTooLarge``)
1011   ``CLOSE_INTERNAL_ERROR``      an unexpected error in the gateway
4401   ``CLOSE_BAD_STREAM_TOKEN``    the stream token in ``start.customParameters`` is missing,
                                     expired, forged or for another session/call
4404   ``CLOSE_UNKNOWN_SESSION``     ``start`` names a session the gateway does not know
4408   ``CLOSE_START_TIMEOUT``       no ``start`` event arrived in time after the upgrade
4409   ``CLOSE_DUPLICATE_STREAM``    a second stream for a session that already has one
=====  ============================  ==============================================================
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import orjson

from voice_gateway.errors import PayloadTooLarge, ProtocolError

# orjson: the same Python values as json.loads, about three times faster on a media frame, and
# stricter (no NaN/Infinity literals, no lone surrogates), which a Twilio frame never has.
_loads = orjson.loads

__all__ = [
    "CLOSE_BAD_STREAM_TOKEN",
    "CLOSE_DUPLICATE_STREAM",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL_ERROR",
    "CLOSE_MESSAGE_TOO_BIG",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_START_TIMEOUT",
    "CLOSE_UNKNOWN_SESSION",
    "CLOSE_UNSUPPORTED_DATA",
    "MAX_INBOUND_BYTES",
    "MAX_OUTBOUND_BYTES",
    "MULAW_8K_MONO",
    "Connected",
    "Dtmf",
    "InboundEvent",
    "Mark",
    "Media",
    "MediaFormat",
    "OutboundClear",
    "OutboundEncoder",
    "OutboundEvent",
    "OutboundMark",
    "OutboundMedia",
    "Start",
    "Stop",
    "Unknown",
    "clear_message",
    "mark_message",
    "media_message",
    "parse_inbound",
    "parse_outbound",
    "twilio_connected",
    "twilio_dtmf",
    "twilio_mark",
    "twilio_media",
    "twilio_start",
    "twilio_stop",
]

# --------------------------------------------------------------------------- close codes

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_BAD_STREAM_TOKEN: Final = 4401
CLOSE_UNKNOWN_SESSION: Final = 4404
CLOSE_START_TIMEOUT: Final = 4408
CLOSE_DUPLICATE_STREAM: Final = 4409

#: Default limit for one frame from Twilio. A 20 ms media frame is about 330 bytes; a ``start``
#: with a few custom parameters well under 2 KiB.
MAX_INBOUND_BYTES: Final = 64 * 1024
#: Default limit for one frame from the gateway, checked by the simulator. Outbound media may
#: batch many frames (Twilio's own sample sends 1 s per message, about 11 KB).
MAX_OUTBOUND_BYTES: Final = 1024 * 1024

# --------------------------------------------------------------------------- inbound events


@dataclass(frozen=True, slots=True)
class MediaFormat:
    """``start.mediaFormat``. Twilio documents it as always μ-law, 8000 Hz, mono."""

    encoding: str
    sample_rate: int
    channels: int


#: What Twilio sends on every stream today.
MULAW_8K_MONO: Final = MediaFormat("audio/x-mulaw", 8000, 1)


@dataclass(frozen=True, slots=True)
class Connected:
    """First message on the socket: ``{"event":"connected","protocol":"Call",...}``."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    """Stream metadata; ``custom_parameters`` are the TwiML ``<Parameter>`` values."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    media_format: MediaFormat


@dataclass(frozen=True, slots=True)
class Media:
    """One audio chunk. ``payload`` is the base64-decoded raw μ-law."""

    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Mark:
    """Twilio echoing a mark we sent: the audio before it has played (or was cleared)."""

    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key press (bidirectional streams only)."""

    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended (call hung up, redirected, or the stream was stopped)."""

    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed JSON object with an event name this module does not know."""

    event: str
    raw: dict[str, Any]


InboundEvent = Connected | Start | Media | Mark | Dtmf | Stop | Unknown

# --------------------------------------------------------------------------- outbound events


@dataclass(frozen=True, slots=True)
class OutboundMedia:
    """Audio the gateway sends (raw μ-law, already base64-decoded)."""

    stream_sid: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboundMark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class OutboundClear:
    stream_sid: str


OutboundEvent = OutboundMedia | OutboundMark | OutboundClear

# --------------------------------------------------------------------------- helpers

_MAX_INT_DIGITS: Final = 19  # counters are small; this bounds int() work on hostile input

# Constructing a frozen dataclass goes through ``object.__setattr__`` once per field, which
# costs about as much as decoding the payload. The media fast path sets the slots through
# their descriptors instead: same object, same fields, half the cost (see test_media.py).
_new_object = object.__new__
_set_media_seq = Media.__dict__["sequence_number"].__set__
_set_media_sid = Media.__dict__["stream_sid"].__set__
_set_media_track = Media.__dict__["track"].__set__
_set_media_chunk = Media.__dict__["chunk"].__set__
_set_media_ts = Media.__dict__["timestamp_ms"].__set__
_set_media_payload = Media.__dict__["payload"].__set__


_JSON_TYPE_NAMES: Final = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


def _load(message: str | bytes, max_bytes: int) -> dict[str, Any]:
    """Size-check and JSON-decode one frame into a dict; raise on anything else."""
    if type(message) is str:
        size = len(message)
        # len() counts code points; UTF-8 needs 1-4 bytes each. Only count bytes when it matters.
        if size > max_bytes or (
            size * 4 > max_bytes
            and not message.isascii()
            and len(message.encode("utf-8", "surrogatepass")) > max_bytes
        ):
            raise PayloadTooLarge(
                f"message over {max_bytes} bytes", details={"max_bytes": max_bytes}
            )
        text = message
    elif isinstance(message, bytes | bytearray):
        if len(message) > max_bytes:
            raise PayloadTooLarge(
                f"message of {len(message)} bytes over {max_bytes}",
                details={"max_bytes": max_bytes, "size": len(message)},
            )
        try:
            text = bytes(message).decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not valid UTF-8") from None
    else:
        raise ProtocolError(f"message must be str or bytes, not {type(message).__name__}")
    try:
        data = _loads(text)
    except (ValueError, RecursionError):  # orjson.JSONDecodeError is a ValueError
        raise ProtocolError("message is not valid JSON") from None
    if type(data) is not dict:
        kind = _JSON_TYPE_NAMES.get(type(data), type(data).__name__)
        raise ProtocolError(f"message is a JSON {kind}, not an object")
    return data


def _event_name(data: dict[str, Any]) -> str:
    event = data.get("event")
    if type(event) is not str or not event:
        raise ProtocolError("message has no string 'event' field")
    return event


def _obj(data: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = data.get(key)
    if type(value) is not dict:
        raise ProtocolError(f"{path} must be an object", details={"field": path})
    return value


def _str(data: dict[str, Any], key: str, path: str, *, allow_empty: bool = False) -> str:
    value = data.get(key)
    if type(value) is not str or (not value and not allow_empty):
        raise ProtocolError(f"{path} must be a non-empty string", details={"field": path})
    return value


def _int(value: object, path: str) -> int:
    """A non-negative integer sent as a decimal string (Twilio) or, leniently, a JSON integer."""
    if type(value) is str:
        if 0 < len(value) <= _MAX_INT_DIGITS and value.isascii() and value.isdigit():
            return int(value)
    elif type(value) is int and value >= 0:
        return value
    raise ProtocolError(f"{path} must be a non-negative integer", details={"field": path})


def _b64(value: object, path: str) -> bytes:
    if type(value) is str:
        try:
            return binascii.a2b_base64(value, strict_mode=True)
        except ValueError:  # binascii.Error, or non-ASCII characters
            pass
    raise ProtocolError(f"{path} must be base64", details={"field": path})


def _stream_sid(data: dict[str, Any]) -> str:
    return _str(data, "streamSid", "streamSid")


def _seq(data: dict[str, Any]) -> int:
    return _int(data.get("sequenceNumber"), "sequenceNumber")


# --------------------------------------------------------------------------- parse_inbound


def parse_inbound(message: str | bytes, *, max_bytes: int = MAX_INBOUND_BYTES) -> InboundEvent:
    """Parse one text frame from Twilio.

    :raises PayloadTooLarge: the frame is over ``max_bytes`` (UTF-8 bytes).
    :raises ProtocolError: not UTF-8 / JSON / an object, no ``event``, or a known event with a
        missing or mistyped field or bad base64. Unknown event names give :class:`Unknown`.
    """
    data = _load(message, max_bytes)
    event = data.get("event")
    if event == "media":
        # Fast path for the hot loop of every call: Twilio's exact shape (all strings), checked
        # with as few calls as possible. Anything unusual falls through to _parse_media, which
        # accepts and rejects exactly the same messages and names the offending field.
        try:
            media = data["media"]
            stream_sid = data["streamSid"]
            seq = data["sequenceNumber"]
            track = media["track"]
            chunk = media["chunk"]
            timestamp = media["timestamp"]
            payload = media["payload"]
        except (KeyError, TypeError):
            return _parse_media(data)
        if (
            type(stream_sid) is str
            and stream_sid
            and type(track) is str
            and track
            and type(payload) is str
            and type(seq) is str
            and type(chunk) is str
            and type(timestamp) is str
            and 0 < len(seq) <= _MAX_INT_DIGITS
            and 0 < len(chunk) <= _MAX_INT_DIGITS
            and 0 < len(timestamp) <= _MAX_INT_DIGITS
        ):
            digits = seq + chunk + timestamp
            if digits.isdigit() and digits.isascii():
                try:
                    raw = binascii.a2b_base64(payload, strict_mode=True)
                except ValueError:  # binascii.Error, or non-ASCII characters
                    raise ProtocolError(
                        "media.payload must be base64", details={"field": "media.payload"}
                    ) from None
                obj = _new_object(Media)
                _set_media_seq(obj, int(seq))
                _set_media_sid(obj, stream_sid)
                _set_media_track(obj, track)
                _set_media_chunk(obj, int(chunk))
                _set_media_ts(obj, int(timestamp))
                _set_media_payload(obj, raw)
                return obj
        return _parse_media(data)
    name = _event_name(data)
    parser = _INBOUND_PARSERS.get(name)
    if parser is None:
        return Unknown(event=name, raw=data)
    return parser(data)


def _parse_media(data: dict[str, Any]) -> Media:
    media = _obj(data, "media", "media")
    return Media(
        sequence_number=_seq(data),
        stream_sid=_stream_sid(data),
        track=_str(media, "track", "media.track"),
        chunk=_int(media.get("chunk"), "media.chunk"),
        timestamp_ms=_int(media.get("timestamp"), "media.timestamp"),
        payload=_b64(media.get("payload"), "media.payload"),
    )


def _parse_connected(data: dict[str, Any]) -> Connected:
    return Connected(
        protocol=_str(data, "protocol", "protocol"),
        version=_str(data, "version", "version"),
    )


def _parse_start(data: dict[str, Any]) -> Start:
    seq = _seq(data)
    stream_sid = _stream_sid(data)
    start = _obj(data, "start", "start")
    inner_sid = start.get("streamSid", stream_sid)
    if inner_sid != stream_sid:
        raise ProtocolError(
            "start.streamSid differs from streamSid", details={"field": "start.streamSid"}
        )
    tracks = start.get("tracks")
    if type(tracks) is not list or not tracks or not all(type(t) is str and t for t in tracks):
        raise ProtocolError(
            "start.tracks must be a non-empty list of strings", details={"field": "start.tracks"}
        )
    params = start.get("customParameters", {})
    if type(params) is not dict or not all(type(v) is str for v in params.values()):
        raise ProtocolError(
            "start.customParameters must map names to strings",
            details={"field": "start.customParameters"},
        )
    fmt = _obj(start, "mediaFormat", "start.mediaFormat")
    return Start(
        sequence_number=seq,
        stream_sid=stream_sid,
        account_sid=_str(start, "accountSid", "start.accountSid"),
        call_sid=_str(start, "callSid", "start.callSid"),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        media_format=MediaFormat(
            encoding=_str(fmt, "encoding", "start.mediaFormat.encoding"),
            sample_rate=_int(fmt.get("sampleRate"), "start.mediaFormat.sampleRate"),
            channels=_int(fmt.get("channels"), "start.mediaFormat.channels"),
        ),
    )


def _parse_mark(data: dict[str, Any]) -> Mark:
    mark = _obj(data, "mark", "mark")
    return Mark(
        sequence_number=_seq(data),
        stream_sid=_stream_sid(data),
        name=_str(mark, "name", "mark.name"),
    )


def _parse_dtmf(data: dict[str, Any]) -> Dtmf:
    dtmf = _obj(data, "dtmf", "dtmf")
    return Dtmf(
        sequence_number=_seq(data),
        stream_sid=_stream_sid(data),
        track=_str(dtmf, "track", "dtmf.track"),
        digit=_str(dtmf, "digit", "dtmf.digit"),
    )


def _parse_stop(data: dict[str, Any]) -> Stop:
    stop = _obj(data, "stop", "stop")
    return Stop(
        sequence_number=_seq(data),
        stream_sid=_stream_sid(data),
        account_sid=_str(stop, "accountSid", "stop.accountSid"),
        call_sid=_str(stop, "callSid", "stop.callSid"),
    )


_INBOUND_PARSERS: Final[dict[str, Callable[[dict[str, Any]], InboundEvent]]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "stop": _parse_stop,
}

# --------------------------------------------------------------------------- gateway -> Twilio


class OutboundEncoder:
    """Builds the frames the gateway sends on one stream.

    The stream SID is JSON-escaped once, here; :meth:`media` then only base64-encodes the
    payload and concatenates strings.
    """

    __slots__ = ("_clear", "_mark_prefix", "_media_prefix", "stream_sid")

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        sid = json.dumps(stream_sid)
        self._media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"

    def media(self, payload: bytes) -> str:
        """``media`` frame carrying raw μ-law (no WAV header), base64-encoded."""
        return (
            self._media_prefix + binascii.b2a_base64(payload, newline=False).decode("ascii") + '"}}'
        )

    def mark(self, name: str) -> str:
        """``mark`` frame; Twilio echoes ``name`` once the audio sent before it has played."""
        return self._mark_prefix + json.dumps(name) + "}}"

    def clear(self) -> str:
        """``clear`` frame: drop the audio Twilio has buffered (barge-in)."""
        return self._clear


@lru_cache(maxsize=1024)
def _encoder(stream_sid: str) -> OutboundEncoder:
    return OutboundEncoder(stream_sid)


def media_message(stream_sid: str, payload: bytes) -> str:
    """``OutboundEncoder(stream_sid).media(payload)``, with the encoder cached per SID."""
    return _encoder(stream_sid).media(payload)


def mark_message(stream_sid: str, name: str) -> str:
    return _encoder(stream_sid).mark(name)


def clear_message(stream_sid: str) -> str:
    return _encoder(stream_sid).clear()


# --------------------------------------------------------------------------- simulator side


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def twilio_connected(protocol: str = "Call", version: str = "1.0.0") -> str:
    """The first frame Twilio sends after the upgrade."""
    return _dumps({"event": "connected", "protocol": protocol, "version": version})


def twilio_start(
    stream_sid: str,
    account_sid: str,
    call_sid: str,
    *,
    custom_parameters: Mapping[str, str] | None = None,
    sequence_number: int = 1,
    tracks: Sequence[str] = ("inbound",),
    media_format: MediaFormat = MULAW_8K_MONO,
) -> str:
    """The ``start`` frame as Twilio sends it (sequence number 1 on a real stream)."""
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": account_sid,
                "callSid": call_sid,
                "tracks": list(tracks),
                "customParameters": dict(custom_parameters or {}),
                "mediaFormat": {
                    "encoding": media_format.encoding,
                    "sampleRate": media_format.sample_rate,
                    "channels": media_format.channels,
                },
            },
        }
    )


def twilio_media(
    stream_sid: str,
    sequence_number: int,
    chunk: int,
    timestamp_ms: int,
    payload: bytes,
    *,
    track: str = "inbound",
) -> str:
    """A ``media`` frame as Twilio sends it; ``payload`` is raw μ-law."""
    return _dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": binascii.b2a_base64(payload, newline=False).decode("ascii"),
            },
        }
    )


def twilio_mark(stream_sid: str, sequence_number: int, name: str) -> str:
    """Twilio echoing a mark back once its audio has played."""
    return _dumps(
        {
            "event": "mark",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "mark": {"name": name},
        }
    )


def twilio_dtmf(
    stream_sid: str, sequence_number: int, digit: str, *, track: str = "inbound_track"
) -> str:
    """A key press as Twilio reports it."""
    return _dumps(
        {
            "event": "dtmf",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "dtmf": {"track": track, "digit": digit},
        }
    )


def twilio_stop(stream_sid: str, sequence_number: int, account_sid: str, call_sid: str) -> str:
    """The last frame of a stream."""
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence_number),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )


def parse_outbound(message: str | bytes, *, max_bytes: int = MAX_OUTBOUND_BYTES) -> OutboundEvent:
    """Parse a frame the gateway sent, as Twilio would (simulator side).

    Twilio accepts only ``media``, ``mark`` and ``clear`` text frames; anything else (other
    events, missing ``streamSid``, bad base64, binary frames that are not UTF-8 JSON) is a
    :class:`ProtocolError`, which Twilio reports as error 31951.
    """
    data = _load(message, max_bytes)
    event = _event_name(data)
    stream_sid = _stream_sid(data)
    if event == "media":
        media = _obj(data, "media", "media")
        return OutboundMedia(
            stream_sid=stream_sid, payload=_b64(media.get("payload"), "media.payload")
        )
    if event == "mark":
        mark = _obj(data, "mark", "mark")
        return OutboundMark(stream_sid=stream_sid, name=_str(mark, "name", "mark.name"))
    if event == "clear":
        return OutboundClear(stream_sid=stream_sid)
    raise ProtocolError(
        f"Twilio does not accept a {event!r} event from the server (only media, mark, clear)",
        details={"event": event},
    )

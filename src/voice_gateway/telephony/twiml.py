"""TwiML documents the gateway answers with, built with ``twilio.twiml.voice_response``.

Every function returns a complete document (``<?xml ...?><Response>...</Response>``) ready for
a ``text/xml`` webhook reply or the ``Twiml`` field of a REST call update. ElementTree does the
escaping; characters XML 1.0 cannot carry at all (most C0 controls) are refused for parameter
values, which must round-trip exactly, and replaced by spaces in spoken text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

from twilio.twiml.voice_response import Connect, Dial, VoiceResponse

__all__ = [
    "CONTENT_TYPE",
    "ConnectStreamTemplate",
    "busy",
    "connect_stream",
    "dial",
    "say_and_hangup",
]

#: Content type for webhook replies.
CONTENT_TYPE: Final = "text/xml"

# Characters not allowed anywhere in an XML 1.0 document.
_XML_INVALID: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_PHONE_NUMBER: Final = re.compile(r"\+?[0-9]{3,20}")


def _render(response: Any) -> str:
    return str(response.to_xml(xml_declaration=True))


def _check_xml_text(value: str, what: str) -> str:
    if _XML_INVALID.search(value):
        raise ValueError(f"{what} contains characters XML cannot carry")
    return value


def connect_stream(
    stream_url: str,
    parameters: Mapping[str, str],
    status_callback: str | None = None,
    *,
    action: str | None = None,
) -> str:
    """``<Connect><Stream>``: a bidirectional Media Stream to ``stream_url``.

    :param stream_url: ``wss://`` URL (``ws://`` is accepted for the local simulator; Twilio
        itself needs ``wss``) with no query string (Twilio errors 31920/31922).
    :param parameters: sent back in the ``start`` event's ``customParameters``; names must be
        non-empty, values may be any text XML can carry (escaped here).
    :param status_callback: URL for ``stream-started``/``stream-stopped``/``stream-error``
        callbacks, requested with POST.
    :param action: URL Twilio fetches for the next TwiML once the stream ends (without it the
        call hangs up when the gateway closes the socket).
    :raises ValueError: a bad URL, an empty parameter name, or text XML cannot carry.
    """
    parts = urlsplit(stream_url)
    if parts.scheme not in ("wss", "ws") or not parts.netloc:
        raise ValueError(f"stream URL must be wss://host/path: {stream_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"stream URL must not have a query string or fragment: {stream_url!r}")
    response = VoiceResponse()
    connect = Connect(action=action, method="POST" if action else None)
    stream = connect.stream(
        url=stream_url,
        status_callback=status_callback,
        status_callback_method="POST" if status_callback else None,
    )
    for name, value in parameters.items():
        if not name:
            raise ValueError("stream parameter names must not be empty")
        stream.parameter(
            name=_check_xml_text(name, "parameter name"),
            value=_check_xml_text(value, f"parameter {name!r}"),
        )
    response.append(connect)
    return _render(response)


def say_and_hangup(text: str, voice: str | None = None, *, language: str | None = None) -> str:
    """``<Say>`` then ``<Hangup>``: tell the caller something and end the call."""
    response = VoiceResponse()
    response.say(_XML_INVALID.sub(" ", text), voice=voice, language=language)
    response.hangup()
    return _render(response)


def busy(message: str | None = None, *, voice: str | None = None) -> str:
    """Turn a call away when the gateway is at capacity.

    By default ``<Reject reason="busy"/>``: the call is never answered, so it is not billed,
    and the caller hears their carrier's busy tone, which every caller understands as "try
    again later". This only works as the reply to the incoming-call webhook (before the call is
    answered). With ``message`` it answers, says the message, and hangs up instead, which is
    what to use for a call that is already in progress.
    """
    if message is not None:
        return say_and_hangup(message, voice)
    response = VoiceResponse()
    response.reject(reason="busy")
    return _render(response)


def dial(
    target: str,
    caller_id: str | None = None,
    *,
    timeout: int | None = None,
) -> str:
    """``<Dial>`` for a transfer. Redirecting a call to this ends its ``<Connect><Stream>``.

    :param target: an E.164 or plain phone number (``+15551234567``), a SIP URI
        (``sip:agent@pbx.example.com``) or a Twilio Client identity (``client:alice``).
    :param caller_id: the number shown to the transfer target (must be a Twilio number or a
        verified caller ID).
    :param timeout: seconds to ring the target before giving up (Twilio default 30).
    :raises ValueError: a target that is none of the above.
    """
    target = target.strip()
    d = Dial(caller_id=caller_id, timeout=timeout)
    lowered = target.lower()
    if lowered.startswith(("sip:", "sips:")):
        d.sip(_check_xml_text(target, "SIP URI"))
    elif lowered.startswith("client:"):
        identity = target[len("client:") :]
        if not identity:
            raise ValueError("client: target without an identity")
        d.client(_check_xml_text(identity, "client identity"))
    elif _PHONE_NUMBER.fullmatch(target):
        d.number(target)
    else:
        raise ValueError(f"not a phone number, sip: URI or client: identity: {target!r}")
    response = VoiceResponse()
    response.append(d)
    return _render(response)


class ConnectStreamTemplate:
    """``connect_stream`` for a fixed URL and parameter names, rendered once by the twilio
    builder and then filled per call (the builder costs ~100 us a call; filling, ~2 us).

    Values are escaped for an XML attribute and checked like ``connect_stream`` checks them.
    """

    def __init__(self, stream_url: str, names: Sequence[str]) -> None:
        self.names = tuple(names)
        markers = {name: f"@@vg-parameter-{i}@@" for i, name in enumerate(self.names)}
        rendered = connect_stream(stream_url, markers)
        self._parts: list[str] = []
        rest = rendered
        for name in self.names:
            before, _, rest = rest.partition(markers[name])
            self._parts.append(before)
        self._parts.append(rest)

    def render(self, values: Mapping[str, str]) -> str:
        out = [self._parts[0]]
        for i, name in enumerate(self.names):
            out.append(_attribute(_check_xml_text(values[name], f"parameter {name!r}")))
            out.append(self._parts[i + 1])
        return "".join(out)


def _attribute(value: str) -> str:
    return (
        value.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("\n", "&#10;")
        .replace("\r", "&#13;")
        .replace("\t", "&#9;")
    )

"""Signed, expiring stream tokens.

The voice webhook answers with ``<Connect><Stream>`` carrying a ``<Parameter>`` holding a token
bound to the session and the CallSid; when the stream's ``start`` event arrives the gateway
checks it (Twilio may or may not sign the WebSocket upgrade, so the token is what proves the
stream belongs to a call we answered).

Format (URL-safe, no padding, about 55 characters)::

    base64url(expiry as 8-byte big-endian unix seconds) "." base64url(HMAC-SHA256)

The MAC covers a version tag, the expiry, the session id and the CallSid, each length-prefixed
so no two field combinations produce the same message. Only the expiry travels in the token;
session id and CallSid come from the verifier's own state.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import struct
import time
from typing import Final

from voice_gateway.errors import ConfigError, Forbidden

__all__ = [
    "DEFAULT_LEEWAY_SECONDS",
    "MIN_SECRET_BYTES",
    "issue_stream_token",
    "verify_stream_token",
]

_VERSION: Final = b"vgw-stream-token-v1"
_EXPIRY: Final = struct.Struct(">Q")
_EXPIRY_B64_LEN: Final = 11  # base64url of 8 bytes, unpadded
_MAC_B64_LEN: Final = 43  # base64url of 32 bytes, unpadded
_TOKEN_LEN: Final = _EXPIRY_B64_LEN + 1 + _MAC_B64_LEN

#: Shorter secrets are refused: the MAC is only as strong as its key.
MIN_SECRET_BYTES: Final = 16
#: How far the verifying host's clock may run ahead of the issuer's before a token that has
#: just expired is refused.
DEFAULT_LEEWAY_SECONDS: Final = 5.0


def _check_secret(secret: bytes) -> None:
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"stream token secret must be at least {MIN_SECRET_BYTES} bytes")


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # Called only on strings of a known length made of the URL-safe alphabet.
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 keyed with ``secret``, copied per token (keying costs as much as the MAC)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def _mac(secret: bytes, expiry_raw: bytes, session_id: str, call_sid: str) -> bytes:
    parts = [_VERSION, expiry_raw, session_id.encode("utf-8"), call_sid.encode("utf-8")]
    mac = _keyed(secret).copy()
    mac.update(b"".join(struct.pack(">I", len(p)) + p for p in parts))
    return mac.digest()


def issue_stream_token(
    secret: bytes,
    session_id: str,
    call_sid: str,
    ttl_seconds: int,
    now: float | None = None,
) -> str:
    """Token for ``session_id``/``call_sid`` valid for ``ttl_seconds`` from ``now``.

    :raises ConfigError: ``secret`` is shorter than :data:`MIN_SECRET_BYTES`.
    :raises ValueError: ``ttl_seconds`` is not positive.
    """
    _check_secret(secret)
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    issued_at = time.time() if now is None else now
    expiry_raw = _EXPIRY.pack(int(issued_at) + int(ttl_seconds))
    return _b64encode(expiry_raw) + "." + _b64encode(_mac(secret, expiry_raw, session_id, call_sid))


def verify_stream_token(
    secret: bytes,
    token: str,
    session_id: str,
    call_sid: str,
    now: float | None = None,
    *,
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
) -> None:
    """Check a token from :func:`issue_stream_token`; return ``None`` when it is good.

    The MAC is compared in constant time before the expiry is looked at, so a forged token
    never learns whether its expiry would have passed.

    :raises Forbidden: malformed, forged, tampered with, for another session or CallSid, or
        expired more than ``leeway_seconds`` ago. ``details["reason"]`` is ``"malformed"``,
        ``"invalid"`` or ``"expired"``; the token itself is never included.
    :raises ConfigError: ``secret`` is shorter than :data:`MIN_SECRET_BYTES`.
    """
    _check_secret(secret)
    if (
        type(token) is not str
        or len(token) != _TOKEN_LEN
        or token[_EXPIRY_B64_LEN] != "."
        or not token.isascii()
    ):
        raise Forbidden("malformed stream token", details={"reason": "malformed"})
    expiry_text, mac_text = token[:_EXPIRY_B64_LEN], token[_EXPIRY_B64_LEN + 1 :]
    try:
        expiry_raw = _b64decode(expiry_text)
        mac = _b64decode(mac_text)
    except (binascii.Error, ValueError):
        raise Forbidden("malformed stream token", details={"reason": "malformed"}) from None
    # Re-encoding must give back the same text: rejects non-canonical trailing bits and
    # characters outside the URL-safe alphabet (which urlsafe_b64decode silently drops).
    if _b64encode(expiry_raw) != expiry_text or _b64encode(mac) != mac_text:
        raise Forbidden("malformed stream token", details={"reason": "malformed"})
    expected = _mac(secret, expiry_raw, session_id, call_sid)
    if not hmac.compare_digest(mac, expected):
        raise Forbidden("invalid stream token", details={"reason": "invalid"})
    (expiry,) = _EXPIRY.unpack(expiry_raw)
    current = time.time() if now is None else now
    if current > expiry + leeway_seconds:
        raise Forbidden("expired stream token", details={"reason": "expired"})

"""Stream tokens: issued with the TwiML, checked when the stream's ``start`` arrives."""

from __future__ import annotations

import base64
import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_gateway.errors import ConfigError, Forbidden
from voice_gateway.telephony.tokens import (
    DEFAULT_LEEWAY_SECONDS,
    issue_stream_token,
    verify_stream_token,
)

SECRET = b"0123456789abcdef0123456789abcdef"
SESSION = "ses_01J9ZK3Q7X"
CALL = "CA9c7b2e1f4a3d5c6b8e0f1a2b3c4d5e6f"
T0 = 1_700_000_000.0
TTL = 60


def _token(now: float = T0, **kwargs: object) -> str:
    args: dict[str, object] = {
        "secret": SECRET,
        "session_id": SESSION,
        "call_sid": CALL,
        "ttl_seconds": TTL,
        "now": now,
    }
    args.update(kwargs)
    return issue_stream_token(**args)  # type: ignore[arg-type]


def _reason(token: str, **kwargs: object) -> str:
    args: dict[str, object] = {
        "secret": SECRET,
        "token": token,
        "session_id": SESSION,
        "call_sid": CALL,
        "now": T0 + 1,
    }
    args.update(kwargs)
    with pytest.raises(Forbidden) as info:
        verify_stream_token(**args)  # type: ignore[arg-type]
    assert info.value.status == 403
    assert token not in str(info.value.details) or not token
    return str(info.value.details["reason"])


def test_fresh_token_verifies() -> None:
    token = _token()
    verify_stream_token(SECRET, token, SESSION, CALL, now=T0 + 1)
    verify_stream_token(SECRET, token, SESSION, CALL, now=T0 + TTL)  # last valid second


def test_token_verifies_with_the_real_clock() -> None:
    token = issue_stream_token(SECRET, SESSION, CALL, ttl_seconds=30)
    verify_stream_token(SECRET, token, SESSION, CALL)


def test_token_is_compact_and_url_safe() -> None:
    token = _token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}\.[A-Za-z0-9_-]{43}", token)


def test_expired_token_is_refused() -> None:
    token = _token()
    expired_at = T0 + TTL + DEFAULT_LEEWAY_SECONDS + 1
    assert _reason(token, now=expired_at) == "expired"


def test_clock_skew_within_leeway_is_tolerated() -> None:
    token = _token()
    # The verifying host's clock runs a few seconds ahead of the issuer's.
    verify_stream_token(SECRET, token, SESSION, CALL, now=T0 + TTL + DEFAULT_LEEWAY_SECONDS)
    # ... or behind it: the token looks issued "in the future", still fine.
    verify_stream_token(SECRET, token, SESSION, CALL, now=T0 - 30)


def test_leeway_is_configurable() -> None:
    token = _token()
    assert _reason(token, now=T0 + TTL + 1, leeway_seconds=0) == "expired"
    verify_stream_token(SECRET, token, SESSION, CALL, now=T0 + TTL + 100, leeway_seconds=120)


def test_token_for_another_session_or_call_is_refused() -> None:
    token = _token()
    assert _reason(token, session_id="ses_other") == "invalid"
    assert _reason(token, call_sid="CA00000000000000000000000000000000") == "invalid"


def test_token_from_another_secret_is_refused() -> None:
    token = _token(secret=b"another-secret-of-32-bytes-long!")
    assert _reason(token) == "invalid"


def test_extended_expiry_is_refused() -> None:
    token = _token()
    exp_text, mac_text = token.split(".")
    (expiry,) = struct.unpack(">Q", base64.urlsafe_b64decode(exp_text + "="))
    later = base64.urlsafe_b64encode(struct.pack(">Q", expiry + 3600)).rstrip(b"=").decode()
    assert _reason(f"{later}.{mac_text}") == "invalid"
    # Even for a token that had expired: tampering is detected before expiry is considered.
    assert _reason(f"{later}.{mac_text}", now=T0 + 10_000) == "invalid"


def test_flipped_mac_character_is_refused() -> None:
    token = _token()
    index = 20
    flipped = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
    assert _reason(flipped) == "invalid"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "no-dot-" + "x" * 48,
        "AAAAAGVTc_A.",
        ".AAAAAGVTc_A",
        "AAAAAGVTc_A.." + "A" * 42,
        "AAAAAGVTc_A." + "A" * 42 + "é",
        "AAAAAGVTc_A." + "+" * 43,  # standard, not URL-safe, alphabet
        "AAAAAGVTc_A." + "=" * 43,
        "AAAAAGVTc_A=" + "A" * 43,
    ],
)
def test_malformed_tokens_are_refused(bad: str) -> None:
    assert _reason(bad) == "malformed"


def test_non_canonical_base64_is_refused() -> None:
    # The last character of a 43-character base64url block carries 2 unused bits; changing
    # only those decodes to the same bytes and must not give a second valid spelling.
    token = _token()
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(last) ^ 1]
    assert _reason(token[:-1] + sibling) in ("malformed", "invalid")


def test_field_boundaries_are_unambiguous() -> None:
    a = issue_stream_token(SECRET, "ses|1", "CA2", TTL, now=T0)
    b = issue_stream_token(SECRET, "ses", "1|CA2", TTL, now=T0)
    c = issue_stream_token(SECRET, "ses|", "1CA2", TTL, now=T0)
    assert len({a, b, c}) == 3
    assert _reason(a, session_id="ses", call_sid="1|CA2") == "invalid"


def test_short_secret_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        issue_stream_token(b"short", SESSION, CALL, TTL, now=T0)
    with pytest.raises(ConfigError):
        verify_stream_token(b"", _token(), SESSION, CALL, now=T0)


@pytest.mark.parametrize("ttl", [0, -5])
def test_non_positive_ttl_is_refused(ttl: int) -> None:
    with pytest.raises(ValueError):
        issue_stream_token(SECRET, SESSION, CALL, ttl, now=T0)


@given(
    st.text(max_size=80) | st.from_regex(r"[A-Za-z0-9_-]{11}\.[A-Za-z0-9_-]{43}", fullmatch=True)
)
def test_arbitrary_tokens_only_ever_raise_forbidden(token: str) -> None:
    with pytest.raises(Forbidden):
        verify_stream_token(SECRET, token, SESSION, CALL, now=T0)

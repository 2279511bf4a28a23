"""X-Twilio-Signature: twilio-python's published test vectors plus our URL reconstruction.

Vectors (token ``12345``) are from twilio-python ``tests/unit/test_request_validator.py`` and
Twilio's security docs, re-computed in the gateway's protocol reference.
"""

from __future__ import annotations

import hashlib
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from voice_gateway.errors import ConfigError
from voice_gateway.telephony.signature import SignatureValidator, public_url, stream_url

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
SIG = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
SIG_WITH_443 = "kvajT1Ptam85bY51eRf/AJRuM3w="
SIG_HTTP_WITH_80 = "0ZXoZLH/DfblKGATFgpif+LLRf4="
SIG_DUPLICATES = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
JSON_BODY = '{"property": "value", "boolean": true}'
JSON_BODY_SHA256 = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
SIG_JSON_BODY = "a9nBmqA0ju/hNViExpshrM61xv4="
DOCS_PARAMS = {**PARAMS, "Caller": "+12349013030", "From": "+12349013030"}
SIG_DOCS = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


@pytest.fixture
def validator() -> SignatureValidator:
    return SignatureValidator(TOKEN)


# --------------------------------------------------------------------------- reference vectors


def test_vector_as_given(validator: SignatureValidator) -> None:
    assert validator.sign(URL, PARAMS) == SIG
    assert validator.validate(URL, PARAMS, SIG)


def test_vector_host_with_443(validator: SignatureValidator) -> None:
    url_443 = "https://mycompany.com:443/myapp.php?foo=1&bar=2"
    assert validator.sign(url_443, PARAMS) == SIG_WITH_443
    # Twilio has signed both forms; either is accepted whichever form we rebuilt.
    assert validator.validate(URL, PARAMS, SIG_WITH_443)
    assert validator.validate(url_443, PARAMS, SIG)


def test_vector_http_with_80(validator: SignatureValidator) -> None:
    http_80 = "http://mycompany.com:80/myapp.php?foo=1&bar=2"
    http = "http://mycompany.com/myapp.php?foo=1&bar=2"
    assert validator.sign(http_80, PARAMS) == SIG_HTTP_WITH_80
    assert validator.validate(http, PARAMS, SIG_HTTP_WITH_80)
    assert validator.validate(http_80, PARAMS, SIG_HTTP_WITH_80)
    # The scheme is signed: the https signature does not validate the http URL.
    assert not validator.validate(http, PARAMS, SIG)


def test_vector_repeated_params_as_lists(validator: SignatureValidator) -> None:
    params: dict[str, str | list[str]] = {
        "Sid": "CA123",
        "SidAccount": "AC123",
        "Digits": ["5678", "1234", "1234"],
    }
    assert validator.sign(URL, params) == SIG_DUPLICATES
    assert validator.validate(URL, params, SIG_DUPLICATES)


def test_vector_repeated_params_as_aiohttp_multidict(validator: SignatureValidator) -> None:
    # What `await request.post()` gives in aiohttp.
    form = MultiDict(
        [
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]
    )
    assert validator.sign(URL, form) == SIG_DUPLICATES
    assert validator.validate(URL, form, SIG_DUPLICATES)


def test_vector_json_body(validator: SignatureValidator) -> None:
    assert hashlib.sha256(JSON_BODY.encode()).hexdigest() == JSON_BODY_SHA256
    url = f"{URL}&bodySHA256={JSON_BODY_SHA256}"
    assert validator.sign(url, None) == SIG_JSON_BODY
    assert validator.validate_json(url, JSON_BODY, SIG_JSON_BODY)
    assert not validator.validate_json(url, JSON_BODY.replace("true", "false"), SIG_JSON_BODY)
    assert not validator.validate_json(URL, JSON_BODY, SIG_JSON_BODY)  # no bodySHA256


def test_vector_twilio_security_docs(validator: SignatureValidator) -> None:
    assert validator.sign(URL, DOCS_PARAMS) == SIG_DOCS
    assert validator.validate(URL, DOCS_PARAMS, SIG_DOCS)


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("signature", [None, "", "   ", "RSOYDt4T1cUTdK1PDd93/VVr8B8", "x" * 28])
def test_missing_empty_or_forged_signature_fails(
    validator: SignatureValidator, signature: str | None
) -> None:
    assert validator.validate(URL, PARAMS, signature) is False


def test_signature_from_another_token_fails() -> None:
    other = SignatureValidator("54321")
    assert not SignatureValidator(TOKEN).validate(URL, PARAMS, other.sign(URL, PARAMS))


@pytest.mark.parametrize(
    "tampered",
    [
        {**PARAMS, "To": "+18005550000"},  # changed value
        {**PARAMS, "CallStatus": "completed"},  # added field
        {k: v for k, v in PARAMS.items() if k != "Digits"},  # dropped field
        {**PARAMS, "digits": PARAMS["Digits"]},  # names are case-sensitive
    ],
)
def test_tampered_params_fail(validator: SignatureValidator, tampered: dict[str, str]) -> None:
    assert not validator.validate(URL, tampered, SIG)


@pytest.mark.parametrize(
    "url",
    [
        "https://mycompany.com/myapp.php?foo=1&bar=3",  # query changed
        "https://mycompany.com/myapp.php?bar=2&foo=1",  # query re-ordered
        "https://mycompany.com/myapp.php",  # query dropped
        "https://evil.example.com/myapp.php?foo=1&bar=2",  # host changed
        "https://mycompany.com/other.php?foo=1&bar=2",  # path changed
    ],
)
def test_tampered_url_fails(validator: SignatureValidator, url: str) -> None:
    assert not validator.validate(url, PARAMS, SIG)


@pytest.mark.parametrize(
    ("url", "params", "signature"),
    [
        ("http://[::1/x", PARAMS, SIG),  # unbalanced IPv6 bracket
        ("https://host:notaport/x", PARAMS, SIG),
        ("", None, SIG),
        (URL, PARAMS, "é☎\ud800"),
        (URL, {"a": [None]}, SIG),
    ],
)
def test_junk_is_rejected_without_raising(
    validator: SignatureValidator, url: str, params: object, signature: str
) -> None:
    assert validator.validate(url, params, signature) is False  # type: ignore[arg-type]


@given(
    url=st.text(max_size=60),
    params=st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.lists(st.text())),
    signature=st.none() | st.text(max_size=40),
)
def test_validate_never_raises(
    url: str, params: dict[str, str | list[str]], signature: str | None
) -> None:
    assert SignatureValidator(TOKEN).validate(url, params, signature) in (True, False)


def test_empty_token_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SignatureValidator("")


def test_token_is_never_shown_or_logged(caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cr3t-auth-token-value"
    caplog.set_level(logging.DEBUG)
    v = SignatureValidator(secret)
    v.validate("http://[::1/x", PARAMS, "junk")
    assert secret not in repr(v)
    assert secret not in caplog.text


# --------------------------------------------------------------------------- URL reconstruction

VOICE_PARAMS = {
    "AccountSid": "AC3f2b9a4c1d8e7f60a5b4c3d2e1f0a9b8",
    "CallSid": "CA9c7b2e1f4a3d5c6b8e0f1a2b3c4d5e6f",
    "CallStatus": "ringing",
    "From": "+14155550100",
    "To": "+18005550199",
}


@pytest.mark.parametrize(
    ("base", "path", "query", "expected"),
    [
        ("https://gw.example.com", "/twilio/voice", "", "https://gw.example.com/twilio/voice"),
        ("https://gw.example.com/", "twilio/voice", "", "https://gw.example.com/twilio/voice"),
        (
            "https://gw.example.com:8443/prefix",
            "/twilio/voice",
            "tenant=acme",
            "https://gw.example.com:8443/prefix/twilio/voice?tenant=acme",
        ),
        (
            "https://gw.example.com/prefix/",
            "/twilio/status",
            "a=b+c&d=%2F%20&x",
            "https://gw.example.com/prefix/twilio/status?a=b+c&d=%2F%20&x",
        ),
        ("http://localhost:8080", "/twilio/voice", "", "http://localhost:8080/twilio/voice"),
        (
            "https://user:pass@gw.example.com",  # Twilio drops credentials before signing
            "/twilio/voice",
            "",
            "https://gw.example.com/twilio/voice",
        ),
        ("https://gw.example.com", "/a%20b/c", "", "https://gw.example.com/a%20b/c"),
    ],
)
def test_public_url(base: str, path: str, query: str, expected: str) -> None:
    assert public_url(base, path, query) == expected


def test_proxied_request_validates_against_the_public_url(validator: SignatureValidator) -> None:
    # Twilio called https://gw.example.com/twilio/voice?tenant=acme; the TLS-terminating proxy
    # forwarded it to http://10.0.0.5:8080/twilio/voice?tenant=acme.
    signed = "https://gw.example.com/twilio/voice?tenant=acme"
    signature = validator.sign(signed, VOICE_PARAMS)
    rebuilt = public_url("https://gw.example.com", "/twilio/voice", "tenant=acme")
    assert validator.validate(rebuilt, VOICE_PARAMS, signature)
    socket_url = "http://10.0.0.5:8080/twilio/voice?tenant=acme"
    assert not validator.validate(socket_url, VOICE_PARAMS, signature)


def test_raw_query_must_not_be_reencoded(validator: SignatureValidator) -> None:
    signed = "https://gw.example.com/twilio/voice?name=Jane+Doe&next=%2Fdone"
    signature = validator.sign(signed, VOICE_PARAMS)
    raw = public_url("https://gw.example.com", "/twilio/voice", "name=Jane+Doe&next=%2Fdone")
    assert validator.validate(raw, VOICE_PARAMS, signature)
    decoded = public_url("https://gw.example.com", "/twilio/voice", "name=Jane Doe&next=/done")
    assert not validator.validate(decoded, VOICE_PARAMS, signature)


def test_non_standard_port_must_be_in_the_public_base(validator: SignatureValidator) -> None:
    signed = "https://gw.example.com:8443/twilio/voice"
    signature = validator.sign(signed, VOICE_PARAMS)
    with_port = public_url("https://gw.example.com:8443", "/twilio/voice")
    assert validator.validate(with_port, VOICE_PARAMS, signature)
    without_port = public_url("https://gw.example.com", "/twilio/voice")
    assert not validator.validate(without_port, VOICE_PARAMS, signature)


def test_default_port_in_the_public_base_is_tolerated(validator: SignatureValidator) -> None:
    signature = validator.sign("https://gw.example.com/twilio/voice", VOICE_PARAMS)
    with_443 = public_url("https://gw.example.com:443", "/twilio/voice")
    assert validator.validate(with_443, VOICE_PARAMS, signature)
    http_sig = validator.sign("http://gw.example.com:80/twilio/voice", VOICE_PARAMS)
    assert validator.validate(
        public_url("http://gw.example.com", "/twilio/voice"), VOICE_PARAMS, http_sig
    )


@pytest.mark.parametrize(
    ("base", "path", "expected"),
    [
        ("https://gw.example.com", "/twilio/stream", "wss://gw.example.com/twilio/stream"),
        ("http://localhost:8080", "/twilio/stream", "ws://localhost:8080/twilio/stream"),
        (
            "https://gw.example.com:8443/prefix/",
            "/twilio/stream",
            "wss://gw.example.com:8443/prefix/twilio/stream",
        ),
    ],
)
def test_stream_url(base: str, path: str, expected: str) -> None:
    assert stream_url(base, path) == expected


def test_stream_url_default_path() -> None:
    assert stream_url("https://gw.example.com") == "wss://gw.example.com/twilio/stream"


def test_websocket_handshake_signature(validator: SignatureValidator) -> None:
    # The upgrade is a GET: the URL alone is signed, no parameters.
    url = stream_url("https://gw.example.com")
    signature = validator.sign("wss://gw.example.com/twilio/stream", {})
    assert validator.validate(url, None, signature)
    assert validator.validate(url, {}, signature)
    assert not validator.validate(stream_url("https://gw.example.com", "/other"), None, signature)
    assert not validator.validate(url, None, None)


@pytest.mark.parametrize(
    "base",
    [
        "ftp://gw.example.com",
        "gw.example.com",
        "https://",
        "https://gw.example.com?x=1",
        "https://gw.example.com/#frag",
        "https://gw.example.com:99999",
        "wss://gw.example.com",
    ],
)
def test_bad_public_base_is_a_config_error(base: str) -> None:
    with pytest.raises(ConfigError):
        public_url(base, "/twilio/voice")
    with pytest.raises(ConfigError):
        stream_url(base)


def test_stream_path_with_query_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        stream_url("https://gw.example.com", "/twilio/stream?session=1")


# --------------------------------------------------------------------------- twilio's own check
#
# ``SignatureValidator.validate`` computes the signature itself (cached URL forms, HMAC keyed
# once). These hold it to twilio's ``RequestValidator.validate``, which it replaced on the hot
# path, with the parameters normalised as the gateway always did (every value a list of str).


class _Lists(dict[str, list[str]]):
    def getall(self, key: str) -> list[str]:
        return self[key]


def _twilio_says(
    token: str, url: str, params: dict[str, str | list[str]] | MultiDict[str], signature: str
) -> bool:
    lists = _Lists()
    for key in params:
        if isinstance(params, MultiDict):
            lists[key] = [str(v) for v in params.getall(key)]
        else:
            value = params[key]
            lists[key] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    try:
        return bool(RequestValidator(token).validate(url, lists, signature))
    except Exception:
        return False


_urls = st.sampled_from(
    [
        "https://gw.example.com/twilio/voice",
        "https://gw.example.com:443/twilio/voice",
        "https://gw.example.com:8443/prefix/twilio/voice?tenant=acme&x=a+b",
        "http://127.0.0.1:8080/twilio/voice",
        "http://gw.example.com/twilio/status?",
        "wss://gw.example.com/twilio/stream",
        "ws://localhost:8080/twilio/stream",
    ]
) | st.text(max_size=40)
_names = st.sampled_from(["CallSid", "From", "To", "Digits", "a", "A", "é"]) | st.text(max_size=6)
_values = st.text(max_size=12)
_params = st.dictionaries(_names, _values | st.lists(_values, max_size=3), max_size=6)
_signing_urls = st.sampled_from(["as given", "port stripped", "default port added", "other"])


def _signing_url(url: str, how: str) -> str:
    from urllib.parse import urlparse

    from twilio.request_validator import add_port, remove_port

    try:
        parsed = urlparse(url)
        return {
            "as given": url,
            "port stripped": remove_port(parsed),
            "default port added": add_port(parsed),
            "other": "https://elsewhere.example.com/x",
        }[how]
    except ValueError:
        return url


@given(url=_urls, params=_params, how=_signing_urls, junk=st.none() | st.text(max_size=30))
def test_validate_agrees_with_twilio_request_validator(
    url: str, params: dict[str, str | list[str]], how: str, junk: str | None
) -> None:
    # A signature Twilio could have sent (for one of the URL's forms), or junk.
    lists = _Lists({k: v if isinstance(v, list) else [v] for k, v in params.items()})
    signature = junk or RequestValidator(TOKEN).compute_signature(_signing_url(url, how), lists)
    assert SignatureValidator(TOKEN).validate(url, params, signature) is _twilio_says(
        TOKEN, url, params, signature
    )
    assert SignatureValidator(TOKEN).sign(url, params) == RequestValidator(TOKEN).compute_signature(
        url, lists
    )


@given(
    pairs=st.lists(st.tuples(_names, _values), max_size=8),
    how=_signing_urls,
    url=_urls,
)
def test_validate_agrees_with_twilio_on_a_multidict_form(
    pairs: list[tuple[str, str]], how: str, url: str
) -> None:
    form = MultiDict(pairs)
    lists = _Lists()
    for k, v in pairs:
        lists.setdefault(k, []).append(v)
    signature = RequestValidator(TOKEN).compute_signature(_signing_url(url, how), lists)
    assert SignatureValidator(TOKEN).validate(url, form, signature) is _twilio_says(
        TOKEN, url, form, signature
    )


def test_one_validator_per_token_and_no_token_never_validates() -> None:
    assert SignatureValidator.for_token(TOKEN) is SignatureValidator.for_token(TOKEN)
    assert SignatureValidator.for_token(TOKEN) is not SignatureValidator.for_token("54321")
    assert SignatureValidator.check(TOKEN, URL, PARAMS, SIG)
    assert not SignatureValidator.check("54321", URL, PARAMS, SIG)
    assert not SignatureValidator.check(None, URL, PARAMS, SIG)
    assert not SignatureValidator.check("", URL, PARAMS, SIG)


def test_a_forged_signature_fails_on_every_form_of_the_url() -> None:
    # With a port, without, with the default one: the cached URL forms never admit a forgery.
    v = SignatureValidator(TOKEN)
    for url in (URL, "https://mycompany.com:443/myapp.php?foo=1&bar=2", "http://h:8080/x"):
        for _ in range(2):  # the second time the URL's forms come from the cache
            assert not v.validate(url, PARAMS, "x" * 28)
            assert v.validate(url, PARAMS, v.sign(url, PARAMS))

"""``X-Twilio-Signature`` checks, over :class:`twilio.request_validator.RequestValidator`.

Twilio signs the URL it called (scheme, host, optional port, path and the *raw* query string)
followed by every POST parameter as ``name + value``, sorted by name, with HMAC-SHA1 keyed by
the account Auth Token. Behind a proxy or a load balancer the URL the gateway sees on its socket
is not that URL, so the signed URL is rebuilt from the configured public base URL with
:func:`public_url` (webhooks) or :func:`stream_url` (the Media Streams upgrade).

``RequestValidator.validate`` already accepts the signature of the URL with the port stripped
or with the default port (``:443``/``:80``) added, because Twilio has signed both forms.
:meth:`SignatureValidator.validate` computes exactly what it does (the tests hold the two
together), with the URL's two forms cached and the HMAC keyed once, because it runs on every
webhook; :meth:`SignatureValidator.check` is the check both Twilio doors (the webhooks and the
stream handshake) make, with one validator per Auth Token.
"""

from __future__ import annotations

import base64
import functools
import hmac
import logging
from collections.abc import Mapping
from urllib.parse import urlparse, urlsplit

from twilio.request_validator import RequestValidator, add_port, remove_port

from voice_gateway.errors import ConfigError

__all__ = [
    "SIGNATURE_HEADER",
    "SignatureValidator",
    "public_url",
    "stream_url",
]

logger = logging.getLogger(__name__)

#: The request header that carries the signature.
SIGNATURE_HEADER = "X-Twilio-Signature"


def _signed_text(params: Mapping[str, str | list[str]] | None) -> str:
    """What Twilio appends to the URL before signing: every parameter as ``name + value``,
    names sorted, each name's distinct values sorted (``RequestValidator.compute_signature``);
    that is, the distinct (name, value) pairs in order."""
    if not params:
        return ""
    if callable(getattr(params, "getall", None)):
        # aiohttp's MultiDict (the webhook form): ``items()`` gives every pair, repeats too.
        pairs = {(name, v if type(v) is str else str(v)) for name, v in params.items()}
    else:  # a plain mapping holds a string or a list of strings
        pairs = set()
        for name, value in params.items():
            if isinstance(value, list | tuple):
                pairs.update((name, str(v)) for v in value)
            else:
                pairs.add((name, str(value)))
    return "".join([name + value for name, value in sorted(pairs)])


@functools.lru_cache(maxsize=256)
def _url_forms(url: str) -> tuple[str, str]:
    """The two forms of ``url`` Twilio may have signed (port stripped, default port added), the
    one ``url`` is already in first: the form Twilio most likely signed."""
    parsed = urlparse(url)
    without_port, with_port = remove_port(parsed), add_port(parsed)
    return (with_port, without_port) if parsed.port else (without_port, with_port)


class SignatureValidator:
    """Computes and checks ``X-Twilio-Signature`` for one Auth Token."""

    __slots__ = ("_keyed", "_validator")

    def __init__(self, auth_token: str) -> None:
        if not auth_token:
            raise ConfigError("Twilio auth token is empty")
        self._validator = RequestValidator(auth_token)
        self._keyed = hmac.new(auth_token.encode("utf-8"), digestmod="sha1")  # copied per use

    def __repr__(self) -> str:  # never show the token
        return "SignatureValidator(auth_token=***)"

    def _digest(self, url: str, signed_params: str) -> bytes:
        mac = self._keyed.copy()
        mac.update((url + signed_params).encode("utf-8"))
        return base64.b64encode(mac.digest())

    def validate(
        self,
        url: str,
        params: Mapping[str, str | list[str]] | None,
        signature: str | None,
    ) -> bool:
        """``True`` when ``signature`` is Twilio's signature of ``url`` and ``params``.

        ``url`` is what :func:`public_url` / :func:`stream_url` returns; ``params`` the
        form fields of a POST (``None`` or empty for GET and for the WebSocket upgrade).
        A missing or empty signature, and any junk that makes the computation fail, give
        ``False``; this method does not raise.

        Like ``RequestValidator.validate``, the URL with its port stripped and with the default
        port added are both accepted. The form ``url`` is in is tried first and a match ends the
        check (a forged signature always costs both tries, compared in constant time).
        """
        if not signature or not isinstance(signature, str):
            return False
        try:
            likely, other = _url_forms(url)
            signed_params = _signed_text(params)
            expected = signature.encode("utf-8")
            if hmac.compare_digest(self._digest(likely, signed_params), expected):
                return True
            return hmac.compare_digest(self._digest(other, signed_params), expected)
        except Exception:  # junk URL or params: a failed check, not a server error
            logger.debug("signature check failed on malformed input", exc_info=True)
            return False

    @staticmethod
    def for_token(auth_token: str) -> SignatureValidator:
        """The validator for ``auth_token``, made once per token and then shared."""
        return _validator_for(auth_token)

    @staticmethod
    def check(
        auth_token: str | None,
        url: str,
        params: Mapping[str, str | list[str]] | None,
        signature: str | None,
    ) -> bool:
        """The check each Twilio door makes (the webhooks and the stream handshake):
        ``signature`` is Twilio's for the signed ``url`` (:func:`public_url` or
        :func:`stream_url`) and ``params``; never with no auth token."""
        if not auth_token:
            return False
        return _validator_for(auth_token).validate(url, params, signature)

    def sign(self, url: str, params: Mapping[str, str | list[str]] | None) -> str:
        """The signature Twilio would send for ``url`` and ``params`` (simulator and tests)."""
        return self._digest(url, _signed_text(params)).decode("ascii")

    def validate_json(self, url: str, body: str, signature: str | None) -> bool:
        """Check a JSON-bodied request: ``url`` must carry ``bodySHA256=<hex sha256 of body>``.

        Voice webhooks are form-encoded; some other Twilio products sign JSON bodies this way.
        """
        if not signature or not isinstance(signature, str) or not isinstance(body, str):
            return False
        if "bodySHA256=" not in url:
            return False
        try:
            result: bool = self._validator.validate(url, body, signature)
            return result
        except Exception:
            logger.debug("JSON signature check failed on malformed input", exc_info=True)
            return False


@functools.lru_cache(maxsize=8)
def _validator_for(auth_token: str) -> SignatureValidator:
    return SignatureValidator(auth_token)


def _parse_base(public_base: str) -> tuple[str, str, str]:
    """Split a configured public base URL into (scheme, host[:port], path prefix)."""
    try:
        parts = urlsplit(public_base.strip())
        _ = parts.port  # validates the port
    except ValueError as exc:
        raise ConfigError(f"invalid public base URL {public_base!r}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"public base URL must be http(s)://host[:port][/prefix]: {public_base!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"public base URL must not have a query or fragment: {public_base!r}")
    # Twilio drops user:pass@ before signing.
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts.scheme, netloc, parts.path.rstrip("/")


def _join(prefix: str, path: str) -> str:
    return prefix + "/" + path.lstrip("/")


@functools.lru_cache(maxsize=256)
def public_url(public_base: str, path: str, raw_query: str = "") -> str:
    """The URL Twilio called, and signed, for a request the app received.

    :param public_base: configured public origin plus optional prefix, e.g.
        ``https://gw.example.com`` or ``https://gw.example.com:8443/prefix``.
    :param path: the request path relative to the app root, still percent-encoded as received
        (aiohttp: ``request.rel_url.raw_path``).
    :param raw_query: the query string exactly as received, not decoded or re-encoded
        (aiohttp: ``request.rel_url.raw_query_string``); Twilio appends its own parameters
        to yours and encodes spaces as ``+``.
    :raises ConfigError: ``public_base`` is not an ``http(s)://host[:port][/prefix]`` URL.
    """
    scheme, netloc, prefix = _parse_base(public_base)
    url = f"{scheme}://{netloc}{_join(prefix, path)}"
    return f"{url}?{raw_query}" if raw_query else url


@functools.lru_cache(maxsize=64)
def stream_url(public_base: str, path: str = "/twilio/stream") -> str:
    """The ``wss://`` (or ``ws://`` for an ``http`` base) URL for ``<Stream url=...>``.

    It has no query string (Twilio rejects one, errors 31920/31922), so per-call data goes in
    ``<Parameter>``. It is also the URL to check the upgrade's ``X-Twilio-Signature`` against,
    with no parameters.
    """
    if "?" in path or "#" in path:
        raise ConfigError(f"stream path must not have a query or fragment: {path!r}")
    scheme, netloc, prefix = _parse_base(public_base)
    ws_scheme = "wss" if scheme == "https" else "ws"
    return f"{ws_scheme}://{netloc}{_join(prefix, path)}"

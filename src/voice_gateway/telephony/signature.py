"""``X-Twilio-Signature`` checks, over :class:`twilio.request_validator.RequestValidator`.

Twilio signs the URL it called (scheme, host, optional port, path and the *raw* query string)
followed by every POST parameter as ``name + value``, sorted by name, with HMAC-SHA1 keyed by
the account Auth Token. Behind a proxy or a load balancer the URL the gateway sees on its socket
is not that URL, so the signed URL is rebuilt from the configured public base URL with
:func:`public_url` (webhooks) or :func:`stream_url` (the Media Streams upgrade).

``RequestValidator.validate`` already accepts the signature of the URL with the port stripped
or with the default port (``:443``/``:80``) added, because Twilio has signed both forms.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

from twilio.request_validator import RequestValidator

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


class _Params(dict[str, list[str]]):
    """Parameters normalised to lists, with the ``getall`` that ``RequestValidator`` looks for.

    ``RequestValidator`` treats a plain dict value as one string, so ``{"Digits": ["1", "2"]}``
    would break it; every value here is a list.
    """

    def getall(self, key: str) -> list[str]:
        return self[key]


def _normalise(params: Mapping[str, str | list[str]] | None) -> _Params:
    out = _Params()
    if not params:
        return out
    # aiohttp's MultiDictProxy (``await request.post()``) repeats keys and has ``getall``.
    getall = getattr(params, "getall", None)
    for key in params:
        if key in out:
            continue  # a multidict repeats keys; getall already returned every value
        if callable(getall):
            values = [str(v) for v in getall(key)]
        else:
            value = params[key]
            values = [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]
        out[key] = values
    return out


class SignatureValidator:
    """Computes and checks ``X-Twilio-Signature`` for one Auth Token."""

    __slots__ = ("_validator",)

    def __init__(self, auth_token: str) -> None:
        if not auth_token:
            raise ConfigError("Twilio auth token is empty")
        self._validator = RequestValidator(auth_token)

    def __repr__(self) -> str:  # never show the token
        return "SignatureValidator(auth_token=***)"

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
        """
        if not signature or not isinstance(signature, str):
            return False
        try:
            # Tries the URL with its port stripped and with the default port added; compares
            # every character whatever the first mismatch (no early exit).
            result: bool = self._validator.validate(url, _normalise(params), signature)
            return result
        except Exception:  # junk URL or params: a failed check, not a server error
            logger.debug("signature check failed on malformed input", exc_info=True)
            return False

    def sign(self, url: str, params: Mapping[str, str | list[str]] | None) -> str:
        """The signature Twilio would send for ``url`` and ``params`` (simulator and tests)."""
        result: str = self._validator.compute_signature(url, _normalise(params))
        return result

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

"""Bearer-key authentication of the REST API: every request acts for exactly one org.

``Authorization: Bearer <key>``: the key's SHA-256 digest is compared, in constant time, with
every configured digest (``keys.py``); a match names the org. A missing or unknown key is a 401
with ``WWW-Authenticate: Bearer``. Keys are never logged; only the org is.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Handler

from voice_gateway.api.keys import hash_key
from voice_gateway.errors import AuthError
from voice_gateway.settings import ApiKeyConfig

log = logging.getLogger(__name__)

_CHALLENGE = 'Bearer realm="voice-gateway"'


class KeyRing:
    """The digests of the valid keys and the org each acts for."""

    def __init__(self, keys: Iterable[ApiKeyConfig]) -> None:
        self._keys = tuple((k.sha256.encode(), k.org_id) for k in keys)

    def __len__(self) -> int:
        return len(self._keys)

    def org_for(self, key: str) -> str | None:
        """The org of ``key``, or None. Every digest is compared, matching or not."""
        digest = hash_key(key).encode()
        org: str | None = None
        for known, org_id in self._keys:
            if hmac.compare_digest(digest, known):
                org = org_id
        return org


KEYRING = web.AppKey("api_keyring", KeyRing)
ORG = web.RequestKey("api_org", str)


def authenticate(request: web.Request) -> str:
    """The org of the request's bearer key; ``AuthError`` when there is none or it is unknown."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError("missing API key: send `Authorization: Bearer <key>`")
    org = request.config_dict[KEYRING].org_for(token)
    if org is None:
        raise AuthError("invalid API key")
    return org


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate every request of the API sub-application; 401s carry the challenge."""
    from voice_gateway.app import error_body  # app imports the API: import at call time

    try:
        request[ORG] = authenticate(request)
    except AuthError as exc:
        log.info("api request refused: %s %s: %s", request.method, request.path, exc.message)
        return web.json_response(
            error_body(exc.type, exc.message, exc.details),
            status=exc.status,
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    return await handler(request)


def org_of(request: web.Request) -> str:
    return request[ORG]

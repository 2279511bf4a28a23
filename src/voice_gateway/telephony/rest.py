"""A small asynchronous Twilio REST client for the two call updates the gateway needs.

Built on ``twilio.rest.Client`` with an asynchronous HTTP client (``AsyncTwilioHttpClient``,
aiohttp underneath) and the generated ``update_async`` methods, so a hang-up or a transfer
never blocks the event loop. Two things the stock async client does not do are added by
:class:`_GatewayHttpClient`:

* a timeout: twilio passes ``timeout=None`` down to aiohttp, which means *no* timeout;
* a lazily created ``aiohttp.ClientSession`` (creating one needs a running loop, and this
  client may be built at start-up before the loop runs).

``base_url`` replaces ``https://api.twilio.com`` (it is the ``base_url`` of the ``api``
domain), for tests against a local server or a regional endpoint such as
``https://api.dublin.ie1.twilio.com``.

Errors are converted here: Twilio error 20404 (no such call) and 21220 (call not in progress,
e.g. already completed) become :class:`~voice_gateway.errors.CallAlreadyEnded`; any other
refusal, an unreadable answer, a connection error or a timeout becomes
:class:`~voice_gateway.errors.TwilioRestError`.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any, Final

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from voice_gateway.errors import CallAlreadyEnded, TwilioRestError, ValidationFailed

__all__ = ["CALL_ENDED_CODES", "TwilioRestClient"]

logger = logging.getLogger(__name__)

#: Twilio error codes that mean the call can no longer be changed because it is over.
#: 20404: the resource was not found; 21220: "Call is not in-progress" (e.g. completed).
CALL_ENDED_CODES: Final = frozenset({20404, 21220})

_SID: Final = re.compile(r"[A-Za-z0-9]{2,64}")


class _GatewayHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """``AsyncTwilioHttpClient`` with a real default timeout, a lazy session, quiet logs."""

    session: aiohttp.ClientSession | None

    def __init__(self, timeout: float) -> None:
        # pool_connections=False: do not create the ClientSession here (no running loop yet);
        # request() creates one on first use and keeps it (connection pooling).
        super().__init__(pool_connections=False, timeout=timeout, logger=logger)
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (twilio.http.AsyncHttpClient signature)
        allow_redirects: bool = False,
    ) -> Any:
        if self._closed:
            raise TwilioRestError("Twilio REST client is closed")
        if self.session is None:
            self.session = aiohttp.ClientSession()
        if auth is not None:
            # As a header: aiohttp >= 3.14 deprecates the BasicAuth object twilio would build.
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers = {**(headers or {}), "Authorization": f"Basic {credentials}"}
        return await super().request(
            method,
            url,
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=self.timeout if timeout is None else timeout,
            allow_redirects=allow_redirects,
        )

    def log_request(self, kwargs: dict[str, Any]) -> None:
        # The stock version logs every header at INFO. Method and URL are enough (no auth, no
        # body: the body may carry TwiML with stream tokens).
        logger.debug("Twilio REST %s %s", kwargs["method"], kwargs["url"])

    def log_response(self, status_code: int, response: Any) -> None:
        logger.debug("Twilio REST answered %s", status_code)

    async def close(self) -> None:
        self._closed = True
        if self.session is not None:
            await self.session.close()
            self.session = None


class TwilioRestClient:
    """Hang up and redirect calls of one Twilio account, without blocking the event loop."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._account_sid = account_sid
        self._http = _GatewayHttpClient(timeout)
        self._client = Client(account_sid, auth_token, http_client=self._http)
        # Client reads TWILIO_EDGE / TWILIO_REGION from os.environ and would rewrite the host
        # with them (and mangle base_url); the host is chosen by base_url alone.
        self._client.edge = None
        self._client.region = None
        if base_url is not None:
            self._client.api.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:  # never show the token
        return f"TwilioRestClient(account_sid={self._account_sid!r})"

    def _call(self, call_sid: str) -> Any:
        if not _SID.fullmatch(call_sid):
            raise ValidationFailed("invalid CallSid", details={"call_sid": call_sid[:64]})
        return self._client.api.v2010.accounts(self._account_sid).calls(call_sid)

    async def hang_up(self, call_sid: str) -> None:
        """End the call (``Status=completed``).

        :raises CallAlreadyEnded: Twilio no longer has the call in progress.
        :raises TwilioRestError: any other failure.
        """
        await self._update(call_sid, "hang_up", status="completed")

    async def redirect(self, call_sid: str, twiml: str) -> None:
        """Replace the call's TwiML (``Twiml=...``), e.g. a ``<Dial>`` for a transfer.

        This ends the call's ``<Connect><Stream>``: Twilio sends ``stop`` and closes the socket.

        :raises CallAlreadyEnded: Twilio no longer has the call in progress.
        :raises TwilioRestError: any other failure.
        """
        await self._update(call_sid, "redirect", twiml=twiml)

    async def _update(self, call_sid: str, action: str, **fields: str) -> None:
        call = self._call(call_sid)
        try:
            await call.update_async(**fields)
        except (TwilioRestException, TwilioServiceException) as exc:
            code = exc.code if isinstance(exc.code, int) else None
            status = exc.status if isinstance(exc.status, int) else None
            message = str(getattr(exc, "msg", None) or getattr(exc, "title", None) or "")
            logger.info(
                "Twilio refused %s of call %s: HTTP %s, error %s", action, call_sid, status, code
            )
            error_class = CallAlreadyEnded if code in CALL_ENDED_CODES else TwilioRestError
            raise error_class(
                f"Twilio refused {action} of call {call_sid}: {message}".rstrip(": "),
                code=code,
                http_status=status,
            ) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("Twilio REST %s of call %s failed: %r", action, call_sid, exc)
            raise TwilioRestError(
                f"Twilio REST {action} of call {call_sid} failed: {type(exc).__name__}"
            ) from exc
        except (TwilioException, ValueError) as exc:  # e.g. a 2xx answer that is not JSON
            logger.warning("Twilio REST %s of call %s failed: %r", action, call_sid, exc)
            raise TwilioRestError(
                f"Twilio REST {action} of call {call_sid} failed: {type(exc).__name__}"
            ) from exc

    async def close(self) -> None:
        """Close the HTTP session. Calls after this raise :class:`TwilioRestError`."""
        await self._http.close()

    async def __aenter__(self) -> TwilioRestClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

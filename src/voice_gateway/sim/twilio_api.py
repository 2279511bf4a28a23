"""A local fake of the part of Twilio's REST API the gateway uses: updating a call.

``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with HTTP basic auth
(AccountSid, Auth Token) and a form of ``Status`` (``completed``/``canceled``: hang up),
``Twiml`` or ``Url`` (+ ``Method``): new instructions, which end a ``<Connect><Stream>``.
Answers like Twilio: the Call resource as JSON, or an error body
``{"code", "message", "more_info", "status"}`` (20003 bad credentials, 20404 unknown call,
21220 call not in progress, 21218 invalid parameters).

Point the gateway's ``twilio_api_base_url`` at :attr:`FakeTwilioApi.url`. With a
:class:`~voice_gateway.sim.caller.SimRegistry` shared with running simulated calls, an update
to one of them makes it react like Twilio (``stop``, close, status callback).
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Final

from aiohttp import web

from voice_gateway.sim.caller import API_VERSION, SimRegistry

__all__ = ["ApiRequest", "FakeTwilioApi"]

log = logging.getLogger(__name__)

CALL_PATH: Final = "/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json"


@dataclass(frozen=True, slots=True)
class ApiRequest:
    """One request the fake received (kept even when refused)."""

    account_sid: str
    call_sid: str
    form: dict[str, str]
    authorized: bool
    status: int


@dataclass
class _Failure:
    status: int
    code: int
    message: str
    remaining: int | None


@dataclass
class _CallState:
    status: str = "in-progress"
    updates: list[dict[str, str]] = field(default_factory=list)


def _error(status: int, code: int, message: str) -> web.Response:
    return web.json_response(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )


class FakeTwilioApi:
    """An aiohttp server standing in for ``api.twilio.com`` (call updates only).

    :param strict: unknown calls (neither running in ``registry`` nor added with
        :meth:`add_call`) get 404 / 20404, like Twilio; with ``strict=False`` any CallSid is
        accepted and recorded.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        registry: SimRegistry | None = None,
        strict: bool = True,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.registry = registry if registry is not None else SimRegistry()
        self.strict = strict
        self.requests: list[ApiRequest] = []
        self._calls: dict[str, _CallState] = {}
        self._failures: dict[str, _Failure] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""
        #: Awaited with (CallSid, form) before an authorized update is answered: a test can make
        #: something happen "while Twilio handles the request" (real Twilio may post the status
        #: callback of a hang-up before its API answers).
        self.before_answer: Callable[[str, dict[str, str]], Awaitable[None]] | None = None

    # -- control ----------------------------------------------------------------------------

    def add_call(self, call_sid: str, status: str = "in-progress") -> None:
        """Make a call known without a running simulated call behind it."""
        self._calls[call_sid] = _CallState(status=status)

    def fail(
        self,
        call_sid: str,
        *,
        status: int = 404,
        code: int = 20404,
        message: str = "The requested resource was not found",
        times: int | None = None,
    ) -> None:
        """Answer updates of ``call_sid`` with this error (``times`` times; None = always)."""
        self._failures[call_sid] = _Failure(status, code, message, times)

    def updates(self, call_sid: str) -> list[dict[str, str]]:
        """The accepted update forms for ``call_sid``, in order."""
        return [r.form for r in self.requests if r.call_sid == call_sid and r.status == 200]

    # -- server -----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(CALL_PATH, self._update_call)
        app.router.add_get(CALL_PATH, self._fetch_call)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0 = a free port); returns the base URL."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://{host}:{sock.getsockname()[1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilioApi:
        if not self.url:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- handlers ---------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.account_sid and password == self.auth_token

    def _resource(self, account_sid: str, call_sid: str, status: str) -> dict[str, Any]:
        now = format_datetime(datetime.now(UTC))
        uri = CALL_PATH.format(account_sid=account_sid, call_sid=call_sid)
        call = self.registry.get(call_sid)
        return {
            "sid": call_sid,
            "account_sid": account_sid,
            "parent_call_sid": None,
            "status": status,
            "direction": "inbound",
            "from": call.config.from_number if call else None,
            "to": call.config.to_number if call else None,
            "api_version": API_VERSION,
            "date_created": now,
            "date_updated": now,
            "start_time": now,
            "end_time": now if status in ("completed", "canceled") else None,
            "duration": None,
            "price": None,
            "uri": uri,
            "subresource_uris": {},
        }

    def _known_status(self, call_sid: str) -> str | None:
        if self.registry.get(call_sid) is not None:
            return "in-progress"
        if call_sid in self._calls:
            return self._calls[call_sid].status
        if call_sid in self.registry.ended:
            return self.registry.ended[call_sid]
        return None

    async def _fetch_call(self, request: web.Request) -> web.Response:
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info["call_sid"]
        if not self._authorized(request) or account_sid != self.account_sid:
            return _error(401, 20003, "Authenticate")
        status = self._known_status(call_sid)
        if status is None:
            return _error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._resource(account_sid, call_sid, status))

    async def _update_call(self, request: web.Request) -> web.Response:
        account_sid = request.match_info["account_sid"]
        call_sid = request.match_info["call_sid"]
        form = {k: str(v) for k, v in (await request.post()).items()}
        authorized = self._authorized(request) and account_sid == self.account_sid
        if authorized and self.before_answer is not None:
            await self.before_answer(call_sid, form)
        response = self._answer(request, account_sid, call_sid, form, authorized)
        self.requests.append(ApiRequest(account_sid, call_sid, form, authorized, response.status))
        log.info("fake Twilio API: update of %s %s -> %d", call_sid, sorted(form), response.status)
        return response

    def _answer(
        self,
        request: web.Request,
        account_sid: str,
        call_sid: str,
        form: dict[str, str],
        authorized: bool,
    ) -> web.Response:
        if not authorized:
            return _error(401, 20003, "Authenticate")
        failure = self._failures.get(call_sid)
        if failure is not None:
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    del self._failures[call_sid]
            return _error(failure.status, failure.code, failure.message)
        status_field = form.get("Status")
        has_twiml = "Twiml" in form
        has_url = "Url" in form
        if has_twiml and has_url:
            return _error(400, 21218, "Twiml and Url are mutually exclusive")
        if status_field is not None and status_field not in ("completed", "canceled"):
            return _error(400, 21218, f"Invalid Status {status_field!r}")
        if status_field is None and not has_twiml and not has_url:
            return _error(400, 21218, "Nothing to update: Status, Twiml or Url required")
        call = self.registry.get(call_sid)
        known = self._known_status(call_sid)
        if call is None and known is None:
            if self.strict:
                return _error(404, 20404, f"The requested resource {request.path} was not found")
            self.add_call(call_sid)
            known = "in-progress"
        if known != "in-progress":
            return _error(400, 21220, "Call is not in-progress. Cannot redirect.")
        new_status = "completed" if status_field is not None else "in-progress"
        if call is not None:
            call.api_update(form)
        else:
            state = self._calls.setdefault(call_sid, _CallState())
            state.updates.append(form)
            if status_field is not None:
                state.status = status_field
        return web.json_response(self._resource(account_sid, call_sid, new_status))

"""The gateway's one error hierarchy.

Library errors (redis, SQLAlchemy, aiohttp, websockets, twilio, pydantic) are converted into these
at the boundary of the module that talks to the library, with ``raise ... from exc``; code above
that boundary catches only these. The HTTP error middleware maps them to statuses.

::

    GatewayError                         base; never raised itself
    ├── ConfigError                      bad settings file, env or agent catalogue (`config check`)
    ├── ValidationFailed                 a request or field is invalid                 -> 422
    ├── NotFound                         unknown session, CallSid, tool, document     -> 404
    │   └── SessionNotFound
    ├── Conflict                         the state forbids the change                  -> 409
    │   └── AlreadyCompleted             `complete` lost the race / session is done
    ├── AuthError                        missing or invalid API key                    -> 401
    ├── Forbidden                        forged Twilio signature, bad stream token     -> 403
    ├── PayloadTooLarge                  body or frame over the configured limit       -> 413
    ├── ProtocolError                    malformed Twilio wire message      -> 400 / ws close 1002
    ├── UnavailableError                 a dependency is unreachable                   -> 503
    │   ├── StoreUnavailable             Redis down / timed out
    │   └── ArchiveUnavailable           SQLite / PostgreSQL down
    ├── AgentError                       an agent failed to connect, timed out or broke its protocol
    └── TwilioRestError                  the Twilio REST API refused or failed a call
        └── CallAlreadyEnded             Twilio error 20404 on hang-up / redirect
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    #: HTTP status the error middleware answers with.
    status: int = 500
    #: Stable machine-readable type for the API error body.
    type: str = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class ConfigError(GatewayError):
    type = "config_error"

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None) -> None:
        details = {k: v for k, v in (("source", source), ("key", key)) if v is not None}
        super().__init__(message, details=details)
        self.source = source
        self.key = key


class ValidationFailed(GatewayError):
    status = 422
    type = "validation_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found"


class SessionNotFound(NotFound):
    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id} not found", details={"session_id": session_id})
        self.session_id = session_id


class Conflict(GatewayError):
    status = 409
    type = "conflict"


class AlreadyCompleted(Conflict):
    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id} is already completed", details={"session_id": session_id}
        )
        self.session_id = session_id


class AuthError(GatewayError):
    status = 401
    type = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    type = "forbidden"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "payload_too_large"


class ProtocolError(GatewayError):
    status = 400
    type = "protocol_error"


class UnavailableError(GatewayError):
    status = 503
    type = "unavailable"


class StoreUnavailable(UnavailableError):
    type = "store_unavailable"


class ArchiveUnavailable(UnavailableError):
    type = "archive_unavailable"


class AgentError(GatewayError):
    status = 502
    type = "agent_error"


class TwilioRestError(GatewayError):
    status = 502
    type = "twilio_error"

    def __init__(self, message: str, *, code: int | None = None, http_status: int | None = None):
        super().__init__(message, details={"code": code, "http_status": http_status})
        self.code = code
        self.http_status = http_status


class CallAlreadyEnded(TwilioRestError):
    pass

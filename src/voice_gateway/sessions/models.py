"""Session model: the live session, its history messages, and the analytics row.

Field names and meanings follow docs/session-model.md (Julep, Syllable and Vapi session models
merged). Times are timezone-aware UTC and serialise as RFC 3339 with an offset.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
)

NAME_MAX = 40


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


#: A timezone-aware datetime, normalised to UTC, serialised as RFC 3339 (``...Z``).
UtcDateTime = Annotated[AwareDatetime, PlainSerializer(rfc3339, return_type=str)]


class SessionStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"


class EndReason(StrEnum):
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    HANGUP_BY_AGENT = "hangup-by-agent"
    TRANSFERRED = "transferred"
    ERROR = "error"


class ContextOverflow(StrEnum):
    ADAPTIVE = "adaptive"
    TRUNCATE = "truncate"
    SUMMARIZE = "summarize"


class Channel(BaseModel):
    """How the session reaches its user (Syllable's channelManager*)."""

    model_config = ConfigDict(frozen=True)

    service: str = Field("api", description="e.g. `twilio`, or `api` for sessions made over REST")
    type: str = Field("api", description="e.g. `voice`, or `api`")
    sid: str | None = Field(None, description="the channel's id for the session, e.g. the CallSid")


class Customer(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: str | None = None
    name: str | None = None


class StreamInfo(BaseModel):
    """The Twilio media stream attached to a voice session."""

    stream_sid: str
    started_at: UtcDateTime
    ended_at: UtcDateTime | None = None
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1
    frames_in: int = 0
    frames_out: int = 0
    sequence_gaps: int = 0


class Tool(BaseModel):
    """A session-scoped function tool (an OpenAI-style function schema)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


MessageRole = Literal["user", "assistant", "system", "tool", "event"]


class Message(BaseModel):
    """One entry of a session's history."""

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    role: MessageRole
    content: str
    created_at: UtcDateTime = Field(default_factory=utcnow)
    turn_id: int | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Session(BaseModel):
    """A session, live or completed (same shape for both)."""

    model_config = ConfigDict(validate_assignment=True)

    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    org_id: str = "default"
    name: str | None = Field(None, max_length=NAME_MAX)
    status: SessionStatus = SessionStatus.ACTIVE
    end_reason: EndReason | None = None
    created_at: UtcDateTime = Field(default_factory=utcnow)
    updated_at: UtcDateTime = Field(default_factory=utcnow)
    ended_at: UtcDateTime | None = None
    duration: float | None = Field(None, description="seconds; CallDuration when Twilio sent it")
    expiration_seconds: int = Field(86400, gt=0, le=30 * 86400)

    agent_id: str
    agent_name: str | None = None
    agent_type: str | None = None
    agent_timezone: str | None = None
    prompt_id: str | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None

    user_id: str | None = None
    customer: Customer | None = None
    channel: Channel = Field(default_factory=Channel)
    conversation_id: str | None = None
    source: str | None = None
    target: str | None = None

    situation: str | None = None
    render_templates: bool = False
    situation_template: str | None = Field(
        None,
        description="with render_templates: the situation as written; `situation` is it rendered",
    )
    summary: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    context_overflow: ContextOverflow = ContextOverflow.ADAPTIVE
    tools: list[Tool] = Field(default_factory=list)
    session_label_id: str | None = None
    is_test: bool = False
    is_legacy: bool = False

    stream: StreamInfo | None = None
    turns: int = Field(0, description="caller turns handed to the agent")
    message_count: int = 0
    interruptions: int = Field(0, description="agent answers cut off by the caller (barge-in)")

    @field_validator("metadata")
    @classmethod
    def _string_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not all(isinstance(k, str) for k in value):
            raise ValueError("metadata keys must be strings")
        return value

    @property
    def is_active(self) -> bool:
        return self.status is SessionStatus.ACTIVE


#: Session fields a caller of ``SessionStore.update`` may not set directly: they belong to
#: the store (identity, indexes) or to ``complete`` (the exactly-once transition).
IMMUTABLE_FIELDS = frozenset(
    {"id", "org_id", "created_at", "status", "end_reason", "ended_at", "channel"}
)


class CompletedSession(BaseModel):
    """What ``complete`` hands to the archive: the final session and its whole history."""

    session: Session
    messages: list[Message] = Field(default_factory=list)


#: Analytics row columns: Syllable's, in its order, then ours (docs/session-model.md).
ANALYTICS_COLUMNS: tuple[str, ...] = (
    "timestamp",
    "sessionId",
    "conversationId",
    "channelManagerService",
    "channelManagerType",
    "channelManagerSid",
    "agentId",
    "agentName",
    "agentType",
    "agentTimezone",
    "promptId",
    "promptName",
    "promptVersion",
    "duration",
    "sessionLabelId",
    "source",
    "target",
    "isLegacy",
    "isTest",
    "orgId",
    "endedAt",
    "endReason",
    "turns",
    "messages",
    "interruptions",
    "userId",
    "name",
    "summary",
)


def analytics_row(session: Session) -> dict[str, Any]:
    """The flat analytics row of a completed session, keyed by ``ANALYTICS_COLUMNS``."""
    return {
        "timestamp": session.created_at,
        "sessionId": session.id,
        "conversationId": session.conversation_id,
        "channelManagerService": session.channel.service,
        "channelManagerType": session.channel.type,
        "channelManagerSid": session.channel.sid,
        "agentId": session.agent_id,
        "agentName": session.agent_name,
        "agentType": session.agent_type,
        "agentTimezone": session.agent_timezone,
        "promptId": session.prompt_id,
        "promptName": session.prompt_name,
        "promptVersion": session.prompt_version,
        "duration": session.duration,
        "sessionLabelId": session.session_label_id,
        "source": session.source,
        "target": session.target,
        "isLegacy": session.is_legacy,
        "isTest": session.is_test,
        "orgId": session.org_id,
        "endedAt": session.ended_at,
        "endReason": session.end_reason.value if session.end_reason else None,
        "turns": session.turns,
        "messages": session.message_count,
        "interruptions": session.interruptions,
        "userId": session.user_id,
        "name": session.name,
        "summary": session.summary,
    }

"""Request and response bodies of the REST API (the OpenAPI schemas are generated from these)."""

from __future__ import annotations

from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from voice_gateway.api.templates import MAX_OUTPUT
from voice_gateway.sessions.models import (
    NAME_MAX,
    ContextOverflow,
    Message,
    Session,
    SessionStatus,
    Tool,
    UtcDateTime,
)

#: Page sizes of the list endpoints.
LIMIT_MAX = 200
#: Deepest page offset (the databases' integers are 64-bit; no one pages this deep).
OFFSET_MAX = 1_000_000
SEARCH_LIMIT_MAX = 100


class _Body(BaseModel):
    """A request body: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def _metadata_keys(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and any(not key for key in value):
        raise ValueError("metadata keys must not be empty")
    return value


class SessionCreate(_Body):
    """``POST /v1/sessions``."""

    agent_id: str = Field(description="an agent of the catalogue that belongs to your org")
    user_id: str | None = None
    name: str | None = Field(None, max_length=NAME_MAX)
    situation: str | None = Field(
        None, max_length=MAX_OUTPUT, description="agent background; a template if render_templates"
    )
    render_templates: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)
    context_overflow: ContextOverflow = ContextOverflow.ADAPTIVE
    expiration_seconds: int | None = Field(
        None, gt=0, le=30 * 86400, description="default: the gateway's expiration_seconds"
    )
    is_test: bool = False
    tools: list[Tool] = Field(default_factory=list)
    session_label_id: str | None = None
    conversation_id: str | None = None

    _keys = field_validator("metadata")(_metadata_keys)


class SessionUpdate(_Body):
    """``PATCH /v1/sessions/{id}``: only the fields present change.

    ``metadata`` is merged into the session's metadata; a key set to ``null`` is removed.
    ``name``, ``situation``, ``session_label_id`` and ``summary`` set to ``null`` are cleared.
    """

    metadata: dict[str, Any] | None = None
    name: str | None = Field(None, max_length=NAME_MAX)
    situation: str | None = Field(None, max_length=MAX_OUTPUT)
    session_label_id: str | None = None
    summary: str | None = None

    _keys = field_validator("metadata")(_metadata_keys)


class DocumentCreate(_Body):
    """``POST /v1/sessions/{id}/documents``."""

    title: str = Field(max_length=1000)
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)

    _keys = field_validator("metadata")(_metadata_keys)


class Document(BaseModel):
    id: str
    title: str
    content: str
    metadata: dict[str, Any]
    created_at: UtcDateTime


class DocumentHit(BaseModel):
    document: Document
    score: float = Field(description="BM25 score; higher is more relevant")


class DocumentSearchResults(BaseModel):
    data: list[DocumentHit]


class SessionPage(BaseModel):
    data: list[Session]
    limit: int
    offset: int
    total: int = Field(description="sessions matching the filters, on every page")


class MessagePage(BaseModel):
    data: list[Message]
    limit: int
    offset: int
    total: int = Field(description="messages in the session's history")


class ToolList(BaseModel):
    data: list[Tool]


class ErrorDetail(BaseModel):
    type: str = Field(description="stable machine-readable kind, e.g. `validation_error`")
    message: str
    details: dict[str, Any] = Field(
        description="for validation errors: `errors`, a list of `{field, message}`"
    )


class ErrorBody(BaseModel):
    """Every error response has this body."""

    error: ErrorDetail


# -- query strings -------------------------------------------------------------------------


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PageQuery(_Query):
    limit: int = Field(50, ge=1, le=LIMIT_MAX)
    offset: int = Field(0, ge=0, le=OFFSET_MAX)


class HistoryQuery(PageQuery):
    limit: int = Field(100, ge=1, le=LIMIT_MAX)


class SessionListQuery(PageQuery):
    agent_id: str | None = None
    status: SessionStatus | None = None
    user_id: str | None = None
    created_after: AwareDatetime | None = Field(None, description="inclusive")
    created_before: AwareDatetime | None = Field(None, description="exclusive")
    metadata: dict[str, str] = Field(default_factory=dict)


class SearchQuery(_Query):
    query: str = Field(min_length=1)
    limit: int = Field(10, ge=1, le=SEARCH_LIMIT_MAX)
    metadata: dict[str, str] = Field(default_factory=dict)

"""The OpenAPI 3.1 document of the REST API, served at ``/openapi.json``.

Schemas come from the pydantic models (request bodies in validation mode, responses in
serialization mode); query parameters from the query models, so the document and the
validation cannot drift apart. Paths, statuses and descriptions are listed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from voice_gateway.api.models import (
    Document,
    DocumentCreate,
    DocumentSearchResults,
    ErrorBody,
    HistoryQuery,
    MessagePage,
    SearchQuery,
    SessionCreate,
    SessionListQuery,
    SessionPage,
    SessionUpdate,
    ToolList,
)
from voice_gateway.sessions.models import Session, Tool
from voice_gateway.settings import Settings

REF = "#/components/schemas/{model}"

_ERRORS = {
    400: "Bad request",
    401: "Missing or invalid API key (`WWW-Authenticate: Bearer`)",
    404: "No such session in your organisation (or no such tool)",
    409: "The session's state forbids the change (e.g. it is completed)",
    413: "The request body is larger than the configured limit",
    422: "Invalid request: `details.errors` lists each field (`field`, `message`)",
    429: "Too many requests from this client address: retry after `Retry-After` seconds",
    503: "The session store (Redis) or the archive database is unreachable",
}

_SESSION_ID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "description": "the session's id",
    "schema": {"type": "string"},
}


@dataclass(frozen=True)
class _Op:
    method: str
    path: str
    operation_id: str
    summary: str
    ok: int
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    extra_params: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    description: str = ""


_S = "/v1/sessions"
_ONE = _S + "/{session_id}"

OPERATIONS: tuple[_Op, ...] = (
    _Op(
        "post",
        _S,
        "createSession",
        "Create a session for an agent",
        201,
        Session,
        body=SessionCreate,
        errors=(413, 422),
        description="The agent must belong to your organisation. With `render_templates`, "
        "`situation` is a Jinja2 template rendered in a sandbox (variables `metadata`, "
        "`user_id`, `agent`, `session`); `situation_template` keeps it as written.",
    ),
    _Op(
        "get",
        _S,
        "listSessions",
        "List sessions, newest first",
        200,
        SessionPage,
        query=SessionListQuery,
        errors=(422,),
        description="Active sessions come from the live store, completed ones from the "
        "archive, in one order: `created_at` descending, then `id` descending. Metadata "
        "filters: `metadata[KEY]=VALUE` (also accepted as `metadata.KEY=VALUE`), one per key; "
        "a filter matches strings as themselves, numbers as written, and `true`/`false`.",
    ),
    _Op("get", _ONE, "getSession", "Get a session (live or archived)", 200, Session, errors=(404,)),
    _Op(
        "patch",
        _ONE,
        "updateSession",
        "Update a session",
        200,
        Session,
        body=SessionUpdate,
        errors=(404, 409, 413, 422),
        description="`metadata` is merged (a key set to null is removed). A completed "
        "session is changed in the archive; right after it completed (before it is archived) "
        "that is a 409: retry. With `render_templates`, the situation is rendered again.",
    ),
    _Op(
        "delete",
        _ONE,
        "deleteSession",
        "Delete a session",
        204,
        errors=(404,),
        description="An active session is completed first (`end_reason` = `canceled`), then "
        "removed from the live store and the archive; it never comes back.",
    ),
    _Op(
        "get",
        _ONE + "/history",
        "getSessionHistory",
        "Page through a session's messages",
        200,
        MessagePage,
        query=HistoryQuery,
        errors=(404, 422),
    ),
    _Op(
        "post",
        _ONE + "/tools",
        "addSessionTool",
        "Attach a tool to an active session",
        201,
        Tool,
        body=Tool,
        errors=(404, 409, 413, 422),
        description="`parameters` must be a valid JSON Schema (draft 2020-12). A name the "
        "session already has, or a completed session, is a 409.",
    ),
    _Op(
        "get",
        _ONE + "/tools",
        "listSessionTools",
        "List a session's tools",
        200,
        ToolList,
        errors=(404,),
    ),
    _Op(
        "delete",
        _ONE + "/tools/{name}",
        "deleteSessionTool",
        "Remove a tool from an active session",
        204,
        errors=(404, 409),
        extra_params=(
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "the tool's name",
                "schema": {"type": "string"},
            },
        ),
    ),
    _Op(
        "post",
        _ONE + "/documents",
        "addSessionDocument",
        "Add a document to an active session",
        201,
        Document,
        body=DocumentCreate,
        errors=(404, 409, 413, 422),
    ),
    _Op(
        "get",
        _ONE + "/documents/search",
        "searchSessionDocuments",
        "Search a session's documents (BM25)",
        200,
        DocumentSearchResults,
        query=SearchQuery,
        errors=(404, 422),
        description="Ranks the session's documents (title and content) against `query` with "
        "BM25, best first; `metadata[KEY]=VALUE` (or `metadata.KEY=VALUE`) keeps only "
        "documents whose metadata matches.",
    ),
)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` -> ``X``: a query parameter is absent, never null."""
    options = schema.get("anyOf")
    if options is None:
        return schema
    rest = [o for o in options if o.get("type") != "null"]
    out = {k: v for k, v in schema.items() if k != "anyOf"}
    if len(rest) == 1:
        out.update(rest[0])
    else:
        out["anyOf"] = rest
    return out


def _query_parameters(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF, mode="validation")
    defs.update(schema.get("$defs", {}))
    required = set(schema.get("required", []))
    params: list[dict[str, Any]] = []
    for name, prop in schema["properties"].items():
        prop = _not_null(prop)
        prop.pop("title", None)
        if prop.get("default", 0) is None:
            del prop["default"]
        description = prop.pop("description", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if name == "metadata":
            param.update(style="deepObject", explode=True)
            prop.pop("default", None)
            description = "metadata filters, `metadata[KEY]=VALUE` (or `metadata.KEY=VALUE`)"
        if description:
            param["description"] = description
        param["schema"] = prop
        params.append(param)
    return params


def _response(description: str, ref: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if ref is not None:
        out["content"] = {"application/json": {"schema": ref}}
    return out


def _version() -> str:
    try:
        return metadata.version("voice-gateway")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def build_openapi(settings: Settings | None = None) -> dict[str, Any]:
    """The document; ``settings`` only fill in descriptions (the body size limit)."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        if op.response is not None:
            models.append((op.response, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    defs: dict[str, Any] = dict(top.get("$defs", {}))
    error_ref = refs[(ErrorBody, "serialization")]
    limit = f" ({settings.api_max_body_bytes} bytes here)" if settings is not None else ""

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        params: list[dict[str, Any]] = []
        if "{session_id}" in op.path:
            params.append(dict(_SESSION_ID))
        params.extend(op.extra_params)
        if op.query is not None:
            params.extend(_query_parameters(op.query, defs))
        responses: dict[str, Any] = {
            str(op.ok): _response(
                "No content" if op.response is None else "OK" if op.ok == 200 else "Created",
                refs[(op.response, "serialization")] if op.response is not None else None,
            )
        }
        if op.operation_id == "createSession":
            responses["201"]["headers"] = {
                "Location": {
                    "description": "the new session's URL",
                    "schema": {"type": "string"},
                }
            }
        for status in sorted({401, 429, 503, *op.errors}):
            text = _ERRORS[status] + (limit if status == 413 else "")
            responses[str(status)] = _response(text, error_ref)
        responses["401"]["headers"] = {
            "WWW-Authenticate": {"description": "`Bearer ...`", "schema": {"type": "string"}}
        }
        responses["429"]["headers"] = {
            "Retry-After": {"description": "seconds", "schema": {"type": "string"}}
        }
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": ["sessions"],
            "parameters": params,
            "responses": responses,
        }
        if op.description:
            operation["description"] = op.description
        if op.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        paths.setdefault(op.path, {})[op.method] = operation

    paths["/openapi.json"] = {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document",
            "tags": ["meta"],
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document of the API",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "voice-gateway sessions API",
            "version": _version(),
            "description": "Sessions of the voice gateway: create, read, list, update and "
            "delete; history; session tools and documents. Every request needs an API key "
            "(`Authorization: Bearer <key>`) and sees its own organisation's sessions only. "
            "Strings must not contain NUL characters. See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": "sessions"}, {"name": "meta"}],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key from `voice-gateway keys create`",
                }
            },
        },
    }

"""The sessions REST API (``/v1``): handlers, request parsing, and ``setup_api``.

A live session (active, or completed and still retained) is read from the store through the
lifecycle; a completed one from the archive, which is authoritative once the session is there
(a completed session updated over the API is changed in the archive only). Every request acts
for the org of its API key and never sees another org's sessions: they are 404, like unknown
ones. Library-level problems arrive here as ``GatewayError`` subclasses and leave through the
app's error middleware as ``{"error": {"type", "message", "details"}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ValidationError

from voice_gateway import appkeys
from voice_gateway.api import listing
from voice_gateway.api.auth import KEYRING, KeyRing, auth_middleware, org_of
from voice_gateway.api.keys import configured_keys
from voice_gateway.api.models import (
    Document,
    DocumentCreate,
    DocumentHit,
    DocumentSearchResults,
    HistoryQuery,
    MessagePage,
    SearchQuery,
    SessionCreate,
    SessionListQuery,
    SessionPage,
    SessionUpdate,
    ToolList,
)
from voice_gateway.api.openapi import build_openapi
from voice_gateway.api.search import rank
from voice_gateway.api.templates import render_situation
from voice_gateway.api.validation import invalid, refuse_nul, validation_failed
from voice_gateway.archive.db import Archive
from voice_gateway.errors import (
    AlreadyCompleted,
    Conflict,
    NotFound,
    PayloadTooLarge,
    SessionNotFound,
)
from voice_gateway.sessions.keys import mint_session_id
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import (
    Channel,
    EndReason,
    Session,
    SessionStatus,
    Tool,
    utcnow,
)
from voice_gateway.sessions.store import SessionStore
from voice_gateway.settings import AgentConfig, Settings

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
#: Session ids are UUIDs; anything much longer cannot be one (and is not looked up).
_ID_MAX = 128
#: Live sessions fetched from the store at once when listing.
_FETCH_BATCH = 100

_M = TypeVar("_M", bound=BaseModel)


# -- request plumbing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Deps:
    settings: Settings
    store: SessionStore
    lifecycle: Lifecycle
    archive: Archive


def _deps(request: web.Request) -> _Deps:
    config = request.config_dict
    return _Deps(
        config[appkeys.SETTINGS],
        config[appkeys.STORE],
        config[appkeys.LIFECYCLE],
        config[appkeys.ARCHIVE],
    )


async def read_body(request: web.Request, model: type[_M]) -> _M:
    """The JSON body validated (strictly) as ``model``; 413 over ``api_max_body_bytes``
    (also for a body sent without a length), 422 otherwise."""
    limit = request.config_dict[appkeys.SETTINGS].api_max_body_bytes
    too_large = PayloadTooLarge(
        f"request body exceeds the limit of {limit} bytes", details={"limit": limit}
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        body = model.model_validate_json(b"".join(chunks), strict=True)
    except ValidationError as exc:
        raise validation_failed(exc) from None
    refuse_nul(body.model_dump(), "")
    return body


def _metadata_param(name: str) -> str | None:
    """``metadata.KEY`` or ``metadata[KEY]`` -> ``KEY``."""
    if name.startswith("metadata."):
        return name[len("metadata.") :]
    if name.startswith("metadata[") and name.endswith("]"):
        return name[len("metadata[") : -1]
    return None


def read_query(request: web.Request, model: type[_M]) -> _M:
    """The query string validated as ``model``; unknown or repeated parameters are a 422."""
    data: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for name in dict.fromkeys(request.query):
        values = request.query.getall(name)
        if len(values) > 1:
            raise invalid(name, "given more than once")
        value = values[0]
        refuse_nul(value, name)
        refuse_nul(name, name)
        key = _metadata_param(name)
        if key is not None and "metadata" in model.model_fields:
            if not key:
                raise invalid(name, "a metadata filter needs a key: metadata.KEY=VALUE")
            metadata[key] = value
        else:
            data[name] = value
    if metadata:
        data["metadata"] = metadata
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def _json(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=model.model_dump_json(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["session_id"]
    if not session_id or len(session_id) > _ID_MAX or "\x00" in session_id:
        raise SessionNotFound(session_id[:_ID_MAX])
    return session_id


async def find_session(deps: _Deps, org: str, session_id: str) -> tuple[Session, bool]:
    """(the session, whether it is in the store); 404 when unknown or another org's.

    A completed session still retained in the store is answered from the archive once it is
    there (updates of completed sessions land in the archive only).
    """
    try:
        live: Session | None = await deps.lifecycle.get(session_id)
    except SessionNotFound:
        live = None
    if live is not None:
        if live.org_id != org:
            raise SessionNotFound(session_id)
        if live.is_active:
            return live, True
        archived = await deps.archive.get(session_id, org)
        return archived or live, True
    archived = await deps.archive.get(session_id, org)
    if archived is None:
        raise SessionNotFound(session_id)
    return archived, False


async def _active_session(deps: _Deps, org: str, session_id: str) -> Session:
    session, _ = await find_session(deps, org, session_id)
    if not session.is_active:
        raise AlreadyCompleted(session_id)
    return session


def _check_tool(tool: Tool, prefix: str = "") -> None:
    """A tool's ``parameters`` must be a valid JSON Schema (draft 2020-12)."""
    try:
        Draft202012Validator.check_schema(tool.parameters)
    except SchemaError as exc:
        raise invalid(
            f"{prefix}parameters", f"not a valid JSON Schema (draft 2020-12): {exc.message}"
        ) from None


def _check_tools(tools: Iterable[Tool]) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        _check_tool(tool, f"tools.{i}.")
        if tool.name in seen:
            raise invalid(f"tools.{i}.name", f"duplicate tool name {tool.name!r}")
        seen.add(tool.name)


def _template_vars(
    agent_id: str, agent: AgentConfig | None, session: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "agent": {
            "id": agent_id,
            "name": agent.name if agent else None,
            "timezone": agent.timezone if agent else None,
        },
        "session": session,
    }


# -- sessions --------------------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    deps, org = _deps(request), org_of(request)
    body = await read_body(request, SessionCreate)
    agent = deps.settings.agent(body.agent_id)
    if agent is None or agent.org_id != org:
        raise invalid("agent_id", f"no agent {body.agent_id!r} in your organisation")
    _check_tools(body.tools)
    session_id = mint_session_id()
    situation, template = body.situation, None
    if body.render_templates and body.situation is not None:
        template = body.situation
        situation = render_situation(
            template,
            metadata=body.metadata,
            user_id=body.user_id,
            **_template_vars(agent.id, agent, {"id": session_id, "name": body.name}),
        )
    session = Session(
        id=session_id,
        org_id=org,
        name=body.name,
        expiration_seconds=body.expiration_seconds or deps.settings.expiration_seconds,
        agent_id=agent.id,
        agent_name=agent.name,
        agent_type=agent.type,
        agent_timezone=agent.timezone,
        prompt_id=agent.prompt_id,
        prompt_name=agent.prompt_name,
        prompt_version=agent.prompt_version,
        user_id=body.user_id,
        channel=Channel(service="api", type="api"),
        conversation_id=body.conversation_id,
        situation=situation,
        render_templates=body.render_templates,
        situation_template=template,
        metadata=body.metadata,
        context_overflow=body.context_overflow,
        tools=body.tools,
        session_label_id=body.session_label_id,
        is_test=body.is_test,
        is_legacy=agent.legacy,
    )
    session, _ = await deps.lifecycle.open(session)
    log.info("api session created session_id=%s org=%s agent=%s", session.id, org, agent.id)
    return _json(session, 201, {"Location": f"{API_PREFIX}/sessions/{session.id}"})


async def get_session(request: web.Request) -> web.Response:
    session, _ = await find_session(_deps(request), org_of(request), _session_id(request))
    return _json(session)


async def _live_sessions(deps: _Deps, org: str, q: SessionListQuery) -> list[Session]:
    ids = await deps.store.active_session_ids()
    out: list[Session] = []
    for i in range(0, len(ids), _FETCH_BATCH):
        batch = await asyncio.gather(*(deps.store.get(sid) for sid in ids[i : i + _FETCH_BATCH]))
        out.extend(
            s
            for s in batch
            if s is not None
            and s.is_active
            and listing.session_matches(
                s,
                org_id=org,
                agent_id=q.agent_id,
                user_id=q.user_id,
                created_after=q.created_after,
                created_before=q.created_before,
                metadata=q.metadata,
            )
        )
    return out


async def list_sessions(request: web.Request) -> web.Response:
    deps, org = _deps(request), org_of(request)
    q = read_query(request, SessionListQuery)
    active: list[Session] = []
    if q.status in (None, SessionStatus.ACTIVE):
        active = await _live_sessions(deps, org, q)
    window: list[Session] = []
    start = archived = 0
    if q.status in (None, SessionStatus.COMPLETED):
        filters: dict[str, Any] = {
            "org_id": org,
            "agent_id": q.agent_id,
            "user_id": q.user_id,
            "created_after": q.created_after,
            "created_before": q.created_before,
            "metadata": q.metadata,
        }
        start, count = listing.archive_window(q.offset, q.limit, len(active))
        window = await deps.archive.list_sessions(**filters, limit=count, offset=start)
        archived = await deps.archive.count_sessions(**filters)
        # A session seen active a moment ago may have been archived since: count it once.
        in_window = {s.id for s in window}
        active = [s for s in active if s.id not in in_window]
    data = listing.page(active, window, start, q.offset, q.limit)
    return _json(
        SessionPage(data=data, limit=q.limit, offset=q.offset, total=len(active) + archived)
    )


def _merged_metadata(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _update_fields(session: Session, body: SessionUpdate, settings: Settings) -> dict[str, Any]:
    """The session fields a PATCH sets, with the situation re-rendered when it is a template."""
    given = body.model_fields_set
    fields: dict[str, Any] = {}
    for plain in ("name", "session_label_id", "summary"):
        if plain in given:
            fields[plain] = getattr(body, plain)
    if "metadata" in given and body.metadata is not None:
        fields["metadata"] = _merged_metadata(session.metadata, body.metadata)
    if "situation" in given:
        fields["situation"] = body.situation
        fields["situation_template"] = body.situation if session.render_templates else None
    template = fields.get("situation_template", session.situation_template)
    inputs_changed = bool({"situation", "metadata", "name"} & fields.keys())
    if session.render_templates and template is not None and inputs_changed:
        name = fields.get("name", session.name)
        fields["situation"] = render_situation(
            template,
            metadata=fields.get("metadata", session.metadata),
            user_id=session.user_id,
            **_template_vars(
                session.agent_id,
                settings.agent(session.agent_id),
                {"id": session.id, "name": name},
            ),
        )
    return fields


async def update_session(request: web.Request) -> web.Response:
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    session, _ = await find_session(deps, org, session_id)
    body = await read_body(request, SessionUpdate)
    fields = _update_fields(session, body, deps.settings)
    if not fields:
        return _json(session)
    if session.is_active:
        updated = await deps.lifecycle.update(session_id, **fields)
    else:
        archived = await deps.archive.update(session_id, fields, org_id=org)
        if archived is None:
            raise Conflict(
                f"session {session_id} has just completed and is not archived yet; "
                "retry in a few seconds",
                details={"session_id": session_id},
            )
        updated = archived
    log.info(
        "api session updated session_id=%s org=%s fields=%s",
        session_id,
        org,
        ",".join(sorted(fields)),
    )
    return _json(updated)


async def delete_session(request: web.Request) -> web.Response:
    """Complete a live session (``canceled``), then remove it from the store and the archive.

    The archive keeps a tombstone, so the completion record still on its way to the archive
    (or one delivered again later) never brings the session back.
    """
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    session, in_store = await find_session(deps, org, session_id)
    if in_store and session.is_active:
        # Ended by itself in the meantime: delete it all the same.
        with contextlib.suppress(AlreadyCompleted):
            await deps.lifecycle.complete(session_id, EndReason.CANCELED)
    await deps.archive.delete(session_id, org)
    await deps.store.delete(session_id)
    log.info("api session deleted session_id=%s org=%s", session_id, org)
    return web.Response(status=204)


async def session_history(request: web.Request) -> web.Response:
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    session, in_store = await find_session(deps, org, session_id)
    q = read_query(request, HistoryQuery)
    if in_store:
        messages = await deps.lifecycle.history(session_id, q.offset, q.limit)
    else:
        messages = await deps.archive.history(session_id, q.offset, q.limit)
    return _json(
        MessagePage(data=messages, limit=q.limit, offset=q.offset, total=session.message_count)
    )


# -- tools -----------------------------------------------------------------------------------------


async def add_tool(request: web.Request) -> web.Response:
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    session = await _active_session(deps, org, session_id)
    tool = await read_body(request, Tool)
    _check_tool(tool)
    if any(t.name == tool.name for t in session.tools):
        raise Conflict(
            f"session {session_id} already has a tool named {tool.name!r}",
            details={"session_id": session_id, "tool": tool.name},
        )
    await deps.lifecycle.update(session_id, tools=[*session.tools, tool])
    return _json(tool, 201)


async def list_tools(request: web.Request) -> web.Response:
    session, _ = await find_session(_deps(request), org_of(request), _session_id(request))
    return _json(ToolList(data=session.tools))


async def delete_tool(request: web.Request) -> web.Response:
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    name = request.match_info["name"]
    session = await _active_session(deps, org, session_id)
    remaining = [t for t in session.tools if t.name != name]
    if len(remaining) == len(session.tools):
        raise NotFound(
            f"session {session_id} has no tool named {name!r}",
            details={"session_id": session_id, "tool": name},
        )
    await deps.lifecycle.update(session_id, tools=remaining)
    return web.Response(status=204)


# -- documents -------------------------------------------------------------------------------------


async def add_document(request: web.Request) -> web.Response:
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    await _active_session(deps, org, session_id)
    body = await read_body(request, DocumentCreate)
    document = Document(
        id=str(uuid.uuid4()),
        title=body.title,
        content=body.content,
        metadata=body.metadata,
        created_at=utcnow(),
    )
    await deps.store.put_document(session_id, document.id, document.model_dump(mode="json"))
    return _json(document, 201)


async def search_documents(request: web.Request) -> web.Response:
    deps, org, session_id = _deps(request), org_of(request), _session_id(request)
    await find_session(deps, org, session_id)
    q = read_query(request, SearchQuery)
    documents = [
        doc
        for doc in (Document.model_validate(d) for d in await deps.store.get_documents(session_id))
        if listing.metadata_matches(doc.metadata, q.metadata)
    ]
    hits = rank([f"{d.title}\n{d.content}" for d in documents], q.query, q.limit)
    return _json(
        DocumentSearchResults(
            data=[DocumentHit(document=documents[h.index], score=h.score) for h in hits]
        )
    )


# -- the application -------------------------------------------------------------------------------


async def _load_keys(app: web.Application) -> None:
    settings = app[appkeys.SETTINGS]
    keys = configured_keys(settings.api_keys, settings.api_keys_file)
    app[KEYRING] = KeyRing(keys)
    orgs = sorted({k.org_id for k in keys})
    log.info("api keys loaded: %d key(s) for org(s) %s", len(keys), ",".join(orgs) or "-")
    if not keys:
        log.warning("no API keys: every /v1 request will be refused (voice-gateway keys create)")


def setup_api(app: web.Application) -> None:
    """Mount the REST API on ``app``: ``/v1/...`` (bearer keys) and ``/openapi.json``.

    The app's ``client_max_size`` must be at least ``api_max_body_bytes``; the API enforces
    its own limit where it reads bodies (``read_body``)."""
    settings = app[appkeys.SETTINGS]
    api = web.Application(middlewares=[auth_middleware])
    r = api.router
    r.add_post("/sessions", create_session)
    r.add_get("/sessions", list_sessions, allow_head=False)
    r.add_get("/sessions/{session_id}", get_session, allow_head=False)
    r.add_patch("/sessions/{session_id}", update_session)
    r.add_delete("/sessions/{session_id}", delete_session)
    r.add_get("/sessions/{session_id}/history", session_history, allow_head=False)
    r.add_post("/sessions/{session_id}/tools", add_tool)
    r.add_get("/sessions/{session_id}/tools", list_tools, allow_head=False)
    r.add_delete("/sessions/{session_id}/tools/{name}", delete_tool)
    r.add_post("/sessions/{session_id}/documents", add_document)
    r.add_get("/sessions/{session_id}/documents/search", search_documents, allow_head=False)
    app.add_subapp(API_PREFIX, api)

    spec = build_openapi(settings)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/openapi.json", openapi, allow_head=False)
    app.on_startup.append(_load_keys)

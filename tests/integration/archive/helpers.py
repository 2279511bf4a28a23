"""Builders shared by the archive tests: realistic completed sessions and their history."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from tests.conftest import POSTGRES_URL

from voice_gateway.archive.db import Archive
from voice_gateway.sessions.keys import mint_session_id
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import (
    Channel,
    CompletedSession,
    ContextOverflow,
    Customer,
    EndReason,
    Message,
    MessageRole,
    Session,
    SessionStatus,
    StreamInfo,
    Tool,
)


@dataclass
class Backend:
    """Where a test's archive lives, plus raw SQL access to it (for checks behind the API)."""

    name: str
    url: str
    schema: str | None = None
    path: Path | None = None

    async def open(self, **options: Any) -> Archive:
        return await Archive.open(self.url, schema=self.schema, **options)

    async def scalar(self, sql: str) -> Any:
        """One value from raw SQL run against this backend's tables."""
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn:
                return conn.execute(sql).fetchone()[0]
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'SET search_path TO "{self.schema}"')
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    async def execute(self, sql: str) -> None:
        if self.path is not None:
            with contextlib.closing(sqlite3.connect(self.path)) as conn, conn:
                conn.execute(sql)
            return
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'SET search_path TO "{self.schema}"')
            await conn.execute(sql)
        finally:
            await conn.close()


async def drop_schema(schema: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


T0 = datetime(2026, 1, 15, 12, 0, 0, 123456, tzinfo=UTC)


def call_sid() -> str:
    return "CA" + uuid.uuid4().hex


def make_session(at: datetime = T0, **fields: Any) -> Session:
    """A completed voice session with every field set (override any with ``fields``)."""
    sid = fields.pop("call_sid", None) or call_sid()
    values: dict[str, Any] = {
        "id": mint_session_id(sid),
        "org_id": "acme",
        "name": "refund call",
        "status": SessionStatus.COMPLETED,
        "end_reason": EndReason.COMPLETED,
        "created_at": at,
        "updated_at": at + timedelta(minutes=3),
        "ended_at": at + timedelta(minutes=3),
        "duration": 180.25,
        "expiration_seconds": 3600,
        "agent_id": "support",
        "agent_name": "Support",
        "agent_type": "websocket",
        "agent_timezone": "Europe/Paris",
        "prompt_id": "p-1",
        "prompt_name": "support prompt",
        "prompt_version": "7",
        "user_id": "user-1",
        "customer": Customer(number="+14155550100", name="Ada"),
        "channel": Channel(service="twilio", type="voice", sid=sid),
        "conversation_id": "conv-1",
        "source": "+14155550100",
        "target": "+18005550199",
        "situation": "caller wants a refund",
        "render_templates": True,
        "summary": "refund granted, ticket #42",
        "metadata": {"tier": "gold", "n": 3, "vip": True, "nested": {"a": [1, 2]}},
        "context_overflow": ContextOverflow.TRUNCATE,
        "tools": [Tool(name="lookup", description="find an order")],
        "session_label_id": "label-9",
        "is_test": False,
        "is_legacy": False,
        "stream": StreamInfo(stream_sid="MZ" + uuid.uuid4().hex, started_at=at, frames_in=9000),
        "turns": 4,
        "message_count": 3,
        "interruptions": 1,
    }
    values.update(fields)
    return Session(**values)


def make_messages(session: Session, n: int = 3) -> list[Message]:
    roles: tuple[MessageRole, ...] = ("user", "assistant", "tool", "event", "system")
    return [
        Message(
            role=roles[i % len(roles)],
            content=f'message {i} of {session.id}: héllo, "quoted"\nnext line',
            created_at=session.created_at + timedelta(seconds=i),
            turn_id=i // 2,
            metadata={"i": i, "ok": True},
        )
        for i in range(n)
    ]


def make_record(at: datetime = T0, n_messages: int = 3, **fields: Any) -> CompletedSession:
    session = make_session(at, message_count=n_messages, **fields)
    return CompletedSession(session=session, messages=make_messages(session, n_messages))


async def open_call(lifecycle: Lifecycle, *, n_messages: int = 2, **fields: Any) -> Session:
    """Open a live call session through the lifecycle and give it some history."""
    sid = call_sid()
    session = Session(
        id=mint_session_id(sid),
        agent_id=fields.pop("agent_id", "support"),
        org_id=fields.pop("org_id", "acme"),
        channel=Channel(service="twilio", type="voice", sid=sid),
        source="+14155550100",
        target="+18005550199",
        **fields,
    )
    session, _ = await lifecycle.open(session, call_sid=sid)
    for i in range(n_messages):
        await lifecycle.append_message(session.id, "user" if i % 2 == 0 else "assistant", f"m{i}")
    return session


async def complete_calls(lifecycle: Lifecycle, n: int, **fields: Any) -> list[CompletedSession]:
    """Open and complete ``n`` call sessions; the completed records, in order."""
    out = []
    for _ in range(n):
        session = await open_call(lifecycle, **fields)
        out.append(await lifecycle.complete(session.id, EndReason.COMPLETED))
    return out

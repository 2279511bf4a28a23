"""Listing sessions from two sources: active ones from the store, completed ones from the archive.

The list is ordered newest first (``created_at`` DESC, then ``id`` DESC) across both sources.
Only a window of the archive is read per page: the archive rows that can land on page
``[offset, offset + limit)`` are those at archive positions ``[offset - A, offset + limit)``,
where ``A`` is the number of active sessions that match (each active session ahead of an
archive row pushes it back by one). ``page`` places every candidate at its exact position in
the merged order and keeps those on the page.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from voice_gateway.sessions.models import Session


def sort_key(session: Session) -> tuple[datetime, str]:
    return (session.created_at, session.id)


def newest_first(sessions: Sequence[Session]) -> list[Session]:
    return sorted(sessions, key=sort_key, reverse=True)


def archive_window(offset: int, limit: int, active: int) -> tuple[int, int]:
    """(archive offset, archive limit) to read for the page, given ``active`` matching sessions."""
    start = max(0, offset - active)
    return start, offset + limit - start


def page(
    active: Sequence[Session],
    window: Sequence[Session],
    start: int,
    offset: int,
    limit: int,
) -> list[Session]:
    """The page ``[offset, offset + limit)`` of ``active`` merged with the archive.

    ``active``: every matching session from the store (any order; none of them archived).
    ``window``: the archive's matching rows from position ``start``, newest first, as read
    with ``archive_window`` (fewer only when the archive has no more).
    """
    act = newest_first(active)
    # Ascending keys for counting with bisect: "how many are newer than x".
    act_keys = sorted(sort_key(s) for s in act)
    win_keys = sorted(sort_key(s) for s in window)

    def newer(keys: list[tuple[datetime, str]], key: tuple[datetime, str]) -> int:
        return len(keys) - bisect_right(keys, key)

    placed: list[tuple[int, Session]] = []
    for i, session in enumerate(window):
        placed.append((start + i + newer(act_keys, sort_key(session)), session))
    first = sort_key(window[0]) if window else None
    for j, session in enumerate(act):
        key = sort_key(session)
        if start > 0 and (first is None or key > first):
            continue  # ahead of the window: its position is before ``offset``
        placed.append((start + j + newer(win_keys, key), session))
    placed.sort(key=lambda p: p[0])
    return [s for pos, s in placed if offset <= pos < offset + limit]


def metadata_text(value: Any) -> str | None:
    """A metadata value as list filters compare it: strings as themselves, numbers as written,
    ``true``/``false``; null, objects and arrays never match (the archive's rule too)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return None


def metadata_matches(metadata: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(
        key in metadata and metadata_text(metadata[key]) == value for key, value in wanted.items()
    )


def session_matches(
    session: Session,
    *,
    org_id: str,
    agent_id: str | None = None,
    user_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
) -> bool:
    """The archive's filters, applied to a live session (``created_after`` inclusive,
    ``created_before`` exclusive)."""
    return (
        session.org_id == org_id
        and (agent_id is None or session.agent_id == agent_id)
        and (user_id is None or session.user_id == user_id)
        and (created_after is None or session.created_at >= created_after)
        and (created_before is None or session.created_at < created_before)
        and metadata_matches(session.metadata, metadata or {})
    )

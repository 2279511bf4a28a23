"""Listing across the store and the archive: a page read from a window of the archive is
exactly the page of the whole merged list."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from voice_gateway.api.listing import (
    archive_window,
    metadata_matches,
    newest_first,
    page,
    session_matches,
)
from voice_gateway.sessions.models import Session

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def session(minute: int, sid: str, **fields: object) -> Session:
    at = T0 + timedelta(minutes=minute)
    return Session(id=sid, agent_id="a", created_at=at, updated_at=at, **fields)


# Few distinct minutes so that equal creation times (ordered by id) are common.
sessions_strategy = st.lists(
    st.tuples(st.integers(0, 5), st.uuids().map(str)), max_size=25, unique_by=lambda t: t[1]
).map(lambda rows: [session(m, sid) for m, sid in rows])


@settings(max_examples=300, deadline=None)
@given(
    everything=sessions_strategy,
    split=st.data(),
    offset=st.integers(0, 30),
    limit=st.integers(1, 12),
)
def test_a_windowed_page_equals_the_page_of_the_merged_list(
    everything: list[Session], split: st.DataObject, offset: int, limit: int
) -> None:
    live_flags = split.draw(
        st.lists(st.booleans(), min_size=len(everything), max_size=len(everything))
    )
    active = [s for s, live in zip(everything, live_flags, strict=True) if live]
    archived = newest_first([s for s, live in zip(everything, live_flags, strict=True) if not live])

    start, count = archive_window(offset, limit, len(active))
    window = archived[start : start + count]  # what the archive returns for that window
    got = page(active, window, start, offset, limit)

    assert got == newest_first(everything)[offset : offset + limit]


def test_the_window_covers_the_page_plus_the_live_sessions_ahead_of_it() -> None:
    assert archive_window(0, 50, 0) == (0, 50)
    assert archive_window(100, 50, 10) == (90, 60)
    assert archive_window(5, 50, 10) == (0, 55)


def test_order_is_newest_first_then_highest_id() -> None:
    a, b, c = session(1, "a"), session(1, "b"), session(2, "c")
    assert newest_first([a, b, c]) == [c, b, a]


def test_metadata_values_compare_as_text_like_the_archive() -> None:
    md = {"tier": "gold", "n": 3, "ratio": 2.5, "vip": True, "none": None, "list": [1]}
    assert metadata_matches(md, {"tier": "gold", "n": "3", "ratio": "2.5", "vip": "true"})
    assert not metadata_matches(md, {"tier": "Gold"})
    assert not metadata_matches(md, {"vip": "True"})
    assert not metadata_matches(md, {"none": "null"})
    assert not metadata_matches(md, {"list": "[1]"})
    assert not metadata_matches(md, {"absent": ""})
    assert metadata_matches(md, {})


def test_session_filters_match_the_archive_bounds() -> None:
    s = session(10, "x", org_id="acme", user_id="u1", metadata={"k": "v"})
    at = s.created_at
    assert session_matches(s, org_id="acme", created_after=at)  # inclusive
    assert not session_matches(s, org_id="acme", created_before=at)  # exclusive
    assert not session_matches(s, org_id="globex")
    assert not session_matches(s, org_id="acme", agent_id="other")
    assert session_matches(s, org_id="acme", agent_id="a", user_id="u1", metadata={"k": "v"})

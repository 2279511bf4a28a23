"""Edits of archived sessions (the REST API's PATCH and DELETE), on both backends."""

from __future__ import annotations

import asyncio

import pytest
from tests.integration.archive.helpers import Backend, make_record

from voice_gateway.archive.db import Archive
from voice_gateway.sessions.models import CompletedSession


async def test_update_changes_the_row_and_its_filters(archive: Archive) -> None:
    record = make_record()
    await archive.upsert([record])
    before = await archive.get(record.session.id)
    assert before is not None

    updated = await archive.update(
        record.session.id,
        {
            "session_label_id": "escalated",
            "name": "renamed later",
            "summary": "reviewed",
            "metadata": {"tier": "silver"},
        },
    )
    assert updated is not None
    assert (updated.session_label_id, updated.name, updated.summary) == (
        "escalated",
        "renamed later",
        "reviewed",
    )
    assert updated.updated_at > before.updated_at
    assert await archive.get(record.session.id) == updated
    # Typed columns follow: filters and the analytics row see the change.
    assert [s.id for s in await archive.list_sessions(metadata={"tier": "silver"})] == [
        record.session.id
    ]
    assert await archive.list_sessions(metadata={"tier": "gold"}) == []
    rows = [row async for batch in archive.iter_analytics_rows() for row in batch]
    assert rows[0]["sessionLabelId"] == "escalated" and rows[0]["name"] == "renamed later"
    # Everything else is as archived, history included.
    assert updated.model_dump(
        exclude={"session_label_id", "name", "summary", "metadata", "updated_at"}
    ) == before.model_dump(
        exclude={"session_label_id", "name", "summary", "metadata", "updated_at"}
    )
    assert await archive.history(record.session.id) == record.messages


async def test_update_only_in_its_org_only_known_fields_only_valid_values(
    archive: Archive,
) -> None:
    record = make_record(org_id="acme")
    await archive.upsert([record])
    sid = record.session.id
    assert await archive.update(sid, {"name": "x"}, org_id="globex") is None
    assert await archive.update("no-such-session", {"name": "x"}) is None
    with pytest.raises(ValueError, match="status"):
        await archive.update(sid, {"status": "active"})
    with pytest.raises(ValueError):
        await archive.update(sid, {"name": "x" * 41})
    got = await archive.get(sid)
    assert got is not None and got.name == record.session.name


async def test_a_late_copy_of_the_record_does_not_undo_an_update(archive: Archive) -> None:
    record = make_record()
    await archive.upsert([record])
    await archive.update(record.session.id, {"session_label_id": "kept"})
    await archive.upsert([record])  # delivered again (at-least-once)
    got = await archive.get(record.session.id)
    assert got is not None and got.session_label_id == "kept"


async def test_a_deleted_session_is_never_written_again(archive: Archive, backend: Backend) -> None:
    archived, queued, other = make_record(), make_record(), make_record()
    await archive.upsert([archived, other])

    assert await archive.delete(archived.session.id, org_id="acme") is True
    # Deleted before it reached the archive: nothing to remove, but it must not arrive later.
    assert await archive.delete(queued.session.id, org_id="acme") is False

    assert await archive.upsert([archived, queued, other]) == 1  # only `other` is written
    assert await archive.get(archived.session.id) is None
    assert await archive.get(queued.session.id) is None
    assert await archive.history(queued.session.id) == []
    assert await archive.count_sessions() == 1
    assert await backend.scalar("SELECT count(*) FROM deleted_sessions") == 2


async def test_deleting_another_orgs_session_leaves_no_tombstone(
    archive: Archive, backend: Backend
) -> None:
    record = make_record(org_id="acme")
    await archive.upsert([record])
    assert await archive.delete(record.session.id, org_id="globex") is False
    assert await backend.scalar("SELECT count(*) FROM deleted_sessions") == 0
    await archive.upsert([record])
    assert await archive.get(record.session.id) is not None


async def test_concurrent_deletes_and_upserts_never_resurrect(archive: Archive) -> None:
    records = [make_record(n_messages=2) for _ in range(20)]

    async def write(record: CompletedSession) -> None:
        for _ in range(3):
            await archive.upsert([record])

    await asyncio.gather(
        *(write(r) for r in records), *(archive.delete(r.session.id) for r in records[::2])
    )
    for record in records[::2]:
        assert await archive.get(record.session.id) is None
        assert await archive.history(record.session.id) == []
    for record in records[1::2]:
        assert await archive.get(record.session.id) is not None

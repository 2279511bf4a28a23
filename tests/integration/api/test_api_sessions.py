"""Sessions over HTTP: create, read (live and archived), list, update, delete, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from tests.integration.api.conftest import ORG_A, A, Api

from voice_gateway.sessions.keys import mint_session_id
from voice_gateway.sessions.models import CompletedSession, EndReason, Session

#: Recent enough that the sessions are not past their expiry (the sweeper would end them).
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


def errors_of(body: dict[str, Any]) -> list[str]:
    """The fields a 422 names."""
    assert body["error"]["type"] == "validation_error"
    return [e["field"] for e in body["error"]["details"]["errors"]]


# -- create -------------------------------------------------------------------------------------


async def test_create_returns_the_session_with_the_agent_denormalised(api: Api) -> None:
    resp = await api.client.post(
        "/v1/sessions",
        headers=A,
        json={
            "agent_id": "support",
            "user_id": "user-42",
            "name": "Refund request",
            "situation": "The caller wants a refund.",
            "metadata": {"tier": "gold", "visits": 3},
            "context_overflow": "truncate",
            "expiration_seconds": 600,
            "is_test": True,
            "tools": [
                {
                    "name": "lookup_order",
                    "description": "find an order",
                    "parameters": {
                        "type": "object",
                        "properties": {"order_id": {"type": "string"}},
                    },
                }
            ],
            "session_label_id": "label-1",
            "conversation_id": "conv-1",
        },
    )
    assert resp.status == 201
    body = await resp.json()
    assert resp.headers["Location"] == f"/v1/sessions/{body['id']}"
    assert body["org_id"] == ORG_A
    assert body["status"] == "active"
    assert body["channel"] == {"service": "api", "type": "api", "sid": None}
    assert (body["agent_name"], body["agent_type"], body["agent_timezone"]) == (
        "Support line",
        "echo",
        "Europe/Paris",
    )
    assert (body["prompt_id"], body["prompt_name"], body["prompt_version"]) == (
        "support-v1",
        "Support greeting",
        "3",
    )
    assert body["is_legacy"] is False and body["is_test"] is True
    assert body["situation"] == "The caller wants a refund."
    assert body["metadata"] == {"tier": "gold", "visits": 3}
    assert body["context_overflow"] == "truncate"
    assert body["expiration_seconds"] == 600
    assert body["tools"][0]["name"] == "lookup_order"
    assert (body["session_label_id"], body["conversation_id"]) == ("label-1", "conv-1")

    got = await api.client.get(f"/v1/sessions/{body['id']}", headers=A)
    assert got.status == 200
    assert await got.json() == body


async def test_create_defaults_come_from_the_settings_and_the_agent(api_sqlite: Api) -> None:
    body = await api_sqlite.create(agent_id="triage")
    assert body["context_overflow"] == "adaptive"
    assert body["expiration_seconds"] == 86400
    assert body["is_legacy"] is True  # the agent is a legacy one
    assert body["name"] is None and body["tools"] == [] and body["metadata"] == {}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"name": "x" * 41}, "name"),
        ({"agent_id": "no-such-agent"}, "agent_id"),
        ({"agent_id": "globex-bot"}, "agent_id"),  # exists, but belongs to another org
        ({"context_overflow": "forget"}, "context_overflow"),
        ({"metadata": ["not", "an", "object"]}, "metadata"),
        ({"expiration_seconds": "600"}, "expiration_seconds"),  # strict: no strings for ints
        ({"expiration_seconds": 0}, "expiration_seconds"),
        ({"colour": "blue"}, "colour"),  # unknown fields are refused, not dropped
        ({"tools": [{"name": "t", "parameters": {"type": "no-such-type"}}]}, "tools.0.parameters"),
        ({"tools": [{"name": "t"}, {"name": "t"}]}, "tools.1.name"),
        ({"user_id": "nul\u0000byte"}, "user_id"),
    ],
)
async def test_create_refuses_invalid_input_naming_the_field(
    api_sqlite: Api, patch: dict[str, Any], field: str
) -> None:
    body = {"agent_id": "support", **patch}
    resp = await api_sqlite.client.post("/v1/sessions", headers=A, json=body)
    assert resp.status == 422
    assert field in errors_of(await resp.json())
    listed = await (await api_sqlite.client.get("/v1/sessions", headers=A)).json()
    assert listed["total"] == 0  # nothing was created


async def test_a_name_of_exactly_40_characters_is_kept_whole(api_sqlite: Api) -> None:
    body = await api_sqlite.create(name="n" * 40)
    assert body["name"] == "n" * 40


@pytest.mark.parametrize(
    ("raw", "needle"),
    [(b"{not json", "Invalid JSON"), (b"", "Invalid JSON"), (b"[1, 2]", "object")],
)
async def test_a_malformed_body_is_a_clear_422(api_sqlite: Api, raw: bytes, needle: str) -> None:
    resp = await api_sqlite.client.post(
        "/v1/sessions", headers={**A, "Content-Type": "application/json"}, data=raw
    )
    assert resp.status == 422
    body = await resp.json()
    assert errors_of(body) == ["body"]
    assert needle in body["error"]["message"]


# -- templates ------------------------------------------------------------------------------------


async def test_situation_template_renders_with_metadata_user_agent_and_session(
    api_sqlite: Api,
) -> None:
    body = await api_sqlite.create(
        name="Gold call",
        user_id="u-7",
        metadata={"tier": "gold", "first_name": "Ada"},
        render_templates=True,
        situation="{{ metadata.first_name }} ({{ metadata.tier }}, user {{ user_id }}) calls "
        "{{ agent.name }} in {{ agent.timezone }} about '{{ session.name }}' [{{ session.id }}]",
    )
    assert body["situation"] == (
        f"Ada (gold, user u-7) calls Support line in Europe/Paris about 'Gold call' [{body['id']}]"
    )
    assert body["situation_template"].startswith("{{ metadata.first_name }}")


async def test_without_render_templates_the_situation_is_kept_verbatim(api_sqlite: Api) -> None:
    body = await api_sqlite.create(situation="Literal {{ braces }}")
    assert body["situation"] == "Literal {{ braces }}"
    assert body["situation_template"] is None


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "Hello {{ no_such_variable }}",
        "{% for x in %}",
        "{{ 'a' * 10000000 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    ],
)
async def test_unsafe_or_broken_templates_are_refused_at_create(
    api_sqlite: Api, template: str
) -> None:
    resp = await api_sqlite.client.post(
        "/v1/sessions",
        headers=A,
        json={"agent_id": "support", "situation": template, "render_templates": True},
    )
    assert resp.status == 422
    assert errors_of(await resp.json()) == ["situation"]


async def test_patching_metadata_renders_the_situation_again(api_sqlite: Api) -> None:
    created = await api_sqlite.create(
        metadata={"tier": "gold"}, render_templates=True, situation="Tier: {{ metadata.tier }}"
    )
    url = f"/v1/sessions/{created['id']}"
    resp = await api_sqlite.client.patch(url, headers=A, json={"metadata": {"tier": "silver"}})
    assert resp.status == 200
    assert (await resp.json())["situation"] == "Tier: silver"

    resp = await api_sqlite.client.patch(
        url, headers=A, json={"situation": "Now {{ metadata.tier | upper }}"}
    )
    assert (await resp.json())["situation"] == "Now SILVER"

    # A patch that would break the template is refused and changes nothing.
    resp = await api_sqlite.client.patch(url, headers=A, json={"situation": "{{ nope }}"})
    assert resp.status == 422
    assert errors_of(await resp.json()) == ["situation"]
    resp = await api_sqlite.client.patch(url, headers=A, json={"metadata": {"tier": None}})
    assert resp.status == 422  # the template reads metadata.tier
    current = await (await api_sqlite.client.get(url, headers=A)).json()
    assert current["situation"] == "Now SILVER"
    assert current["metadata"] == {"tier": "silver"}


# -- read -----------------------------------------------------------------------------------------


async def test_get_unknown_session_is_404(api_sqlite: Api) -> None:
    resp = await api_sqlite.client.get(f"/v1/sessions/{mint_session_id()}", headers=A)
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "not_found"


async def test_a_completed_session_is_read_from_the_archive_once_gone_from_the_store(
    api: Api,
) -> None:
    created = await api.create(name="archived later")
    await api.lifecycle.append_message(created["id"], "user", "hello")
    await api.lifecycle.append_message(created["id"], "assistant", "hi, how can I help?")
    await api.archived(created["id"])
    assert await api.store.get(created["id"]) is None

    resp = await api.client.get(f"/v1/sessions/{created['id']}", headers=A)
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "completed" and body["end_reason"] == "completed"
    assert body["name"] == "archived later" and body["message_count"] == 2

    history = await (
        await api.client.get(f"/v1/sessions/{created['id']}/history", headers=A)
    ).json()
    assert [(m["role"], m["content"]) for m in history["data"]] == [
        ("user", "hello"),
        ("assistant", "hi, how can I help?"),
    ]
    assert history["total"] == 2


# -- list -----------------------------------------------------------------------------------------


async def open_at(api: Api, at: datetime, **fields: Any) -> Session:
    """A session with a chosen creation time, opened the way every channel opens one."""
    fields.setdefault("agent_id", "support")
    session = Session(org_id=ORG_A, created_at=at, updated_at=at, **fields)
    opened, _ = await api.lifecycle.open(session)
    return opened


async def list_ids(api: Api, query: str = "") -> tuple[list[str], dict[str, Any]]:
    resp = await api.client.get(f"/v1/sessions{query}", headers=A)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return [s["id"] for s in body["data"]], body


async def test_list_merges_live_and_archived_sessions_newest_first(api: Api) -> None:
    sessions = [await open_at(api, T0 + timedelta(minutes=i)) for i in range(6)]
    # Same creation time: the higher id comes first.
    twins = [await open_at(api, T0 + timedelta(minutes=10)) for _ in range(2)]
    for s in sessions[::2]:  # 0, 2, 4 archived (and gone from the store)
        await api.archived(s.id)
    ids, body = await list_ids(api)
    newest = sorted(twins, key=lambda s: s.id, reverse=True) + sessions[::-1]
    assert ids == [s.id for s in newest]
    assert body["total"] == 8

    # Every page of every size stitches back into the same order.
    for size in (1, 2, 3, 5):
        stitched: list[str] = []
        for offset in range(0, 8, size):
            page, _ = await list_ids(api, f"?limit={size}&offset={offset}")
            stitched += page
        assert stitched == ids


async def test_a_completed_session_still_in_the_store_and_archived_is_listed_once(
    api: Api,
) -> None:
    created = await api.create()
    await api.lifecycle.complete(created["id"], EndReason.COMPLETED)
    await api.drain()
    assert await api.store.get(created["id"]) is not None  # still retained live
    ids, body = await list_ids(api)
    assert ids == [created["id"]] and body["total"] == 1
    assert body["data"][0]["status"] == "completed"


async def test_list_filters(api: Api) -> None:
    gold_a = await open_at(api, T0, user_id="u1", metadata={"tier": "gold", "n": 3})
    gold_b = await open_at(
        api, T0 + timedelta(minutes=1), user_id="u2", metadata={"tier": "gold", "vip": True}
    )
    silver = await open_at(
        api,
        T0 + timedelta(minutes=2),
        agent_id="triage",
        user_id="u1",
        metadata={"tier": "silver"},
    )
    live = await open_at(api, T0 + timedelta(minutes=3), metadata={"tier": "gold"})
    for s in (gold_a, gold_b, silver):
        await api.archived(s.id)

    async def ids(query: str) -> set[str]:
        found, body = await list_ids(api, query)
        assert body["total"] == len(found)
        return set(found)

    assert await ids("?agent_id=triage") == {silver.id}
    assert await ids("?status=active") == {live.id}
    assert await ids("?status=completed") == {gold_a.id, gold_b.id, silver.id}
    assert await ids("?user_id=u1") == {gold_a.id, silver.id}
    after = quote((T0 + timedelta(minutes=1)).isoformat())
    before = quote((T0 + timedelta(minutes=3)).isoformat())
    assert await ids(f"?created_after={after}") == {gold_b.id, silver.id, live.id}  # inclusive
    assert await ids(f"?created_before={before}") == {gold_a.id, gold_b.id, silver.id}
    assert await ids(f"?created_after={after}&created_before={before}") == {gold_b.id, silver.id}
    assert await ids("?metadata.tier=gold") == {gold_a.id, gold_b.id, live.id}
    assert await ids("?metadata.tier=gold&metadata.vip=true") == {gold_b.id}
    assert await ids("?metadata[tier]=gold&metadata[n]=3") == {gold_a.id}
    assert await ids("?metadata.tier=bronze") == set()
    assert await ids("?status=completed&user_id=u1&metadata.tier=silver") == {silver.id}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?limit=201", "limit"),
        ("?limit=0", "limit"),
        ("?offset=-1", "offset"),
        ("?limit=ten", "limit"),
        ("?status=sleeping", "status"),
        ("?created_after=yesterday", "created_after"),
        ("?created_after=2025-03-01T12:00:00", "created_after"),  # no offset: ambiguous
        ("?agent=support", "agent"),  # a typo is an error, not an ignored filter
        ("?limit=1&limit=2", "limit"),
        ("?metadata.=x", "metadata."),
    ],
)
async def test_list_refuses_bad_parameters(api_sqlite: Api, query: str, field: str) -> None:
    resp = await api_sqlite.client.get(f"/v1/sessions{query}", headers=A)
    assert resp.status == 422
    assert field in errors_of(await resp.json())


async def test_list_page_edges(api_sqlite: Api) -> None:
    created = [await api_sqlite.create() for _ in range(3)]
    newest = [c["id"] for c in reversed(created)]
    ids, body = await list_ids(api_sqlite, "?limit=1")
    assert ids == newest[:1] and (body["limit"], body["offset"], body["total"]) == (1, 0, 3)
    ids, body = await list_ids(api_sqlite, "?limit=200")
    assert ids == newest and body["limit"] == 200
    ids, body = await list_ids(api_sqlite, "?offset=2")
    assert ids == newest[2:]
    ids, body = await list_ids(api_sqlite, "?offset=3")
    assert ids == [] and body["total"] == 3
    ids, body = await list_ids(api_sqlite, "?offset=1000&limit=5")
    assert ids == [] and body["total"] == 3


# -- update ---------------------------------------------------------------------------------------


async def test_patch_merges_metadata_and_sets_fields(api_sqlite: Api) -> None:
    created = await api_sqlite.create(metadata={"tier": "gold", "keep": 1, "drop": "x"})
    url = f"/v1/sessions/{created['id']}"
    resp = await api_sqlite.client.patch(
        url,
        headers=A,
        json={
            "metadata": {"tier": "silver", "drop": None, "new": [1, 2]},
            "name": "renamed",
            "session_label_id": "needs-review",
            "summary": "asked about a refund",
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["metadata"] == {"tier": "silver", "keep": 1, "new": [1, 2]}
    assert (body["name"], body["session_label_id"], body["summary"]) == (
        "renamed",
        "needs-review",
        "asked about a refund",
    )
    assert body["updated_at"] > created["updated_at"]
    assert await (await api_sqlite.client.get(url, headers=A)).json() == body

    resp = await api_sqlite.client.patch(url, headers=A, json={"name": None})
    assert (await resp.json())["name"] is None  # null clears

    resp = await api_sqlite.client.patch(url, headers=A, json={"name": "y" * 41})
    assert resp.status == 422 and errors_of(await resp.json()) == ["name"]
    resp = await api_sqlite.client.patch(url, headers=A, json={"status": "completed"})
    assert resp.status == 422 and errors_of(await resp.json()) == ["status"]


async def test_patch_of_an_archived_session_changes_the_archive(api: Api) -> None:
    created = await api.create(metadata={"tier": "gold"})
    await api.archived(created["id"])
    url = f"/v1/sessions/{created['id']}"
    resp = await api.client.patch(
        url,
        headers=A,
        json={
            "session_label_id": "escalated",
            "metadata": {"reviewed": True},
            "name": "after the fact",
            "summary": "a summary written later",
        },
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "completed"
    assert body["metadata"] == {"tier": "gold", "reviewed": True}
    archived = await api.archive.get(created["id"])
    assert archived is not None
    assert archived.session_label_id == "escalated" and archived.name == "after the fact"
    assert archived.summary == "a summary written later"
    # List filters see the archived change too.
    ids, _ = await list_ids(api, "?metadata.reviewed=true")
    assert ids == [created["id"]]
    assert await (await api.client.get(url, headers=A)).json() == body


async def test_patch_right_after_completion_before_archiving_is_a_conflict(
    api_sqlite: Api,
) -> None:
    created = await api_sqlite.create()
    await api_sqlite.lifecycle.complete(created["id"], EndReason.COMPLETED)
    resp = await api_sqlite.client.patch(
        f"/v1/sessions/{created['id']}", headers=A, json={"session_label_id": "late"}
    )
    assert resp.status == 409
    await api_sqlite.drain()
    resp = await api_sqlite.client.patch(
        f"/v1/sessions/{created['id']}", headers=A, json={"session_label_id": "late"}
    )
    assert resp.status == 200
    assert (await resp.json())["session_label_id"] == "late"
    # The retained live copy does not shadow the archived change.
    got = await (await api_sqlite.client.get(f"/v1/sessions/{created['id']}", headers=A)).json()
    assert got["session_label_id"] == "late"


# -- delete ---------------------------------------------------------------------------------------


async def test_delete_completes_a_live_session_first_and_it_never_comes_back(api: Api) -> None:
    completed: list[CompletedSession] = []
    api.lifecycle.on_complete(completed.append)
    created = await api.create(name="to delete")
    await api.lifecycle.append_message(created["id"], "user", "please forget me")
    url = f"/v1/sessions/{created['id']}"

    resp = await api.client.delete(url, headers=A)
    assert resp.status == 204
    # Completed (canceled), not silently dropped: the completion went out as for any session.
    assert [(r.session.id, r.session.end_reason) for r in completed] == [
        (created["id"], EndReason.CANCELED)
    ]
    assert (await api.client.get(url, headers=A)).status == 404

    # The completion record was still queued for the archive: archiving it later, or again,
    # does not resurrect the session.
    await api.drain()
    await api.archive.upsert(completed)
    assert await api.archive.get(created["id"]) is None
    assert (await api.client.get(url, headers=A)).status == 404
    assert (await api.client.get(f"{url}/history", headers=A)).status == 404
    _, body = await list_ids(api)
    assert body["total"] == 0

    resp = await api.client.delete(url, headers=A)
    assert resp.status == 404


async def test_delete_of_an_archived_session_removes_it_from_the_archive(api: Api) -> None:
    created = await api.create()
    await api.archived(created["id"])
    resp = await api.client.delete(f"/v1/sessions/{created['id']}", headers=A)
    assert resp.status == 204
    assert await api.archive.get(created["id"]) is None
    assert await api.archive.history(created["id"]) == []
    assert (await api.client.delete(f"/v1/sessions/{created['id']}", headers=A)).status == 404


# -- history --------------------------------------------------------------------------------------


async def test_history_pages_through_messages_in_order(api: Api) -> None:
    created = await api.create()
    sid = created["id"]
    roles = ["user", "assistant", "tool", "user", "assistant"]
    for i, role in enumerate(roles):
        await api.lifecycle.append_message(sid, role, f"message {i}", turn_id=i // 2)  # type: ignore[arg-type]

    async def page(query: str) -> dict[str, Any]:
        resp = await api.client.get(f"/v1/sessions/{sid}/history{query}", headers=A)
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body

    full = await page("")
    assert [m["content"] for m in full["data"]] == [f"message {i}" for i in range(5)]
    assert [m["role"] for m in full["data"]] == roles
    stamps = [m["created_at"] for m in full["data"]]
    assert stamps == sorted(stamps) and all(s.endswith("Z") for s in stamps)
    assert (full["limit"], full["offset"], full["total"]) == (100, 0, 5)

    middle = await page("?limit=2&offset=2")
    assert [m["content"] for m in middle["data"]] == ["message 2", "message 3"]
    assert (await page("?offset=5"))["data"] == []

    await api.archived(sid)
    assert (await page("?limit=2&offset=2"))["data"] == middle["data"]
    assert (await page(""))["total"] == 5

    resp = await api.client.get(f"/v1/sessions/{sid}/history?limit=201", headers=A)
    assert resp.status == 422

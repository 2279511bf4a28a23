"""Session-scoped tools and documents over HTTP (tools feed the agent; documents are searched)."""

from __future__ import annotations

from typing import Any

from tests.integration.api.conftest import A, Api

from voice_gateway.sessions.models import EndReason

LOOKUP = {
    "name": "lookup_order",
    "description": "Find an order by its id",
    "parameters": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "pattern": "^[0-9]+$"}},
        "required": ["order_id"],
    },
}


async def test_tools_can_be_added_listed_and_removed(api: Api) -> None:
    created = await api.create()
    url = f"/v1/sessions/{created['id']}/tools"

    resp = await api.client.post(url, headers=A, json=LOOKUP)
    assert resp.status == 201
    assert await resp.json() == LOOKUP
    resp = await api.client.post(url, headers=A, json={"name": "hang_up"})
    assert resp.status == 201

    listed = await (await api.client.get(url, headers=A)).json()
    assert [t["name"] for t in listed["data"]] == ["lookup_order", "hang_up"]
    assert listed["data"][1]["parameters"] == {"type": "object", "properties": {}}
    # What the agent gets: the session's tools.
    session = await api.lifecycle.get(created["id"])
    assert [t.name for t in session.tools] == ["lookup_order", "hang_up"]

    resp = await api.client.delete(f"{url}/lookup_order", headers=A)
    assert resp.status == 204
    listed = await (await api.client.get(url, headers=A)).json()
    assert [t["name"] for t in listed["data"]] == ["hang_up"]
    resp = await api.client.delete(f"{url}/lookup_order", headers=A)
    assert resp.status == 404


async def test_a_duplicate_tool_name_is_a_conflict(api_sqlite: Api) -> None:
    created = await api_sqlite.create(tools=[LOOKUP])
    url = f"/v1/sessions/{created['id']}/tools"
    resp = await api_sqlite.client.post(url, headers=A, json={**LOOKUP, "description": "again"})
    assert resp.status == 409
    listed = await (await api_sqlite.client.get(url, headers=A)).json()
    assert listed["data"] == [LOOKUP]


async def test_a_tool_whose_parameters_are_not_a_json_schema_is_refused(
    api_sqlite: Api,
) -> None:
    created = await api_sqlite.create()
    url = f"/v1/sessions/{created['id']}/tools"
    for parameters in (
        {"type": "objekt"},
        {"type": "object", "properties": {"x": {"minLength": -1}}},
        {"type": "object", "required": "order_id"},
    ):
        resp = await api_sqlite.client.post(
            url, headers=A, json={"name": "bad", "parameters": parameters}
        )
        assert resp.status == 422
        body = await resp.json()
        assert [e["field"] for e in body["error"]["details"]["errors"]] == ["parameters"]
    resp = await api_sqlite.client.post(url, headers=A, json={"name": "has space"})
    assert resp.status == 422
    assert (await api_sqlite.client.get(url, headers=A)).status == 200
    assert (await (await api_sqlite.client.get(url, headers=A)).json())["data"] == []


async def test_a_completed_session_takes_no_tool_changes_but_still_lists_them(api: Api) -> None:
    created = await api.create(tools=[LOOKUP])
    url = f"/v1/sessions/{created['id']}/tools"
    await api.lifecycle.complete(created["id"], EndReason.COMPLETED)
    assert (await api.client.post(url, headers=A, json={"name": "late"})).status == 409
    assert (await api.client.delete(f"{url}/lookup_order", headers=A)).status == 409
    await api.archived(created["id"])
    assert (await api.client.post(url, headers=A, json={"name": "late"})).status == 409
    listed = await (await api.client.get(url, headers=A)).json()
    assert listed["data"] == [LOOKUP]


async def add_doc(api: Api, sid: str, title: str, content: str, **metadata: Any) -> dict[str, Any]:
    resp = await api.client.post(
        f"/v1/sessions/{sid}/documents",
        headers=A,
        json={"title": title, "content": content, "metadata": metadata},
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def search(api: Api, sid: str, query: str) -> list[dict[str, Any]]:
    resp = await api.client.get(f"/v1/sessions/{sid}/documents/search{query}", headers=A)
    assert resp.status == 200, await resp.text()
    data: list[dict[str, Any]] = (await resp.json())["data"]
    return data


async def test_documents_are_stored_and_searched_best_first(api_sqlite: Api) -> None:
    created = await api_sqlite.create()
    sid = created["id"]
    refund = await add_doc(
        api_sqlite,
        sid,
        "Refund policy",
        "Refunds are issued within 14 days of a return. A refund needs the receipt.",
        lang="en",
        kind="policy",
    )
    assert set(refund) == {"id", "title", "content", "metadata", "created_at"}
    assert refund["metadata"] == {"lang": "en", "kind": "policy"}
    shipping = await add_doc(
        api_sqlite,
        sid,
        "Shipping",
        "Orders ship within 2 days. Returns go to the warehouse.",
        lang="en",
        kind="faq",
    )
    german = await add_doc(
        api_sqlite, sid, "Rückerstattung", "Eine Refund-Anfrage braucht den Kassenbon.", lang="de"
    )

    hits = await search(api_sqlite, sid, "?query=refund%20receipt")
    assert [h["document"]["id"] for h in hits] == [refund["id"], german["id"]]
    assert hits[0]["score"] > hits[1]["score"] > 0
    assert hits[0]["document"] == refund

    hits = await search(api_sqlite, sid, "?query=refund&metadata.lang=de")
    assert [h["document"]["id"] for h in hits] == [german["id"]]
    hits = await search(api_sqlite, sid, "?query=returns&metadata[kind]=faq")
    assert [h["document"]["id"] for h in hits] == [shipping["id"]]
    hits = await search(api_sqlite, sid, "?query=refund%20returns&limit=1")
    assert len(hits) == 1
    assert await search(api_sqlite, sid, "?query=helicopter") == []

    for bad in ("", "?query=", "?query=x&limit=0", "?query=x&limit=101", "?query=x&lang=en"):
        resp = await api_sqlite.client.get(f"/v1/sessions/{sid}/documents/search{bad}", headers=A)
        assert resp.status == 422, bad


async def test_a_document_needs_a_title_and_content(api_sqlite: Api) -> None:
    created = await api_sqlite.create()
    resp = await api_sqlite.client.post(
        f"/v1/sessions/{created['id']}/documents", headers=A, json={"title": "no content"}
    )
    assert resp.status == 422
    fields = [e["field"] for e in (await resp.json())["error"]["details"]["errors"]]
    assert fields == ["content"]


async def test_a_completed_session_takes_no_documents(api_sqlite: Api) -> None:
    created = await api_sqlite.create()
    await add_doc(api_sqlite, created["id"], "Hours", "Open 9 to 5")
    await api_sqlite.lifecycle.complete(created["id"], EndReason.COMPLETED)
    resp = await api_sqlite.client.post(
        f"/v1/sessions/{created['id']}/documents",
        headers=A,
        json={"title": "late", "content": "too late"},
    )
    assert resp.status == 409
    # Still searchable while the completed session is retained.
    hits = await search(api_sqlite, created["id"], "?query=open")
    assert [h["document"]["title"] for h in hits] == ["Hours"]

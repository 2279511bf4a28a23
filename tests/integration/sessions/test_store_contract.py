"""One contract, two stores: the in-memory store and Redis (the real server) behave alike."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from tests.conftest import REDIS_URL, delete_prefix
from tests.tcp_proxy import TcpProxy

from voice_gateway.errors import AlreadyCompleted, SessionNotFound, StoreUnavailable
from voice_gateway.sessions.keys import bucket_of, mint_session_id
from voice_gateway.sessions.lifecycle import Lifecycle
from voice_gateway.sessions.models import (
    Channel,
    Customer,
    EndReason,
    Session,
    SessionStatus,
    StreamInfo,
    Tool,
    utcnow,
)
from voice_gateway.sessions.redis_store import RedisSessionStore
from voice_gateway.sessions.store import SessionStore


def call_session(call_sid: str = "CA" + "1" * 32, **extra: object) -> Session:
    return Session(
        id=mint_session_id(call_sid),
        agent_id="echo",
        agent_name="Echo",
        org_id="acme",
        channel=Channel(service="twilio", type="voice", sid=call_sid),
        customer=Customer(number="+14155550100"),
        source="+14155550100",
        target="+18005550199",
        metadata={"tier": "gold", "n": 3},
        tools=[Tool(name="lookup", description="find an order")],
        **extra,  # type: ignore[arg-type]
    )


async def test_create_then_get_returns_the_same_session(store: SessionStore) -> None:
    session = call_session(name="first call", is_test=True)
    _, created = await store.create(session, call_sid=session.channel.sid)
    assert created
    got = await store.get(session.id)
    assert got == session
    assert got is not None and got.created_at.utcoffset() == timedelta(0)


async def test_create_for_a_known_call_sid_returns_the_first_session(store: SessionStore) -> None:
    first = call_session()
    await store.create(first, call_sid=first.channel.sid)
    again, created = await store.create(call_session(), call_sid=first.channel.sid)
    assert not created
    assert again.id == first.id
    by_sid = await store.get_by_call_sid(first.channel.sid or "")
    assert by_sid is not None and by_sid.id == first.id
    assert await store.get_by_call_sid("CA-unknown") is None


async def test_update_sets_fields_and_validates(store: SessionStore) -> None:
    session = call_session()
    await store.create(session)
    later = utcnow() + timedelta(seconds=5)
    updated = await store.update(
        session.id,
        {"summary": "wants a refund", "metadata": {"tier": "silver"}, "name": "x" * 40},
        later,
    )
    assert updated.summary == "wants a refund"
    assert updated.metadata == {"tier": "silver"}
    assert updated.updated_at >= later - timedelta(milliseconds=1)
    with pytest.raises(ValueError):
        await store.update(session.id, {"name": "x" * 41}, utcnow())
    with pytest.raises(ValueError):
        await store.update(session.id, {"no_such_field": 1}, utcnow())
    with pytest.raises(SessionNotFound):
        await store.update("00000000-0000-4000-8000-000000000000", {"summary": "x"}, utcnow())
    stream = StreamInfo(stream_sid="MZ1", started_at=utcnow(), frames_in=10)
    got = await store.update(session.id, {"stream": stream}, utcnow())
    assert got.stream == stream


async def test_counters_and_history(store: SessionStore) -> None:
    lc = Lifecycle(store)
    session = call_session()
    await lc.open(session)
    await lc.count(session.id, turns=2, interruptions=1)
    for i in range(5):
        await lc.append_message(
            session.id, "user" if i % 2 == 0 else "assistant", f"m{i}", turn_id=i
        )
    history = await lc.history(session.id, offset=1, limit=3)
    assert [m.content for m in history] == ["m1", "m2", "m3"]
    assert [m.role for m in history] == ["assistant", "user", "assistant"]
    got = await lc.get(session.id)
    assert (got.turns, got.interruptions, got.message_count) == (2, 1, 5)
    assert await lc.history(session.id, offset=10) == []


async def test_history_and_counters_are_written_in_one_step(store: SessionStore) -> None:
    """A turn's flush: its messages and its counters land together, or not at all."""
    lc = Lifecycle(store)
    session = call_session()
    await lc.open(session)
    turn = [lc.message("user", "hello", turn_id=1), lc.message("assistant", "hi", turn_id=1)]
    assert await lc.append_messages(session.id, turn, {"turns": 1, "interruptions": 1}) == 2
    assert await lc.append_messages(session.id, [], {"turns": 1}) == 2  # counters alone
    got = await lc.get(session.id)
    assert (got.turns, got.interruptions, got.message_count) == (2, 1, 2)
    assert [m.content for m in await lc.history(session.id)] == ["hello", "hi"]

    with pytest.raises(ValueError, match="not counters"):
        await lc.append_messages(session.id, [lc.message("user", "lost")], {"summary": 1})
    got = await lc.get(session.id)
    assert (got.turns, got.message_count) == (2, 2)  # nothing of the refused flush

    await lc.complete(session.id, EndReason.COMPLETED)
    with pytest.raises(AlreadyCompleted):
        await lc.append_messages(session.id, [lc.message("user", "late")], {"turns": 1})


async def test_complete_is_exactly_once_under_a_race(store: SessionStore) -> None:
    lc = Lifecycle(store)
    completed: list[str] = []
    lc.on_complete(lambda rec: completed.append(rec.session.id))
    session = call_session()
    await lc.open(session)
    await lc.append_message(session.id, "user", "hello")
    results = await asyncio.gather(
        *(lc.complete(session.id, EndReason.COMPLETED, duration=13) for _ in range(50)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, AlreadyCompleted)]
    assert len(winners) == 1 and len(losers) == 49
    record = winners[0]
    assert record.session.status is SessionStatus.COMPLETED
    assert record.session.end_reason is EndReason.COMPLETED
    assert record.session.duration == 13.0
    assert [m.content for m in record.messages] == ["hello"]
    assert completed == [session.id]
    assert await store.completed_backlog() == (1, 0)
    # still readable, as completed, until the retention runs out
    got = await lc.get(session.id)
    assert got.status is SessionStatus.COMPLETED and got.ended_at is not None
    # a completed session takes no more writes
    with pytest.raises(AlreadyCompleted):
        await lc.append_message(session.id, "user", "late")
    with pytest.raises(AlreadyCompleted):
        await lc.update(session.id, summary="late")


async def test_complete_measures_duration_when_none_is_given(store: SessionStore) -> None:
    session = call_session()
    await store.create(session)
    record = await store.complete(
        session.id, EndReason.HANGUP_BY_AGENT, session.created_at + timedelta(seconds=42.5)
    )
    assert record is not None
    assert record.session.duration == pytest.approx(42.5, abs=0.01)
    assert record.session.end_reason is EndReason.HANGUP_BY_AGENT
    with pytest.raises(SessionNotFound):
        await store.complete("00000000-0000-4000-8000-000000000000", EndReason.COMPLETED, utcnow())


async def test_an_ending_reason_wins_whoever_completes(store: SessionStore) -> None:
    """The gateway marks how it is ending a call before it hangs up; the status callback (or a
    sweeper) that gets there first completes the session with that reason, once."""
    lc = Lifecycle(store)
    callback_first, swept = call_session("CA" + "4" * 32), call_session("CA" + "5" * 32)
    for session in (callback_first, swept):
        await lc.open(session)
        await lc.mark_ending(session.id, EndReason.HANGUP_BY_AGENT)
    record = await lc.complete(callback_first.id, EndReason.COMPLETED, duration=7)
    assert record.session.end_reason is EndReason.HANGUP_BY_AGENT
    assert record.session.duration == 7.0  # Twilio's duration still counts
    with pytest.raises(AlreadyCompleted):
        await lc.complete(callback_first.id, EndReason.HANGUP_BY_AGENT)
    await lc.set_deadline(swept.id, -1, EndReason.COMPLETED)  # it beats an expiry reason too
    assert await lc.sweep() == [swept.id]
    assert (await lc.get(swept.id)).end_reason is EndReason.HANGUP_BY_AGENT
    with pytest.raises(AlreadyCompleted):
        await lc.mark_ending(swept.id, EndReason.ERROR)
    with pytest.raises(SessionNotFound):
        await lc.mark_ending("00000000-0000-4000-8000-000000000000", EndReason.ERROR)


async def test_deadline_index_finds_outlived_sessions_and_touch_extends(
    store: SessionStore,
) -> None:
    lc = Lifecycle(store)
    short = call_session("CA" + "2" * 32, expiration_seconds=60)
    long = call_session("CA" + "3" * 32, expiration_seconds=3600)
    await lc.open(short)
    await lc.open(long)
    soon = utcnow() + timedelta(seconds=120)
    assert await store.expired_sessions(soon) == [short.id]
    await store.touch(short.id, utcnow() + timedelta(seconds=100))
    assert await store.expired_sessions(soon) == []
    later = utcnow() + timedelta(seconds=200)
    assert await store.expired_sessions(later) == [short.id]
    assert await store.count_active() == 2
    assert sorted(await store.active_session_ids()) == sorted([short.id, long.id])


async def test_sweep_completes_expired_sessions_once(store: SessionStore) -> None:
    now = utcnow()
    lc = Lifecycle(store, clock=lambda: now + timedelta(seconds=120))
    session = call_session(expiration_seconds=60)
    session.created_at = now
    await store.create(session)
    assert await lc.sweep() == [session.id]
    assert await lc.sweep() == []
    got = await lc.get(session.id)
    assert got.end_reason is EndReason.EXPIRED
    assert got.duration == pytest.approx(120, abs=0.01)
    assert await store.count_active() == 0


async def test_delete_removes_session_history_and_call_index(store: SessionStore) -> None:
    session = call_session()
    await store.create(session, call_sid=session.channel.sid)
    await store.append_messages(session.id, [Lifecycle(store).message("user", "hi")], utcnow())
    await store.put_document(session.id, "d1", {"id": "d1", "title": "T", "content": "C"})
    assert await store.delete(session.id)
    assert await store.get(session.id) is None
    assert await store.get_by_call_sid(session.channel.sid or "") is None
    assert await store.get_messages(session.id) == []
    assert await store.get_documents(session.id) == []
    assert not await store.delete(session.id)
    assert await store.count_active() == 0


async def test_completed_queue_delivers_once_and_reclaims_from_a_dead_consumer(
    store: SessionStore,
) -> None:
    lc = Lifecycle(store)
    ids = []
    for i in range(3):
        s = call_session("CA" + str(i) * 32)
        await lc.open(s)
        await lc.complete(s.id, EndReason.COMPLETED)
        ids.append(s.id)
    first = await store.read_completed("a", count=10, block_ms=100)
    assert sorted(e.record.session.id for e in first) == sorted(ids)
    assert await store.read_completed("b", count=10, block_ms=100) == []  # not redelivered
    assert await store.completed_backlog() == (3, 3)
    await asyncio.sleep(0.05)
    # consumer "a" died without acking: "b" takes the entries over
    claimed = await store.claim_completed("b", min_idle_ms=10, count=10)
    assert sorted(e.record.session.id for e in claimed) == sorted(ids)
    await store.ack_completed([e.entry_id for e in claimed])
    assert await store.completed_backlog() == (0, 0)
    assert await store.claim_completed("c", min_idle_ms=0) == []


async def test_documents_belong_to_an_active_session(store: SessionStore) -> None:
    session = call_session()
    await store.create(session)
    await store.put_document(session.id, "d2", {"id": "d2", "created_at": "2", "title": "b"})
    await store.put_document(session.id, "d1", {"id": "d1", "created_at": "1", "title": "a"})
    assert [d["id"] for d in await store.get_documents(session.id)] == ["d1", "d2"]
    await store.complete(session.id, EndReason.COMPLETED, utcnow())
    with pytest.raises(AlreadyCompleted):
        await store.put_document(session.id, "d3", {"id": "d3"})


# -- Redis-only properties -------------------------------------------------------------------


async def test_every_redis_key_has_a_ttl_and_a_session_lives_in_one_slot(
    redis_store: RedisSessionStore, redis_prefix: str
) -> None:
    lc = Lifecycle(redis_store)
    session = call_session(expiration_seconds=600)
    await lc.open(session, call_sid=session.channel.sid)
    await lc.append_message(session.id, "user", "hi")
    await redis_store.put_document(session.id, "d", {"id": "d"})
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
        assert len(keys) == 5  # session, msgs, docs, call index, deadlines
        assert len({key_slot(k.encode()) for k in keys}) == 1
        for key in keys:
            ttl = await client.ttl(key)
            assert 0 < ttl <= 600 + 300 or key.endswith("deadlines"), (key, ttl)
            assert ttl > 0, key
        await lc.complete(session.id, EndReason.COMPLETED)
        keys = [k async for k in client.scan_iter(match=f"{redis_prefix}*")]
        assert any(k.endswith(":completed") for k in keys)
        for key in keys:
            assert await client.ttl(key) > 0, key
        assert await client.ttl(redis_store.keys.session(session.id)) <= 3600
    finally:
        await client.aclose()
    assert bucket_of(session.id) == bucket_of(session.channel.sid or "")


async def test_two_instances_racing_complete_make_one_record(redis_prefix: str) -> None:
    a = RedisSessionStore.from_url(REDIS_URL, prefix=redis_prefix)
    b = RedisSessionStore.from_url(REDIS_URL, prefix=redis_prefix)
    try:
        session = call_session()
        await a.create(session)
        results = await asyncio.gather(
            *(s.complete(session.id, EndReason.COMPLETED, utcnow()) for s in [a, b] * 20)
        )
        assert sum(r is not None for r in results) == 1
        assert await a.completed_backlog() == (1, 0)
    finally:
        await a.close()
        await b.close()


async def test_unreachable_redis_is_store_unavailable() -> None:
    dead = RedisSessionStore.from_url("redis://127.0.0.1:1/0", prefix="dead:")
    try:
        with pytest.raises(StoreUnavailable):
            await dead.ping()
        with pytest.raises(StoreUnavailable):
            await dead.create(call_session())
    finally:
        await dead.close()


async def test_a_second_live_stream_is_refused(store: SessionStore) -> None:
    lc = Lifecycle(store)
    session = call_session()
    await lc.open(session)
    first = StreamInfo(stream_sid="MZ1", started_at=utcnow())
    assert await lc.claim_stream(session.id, first)
    assert not await lc.claim_stream(session.id, StreamInfo(stream_sid="MZ2", started_at=utcnow()))
    assert (await lc.get(session.id)).stream == first
    # once the first stream ended, a new one may attach (e.g. after a redirect)
    await lc.attach_stream(session.id, first.model_copy(update={"ended_at": utcnow()}))
    assert await lc.claim_stream(session.id, StreamInfo(stream_sid="MZ3", started_at=utcnow()))
    await lc.complete(session.id, EndReason.COMPLETED)
    with pytest.raises(AlreadyCompleted):
        await lc.claim_stream(session.id, StreamInfo(stream_sid="MZ4", started_at=utcnow()))


async def test_a_lease_lets_any_sweeper_end_a_call_with_the_reason_it_was_given(
    store: SessionStore,
) -> None:
    now = utcnow()
    owner = Lifecycle(store, clock=lambda: now)
    session = call_session()
    await owner.open(session)
    # the instance carrying the call holds a 30 s lease; it dies and stops renewing it
    await owner.set_deadline(session.id, 30, EndReason.ERROR)
    other = Lifecycle(store, clock=lambda: now + timedelta(seconds=20))
    assert await other.sweep() == []
    later = Lifecycle(store, clock=lambda: now + timedelta(seconds=31))
    assert await later.sweep() == [session.id]
    got = await later.get(session.id)
    assert got.end_reason is EndReason.ERROR
    # a status callback that arrives afterwards changes nothing
    assert await later.complete_if_active(session.id, EndReason.COMPLETED) is None


async def test_stream_end_grace_completes_as_completed_and_a_status_callback_wins_before(
    store: SessionStore,
) -> None:
    now = utcnow()
    lc = Lifecycle(store, clock=lambda: now)
    a, b = call_session("CA" + "4" * 32), call_session("CA" + "5" * 32)
    for s in (a, b):
        await lc.open(s)
        await lc.set_deadline(s.id, 10, EndReason.COMPLETED)
    await lc.complete(b.id, EndReason.COMPLETED, duration=7)  # b's status callback came in time
    sweeper = Lifecycle(store, clock=lambda: now + timedelta(seconds=11))
    assert await sweeper.sweep() == [a.id]
    assert (await lc.get(a.id)).end_reason is EndReason.COMPLETED
    assert (await lc.get(b.id)).duration == 7.0
    # set_deadline without a reason falls back to plain expiry
    c = call_session("CA" + "6" * 32)
    await lc.open(c)
    await lc.set_deadline(c.id, 10, EndReason.ERROR)
    await lc.set_deadline(c.id, 10)
    assert await sweeper.sweep() == [c.id]
    assert (await lc.get(c.id)).end_reason is EndReason.EXPIRED


def test_minted_ids_are_uuid4_and_land_in_the_call_sids_bucket() -> None:
    import uuid as uuid_mod

    for i in range(200):
        call_sid = f"CA{i:032x}"
        sid = mint_session_id(call_sid)
        parsed = uuid_mod.UUID(sid)
        assert parsed.version == 4 and str(parsed) == sid
        assert bucket_of(sid) == bucket_of(call_sid)
    assert len({mint_session_id("CAx") for _ in range(500)}) == 500


async def test_a_burst_larger_than_the_pool_waits_instead_of_failing(redis_prefix: str) -> None:
    small = RedisSessionStore.from_url(REDIS_URL, prefix=redis_prefix, max_connections=8)
    try:
        sessions = [call_session(f"CA{i:032x}") for i in range(200)]
        await asyncio.gather(*(small.create(s) for s in sessions))
        got = await asyncio.gather(*(small.get(s.id) for s in sessions))
        assert all(g is not None for g in got)
    finally:
        await small.close()


async def test_a_burst_of_calls_and_their_retries_opens_each_call_once(
    store: SessionStore,
) -> None:
    # Webhooks arriving together (on Redis they share pipelines), each call retried while its
    # first attempt is still on the way: one session per call, every attempt gets it.
    calls = [call_session(f"CA{i:032x}") for i in range(40)]
    attempts = [
        (call.channel.sid or "", call if n == 0 else call_session(call.channel.sid or ""))
        for n in range(3)
        for call in calls
    ]
    results = await asyncio.gather(*(store.create(s, call_sid=sid) for sid, s in attempts))
    by_call: dict[str, list[tuple[Session, bool]]] = {}
    for (sid, _), result in zip(attempts, results, strict=True):
        by_call.setdefault(sid, []).append(result)
    for call in calls:
        got = by_call[call.channel.sid or ""]
        assert sum(created for _, created in got) == 1
        assert len({s.id for s, _ in got}) == 1
        stored = await store.get(got[0][0].id)
        assert stored is not None and all(s == stored for s, _ in got)
        assert (await store.get_by_call_sid(call.channel.sid or "")) == stored
    assert await store.count_active() == len(calls)


async def test_a_retried_webhook_gets_the_session_as_it_is_now(store: SessionStore) -> None:
    lc = Lifecycle(store)
    first = call_session()
    await lc.open(first, call_sid=first.channel.sid)
    await lc.set_summary(first.id, "said hello")
    again, created = await lc.open(call_session(), call_sid=first.channel.sid)
    assert not created
    assert again == await lc.get(first.id)
    assert again.summary == "said hello"


async def test_a_call_index_that_outlived_its_session_opens_a_new_one(
    redis_store: RedisSessionStore,
) -> None:
    first = call_session()
    await redis_store.create(first, call_sid=first.channel.sid)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.delete(redis_store.keys.session(first.id))  # expired before its index
    finally:
        await client.aclose()
    second = call_session()
    got, created = await redis_store.create(second, call_sid=second.channel.sid)
    assert created and got == second
    assert await redis_store.get_by_call_sid(second.channel.sid or "") == second


async def test_session_fields_in_redis_are_one_json_text_each(
    redis_store: RedisSessionStore,
) -> None:
    # The layout every reader (and every script) relies on: one compact JSON value per field,
    # the store's own fields prefixed with "_".
    session = call_session(name="Zoë", summary='said "hi" \\ ☎', duration=0.5)
    await redis_store.create(session, call_sid=session.channel.sid)
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        raw = await client.hgetall(redis_store.keys.session(session.id))
    finally:
        await client.aclose()
    encode = json.JSONEncoder(separators=(",", ":")).encode
    assert {k: v for k, v in raw.items() if not k.startswith("_")} == {
        k: encode(v) for k, v in session.model_dump(mode="json").items()
    }
    assert raw["_call_key"] == redis_store.keys.call(session.channel.sid or "")
    assert float(raw["_created_ts"]) == session.created_at.timestamp()


async def test_opens_reload_the_script_after_the_script_cache_is_flushed(
    redis_cluster_url: str, redis_prefix: str
) -> None:
    # A restarted or failed-over Redis has lost its scripts: one open alone (one EVALSHA)
    # and a burst (one pipeline) both load it again. A private cluster, so no other test's
    # scripts are flushed.
    store = RedisSessionStore.from_url(redis_cluster_url, prefix=redis_prefix)
    admin = RedisCluster.from_url("redis://" + redis_cluster_url.removeprefix("redis+cluster://"))
    try:
        lone = call_session("CA" + "a" * 32)
        assert (await store.create(lone, call_sid=lone.channel.sid))[1]
        await admin.script_flush()
        again = call_session("CA" + "b" * 32)
        assert (await store.create(again, call_sid=again.channel.sid))[1]
        await admin.script_flush()
        burst = [call_session(f"CA{i:032x}") for i in range(20)]
        results = await asyncio.gather(*(store.create(s, call_sid=s.channel.sid) for s in burst))
        assert all(created for _, created in results)
        for s in burst:
            assert await store.get(s.id) == s
    finally:
        await admin.aclose()
        await store.close()


async def test_opens_reconnect_after_a_cut_and_time_out_on_a_stuck_redis(
    redis_prefix: str,
) -> None:
    # Opens go over connections of their own (not the pool's): a cut one is replaced on the
    # next open, and a Redis that does not answer is StoreUnavailable within socket_timeout.
    target = urlsplit(REDIS_URL)
    proxy = await TcpProxy(target.port or 6379, target.hostname or "127.0.0.1").start()
    pool = aioredis.BlockingConnectionPool.from_url(
        f"redis://127.0.0.1:{proxy.port}{target.path}",
        decode_responses=True,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
    )
    store = RedisSessionStore(aioredis.Redis(connection_pool=pool), prefix=redis_prefix)
    try:
        first = call_session("CA" + "c" * 32)
        assert (await store.create(first, call_sid=first.channel.sid))[1]
        await proxy.stop()  # cuts every connection; the port listens again below
        await proxy.start()
        second = call_session("CA" + "d" * 32)
        assert (await store.create(second, call_sid=second.channel.sid))[1]
        proxy.delay = 2.0
        with pytest.raises(StoreUnavailable):
            stuck = call_session("CA" + "e" * 32)
            await store.create(stuck, call_sid=stuck.channel.sid)
        proxy.delay = 0.0
        third = call_session("CA" + "f" * 32)
        assert (await store.create(third, call_sid=third.channel.sid))[1]
        for s in (first, second, third):
            assert await store.get(s.id) == s
        await proxy.stop()
        with pytest.raises(StoreUnavailable):
            await store.create(call_session("CA" + "0" * 32), call_sid="CA" + "0" * 32)
    finally:
        await store.close()
        await proxy.stop()
        await delete_prefix(redis_prefix)


async def test_a_closed_redis_store_opens_nothing(redis_prefix: str) -> None:
    store = RedisSessionStore.from_url(REDIS_URL, prefix=redis_prefix)
    session = call_session()
    assert (await store.create(session, call_sid=session.channel.sid))[1]
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.create(call_session("CA" + "9" * 32), call_sid="CA" + "9" * 32)
    await delete_prefix(redis_prefix)

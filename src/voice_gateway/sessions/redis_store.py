"""Redis implementation of ``SessionStore`` (redis-py asyncio; standalone or Cluster).

Key layout: ``keys.py``. Atomic steps: ``scripts.py``. Redis errors become ``StoreUnavailable``
here, at the boundary.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from voice_gateway.errors import AlreadyCompleted, SessionNotFound, StoreUnavailable
from voice_gateway.sessions import scripts
from voice_gateway.sessions.keys import BUCKETS, Keys, bucket_of
from voice_gateway.sessions.models import (
    CompletedSession,
    EndReason,
    Message,
    Session,
    StreamInfo,
    rfc3339,
)
from voice_gateway.sessions.store import (
    COUNTER_FIELDS,
    CompletedEntry,
    SessionStore,
    dump_update,
    session_from_fields,
    session_to_fields,
)

log = logging.getLogger(__name__)

GROUP = "archivers"
#: On a cluster the archiver polls the buckets (a blocking read cannot span slots).
CLUSTER_POLL_MS = 200
#: How long the completed stream and deadline sets live without writes (they are refreshed by
#: every write; entries leave the stream once archived).
INDEX_TTL = 30 * 86400

RedisClient = aioredis.Redis | RedisCluster


#: One script call: its keys and its arguments.
_ScriptCall = tuple[list[str], list[Any]]
Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Sends calls made while others are on their way in one go.

    A call is sent at the next turn of the event loop together with every call made until
    then; while ``max_in_flight`` batches are out, new calls wait and leave together as soon
    as one comes back. Under light load every call goes alone, as soon as it is made; under
    heavy load the batches grow with it, and so does what each costs less.

    ``send`` gets the items and returns one result per item, in order: a result, or an
    exception for that item alone. If ``send`` raises, every call of its batch raises that.
    """

    def __init__(
        self,
        send: Callable[[Sequence[Item]], Awaitable[list[Result | BaseException]]],
        *,
        max_in_flight: int = 2,
        max_batch: int = 128,
    ) -> None:
        self._send = send
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._in_flight += 1
            task = loop.create_task(self._run(batch, loop))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, batch: list[tuple[Item, asyncio.Future[Result]]], loop: asyncio.AbstractEventLoop
    ) -> None:
        try:
            results: list[Result | BaseException] = await self._send([i for i, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except asyncio.CancelledError:  # the loop is closing: so are the callers
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            results = [exc] * len(batch)
        finally:
            self._in_flight -= 1
            if self._queue:
                self._schedule(loop)
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class _Lanes:
    """Connections of the batcher's own (one per batch in flight) to a single Redis server.

    A batch is written in one go and its replies read back in order, under one timeout for the
    whole batch (the pool's ``socket_timeout``), instead of redis-py's per-command path (a pool
    checkout with a readiness probe, a retry wrapper, and a task per write for its timeout)."""

    def __init__(self, pool: aioredis.ConnectionPool) -> None:
        kwargs = dict(pool.connection_kwargs)
        self._timeout: float = kwargs.get("socket_timeout") or 5.0
        kwargs["socket_timeout"] = None  # the batch's timeout covers writes and reads
        self._make = functools.partial(pool.connection_class, **kwargs)
        self._free: list[Any] = []
        self._all: list[Any] = []
        self.closed = False

    def take(self) -> Any:
        if self.closed:
            raise redis_errors.ConnectionError("the session store is closed")
        if self._free:
            return self._free.pop()
        conn = self._make()
        self._all.append(conn)
        return conn

    def give(self, conn: Any) -> None:
        if not self.closed:
            self._free.append(conn)

    async def run(self, conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` and read a reply (or the error it is) for each."""
        results: list[Any] = []
        try:
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                for _ in commands:
                    try:
                        results.append(await conn.read_response(timeout=math.inf))
                    except redis_errors.ResponseError as exc:  # that command's own error
                        results.append(exc)
        except TimeoutError:
            await conn.disconnect()  # replies may still come: this connection is done
            raise redis_errors.TimeoutError(f"no reply from Redis in {self._timeout}s") from None
        return results

    async def close(self) -> None:
        self.closed = True
        for conn in self._all:
            await conn.disconnect()
        self._all.clear()
        self._free.clear()


def _counter_args(counters: Mapping[str, int]) -> list[Any]:
    """``name, amount, ...`` for the scripts; ValueError for a field that is not a counter."""
    bad = set(counters) - COUNTER_FIELDS
    if bad:
        raise ValueError(f"not counters: {sorted(bad)}")
    args: list[Any] = []
    for name, amount in counters.items():
        args += [name, int(amount)]
    return args


def _status_check(code: int, session_id: str) -> None:
    if code == -1:
        raise SessionNotFound(session_id)
    if code == 0:
        raise AlreadyCompleted(session_id)


@asynccontextmanager
async def _guard(what: str) -> AsyncIterator[None]:
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable during {what}: {exc}") from exc
    except redis_errors.ClusterDownError as exc:
        raise StoreUnavailable(f"redis cluster down during {what}: {exc}") from exc


class RedisSessionStore(SessionStore):
    shared = True

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "vg:",
        expiry_grace: int = 300,
        completed_retention: int = 3600,
    ) -> None:
        # redis-py's annotations do not follow decode_responses; values here are str.
        self._r: Any = client
        self.keys = Keys(prefix)
        self._grace = expiry_grace
        self._retention = completed_retention
        self._cluster = isinstance(client, RedisCluster)
        self._lanes = None if isinstance(client, RedisCluster) else _Lanes(client.connection_pool)
        self._open = client.register_script(scripts.OPEN)
        self._update = client.register_script(scripts.UPDATE)
        self._increment = client.register_script(scripts.INCREMENT)
        self._touch = client.register_script(scripts.TOUCH)
        self._append = client.register_script(scripts.APPEND)
        self._put_child = client.register_script(scripts.PUT_CHILD)
        self._complete = client.register_script(scripts.COMPLETE)
        self._delete = client.register_script(scripts.DELETE)
        self._ack = client.register_script(scripts.ACK)
        self._claim_stream = client.register_script(scripts.CLAIM_STREAM)
        self._set_deadline = client.register_script(scripts.SET_DEADLINE)
        self._mark_ending = client.register_script(scripts.MARK_ENDING)
        self._groups_ready: set[str] = set()
        #: Opens made together (webhooks arriving at once) leave in one write.
        self._opens: Batcher[_ScriptCall, Any] = Batcher(self._send_opens)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "vg:",
        expiry_grace: int = 300,
        completed_retention: int = 3600,
        max_connections: int = 256,
    ) -> RedisSessionStore:
        """``redis://`` or ``rediss://`` for one server; ``redis+cluster://`` for a cluster.

        Connections come from a bounded pool; when all are busy a command waits for one (up
        to the socket timeout) instead of failing, so a burst of calls queues briefly."""
        common: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 2.0,
            "health_check_interval": 30,
        }
        client: RedisClient
        if url.startswith("redis+cluster://"):
            client = RedisCluster.from_url(
                "redis://" + url.removeprefix("redis+cluster://"),
                max_connections=max_connections,
                **common,
            )
        else:
            # A connection idle in the pool across a Redis restart is dead; the first command
            # on it fails with "Connection closed by server" (redis-py's pools get no retry by
            # default). Retry such a command once, on a fresh connection.
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=common["socket_timeout"],
                retry=Retry(NoBackoff(), 1),
                retry_on_error=[redis_errors.ConnectionError],
                **common,
            )
            client = aioredis.Redis(connection_pool=pool)
        return cls(
            client,
            prefix=prefix,
            expiry_grace=expiry_grace,
            completed_retention=completed_retention,
        )

    # -- helpers ------------------------------------------------------------------------

    def _ttl(self, session: Session) -> int:
        return session.expiration_seconds + self._grace

    async def _fields(self, session_id: str) -> dict[str, str]:
        async with _guard("read"):
            raw: dict[str, str] = await self._r.hgetall(self.keys.session(session_id))
        return raw

    # -- sessions -----------------------------------------------------------------------

    async def create(
        self, session: Session, *, call_sid: str | None = None
    ) -> tuple[Session, bool]:
        fields = session_to_fields(session)
        fields["_created_ts"] = repr(session.created_at.timestamp())
        keys = [self.keys.session(session.id), self.keys.deadlines_of(session.id)]
        if call_sid is not None:
            if bucket_of(call_sid) != bucket_of(session.id):
                raise ValueError("a call's session id must be minted in the CallSid's bucket")
            keys.append(self.keys.call(call_sid))
            fields["_call_key"] = keys[2]
        deadline = session.created_at.timestamp() + session.expiration_seconds
        # The fields travel as one JSON document (the script decodes it): packing ~70 separate
        # arguments cost more than the rest of the call.
        args = [
            session.id,
            self._ttl(session),
            repr(deadline),
            orjson.dumps([item for pair in fields.items() for item in pair]),
            self.keys.session_prefix_of(session.id),
        ]
        async with _guard("create"):
            result = await self._opens.call((keys, args))
        code = int(result[0])
        if code == 1:
            return session, True
        if code == -1:
            raise ValueError(f"session id {session.id} already exists")
        # A retried webhook: the script read the call's session in the same step.
        flat: list[str] = result[2]
        return session_from_fields(dict(zip(flat[::2], flat[1::2], strict=True))), False

    async def _send_opens(self, calls: Sequence[_ScriptCall]) -> list[Any]:
        """Run OPEN for each call, sent together: on one server over a connection of the
        batcher's own, on a cluster alone as one EVALSHA or several as one pipeline. Per call,
        redis-py's client path (pool, retries, a timeout task per write) cost several times
        what sending and reading the script's reply does. A result or an exception per call."""
        run = self._lane_evalsha if self._lanes is not None else self._client_evalsha
        results = await run(self._open, calls)
        again = [i for i, r in enumerate(results) if isinstance(r, redis_errors.NoScriptError)]
        if again:  # a restarted or failed-over Redis lost its scripts: load it, redo those
            self._open.sha = await self._r.script_load(self._open.script)
            redone = await run(self._open, [calls[i] for i in again])
            for i, r in zip(again, redone, strict=True):
                results[i] = r
        return results

    async def _lane_evalsha(self, script: Any, calls: Sequence[_ScriptCall]) -> list[Any]:
        assert self._lanes is not None
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        conn = self._lanes.take()
        try:
            try:
                return await self._lanes.run(conn, commands)
            except redis_errors.ConnectionError:
                # Like the pool's one retry: a connection idle across a Redis restart fails its
                # first command. Once more on a fresh connection (a repeated OPEN for a call finds
                # the session the first one made); not once the store is closing.
                await conn.disconnect()
                if self._lanes.closed:
                    raise
                return await self._lanes.run(conn, commands)
        finally:
            self._lanes.give(conn)

    async def _client_evalsha(self, script: Any, calls: Sequence[_ScriptCall]) -> list[Any]:
        if len(calls) == 1:
            keys, args = calls[0]
            try:
                return [await self._r.evalsha(script.sha, len(keys), *keys, *args)]
            except redis_errors.ResponseError as exc:  # that call's error
                return [exc]
        async with self._r.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        return results

    async def get(self, session_id: str) -> Session | None:
        raw = await self._fields(session_id)
        return session_from_fields(raw) if raw else None

    async def get_by_call_sid(self, call_sid: str) -> Session | None:
        async with _guard("read"):
            sid = await self._r.get(self.keys.call(call_sid))
        return await self.get(sid) if sid else None

    async def update(self, session_id: str, fields: Mapping[str, Any], now: datetime) -> Session:
        encoded = dump_update(fields)
        args: list[Any] = [json.dumps(rfc3339(now))]
        for k, v in encoded.items():
            args += [k, v]
        async with _guard("update"):
            code = await self._update(keys=[self.keys.session(session_id)], args=args)
        _status_check(int(code), session_id)
        session = await self.get(session_id)
        if session is None:
            raise SessionNotFound(session_id)
        return session

    async def claim_stream(self, session_id: str, stream: StreamInfo, now: datetime) -> bool:
        args = [stream.model_dump_json(), json.dumps(rfc3339(now))]
        async with _guard("claim stream"):
            code = int(await self._claim_stream(keys=[self.keys.session(session_id)], args=args))
        _status_check(code, session_id)
        return code == 1

    async def increment(self, session_id: str, counters: Mapping[str, int], now: datetime) -> None:
        args = _counter_args(counters)
        async with _guard("increment"):
            await self._increment(keys=[self.keys.session(session_id)], args=args)

    async def touch(self, session_id: str, now: datetime) -> None:
        raw = await self._fields(session_id)
        if not raw:
            raise SessionNotFound(session_id)
        expiration = int(json.loads(raw["expiration_seconds"]))
        keys = [*self.keys.session_keys(session_id), self.keys.deadlines_of(session_id)]
        args: list[Any] = [
            session_id,
            expiration + self._grace,
            repr(now.timestamp() + expiration),
            json.dumps(rfc3339(now)),
        ]
        async with _guard("touch"):
            code = await self._touch(keys=keys, args=args)
        _status_check(int(code), session_id)

    async def append_messages(
        self,
        session_id: str,
        messages: Sequence[Message],
        now: datetime,
        counters: Mapping[str, int] | None = None,
    ) -> int:
        counter_args = _counter_args(counters or {})
        if not messages and not counter_args:
            return len(await self.get_messages(session_id, 0, 1_000_000))
        args = [
            json.dumps(rfc3339(now)),
            len(counter_args) // 2,
            *counter_args,
            *(m.model_dump_json() for m in messages),
        ]
        keys = [self.keys.session(session_id), self.keys.messages(session_id)]
        async with _guard("append"):
            code = int(await self._append(keys=keys, args=args))
        _status_check(code, session_id)
        return code

    async def get_messages(
        self, session_id: str, offset: int = 0, limit: int = 100
    ) -> list[Message]:
        if limit <= 0:
            return []
        async with _guard("read"):
            raw = await self._r.lrange(self.keys.messages(session_id), offset, offset + limit - 1)
        return [Message.model_validate_json(m) for m in raw]

    async def complete(
        self,
        session_id: str,
        end_reason: EndReason,
        now: datetime,
        duration: float | None = None,
        *,
        on_expiry: bool = False,
    ) -> CompletedSession | None:
        keys = [
            *self.keys.session_keys(session_id),
            self.keys.deadlines_of(session_id),
            self.keys.completed_of(session_id),
        ]
        args: list[Any] = [
            session_id,
            json.dumps(end_reason.value),
            json.dumps(rfc3339(now)),
            repr(now.timestamp()),
            "" if duration is None else repr(float(duration)),
            self._retention,
            INDEX_TTL,
            "1" if on_expiry else "0",
        ]
        async with _guard("complete"):
            result = await self._complete(keys=keys, args=args)
        code = int(result[0])
        if code == -1:
            raise SessionNotFound(session_id)
        if code == 0:
            return None
        return _record(result[2], result[3])

    async def mark_ending(self, session_id: str, end_reason: EndReason) -> None:
        async with _guard("mark ending"):
            code = await self._mark_ending(
                keys=[self.keys.session(session_id)], args=[json.dumps(end_reason.value)]
            )
        _status_check(int(code), session_id)

    async def set_deadline(
        self, session_id: str, deadline: datetime, expiry_reason: EndReason | None = None
    ) -> None:
        keys = [self.keys.session(session_id), self.keys.deadlines_of(session_id)]
        reason = json.dumps(expiry_reason.value) if expiry_reason else ""
        async with _guard("set deadline"):
            code = await self._set_deadline(
                keys=keys, args=[session_id, repr(deadline.timestamp()), reason]
            )
        _status_check(int(code), session_id)

    async def delete(self, session_id: str) -> bool:
        keys = [*self.keys.session_keys(session_id), self.keys.deadlines_of(session_id)]
        async with _guard("delete"):
            return bool(await self._delete(keys=keys, args=[session_id]))

    async def expired_sessions(self, now: datetime, limit: int = 100) -> list[str]:
        out: list[str] = []
        async with _guard("sweep"):
            for b in range(BUCKETS):
                ids = await self._r.zrangebyscore(
                    self.keys.deadlines(b), "-inf", repr(now.timestamp()), start=0, num=limit
                )
                out.extend(ids)
                if len(out) >= limit:
                    break
        return out[:limit]

    async def count_active(self) -> int:
        async with _guard("count"):
            total = 0
            for b in range(BUCKETS):
                total += int(await self._r.zcard(self.keys.deadlines(b)))
        return total

    async def active_session_ids(self) -> list[str]:
        out: list[str] = []
        async with _guard("list"):
            for b in range(BUCKETS):
                out.extend(await self._r.zrange(self.keys.deadlines(b), 0, -1))
        return out

    # -- documents --------------------------------------------------------------

    async def _put_child_field(self, session_id: str, child: str, field: str, value: str) -> int:
        async with _guard("write"):
            code = int(
                await self._put_child(
                    keys=[self.keys.session(session_id), child], args=[field, value]
                )
            )
        _status_check(code, session_id)
        return code

    async def put_document(self, session_id: str, doc_id: str, document: Mapping[str, Any]) -> None:
        await self._put_child_field(
            session_id, self.keys.documents(session_id), doc_id, json.dumps(dict(document))
        )

    async def get_documents(self, session_id: str) -> list[dict[str, Any]]:
        async with _guard("read"):
            raw = await self._r.hgetall(self.keys.documents(session_id))
        docs = [json.loads(v) for v in raw.values()]
        docs.sort(key=lambda d: (str(d.get("created_at", "")), str(d.get("id", ""))))
        return docs

    # -- completed queue --------------------------------------------------------------------

    async def _ensure_group(self, stream: str) -> None:
        if stream in self._groups_ready:
            return
        try:
            await self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
            await self._r.expire(stream, INDEX_TTL, nx=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups_ready.add(stream)

    async def _read_group(
        self, streams: list[str], consumer: str, count: int, block: int | None
    ) -> Any:
        try:
            return await self._r.xreadgroup(
                GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block
            )
        except redis_errors.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            for s in streams:  # a stream expired and came back: recreate its group from 0
                self._groups_ready.discard(s)
                await self._ensure_group(s)
            return await self._r.xreadgroup(
                GROUP, consumer, dict.fromkeys(streams, ">"), count=count, block=block
            )

    async def read_completed(
        self, consumer: str, count: int = 100, block_ms: int = 1000
    ) -> list[CompletedEntry]:
        streams = [self.keys.completed(b) for b in range(BUCKETS)]
        async with _guard("read completed"):
            for s in streams:
                await self._ensure_group(s)
            if self._cluster:  # no multi-key reads across slots: poll each bucket
                replies: list[Any] = []
                for s in streams:
                    replies.extend(await self._read_group([s], consumer, count, None) or [])
                if not replies and block_ms:
                    await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
            else:
                replies = await self._read_group(streams, consumer, count, block_ms or None) or []
        return [
            CompletedEntry(_entry_ref(stream, entry_id), _record(f["session"], f["messages"]))
            for stream, entries in replies
            for entry_id, f in entries
            if f  # an entry deleted while pending reads back with no fields
        ]

    async def claim_completed(
        self, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[CompletedEntry]:
        out: list[CompletedEntry] = []
        async with _guard("claim completed"):
            for b in range(BUCKETS):
                stream = self.keys.completed(b)
                await self._ensure_group(stream)
                reply = await self._r.xautoclaim(
                    stream, GROUP, consumer, min_idle_ms, "0-0", count=count
                )
                for entry_id, f in reply[1]:
                    if f:
                        out.append(
                            CompletedEntry(f"{b}/{entry_id}", _record(f["session"], f["messages"]))
                        )
        return out

    async def ack_completed(self, entry_ids: Sequence[str]) -> None:
        by_bucket: dict[int, list[str]] = {}
        for ref in entry_ids:
            bucket, _, eid = ref.partition("/")
            by_bucket.setdefault(int(bucket), []).append(eid)
        async with _guard("ack completed"):
            for b, ids in by_bucket.items():
                await self._ack(keys=[self.keys.completed(b)], args=ids)

    async def completed_backlog(self) -> tuple[int, int]:
        waiting = pending = 0
        async with _guard("backlog"):
            for b in range(BUCKETS):
                stream = self.keys.completed(b)
                waiting += int(await self._r.xlen(stream))
                try:
                    info = await self._r.xpending(stream, GROUP)
                    pending += int(info["pending"])
                except redis_errors.ResponseError:
                    pass  # no group yet: nothing pending
        return waiting, pending

    # -- the store itself -------------------------------------------------------------------

    async def ping(self) -> None:
        async with _guard("ping"):
            await self._r.ping()

    async def close(self) -> None:
        if self._lanes is not None:
            await self._lanes.close()
        await self._r.aclose()


def _entry_ref(stream: str, entry_id: str) -> str:
    # stream key ends with "{bN}:completed": keep only the bucket number
    tag = stream[stream.index("{b") + 2 : stream.index("}")]
    return f"{tag}/{entry_id}"


def _record(session_json: str, messages_json: str) -> CompletedSession:
    return CompletedSession(
        session=Session.model_validate_json(session_json),
        messages=[Message.model_validate(m) for m in json.loads(messages_json)],
    )

"""The archiver: moves completed sessions from the store's completed queue into the archive.

Guarantees (docs/archive.md):

- **At-least-once delivery**: an entry is acknowledged only after the transaction that wrote
  it has committed. An archiver that dies holding entries leaves them pending; another (or the
  same one, restarted) claims them once they have been idle ``claim_idle_ms``.
- **Idempotent write**: ``Archive.upsert`` keys on the session id, so a record delivered twice
  still ends up as exactly one row with one copy of its history.
- **Nothing dropped**: while the archive or the store is unavailable, the archiver keeps its
  unacknowledged batch and retries it with exponential back-off (0.2 s doubling to 5 s). A
  record the database refuses for a non-transient reason (``ArchiveRejected``) is logged with
  its session id and CallSid and left pending, never acknowledged; the rest of its batch is
  written and acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence

from voice_gateway.archive.db import Archive, ArchiveRejected
from voice_gateway.errors import ArchiveUnavailable, StoreUnavailable
from voice_gateway.metrics import Metrics
from voice_gateway.sessions.store import CompletedEntry, SessionStore

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
#: On stop, the archiver writes what is already queued for up to this long.
FINAL_PASS_SECONDS = 5.0


def _ids(entries: Sequence[CompletedEntry]) -> tuple[str, str]:
    """Comma-joined session ids and CallSids of a batch, for log lines."""
    sessions = ",".join(e.record.session.id for e in entries)
    calls = ",".join(e.record.session.channel.sid or "-" for e in entries)
    return sessions, calls


class Archiver:
    """One consumer of the completed queue (group ``archivers``)."""

    def __init__(
        self,
        store: SessionStore,
        archive: Archive,
        *,
        consumer: str,
        batch_size: int = 100,
        claim_idle_ms: int = 30_000,
        block_ms: int = 1000,
        linger_ms: int = 250,
        metrics: Metrics | None = None,
    ) -> None:
        if not consumer:
            raise ValueError("an archiver needs a consumer name")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        if claim_idle_ms < 0 or block_ms < 0 or linger_ms < 0:
            raise ValueError("claim_idle_ms, block_ms and linger_ms must not be negative")
        self.store = store
        self.archive = archive
        self.consumer = consumer
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.block_ms = block_ms
        #: Under load (the last write ended less than this ago) a short batch waits this long
        #: for more records: one transaction per few sessions instead of one per session.
        self.linger_ms = linger_ms
        self.metrics = metrics
        self._last_write_at = -math.inf
        #: Sessions written since this archiver started.
        self.written = 0
        # Claiming scans every bucket of the queue: do it at most twice per idle period.
        self._claim_every = claim_idle_ms / 2000
        self._last_claim = -math.inf

    # -- one pass ---------------------------------------------------------------------------

    async def _claim(self, *, force: bool) -> list[CompletedEntry]:
        now = time.monotonic()
        if not force and now - self._last_claim < self._claim_every:
            return []
        self._last_claim = now
        try:
            return await self.store.claim_completed(
                self.consumer, self.claim_idle_ms, self.batch_size
            )
        except StoreUnavailable:
            raise
        except Exception:
            # An entry the store cannot read back stays pending in the store; new entries
            # must keep flowing, so go on to read them.
            log.exception("archiver could not claim pending entries consumer=%s", self.consumer)
            return []

    async def _fetch(self, *, block_ms: int, force_claim: bool) -> list[CompletedEntry]:
        entries = await self._claim(force=force_claim)
        if len(entries) < self.batch_size:
            entries += await self.store.read_completed(
                self.consumer, self.batch_size - len(entries), block_ms=0 if entries else block_ms
            )
        return entries

    async def _isolate(self, batch: Sequence[CompletedEntry]) -> list[CompletedEntry]:
        """Write the records of a refused batch one by one; the ones written are returned."""
        good: list[CompletedEntry] = []
        for entry in batch:
            session = entry.record.session
            try:
                await self.archive.upsert([entry.record])
            except ArchiveRejected as exc:
                log.error(
                    "archive refused session, left pending session_id=%s call_sid=%s "
                    "entry=%s deliveries=%d consumer=%s: %s",
                    session.id,
                    session.channel.sid or "-",
                    entry.entry_id,
                    entry.deliveries,
                    self.consumer,
                    exc.message,
                )
                continue
            good.append(entry)
        return good

    async def _write_and_ack(self, batch: Sequence[CompletedEntry]) -> int:
        """Upsert the batch, then acknowledge what was committed; returns sessions written.

        Raises ``ArchiveUnavailable`` / ``StoreUnavailable`` with nothing acknowledged past the
        failure point (a retry rewrites idempotently).
        """
        try:
            await self.archive.upsert([e.record for e in batch])
            done: Sequence[CompletedEntry] = batch
        except ArchiveRejected as exc:
            sessions, calls = _ids(batch)
            log.warning(
                "archive refused a batch, writing its records one by one n=%d "
                "session_ids=%s call_sids=%s: %s",
                len(batch),
                sessions,
                calls,
                exc.message,
            )
            done = await self._isolate(batch)
        if done:
            await self.store.ack_completed([e.entry_id for e in done])
        for entry in done:
            session = entry.record.session
            log.info(
                "session archived session_id=%s call_sid=%s end_reason=%s consumer=%s",
                session.id,
                session.channel.sid or "-",
                session.end_reason.value if session.end_reason else "-",
                self.consumer,
            )
        written = len({e.record.session.id for e in done})
        self.written += written
        if self.metrics is not None:
            self.metrics.archived.inc(written)
        return written

    async def drain_once(self) -> int:
        """One claim + read + write + ack pass without blocking; returns sessions written.

        Errors are not retried here: ``ArchiveUnavailable`` / ``StoreUnavailable`` propagate
        with the batch left pending in the store.
        """
        batch = await self._fetch(block_ms=0, force_claim=True)
        if not batch:
            return 0
        return await self._write_and_ack(batch)

    # -- the loop ---------------------------------------------------------------------------

    def _busy(self) -> bool:
        """Records are coming in faster than one per ``linger_ms``: worth waiting for more."""
        return time.monotonic() - self._last_write_at < self.linger_ms / 1000

    async def _fetch_unless_stopped(self, stop: asyncio.Event) -> list[CompletedEntry]:
        """A blocking fetch that gives up as soon as ``stop`` is set. Entries a cancelled read
        had already taken stay pending and are claimed again after ``claim_idle_ms``."""
        fetch = asyncio.ensure_future(self._fetch(block_ms=self.block_ms, force_claim=False))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({fetch, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if fetch.done():
            return fetch.result()
        fetch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fetch
        return []

    async def run(self, stop: asyncio.Event) -> None:
        """Archive until ``stop`` is set (within about ``block_ms`` or one back-off step)."""
        log.info(
            "archiver started consumer=%s batch_size=%d claim_idle_ms=%d archive=%s",
            self.consumer,
            self.batch_size,
            self.claim_idle_ms,
            self.archive.display_url,
        )
        batch: list[CompletedEntry] = []
        delay = BACKOFF_INITIAL
        while not stop.is_set():
            try:
                if not batch:
                    batch = await self._fetch_unless_stopped(stop)
                    if not batch:
                        continue
                    if self._busy() and len(batch) < self.batch_size:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), self.linger_ms / 1000)
                        batch += await self.store.read_completed(
                            self.consumer, self.batch_size - len(batch), block_ms=0
                        )
                await self._write_and_ack(batch)
                self._last_write_at = time.monotonic()
                batch = []
                delay = BACKOFF_INITIAL
                continue
            except (ArchiveUnavailable, StoreUnavailable) as exc:
                if self.metrics is not None:
                    counter = (
                        self.metrics.archive_errors
                        if isinstance(exc, ArchiveUnavailable)
                        else self.metrics.store_errors
                    )
                    counter.inc()
                # Keep the batch: the same records are retried, none is dropped.
                sessions, calls = _ids(batch)
                log.warning(
                    "archiver waiting %.1fs: %s consumer=%s held=%d session_ids=%s call_sids=%s",
                    delay,
                    exc.message,
                    self.consumer,
                    len(batch),
                    sessions or "-",
                    calls or "-",
                )
            except Exception:
                # A bug, not an outage: let go of the batch (it stays pending in the store and
                # is claimed again after claim_idle_ms) and carry on after a pause.
                sessions, calls = _ids(batch)
                log.exception(
                    "archiver pass failed, batch left pending consumer=%s session_ids=%s "
                    "call_sids=%s",
                    self.consumer,
                    sessions or "-",
                    calls or "-",
                )
                batch = []
            await _pause(stop, delay)
            delay = min(delay * 2, BACKOFF_MAX)
        batch = await self._final_pass(batch)
        if batch:
            sessions, _ = _ids(batch)
            log.info(
                "archiver stopped holding %d unacknowledged entries (left pending) consumer=%s "
                "session_ids=%s",
                len(batch),
                self.consumer,
                sessions,
            )
        log.info("archiver stopped consumer=%s written=%d", self.consumer, self.written)

    async def _final_pass(self, batch: list[CompletedEntry]) -> list[CompletedEntry]:
        """On stop: write the batch held and what is waiting in the queue now, once each, with
        no blocking and no retry. A draining instance completes its last calls just before its
        archiver stops; without this pass their records would wait for another archiver (or
        for this instance to come back). Returns what could not be written (left pending)."""
        deadline = time.monotonic() + FINAL_PASS_SECONDS
        try:
            while time.monotonic() < deadline:
                if not batch:
                    batch = await self.store.read_completed(
                        self.consumer, self.batch_size, block_ms=0
                    )
                    if not batch:
                        break
                await self._write_and_ack(batch)
                batch = []
        except (ArchiveUnavailable, StoreUnavailable) as exc:
            log.warning(
                "archiver could not write its last records before stopping: %s consumer=%s",
                exc.message,
                self.consumer,
            )
        except Exception:
            log.exception("archiver final pass failed consumer=%s", self.consumer)
        return batch


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)

"""The expiry sweeper: a background task in every instance.

Every instance sweeps; ``complete`` is exactly-once, so several sweepers (and a status callback
arriving at the same moment) never complete a session twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from voice_gateway.errors import StoreUnavailable
from voice_gateway.sessions.lifecycle import Lifecycle

log = logging.getLogger(__name__)


async def run_sweeper(lifecycle: Lifecycle, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            while True:  # drain: a backlog larger than one batch is swept at once
                won = await lifecycle.sweep(limit=200)
                if won:
                    log.info("sweeper expired %d sessions", len(won))
                if len(won) < 200:
                    break
        except StoreUnavailable as exc:
            log.warning("sweeper: store unavailable, retrying: %s", exc)
        except Exception:
            log.exception("sweeper iteration failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)

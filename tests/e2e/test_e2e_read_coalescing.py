"""``inbound_read_interval_ms`` (read pacing, on by default): reading a caller's socket less often
loses nothing, takes several frames per read, and still hears a barge-in and a turn end as soon
as the frame that carries it arrives."""

from __future__ import annotations

import logging
import re

import pytest

from tests.e2e.conftest import GatewayFactory, Harness
from voice_gateway.sessions.models import Session
from voice_gateway.sim.audio import silence, tone
from voice_gateway.sim.caller import CallResult

pytestmark = pytest.mark.asyncio(loop_scope="module")

INTERVAL_MS = 200  # the default
#: Caller speaks, pauses while the echo plays, talks over the echo, then stays quiet.
AUDIO = silence(200) + tone(600) + silence(900) + tone(600) + silence(3000)
SPEECH = [(10, 39), (85, 114)]  # the two tones, as inclusive frame ranges


async def _call(
    gateway_factory: GatewayFactory, interval_ms: int, caplog: pytest.LogCaptureFixture
) -> tuple[Harness, CallResult, Session, str]:
    caplog.set_level(logging.INFO, logger="voice_gateway.telephony.stream")
    gw = await gateway_factory("memory", inbound_read_interval_ms=interval_ms)
    result = await gw.place(audio=AUDIO, speech=SPEECH)
    assert result.ok, result.errors
    row = await gw.archived(result.session_id or "")
    ended = [r.getMessage() for r in caplog.records if "media stream ended" in r.getMessage()]
    return gw, result, row, ended[-1]


async def test_coalesced_reads_lose_nothing_and_hear_barge_in_and_turn_end_at_once(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw, result, row, ended = await _call(gateway_factory, INTERVAL_MS, caplog)

    # every frame arrived, in order
    assert row.stream is not None
    assert row.stream.frames_in == result.frames_sent == len(AUDIO) // 160
    assert row.stream.sequence_gaps == 0
    # ...in fewer reads than frames: the quiet stretches were read several frames at a time
    reads = int(re.search(r"reads=(\d+)", ended).group(1))  # type: ignore[union-attr]
    assert reads < 0.7 * result.frames_sent, (reads, result.frames_sent)

    # The caller talked over the echo: cleared as fast as without pacing (while the agent
    # speaks, no read is held past the earliest frame that could barge in).
    assert len(result.barge_in_ms()) == 1 and result.barge_in_ms()[0] <= 100, result.barge_in_ms()
    # Both turns answered, and the turn end was not held back (a held read would add up to
    # the interval).
    latencies = result.turn_latencies_ms()
    assert len(latencies) == 2, latencies
    silence_ms = gw.settings.turn.end_silence_ms
    assert all(silence_ms - 40 <= t < silence_ms + INTERVAL_MS // 2 for t in latencies), latencies


async def test_without_coalescing_each_frame_is_read_on_arrival(
    gateway_factory: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _, result, row, ended = await _call(gateway_factory, 0, caplog)
    assert row.stream is not None and row.stream.frames_in == result.frames_sent
    assert "reads=-" in ended  # not counted: reads are not coalesced

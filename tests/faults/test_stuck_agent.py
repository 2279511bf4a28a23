"""A stuck agent: a real agent process that stops answering, and one that stops reading.

The agent is ``python -m voice_gateway.agents.example_server --stall-after-turns N``, a process
of its own: after answering N turns of a call it stops reading its socket and never sends
again. The gateway reaches it as a websocket agent with a 3 s ``read_timeout`` and no fallback;
calls to any other number go to the built-in echo agent.

1. Stuck after one turn: a caller's second turn is sent (it fits in the socket's buffers) and
   never answered.
2. Stuck from the start, and the caller's first turn is larger than the TCP buffers between the
   two processes (a long turn arriving at once, 24 kHz PCM): the gateway's send itself blocks.

What must hold, both times: the call does not hang: the gateway hangs it up over the Twilio REST
API within ``read_timeout`` (plus slack) of the stuck turn, and the session is archived exactly
once, ended ``error``, with the failure in its history; meanwhile the gateway goes on reading
the caller's frames (the archived ``frames_in`` equals what was sent) and its memory stays
flat; calls to the echo agent on the same gateway are answered throughout.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.conftest import (
    FaultEnv,
    Gateway,
    ManagedProcess,
    eventually,
    free_port,
    speech_loop,
)
from voice_gateway.sessions.models import EndReason, SessionStatus
from voice_gateway.sim.audio import silence
from voice_gateway.sim.caller import CallResult, SimulatedCall

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

STUCK_NUMBER = "+15005550404"
READ_TIMEOUT = 3.0
#: On top of read_timeout: the hang-up's REST call and a loaded machine's scheduling.
SLACK = 4.0
END_SILENCE_MS = 600  # the endpointer's default: a turn ends after this much silence
#: Growth of the gateway's resident memory while a call is stuck: a generous bound (a few calls
#: need far less) that a gross leak, megabytes a second, would break.
MAX_RSS_GROWTH_MIB = 25.0
ECHO_CALLS = 3
ECHO_SECONDS = 12.5  # five 2.5 s speech loops: one utterance each
ECHO_UTTERANCES = 5
#: The simulator posts the final status callback this long after the gateway's hang-up: at once,
#: as Twilio does (the gateway completes the session with its reason before it hangs up).
STATUS_DELAY_MS = 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def start_agent(faults: FaultEnv, *args: str, port: int | None = None) -> str:
    """The reference agent as a process (killed at teardown); returns its ws:// URL."""
    port = port or free_port()
    proc = ManagedProcess(
        "agent",
        [
            sys.executable,
            "-m",
            "voice_gateway.agents.example_server",
            "--port",
            str(port),
            *args,
        ],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        cwd=faults.tmp_path / "agent",
        log_path=faults.tmp_path / "agent.log",
    )
    faults.processes.append(proc)
    proc.start()

    async def listening() -> bool:
        if not proc.running:
            raise AssertionError(f"the agent exited\n{proc.log_tail()}")
        return "listening on" in proc.log_text()

    await eventually(listening, within=30, what="the agent process to listen")
    return f"ws://127.0.0.1:{port}"


def stuck_gateway(faults: FaultEnv, agent_url: str, **turn: object) -> Gateway:
    agents = [
        {"id": "echo", "type": "echo"},
        {
            "id": "stuck",
            "type": "websocket",
            "url": agent_url,
            "connect_timeout": 5.0,
            "read_timeout": READ_TIMEOUT,
            "turn": turn,
        },
    ]
    numbers = [{"number": STUCK_NUMBER, "agent": "stuck"}]
    return faults.gateway("gateway", agents=json.dumps(agents), numbers=json.dumps(numbers))


class RssWatch:
    """Samples a process's resident memory every 0.2 s while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def sample() -> None:
            while True:
                self.samples.append(rss_mib(self.pid))
                await asyncio.sleep(0.2)

        self._task = asyncio.create_task(sample())

    async def stop(self) -> float:
        """Growth over the watch: the peak minus the first sample, in MiB."""
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return max(self.samples) - self.samples[0]


def echo_calls(faults: FaultEnv, gw: Gateway) -> list[SimulatedCall]:
    return [
        faults.call(gw, audio=speech_loop(), loop_seconds=ECHO_SECONDS, trailing_silence_ms=1000)
        for _ in range(ECHO_CALLS)
    ]


def check_echo_calls(results: list[CallResult]) -> None:
    for r in results:
        assert r.ok and r.ended_by == "caller", r.summary()
        assert len(r.turn_latencies_ms()) == ECHO_UTTERANCES, f"unanswered turns: {r.summary()}"
        assert r.status_responses == [("completed", 204)], r.summary()


async def check_rows(
    faults: FaultEnv,
    stuck: dict[str, int],
    echo: list[SimulatedCall],
    failures: tuple[str, ...],
) -> None:
    """One row per call: the stuck ones (CallSid -> frames sent) ended ``error``, with one of
    ``failures`` in their history; the echo ones ``completed``."""
    rows = await faults.wait_rows(len(stuck) + len(echo), within=30)
    assert Counter(r.channel.sid for r in rows) == Counter([*stuck, *(c.call_sid for c in echo)])
    by_sid = {r.channel.sid: r for r in rows}
    for sid, frames_sent in stuck.items():
        row = by_sid[sid]
        assert row.status is SessionStatus.COMPLETED and row.end_reason is EndReason.ERROR, row
        assert row.stream is not None and row.stream.frames_in == frames_sent, row
        events = [m.content for m in await faults.archive.history(row.id) if m.role == "event"]
        failed = [e for e in events if e.startswith("agent failed")]
        assert len(failed) == 1 and any(f in failed[0] for f in failures), events
    for call in echo:
        row = by_sid[call.call_sid]
        assert row.end_reason is EndReason.COMPLETED and row.turns == ECHO_UTTERANCES, row
        assert row.stream is not None and row.stream.frames_in == call.result.frames_sent, row


async def test_agent_stuck_mid_call_is_hung_up_and_others_go_on(faults: FaultEnv) -> None:
    gw = stuck_gateway(faults, await start_agent(faults, "--stall-after-turns", "1"))
    await faults.start(gw)
    # Two calls to the stuck agent (a 20 s speech loop: they should end long before), three to
    # the echo agent.
    stuck = [
        faults.call(
            gw,
            audio=speech_loop(),
            loop_seconds=20,
            to_number=STUCK_NUMBER,
            status_delay_ms=STATUS_DELAY_MS,
        )
        for _ in range(2)
    ]
    echo = echo_calls(faults, gw)
    tasks = {c.call_sid: asyncio.create_task(c.run()) for c in [*stuck, *echo]}

    # The second turn ends at 3.9 s of each call (utterance 2.7-3.3 s + 600 ms of silence).
    async def second_turn_sent() -> bool:
        return min(c.result.frames_sent for c in stuck) >= 4000 // 20

    await eventually(second_turn_sent, within=30, what="the stuck calls' second turn")
    rss = RssWatch(gw.pid)
    rss.start()
    stuck_results = await asyncio.wait_for(asyncio.gather(*(tasks[c.call_sid] for c in stuck)), 30)
    growth = await rss.stop()
    print(f"RSS growth while stuck: {growth:.1f} MiB")
    assert growth < MAX_RSS_GROWTH_MIB, rss.samples

    for call, r in zip(stuck, stuck_results, strict=True):
        assert r.ended_by == "api-hangup", r.summary()
        assert faults.api.updates(call.call_sid) == [{"Status": "completed"}]
        assert len(r.turn_latencies_ms()) == 1, r.summary()  # the first turn, then nothing
        utterances = r.utterances()
        assert len(utterances) >= 2, r.summary()
        turn_end = r.send_times_ms[utterances[1].end_frame] + END_SILENCE_MS
        stuck_for = (r.send_times_ms[-1] - turn_end) / 1000  # the caller stops at the hang-up
        print(f"{call.call_sid} hung up {stuck_for:.1f} s after its stuck turn")
        assert READ_TIMEOUT - 1 <= stuck_for <= READ_TIMEOUT + SLACK, (stuck_for, r.summary())
        assert r.status_responses == [("completed", 204)], r.summary()
    # The echo calls were answered while the others were stuck, and to their end.
    check_echo_calls(await asyncio.wait_for(asyncio.gather(*(tasks[c.call_sid] for c in echo)), 30))

    await check_rows(
        faults,
        {c.call_sid: c.result.frames_sent for c in stuck},
        echo,
        # it timed out waiting for an answer, or (its socket's buffers full) sending the next
        # turn, whichever came first
        failures=(f"agent sent nothing for {READ_TIMEOUT:.1f}s", "(not reading)"),
    )
    assert gw.running


def unsent_to(port: int) -> int:
    """Bytes the kernel holds unsent (or unacknowledged) on connections to 127.0.0.1:``port``:
    the ``tx_queue`` of /proc/net/tcp. On loopback, data the peer's buffer took is acknowledged,
    so this grows only once the peer's window is shut: its reader stopped."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port:
            total += int(fields[4].split(":")[0], 16)
    return total


def socket_buffer_bytes() -> int:
    """At most how much a loopback connection whose reader stopped takes before a write
    blocks: the sender's buffer (autotuned up to tcp_wmem's maximum) and the receiver's (its
    default size, as it does not grow when nothing is read)."""
    wmem = Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()
    rmem = Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()
    return int(wmem[2]) + int(rmem[1])


async def test_agent_not_reading_its_socket_cannot_block_the_call(faults: FaultEnv) -> None:
    # A turn 1 MiB larger than the buffers can take surely blocks the gateway's send. It is
    # noise, which permessage-deflate cannot squeeze much: base64 of 24 kHz 16-bit PCM is
    # 64,000 bytes per second of caller audio, about 47,000 once deflated.
    burst_seconds = math.ceil((socket_buffer_bytes() + 2**20) / 45_000)
    if burst_seconds > 600:
        pytest.skip(f"socket buffers too large to fill with one turn ({burst_seconds} s)")
    port = free_port()
    url = await start_agent(faults, "--stall-after-turns", "0", "--sample-rate", "24000", port=port)
    # A plain energy gate: the adaptive one takes a steady noise for the line's within seconds.
    gw = stuck_gateway(faults, url, vad="energy", max_turn_ms=(burst_seconds + 10) * 1000)
    await faults.start(gw)

    # Over a real network an ordinary turn can fill the buffers of a connection whose reader
    # stopped; on loopback they take megabytes. So the caller's long turn reaches the gateway
    # all at once (as after a network hiccup); then the caller's line goes on in real time: 6 s
    # of silence (no barge-in cuts the stuck send short), then talk, for 21 s in all.
    talk = silence(6000) + speech_loop() * 6
    call = faults.call(gw, audio=talk, to_number=STUCK_NUMBER, status_delay_ms=STATUS_DELAY_MS)
    faults.registry.add(call)
    plan = await call.dial()
    assert plan is not None and plan.stream_url, call.result.summary()
    assert await call.open_stream(plan.stream_url)
    burst = random.Random(7).randbytes(burst_seconds * 8000) + silence(END_SILENCE_MS)
    frames = len(burst) // 160
    for n in range(frames):
        frame = burst[n * 160 : (n + 1) * 160]
        assert await call.send_media(frame, chunk=n + 1, timestamp_ms=n * 20)
        if n % 50 == 49:
            await asyncio.sleep(0)  # let the receiver and the mark echoes run
    # The gateway converts the turn and sends it: the agent's buffers fill up, then the
    # gateway's, and its send waits.
    full = min(2**20, socket_buffer_bytes() // 4)

    async def send_blocked() -> bool:
        return unsent_to(port) >= full

    await eventually(send_blocked, within=20, what="the gateway's send to the agent to block")
    loop = asyncio.get_running_loop()
    blocked_at = loop.time()
    rss = RssWatch(gw.pid)  # from here on (taking the long turn in cost what it cost)
    rss.start()
    # Calls to the echo agent now: answered while the other call is stuck (they start after
    # the long turn, whose conversion and compression hold the gateway's loop for a moment).
    echo = echo_calls(faults, gw)
    echo_tasks = [asyncio.create_task(c.run()) for c in echo]
    await asyncio.wait_for(call.stream_audio(), 30)  # until done, or the gateway hangs up
    stuck_for = loop.time() - blocked_at
    growth = await rss.stop()
    print(f"hung up {stuck_for:.1f} s after the send blocked; RSS growth {growth:.1f} MiB")
    await call.hang_up()
    await call.post_status_callbacks()
    faults.registry.remove(call, "completed")
    r = call.result

    assert r.ended_by == "api-hangup", r.summary()
    assert faults.api.updates(call.call_sid) == [{"Status": "completed"}]
    assert stuck_for <= READ_TIMEOUT + SLACK, (stuck_for, r.summary())
    assert r.frames_sent > 0, r.summary()  # it kept talking while the agent was stuck
    assert growth < MAX_RSS_GROWTH_MIB, rss.samples
    assert r.status_responses == [("completed", 204)], r.summary()
    check_echo_calls(await asyncio.wait_for(asyncio.gather(*echo_tasks), 30))

    await check_rows(
        faults,
        {call.call_sid: frames + r.frames_sent},
        echo,
        failures=(f"agent took no data for {READ_TIMEOUT:.1f}s (not reading)",),
    )
    assert gw.running

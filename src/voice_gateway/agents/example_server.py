"""A reference agent service speaking docs/agent-protocol.md (run: ``python -m
voice_gateway.agents.example_server --port 8765``).

It echoes each caller turn back as 16 kHz PCM (so the gateway's format negotiation and
resampling are exercised), reports a transcript placeholder and a running summary, and reacts
to keypad input: ``*`` hangs up, ``0`` transfers. The knobs make it misbehave on purpose; the
test suite uses it as the remote agent (an in-process service on loopback, or this module run
as a process: ``--sample-rate``, ``--stall-after-turns N``).

``stall_after_turns = N`` makes a stuck agent: once it has answered N turns of a call (0: right
after ``ready``), that connection stops reading its socket (what the gateway sends piles up in
the TCP buffers, and once they are full the gateway's sends block) and never sends anything
again, until the gateway drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve

log = logging.getLogger(__name__)


@dataclass
class ExampleAgentServer:
    encoding: str = "pcm16"
    sample_rate: int = 16000
    crash_after_turns: int | None = None  # drop the connection when this turn arrives
    never_answer: bool = False  # accept turns, send nothing (tests the read timeout)
    no_ready: bool = False  # never answer `start` (tests the connect timeout)
    stall_after_turns: int | None = None  # after answering this many turns: stop reading
    transfer_target: str | None = "+15005550100"
    sessions: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    _server: Server | None = None
    _stalled: set[ServerConnection] = field(default_factory=set)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await serve(self._handle, host, port, max_size=16 * 1024 * 1024)
        sock = next(iter(self._server.sockets))
        return f"ws://{host}:{sock.getsockname()[1]}"

    async def close(self) -> None:
        for ws in self._stalled:  # they read nothing, not even a closing handshake
            ws.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        start = json.loads(await ws.recv())
        self.sessions.append(start)
        if self.no_ready:
            await ws.wait_closed()  # say nothing until the gateway gives up
            return
        accepted = {(f["encoding"], f["sample_rate"]) for f in start["audio"]["accept"]}
        fmt = (self.encoding, self.sample_rate)
        if fmt not in accepted:
            fmt = ("mulaw", 8000)
        await ws.send(
            json.dumps({"type": "ready", "audio": {"encoding": fmt[0], "sample_rate": fmt[1]}})
        )
        turns = 0
        if self.stall_after_turns == 0:
            await self._stall(ws, turns)
            return
        async for raw in ws:
            message = json.loads(raw)
            self.received.append({k: v for k, v in message.items() if k != "audio"})
            kind = message["type"]
            turn_id = message.get("turn_id")
            if kind == "turn":
                turns += 1
                if self.crash_after_turns is not None and turns >= self.crash_after_turns:
                    await ws.close(code=1011, reason="agent crashed")
                    return
                if self.never_answer:
                    continue
                audio = base64.b64decode(message["audio"])
                await ws.send(
                    json.dumps(
                        {
                            "type": "text",
                            "turn_id": turn_id,
                            "role": "user",
                            "text": f"caller turn {turn_id}",
                        }
                    )
                )
                for i in range(0, len(audio), 3200):  # stream it back in 100 ms chunks at 16 kHz
                    chunk = base64.b64encode(audio[i : i + 3200]).decode()
                    await ws.send(json.dumps({"type": "audio", "turn_id": turn_id, "audio": chunk}))
                await ws.send(
                    json.dumps(
                        {
                            "type": "text",
                            "turn_id": turn_id,
                            "text": f"you spoke for {message['duration_ms']} ms",
                        }
                    )
                )
                await ws.send(json.dumps({"type": "summary", "text": f"{turns} turns so far"}))
                await ws.send(json.dumps({"type": "done", "turn_id": turn_id}))
                if self.stall_after_turns is not None and turns >= self.stall_after_turns:
                    await self._stall(ws, turns)
                    return
            elif kind == "dtmf":
                digits = message["digits"]
                if digits == "*":
                    await ws.send(
                        json.dumps({"type": "hangup", "turn_id": turn_id, "reason": "bye"})
                    )
                elif digits == "0" and self.transfer_target:
                    await ws.send(
                        json.dumps(
                            {"type": "transfer", "turn_id": turn_id, "target": self.transfer_target}
                        )
                    )
                else:
                    await ws.send(
                        json.dumps(
                            {"type": "text", "turn_id": turn_id, "text": f"you pressed {digits}"}
                        )
                    )
                await ws.send(json.dumps({"type": "done", "turn_id": turn_id}))
            elif kind == "end":
                return

    async def _stall(self, ws: ServerConnection, turns: int) -> None:
        log.info("stalling after %d turns: no more reading or answering", turns)
        self._stalled.add(ws)
        ws.transport.pause_reading()
        await ws.wait_closed()


async def _main(host: str, port: int, sample_rate: int, stall_after_turns: int | None) -> None:
    server = ExampleAgentServer(sample_rate=sample_rate, stall_after_turns=stall_after_turns)
    url = await server.start(host, port)
    print(f"example agent listening on {url}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--sample-rate", type=int, default=16000, choices=(8000, 16000, 24000), help="PCM rate"
    )
    parser.add_argument(
        "--stall-after-turns",
        type=int,
        metavar="N",
        help="after answering N turns of a call, stop reading the socket and never answer",
    )
    args = parser.parse_args()
    logging.basicConfig(level="INFO")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.host, args.port, args.sample_rate, args.stall_after_turns))

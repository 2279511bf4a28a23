"""Bare-loop reference for the calls benchmark: what the Twilio protocol alone costs here.

    python -m benchmarks.bare_loop                            # N = 50, 100, 200
    python -m benchmarks.bare_loop --calls 50,100,200 --workers 4
    python -m benchmarks.bare_loop --smoke                    # 10 s, 5 calls

The server (this file run with ``--serve``, its own process pinned to core 0, plain asyncio like
``voice-gateway serve``) is a minimal aiohttp app that does only what a voice loop cannot skip:

- ``POST /twilio/voice``: reads the form, answers a fixed ``<Connect><Stream>`` TwiML with the
  ``session_id`` and ``token`` ``<Parameter>``s the gateway sends (the CallSid and a constant);
- ``POST /twilio/status``: reads the form, answers 204;
- ``/twilio/stream``: parses every Twilio message with orjson, base64-decodes each ``media``
  payload, computes its energy from a 256-entry mu-law table (numpy), and runs a plain energy
  endpointer: speech when RMS > -40 dBFS; a turn starts at 80 ms of speech and ends after
  600 ms of non-speech, and its audio (with 200 ms pre-roll and 100 ms post-roll, like the
  gateway's defaults) is echoed back as 20 ms ``media`` messages paced at real time with
  ``asyncio.sleep``, then a ``mark``; speech that starts a turn while the echo plays stops it
  and sends ``clear``.

No signatures, Redis, sessions, archive, metrics or per-frame logging. The driver is
``calls_bench``'s: the same simulator workload (the spoken fixture, 4 utterances, at real 20 ms
pace, on core 1), the same measurements (CPU from /proc, turn latency, unanswered turns,
generator lateness and validity, peak RSS) and the same table.

The endpointer's -40 dBFS threshold cuts the fixture's soft endings about 100 ms before the
known speech end, so its turn latency reads ~100 ms lower than a gateway with the same 600 ms
end-of-turn silence; CPU is the number this reference is for.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import contextlib
import os
import signal
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import orjson
from aiohttp import WSMsgType, web

FRAME_S: Final = 0.02
FRAME_BYTES: Final = 160
SPEECH_DBFS: Final = -40.0
START_FRAMES: Final = 4  # 80 ms of speech starts a turn
END_FRAMES: Final = 30  # 600 ms of non-speech ends it
PRE_ROLL_FRAMES: Final = 10  # 200 ms
POST_ROLL_FRAMES: Final = 5  # 100 ms
MAX_FRAME_BYTES: Final = 64 * 1024


def _ulaw_squares() -> npt.NDArray[np.int64]:
    """Square of the linear value of each mu-law code (ITU-T G.711, bias 0x84)."""
    u = (~np.arange(256, dtype=np.int64)) & 0xFF
    magnitude = ((((u & 0x0F) << 3) + 0x84) << ((u >> 4) & 7)) - 0x84
    return magnitude * magnitude


_SQUARES: Final = _ulaw_squares()
#: RMS > -40 dBFS  <=>  sum of squares over a frame > this.
_SPEECH_SUM: Final = FRAME_BYTES * (32768 * 10 ** (SPEECH_DBFS / 20)) ** 2


def frame_is_speech(raw: bytes) -> bool:
    return int(_SQUARES.take(np.frombuffer(raw, np.uint8)).sum()) > _SPEECH_SUM


# --------------------------------------------------------------------------- the server

TWIML_PREFIX: Final = web.AppKey("twiml_prefix", str)
TWIML_SUFFIX: Final = web.AppKey("twiml_suffix", str)


class BareCall:
    """One media stream: the energy endpointer and the echo player."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.media_prefix = ""
        self.mark_prefix = ""
        self.clear = ""
        self.pre_roll: deque[bytes] = deque(maxlen=PRE_ROLL_FRAMES)
        self.turn: list[bytes] | None = None  # frames of the turn being heard
        self.speech = 0  # speech frames in it
        self.silence = 0  # non-speech frames since its last speech frame
        self.last = 0  # len(turn) at its last speech frame
        self.started = False
        self.turns = 0
        self.echo: asyncio.Task[None] | None = None

    def on_start(self, stream_sid: str) -> None:
        sid = orjson.dumps(stream_sid).decode()
        self.media_prefix = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self.mark_prefix = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":"'
        self.clear = '{"event":"clear","streamSid":' + sid + "}"

    async def on_frame(self, raw: bytes) -> None:
        turn = self.turn
        if frame_is_speech(raw):
            if turn is None:
                turn = self.turn = list(self.pre_roll)
                self.pre_roll.clear()
            turn.append(raw)
            self.speech += 1
            self.silence = 0
            self.last = len(turn)
            if not self.started and self.speech >= START_FRAMES:
                self.started = True
                if self.echo is not None and not self.echo.done():  # barge-in
                    self.echo.cancel()
                    await self.ws.send_str(self.clear)
        elif turn is None:
            self.pre_roll.append(raw)
        else:
            turn.append(raw)
            self.silence += 1
            if self.silence >= END_FRAMES:
                if self.started:
                    self.turns += 1
                    audio = turn[: self.last + POST_ROLL_FRAMES]
                    self.echo = asyncio.create_task(self.play(audio, f"turn-{self.turns}"))
                self.pre_roll.extend(turn[-PRE_ROLL_FRAMES:])
                self.turn = None
                self.speech = self.silence = 0
                self.started = False

    async def play(self, frames: list[bytes], mark: str) -> None:
        """Send ``frames`` as 20 ms media messages at real-time pace, then a mark."""
        loop = asyncio.get_running_loop()
        ws, prefix = self.ws, self.media_prefix
        t0 = loop.time()
        try:
            for i, raw in enumerate(frames):
                delay = t0 + i * FRAME_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send_str(
                    prefix + binascii.b2a_base64(raw, newline=False).decode("ascii") + '"}}'
                )
            await ws.send_str(self.mark_prefix + mark + '"}}')
        except ConnectionError:
            pass

    def stop(self) -> None:
        if self.echo is not None:
            self.echo.cancel()


async def voice_webhook(request: web.Request) -> web.Response:
    form = await request.post()
    call_sid = str(form.get("CallSid", ""))
    twiml = request.app[TWIML_PREFIX] + call_sid + request.app[TWIML_SUFFIX]
    return web.Response(text=twiml, content_type="text/xml")


async def status_callback(request: web.Request) -> web.Response:
    await request.post()
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def media_stream(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True)
    await ws.prepare(request)
    call = BareCall(ws)
    loads, a2b = orjson.loads, binascii.a2b_base64
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                break
            data = loads(msg.data)
            event = data["event"]
            if event == "media":
                await call.on_frame(a2b(data["media"]["payload"]))
            elif event == "start":
                call.on_start(data["start"]["streamSid"])
            elif event == "stop":
                break
            # connected, mark (echoes of ours), dtmf: nothing to do
    finally:
        call.stop()
        await ws.close()
    return ws


def create_app(public_url: str) -> web.Application:
    stream_url = public_url.replace("http", "ws", 1).rstrip("/") + "/twilio/stream"
    app = web.Application()
    # What ConnectStreamTemplate renders for the gateway, with a constant token.
    app[TWIML_PREFIX] = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        f'<Stream url="{stream_url}"><Parameter name="session_id" value="'
    )
    app[TWIML_SUFFIX] = '" /><Parameter name="token" value="bare" /></Stream></Connect></Response>'
    app.router.add_post("/twilio/voice", voice_webhook)
    app.router.add_post("/twilio/status", status_callback)
    app.router.add_get("/twilio/stream", media_stream)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(port: int, public_url: str) -> None:
    runner = web.AppRunner(
        create_app(public_url), access_log=None, handle_signals=False, shutdown_timeout=5
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await stop.wait()
    finally:
        await runner.cleanup()


def run_server(use_uvloop: bool) -> int:
    port = int(os.environ["VOICE_GATEWAY_PORT"])
    public_url = os.environ.get("VOICE_GATEWAY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    if use_uvloop:
        import uvloop

        uvloop.run(serve(port, public_url))
    else:
        asyncio.run(serve(port, public_url))
    return 0


# --------------------------------------------------------------------------- the driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", default="50,100,200", help="comma-separated N values")
    parser.add_argument("--workers", type=int, default=4, help="simulator processes")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds over which calls start")
    parser.add_argument("--seconds", type=float, default=None, help="loop/cut the audio to this")
    parser.add_argument("--uvloop", action="store_true", help="run the server on uvloop")
    parser.add_argument("--smoke", action="store_true", help="5 calls of 10 s: checks it works")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:  # the server process: imports nothing of the benchmarks or the gateway
        return run_server(args.uvloop)

    import redis

    from benchmarks.calls_bench import run_waves
    from benchmarks.common import print_table, write_json
    from benchmarks.gateway_proc import GatewayProcess

    if args.smoke:
        args.calls, args.workers, args.ramp, args.seconds = "5", 1, 1.0, 10.0
    multi_core = (os.cpu_count() or 1) > 1
    command = [sys.executable, str(Path(__file__).resolve()), "--serve"]
    if args.uvloop:
        command.append("--uvloop")
    with tempfile.TemporaryDirectory() as tmp:
        server = GatewayProcess(Path(tmp), cpu=0 if multi_core else None, command=command)
        server.start()
        try:
            rows = run_waves(server, args.calls, args.workers, args.ramp, args.seconds, multi_core)
        finally:
            with contextlib.suppress(redis.RedisError):  # stop() sweeps Redis; nothing to sweep
                server.stop()
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print_table(
        f"bare loop ({loop_name}): Twilio protocol, energy endpointer, paced echo; "
        "server core 0, simulator core 1",
        [{k: v for k, v in r.items() if k != "errors"} for r in rows],
    )
    path = write_json(
        "bare_loop", {"results": rows, "args": vars(args) | {"json": str(args.json)}}, args.json
    )
    print(f"\nresults: {path}")
    return 0 if all(r["ok"] == r["calls"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

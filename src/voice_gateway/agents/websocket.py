"""A remote agent service over a websocket: one connection per call (docs/agent-protocol.md).

Failures (cannot connect, no ``ready`` within ``connect_timeout``, no event for
``read_timeout`` while answering, the socket drops, an ``error`` message, a malformed message)
raise ``AgentError``; the bridge then switches to the agent's fallback or ends the call.

The silence is counted from the first request the agent has not said anything to since: a
caller who talks again before a stuck agent's ``read_timeout`` ran out (a barge-in cancels the
wait, and the next turn starts a new one) does not restart it.

An agent that stops reading its socket fails too: a send waits (websockets' write limit) once
the socket's buffers are full, and a send that cannot finish within ``read_timeout`` raises
``AgentError``, so a stuck agent never holds a call (or its unsent bytes) longer than that.
Either timeout cuts the connection at once (no ``end``: the agent is not listening), so the
fallback or the hang-up follows without delay; any other close takes at most ``CLOSE_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from voice_gateway.agents.base import (
    Agent,
    AgentAudio,
    AgentContext,
    AgentEvent,
    AgentText,
    AudioFormat,
    CallerTurn,
    Conversation,
    HangUp,
    SummaryUpdate,
    Transfer,
)
from voice_gateway.errors import AgentError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
ACCEPTED_FORMATS = [
    {"encoding": "mulaw", "sample_rate": 8000},
    {"encoding": "pcm16", "sample_rate": 8000},
    {"encoding": "pcm16", "sample_rate": 16000},
    {"encoding": "pcm16", "sample_rate": 24000},
]
_CLOSED = object()
#: How long a closing handshake may take before the connection is cut.
CLOSE_TIMEOUT = 2.0


async def _close(ws: ClientConnection, last: dict[str, Any] | None = None) -> None:
    """Send ``last`` (if any) and close the connection; an agent that does not take them within
    ``CLOSE_TIMEOUT`` (a stuck one) is cut off."""
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            if last is not None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send(json.dumps(last))
            await ws.close()
    except TimeoutError:
        ws.transport.abort()


def _b64decode(value: object) -> bytes:
    if not isinstance(value, str):
        raise AgentError("agent sent audio that is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentError("agent sent malformed base64 audio") from exc


class WebSocketConversation(Conversation):
    def __init__(
        self, ws: ClientConnection, audio_format: AudioFormat, read_timeout: float
    ) -> None:
        self.ws = ws
        self.audio_format = audio_format
        self.read_timeout = read_timeout
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._heard_at = -math.inf  # when the agent last sent something
        self._asked_at = -math.inf  # the first request it has said nothing to since
        self._reader = asyncio.create_task(self._read(), name="agent-reader")

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                try:
                    message = json.loads(raw)
                except ValueError:
                    message = {"type": "error", "message": "agent sent malformed JSON"}
                if not isinstance(message, dict):
                    message = {"type": "error", "message": "agent sent a non-object message"}
                self._heard_at = self._loop.time()
                await self._inbox.put(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._inbox.put(_CLOSED)

    async def _send(self, message: dict[str, Any], within: float | None = None) -> None:
        """Send ``message``. An agent that does not take it within ``within`` seconds (default
        ``read_timeout``) is not reading: the connection is cut."""
        limit = self.read_timeout if within is None else within
        try:
            await asyncio.wait_for(self.ws.send(json.dumps(message)), limit)
        except TimeoutError as exc:
            self.ws.transport.abort()  # its buffers are full: nothing more will go through
            raise AgentError(f"agent took no data for {limit:.1f}s (not reading)") from exc
        except websockets.ConnectionClosed as exc:
            raise AgentError(f"agent connection closed: {exc}") from exc

    def _time_left(self) -> float:
        """How long to wait for the agent: ``read_timeout``, but counted from the request it
        has said nothing to since, if there is one."""
        if self._heard_at >= self._asked_at:
            return self.read_timeout
        return max(0.0, self._asked_at + self.read_timeout - self._loop.time())

    async def _ask(self, message: dict[str, Any]) -> None:
        """Send a request (turn, keypad); unless the agent is still silent since an earlier
        one, its silence is counted from now."""
        if self._heard_at >= self._asked_at:
            self._asked_at = self._loop.time()
        left = self._time_left()
        if left <= 0:
            raise self._silent()
        await self._send(message, left)

    def _silent(self) -> AgentError:
        self.ws.transport.abort()  # it does not answer: no point in a closing handshake
        return AgentError(f"agent sent nothing for {self.read_timeout:.1f}s")

    async def _events(self, turn_id: int) -> AsyncIterator[AgentEvent]:
        while True:
            try:
                message = await asyncio.wait_for(self._inbox.get(), self._time_left())
            except TimeoutError as exc:
                raise self._silent() from exc
            if message is _CLOSED:
                self._inbox.put_nowait(_CLOSED)
                raise AgentError("agent connection closed mid-answer")
            kind = message.get("type")
            if kind == "error":
                raise AgentError(f"agent error: {message.get('message', '')}")
            tagged = message.get("turn_id")
            if tagged is not None and tagged != turn_id:
                continue  # left over from an answer the caller interrupted
            if kind == "done":
                return
            if kind == "audio":
                yield AgentAudio(_b64decode(message.get("audio")))
            elif kind == "text":
                text = str(message.get("text", ""))
                yield AgentText(text, "user") if message.get("role") == "user" else AgentText(text)
            elif kind == "summary":
                yield SummaryUpdate(str(message.get("text", "")))
            elif kind == "hangup":
                yield HangUp(str(message.get("reason", "")))
            elif kind == "transfer":
                target = message.get("target")
                yield Transfer(str(target) if target else None)
            else:
                log.info("agent sent unknown message type %r; skipped", kind)

    async def answer(self, turn: CallerTurn) -> AsyncIterator[AgentEvent]:
        await self._ask(
            {
                "type": "turn",
                "turn_id": turn.turn_id,
                "duration_ms": turn.duration_ms,
                "audio": base64.b64encode(turn.audio).decode(),
            }
        )
        async for event in self._events(turn.turn_id):
            yield event

    async def dtmf(self, digits: str, turn_id: int) -> AsyncIterator[AgentEvent]:
        await self._ask({"type": "dtmf", "turn_id": turn_id, "digits": digits})
        async for event in self._events(turn_id):
            yield event

    async def interrupted(self, turn_id: int, heard_ms: int) -> None:
        await self._send({"type": "interrupted", "turn_id": turn_id, "heard_ms": heard_ms})

    async def close(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            await _close(self.ws, {"type": "end", "reason": reason})
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class WebSocketAgent(Agent):
    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, read_timeout: float = 15.0, **options: Any
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.options = options

    async def open(self, context: AgentContext) -> Conversation:
        session = context.session
        try:
            ws = await asyncio.wait_for(
                connect(self.url, max_size=MAX_MESSAGE_BYTES, open_timeout=self.connect_timeout),
                self.connect_timeout,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise AgentError(f"cannot connect to agent at {self.url}: {exc}") from exc
        start = {
            "type": "start",
            "version": PROTOCOL_VERSION,
            "session": session.model_dump(mode="json"),
            "history": [m.model_dump(mode="json") for m in context.history],
            "tools": [t.model_dump(mode="json") for t in context.tools],
            "documents": list(context.documents),
            "options": self.options,
            "audio": {"accept": ACCEPTED_FORMATS},
        }
        try:
            async with asyncio.timeout(self.connect_timeout):  # sending start, too
                await ws.send(json.dumps(start))
                raw = await ws.recv()
            ready = json.loads(raw)
            if not isinstance(ready, dict) or ready.get("type") != "ready":
                raise AgentError(f"agent answered start with {str(raw)[:100]!r}, not ready")
            fmt = ready.get("audio") or {"encoding": "mulaw", "sample_rate": 8000}
            audio_format = AudioFormat(
                fmt.get("encoding", "mulaw"), int(fmt.get("sample_rate", 8000))
            )
        except AgentError:
            await _close(ws)
            raise
        except (TimeoutError, websockets.ConnectionClosed, ValueError, TypeError) as exc:
            await _close(ws)
            raise AgentError(f"agent at {self.url} did not get ready: {exc!r}") from exc
        return WebSocketConversation(ws, audio_format, self.read_timeout)

"""Inbound read pacing: a media stream's socket collects several frames per wake-up.

Twilio sends one websocket message per 20 ms frame. Woken for each, the event loop pays an
``epoll`` wake-up, a ``recv``, aiohttp's dispatch and a task switch per frame: most of what a
call costs. Most frames decide nothing at once, though: while the caller talks, a turn cannot
end before a whole end-of-turn silence has passed; while the line is quiet and the agent is
silent, nothing the caller says is acted on before a turn has started and ended. The bridge
knows how long the next frame may wait without delaying anything (``audio_slack_ms``: the
time to the earliest barge-in while the agent speaks, to the earliest turn end while the
caller has the turn); the pacer turns that into the socket's receive low-water mark
(``SO_RCVLOWAT``), so the kernel wakes the loop only once the frame that could decide
something has arrived, and one ``recv`` then takes every frame before it.

The guarantee: a frame waits in the kernel at most ``slack`` (and never more than
``max_wait_ms``, the ``inbound_read_interval_ms`` setting), so a barge-in or a turn end is
handled as soon as its frame arrives, exactly as without pacing. For ``k`` frames per read the
mark is ``(k - 1) * size + 1`` bytes with ``size`` the smallest media message seen: the
``k``-th frame completes the mark whatever part of a frame aiohttp already holds (less than
``size``), and any other message (a mark echo, a key press) only adds bytes, so the kernel
wakes earlier, never later. Every byte is still read, in order; pacing only changes when.
The slack is taken after every frame; the one thing that shrinks it between frames, the agent
starting to speak without a turn end (an answer to a key press), lowers the mark at once
(``tighten``, from the stream's ``play``).

A media stream whose frames stop (no more data behind a message held under the mark) must not
sit on it: ``watchdog`` (called every ``WATCHDOG_SECONDS`` for every live stream) drops the mark
of a stream that read no frame since the last call, and the kernel then wakes at once.
"""

from __future__ import annotations

import logging
import math
import socket
from typing import Any, Final

from voice_gateway.telephony.playback import FRAME_MS

log = logging.getLogger(__name__)

#: ``socket.SO_RCVLOWAT`` where the platform has it (Linux, macOS, the BSDs).
_SO_RCVLOWAT: Final[int | None] = getattr(socket, "SO_RCVLOWAT", None)
#: How often every live stream's pacing is checked for a stalled socket.
WATCHDOG_SECONDS: Final = 0.5
#: Websocket framing of a masked client message of 126..65535 bytes (2 + 2 length + 4 mask);
#: a 20 ms Twilio media message is ~330 bytes. Shorter messages (<= 125) have 2 bytes less.
_HEADER_BYTES: Final = 8


def wire_bytes(text_len: int) -> int:
    """Bytes on the socket of a client text message of ``text_len`` bytes."""
    return text_len + (_HEADER_BYTES if text_len > 125 else _HEADER_BYTES - 2)


def low_water_mark(frames: int, frame_bytes: int) -> int:
    """The ``SO_RCVLOWAT`` that wakes the reader once ``frames`` more whole frames are in."""
    if frames <= 1 or frame_bytes <= 0:
        return 1
    return (frames - 1) * frame_bytes + 1


def frames_per_read(slack_ms: float, max_wait_ms: int) -> int:
    """Frames one read may take when the next frame may wait ``slack_ms``."""
    wait = min(slack_ms, float(max_wait_ms))
    if wait < FRAME_MS or math.isnan(wait):
        return 1
    return 1 + int(wait // FRAME_MS)


class InboundPacer:
    """Sets one media stream's ``SO_RCVLOWAT`` from its bridge's audio slack."""

    __slots__ = ("_frame_bytes", "_frames_at_check", "_lowat", "_sock", "_stopped", "max_wait_ms")

    def __init__(self, sock: Any, max_wait_ms: int) -> None:
        self._sock = sock
        self.max_wait_ms = max_wait_ms
        self._frame_bytes = 0  # smallest media message seen, on the wire
        self._lowat = 1
        self._frames_at_check = -1
        self._stopped = False

    @classmethod
    def for_transport(cls, transport: Any, max_wait_ms: int) -> InboundPacer | None:
        """A pacer for the transport's TCP socket, or None where pacing is off or impossible
        (no ``SO_RCVLOWAT`` on this platform, no socket behind the transport)."""
        if max_wait_ms < FRAME_MS or _SO_RCVLOWAT is None or transport is None:
            return None
        sock = transport.get_extra_info("socket")
        if sock is None:
            return None
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVLOWAT, 1)
        except OSError as exc:
            log.info("inbound read pacing unavailable on this socket: %s", exc)
            return None
        return cls(sock, max_wait_ms)

    @property
    def low_water_mark(self) -> int:
        return self._lowat

    def after_frame(self, text_len: int, slack_ms: float) -> None:
        """A media message of ``text_len`` bytes was handled; the next may wait ``slack_ms``.
        (Once per frame: ``frames_per_read`` and ``low_water_mark`` inlined.)"""
        if self._stopped:
            return
        if slack_ms < FRAME_MS or slack_ms != slack_ms:  # the next frame counts (or NaN)
            lowat = 1
        else:
            size = text_len + (_HEADER_BYTES if text_len > 125 else _HEADER_BYTES - 2)
            if size < self._frame_bytes or not self._frame_bytes:
                self._frame_bytes = size
            wait = slack_ms if slack_ms < self.max_wait_ms else self.max_wait_ms
            lowat = int(wait // FRAME_MS) * self._frame_bytes + 1
        if lowat != self._lowat:
            self._set(lowat)

    def tighten(self, slack_ms: float) -> None:
        """The slack shrank between frames (the agent began to speak, e.g. answering a key
        press): lower a mark set for the old slack now, so that the frame that could barge in
        wakes the reader as it arrives. Never raises the mark: frames already held under it
        stay counted from the last read."""
        if self._stopped or self._lowat == 1:
            return
        # Not on the per-frame path: the module's own arithmetic, not after_frame's inlined copy.
        lowat = low_water_mark(frames_per_read(slack_ms, self.max_wait_ms), self._frame_bytes)
        if lowat < self._lowat:
            self._set(lowat)

    def stop(self) -> None:
        """Read on arrival from now on: the stream is closing (the close handshake's reply is
        a short message that nothing would follow)."""
        self._stopped = True
        if self._lowat != 1:
            self._set(1)

    def watchdog(self, frames_in: int) -> None:
        """Called periodically with the stream's frame count: a stream that read no frame since
        the last call while holding a mark gets it dropped (the kernel wakes at once if bytes
        are waiting)."""
        if frames_in == self._frames_at_check and self._lowat != 1:
            log.info("inbound read pacing: no frame in %.1fs, reading on arrival", WATCHDOG_SECONDS)
            self._set(1)
        self._frames_at_check = frames_in

    def _set(self, lowat: int) -> None:
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, _SO_RCVLOWAT, lowat)
        except OSError:  # the socket is closing: nothing left to pace
            self._lowat = 1
            return
        self._lowat = lowat

"""Outbound audio pacing and the playback clock (pure: no I/O; the stream handler drives it).

Agent audio is cut into 20 ms frames and sent no further ahead of what the caller has heard
than ``lead_ms``. Every ``mark_every`` frames a clock mark goes out; Twilio echoes a mark once
the audio before it has played, so the last echoed mark tells what the caller has heard
(``played_ms``, to within one mark interval). ``clear`` empties Twilio's buffer: Twilio then
returns every pending mark at once, which proves nothing about playback, so marks carry an
epoch and echoes from before the last clear do not move the clock.

Mark names: ``c<epoch>.<n>`` (clock) and ``a<epoch>.<n>.<label>`` (end of an answer).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class _PendingMark:
    name: str
    position_ms: int  # sent audio position the mark stands at
    label: str | None


class Playback:
    __slots__ = (
        "_buf",
        "_epoch",
        "_labels_waiting",
        "_last_echo_at",
        "_marks",
        "_seq",
        "_since_mark",
        "chunk_bytes",
        "lead_ms",
        "mark_every",
        "played_ms",
        "sent_ms",
    )

    def __init__(self, *, lead_ms: int = 400, frame_ms: int = FRAME_MS, mark_ms: int = 100) -> None:
        """``frame_ms``: audio per outbound media message (20 ms frames by default; Twilio
        takes longer payloads too, which costs fewer messages). ``mark_ms``: clock-mark spacing."""
        if frame_ms % FRAME_MS or frame_ms <= 0:
            raise ValueError("frame_ms must be a positive multiple of 20")
        self.lead_ms = max(lead_ms, 2 * frame_ms)
        self.chunk_bytes = frame_ms * FRAME_BYTES // FRAME_MS
        self.mark_every = max(1, mark_ms // frame_ms)
        self._buf = bytearray()
        self._marks: deque[_PendingMark] = deque()
        self._labels_waiting: list[tuple[int, str]] = []
        self._epoch = 0
        self._seq = 0
        self._since_mark = 0
        self._last_echo_at = 0.0
        self.sent_ms = 0  # audio sent to Twilio since the stream started (all epochs)
        self.played_ms = 0  # confirmed heard

    # -- producer side ----------------------------------------------------------------------

    def enqueue(self, ulaw: bytes) -> None:
        self._buf += ulaw

    def end_of_answer(self, label: str) -> None:
        """Queue a labelled mark after the audio queued so far."""
        self._labels_waiting.append((len(self._buf), label))

    @property
    def queued_ms(self) -> int:
        """Audio not yet confirmed played: sent-but-unheard plus not-yet-sent."""
        return (self.sent_ms - self.played_ms) + len(self._buf) * FRAME_MS // FRAME_BYTES

    @property
    def idle(self) -> bool:
        return not self._buf and not self._marks and not self._labels_waiting

    # -- sender side --------------------------------------------------------------------------

    def take(self, now: float) -> list[tuple[str, bytes | str]]:
        """What may be sent now: ``("media", ulaw)`` and ``("mark", name)`` items, in order."""
        out: list[tuple[str, bytes | str]] = []
        if self._buf and self.sent_ms == self.played_ms:
            self._last_echo_at = now  # Twilio's buffer was empty: playback starts now
        while self._buf and self.sent_ms - self.played_ms < self.lead_ms:
            # a labelled mark due at the start of the buffer goes out before more audio
            self._emit_labels(out)
            chunk = bytes(self._buf[: self.chunk_bytes])
            del self._buf[: self.chunk_bytes]
            self._labels_waiting = [
                (max(0, pos - len(chunk)), lb) for pos, lb in self._labels_waiting
            ]
            out.append(("media", chunk))
            self.sent_ms += len(chunk) * FRAME_MS // FRAME_BYTES
            self._since_mark += 1
            if self._since_mark >= self.mark_every:
                self._since_mark = 0
                out.append(("mark", self._mark(None)))
        self._emit_labels(out)
        return out

    def _emit_labels(self, out: list[tuple[str, bytes | str]]) -> None:
        while self._labels_waiting and self._labels_waiting[0][0] <= 0:
            _, label = self._labels_waiting.pop(0)
            self._since_mark = 0
            out.append(("mark", self._mark(label)))

    def _mark(self, label: str | None) -> str:
        self._seq += 1
        name = (
            f"c{self._epoch}.{self._seq}"
            if label is None
            else f"a{self._epoch}.{self._seq}.{label}"
        )
        self._marks.append(_PendingMark(name, self.sent_ms, label))
        return name

    # -- Twilio side ----------------------------------------------------------------------------

    def on_mark(self, name: str, now: float) -> list[str]:
        """An echoed mark: advance the clock; returns answer labels now fully played."""
        labels: list[str] = []
        current = name[1:].split(".", 1)[0] == str(self._epoch) if name[:1] in "ca" else False
        while self._marks:
            mark = self._marks.popleft()
            if mark.label is not None:
                labels.append(mark.label)
            if current and mark.position_ms > self.played_ms:
                self.played_ms = mark.position_ms
                self._last_echo_at = now
            if mark.name == name:
                break
        return labels

    def clear(self, now: float) -> tuple[int, list[str]]:
        """Barge-in: drop queued audio. Returns the estimated position the caller heard up to
        (the clock moves there) and the labels whose marks were never sent (done now); labels
        already sent come back through ``on_mark`` when Twilio returns their marks."""
        if self.sent_ms > self.played_ms:
            elapsed_ms = int((now - self._last_echo_at) * 1000)
            self.played_ms = min(self.sent_ms, self.played_ms + max(0, elapsed_ms))
        self.sent_ms = self.played_ms
        self._buf.clear()
        unsent = [label for _, label in self._labels_waiting]
        self._labels_waiting.clear()
        self._epoch += 1
        self._since_mark = 0
        return self.played_ms, unsent

    def drop_unsent_labels(self) -> list[str]:
        """Labels whose marks were never sent (the stream ended): report them as done."""
        labels = [lb for _, lb in self._labels_waiting] + [m.label for m in self._marks if m.label]
        self._labels_waiting.clear()
        self._marks.clear()
        return labels

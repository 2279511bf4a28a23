"""Logging: JSON or text lines, phone numbers masked, call context on every line of a call.

``call_context(session_id=..., call_sid=...)`` binds ids to the current task (contextvars), so
every log line written while handling a call carries them without passing them around.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import orjson

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "vg_log_context",
    default={},  # noqa: B039 - never mutated: every change sets a new dict
)

# E.164 numbers (+ and 8-15 digits) and bare runs of 10+ digits: keep the last 4 digits.
_PHONE = re.compile(r"(?<![\w+-])\+?\d{6,11}(\d{4})(?!\d)")


def mask_phone(text: str) -> str:
    """Mask phone numbers in ``text``: ``+14155550100`` -> ``+*******0100``."""
    return _PHONE.sub(
        lambda m: (
            ("+" if m.group(0).startswith("+") else "")
            + "*" * (len(m.group(0).lstrip("+")) - 4)
            + m.group(1)
        ),
        text,
    )


@contextlib.contextmanager
def call_context(**ids: str | None) -> Iterator[None]:
    merged = {**_context.get(), **{k: v for k, v in ids.items() if v}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**ids: str | None) -> None:
    """Add ids to the current task's log context (for the rest of the task)."""
    _context.set({**_context.get(), **{k: v for k, v in ids.items() if v}})


class _MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = mask_phone(record.getMessage())
        record.msg, record.args = message, None
        for key, value in _context.get().items():
            setattr(record, key, value)
        record.vg_context = _context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, milliseconds, UTC), level, logger, msg, the call
    context, and exc when there is one; ASCII only (non-ASCII escaped), whatever the stream's
    encoding. A webhook writes two lines at INFO, so this is kept cheap: orjson for the usual
    all-ASCII line (json for the rest) and the timestamp's second formatted once."""

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "vg_context", {}))
        if record.exc_info:
            entry["exc"] = mask_phone(self.formatException(record.exc_info))
        try:
            line = orjson.dumps(entry).decode()
            if line.isascii():  # what json writes too; json escapes anything else to ASCII
                return line
        except TypeError:  # e.g. a lone surrogate in a message
            pass
        return json.dumps(entry, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = getattr(record, "vg_context", {})
        if ctx:
            line += " [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]"
        return line


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel("WARNING")


def masking_filter() -> logging.Filter:
    return _MaskingFilter()

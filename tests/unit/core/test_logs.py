"""Logs: phone numbers masked, call ids on every line, secrets never printed."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from voice_gateway.logs import JsonFormatter, call_context, mask_phone, masking_filter


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("from +14155550100 to +18005550199", "from +*******0100 to +*******0199"),
        ("callback 4155550100", "callback ******0100"),
        ("+442071838750", "+********8750"),
    ],
)
def test_phone_numbers_keep_only_their_last_four_digits(text: str, masked: str) -> None:
    assert mask_phone(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "CA1234567890abcdef1234567890abcdef",
        "session 5b0c1f2e-4a3b-4c5d-9e8f-123456789012",
        "took 1234 ms",
        "duration=13.250",
    ],
)
def test_ids_and_numbers_that_are_not_phone_numbers_are_left_alone(text: str) -> None:
    assert mask_phone(text) == text


def test_json_lines_carry_the_call_context_and_masked_numbers() -> None:
    logger = logging.getLogger("test.logs")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    handler.addFilter(masking_filter())
    logger.addHandler(handler)
    try:
        with call_context(session_id="s-1", call_sid="CAabc"):
            logger.warning("caller %s hung up", "+14155550100")
        logger.warning("outside a call")
    finally:
        logger.removeHandler(handler)
    first = json.loads(JsonFormatter().format(records[0]))
    assert first["msg"] == "caller +*******0100 hung up"
    assert first["session_id"] == "s-1" and first["call_sid"] == "CAabc"
    assert first["level"] == "warning"
    second = json.loads(JsonFormatter().format(records[1]))
    assert "call_sid" not in second


def _record(msg: str, created: float) -> logging.LogRecord:
    record = logging.LogRecord("test.logs", logging.INFO, __file__, 1, msg, None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    return record


def test_json_timestamps_are_utc_with_milliseconds() -> None:
    formatter = JsonFormatter()
    for created in (1795313220.5357, 1795313220.0004, 1795313221.9999, 1700000000.25):
        entry = json.loads(formatter.format(_record("x", created)))
        ts = datetime.fromisoformat(entry["ts"])
        assert entry["ts"] == ts.isoformat(timespec="milliseconds")
        assert ts.utcoffset() == timedelta(0)
        assert 0 <= created - ts.timestamp() < 0.001


def test_json_lines_carry_any_text_in_ascii() -> None:
    formatter = JsonFormatter()
    for msg in ('Zoë said "hi" \\ ☎\n\t\x01\x7f\u2028', "a lone surrogate \ud800", "plain"):
        line = formatter.format(_record(msg, 1795313220.5))
        assert line.isascii()
        ts = datetime.fromtimestamp(1795313220.5, UTC).isoformat(timespec="milliseconds")
        entry = {"ts": ts, "level": "info", "logger": "test.logs", "msg": msg}
        assert line == json.dumps(entry, separators=(",", ":"))  # what it always wrote
        assert json.loads(line)["msg"] == msg

"""Outbound pacing and the mark-driven playback clock."""

from __future__ import annotations

import pytest

from voice_gateway.telephony.playback import Playback

SECOND = b"\x01" * 8000  # 1 s of mu-law


def media(items: list[tuple[str, bytes | str]]) -> list[bytes]:
    return [i for k, i in items if k == "media"]  # type: ignore[misc]


def marks(items: list[tuple[str, bytes | str]]) -> list[str]:
    return [i for k, i in items if k == "mark"]  # type: ignore[misc]


def test_sends_20ms_frames_no_further_ahead_than_the_lead_with_clock_marks() -> None:
    p = Playback(lead_ms=400)
    p.enqueue(SECOND)
    first = p.take(now=0.0)
    assert [len(m) for m in media(first)] == [160] * 20  # 400 ms, then it waits
    assert len(marks(first)) == 4  # one every 100 ms
    assert p.sent_ms == 400 and p.played_ms == 0 and p.queued_ms == 1000
    assert p.take(now=0.1) == []  # nothing heard yet: nothing more goes out
    assert p.on_mark(marks(first)[0], now=0.1) == []
    assert p.played_ms == 100
    more = p.take(now=0.1)
    assert len(media(more)) == 5 and p.sent_ms == 500


def test_longer_frames_send_fewer_messages() -> None:
    p = Playback(lead_ms=400, frame_ms=100)
    p.enqueue(SECOND)
    out = p.take(now=0.0)
    assert [len(m) for m in media(out)] == [800] * 4
    assert len(marks(out)) == 4
    with pytest.raises(ValueError):
        Playback(frame_ms=30)


def test_the_gateway_default_one_message_and_one_mark_per_200_ms() -> None:
    p = Playback(lead_ms=400, frame_ms=200, mark_ms=200)
    p.enqueue(SECOND)
    out = p.take(now=0.0)
    assert [kind for kind, _ in out] == ["media", "mark", "media", "mark"]  # 400 ms ahead
    assert [len(m) for m in media(out)] == [1600, 1600]
    p.on_mark(marks(out)[0], now=0.2)  # 200 ms heard: 200 ms more may go
    more = p.take(now=0.2)
    assert [len(m) for m in media(more)] == [1600] and len(marks(more)) == 1


def test_an_answer_label_fires_when_its_audio_has_played() -> None:
    p = Playback(lead_ms=10_000)
    p.enqueue(b"\x01" * 1600)  # 200 ms
    p.end_of_answer("t1")
    out = p.take(now=0.0)
    names = marks(out)
    assert names[-1].endswith(".t1")
    assert p.on_mark(names[0], now=0.1) == []  # the clock mark at 100 ms
    assert p.on_mark(names[-1], now=0.2) == ["t1"]
    assert p.played_ms == 200 and p.idle


def test_clear_moves_the_clock_to_what_was_heard_and_ignores_the_returned_marks() -> None:
    p = Playback(lead_ms=500)
    p.enqueue(SECOND)
    p.end_of_answer("t1")
    out = p.take(
        now=10.0
    )  # 500 ms go out; the label waits behind the rest  # playback starts at t=10 s
    names = marks(out)
    p.on_mark(names[1], now=10.2)  # the caller heard 200 ms
    heard, unsent = p.clear(now=10.35)  # ...and 150 ms more when they interrupted
    assert heard == 350
    assert unsent == ["t1"]  # its mark was never sent: done now
    assert p.queued_ms == 0
    # Twilio returns the pending marks at once after a clear: they prove nothing
    for name in names[2:]:
        p.on_mark(name, now=10.36)
    assert p.played_ms == 350
    # the next answer starts from there
    p.enqueue(b"\x01" * 800)
    again = p.take(now=11.0)
    assert len(media(again)) == 5 and p.sent_ms == 450


def test_labels_not_sent_when_the_stream_ends_are_reported_done() -> None:
    p = Playback(lead_ms=100)
    p.enqueue(SECOND)
    p.end_of_answer("t9")
    p.take(now=0.0)
    assert p.drop_unsent_labels() == ["t9"]

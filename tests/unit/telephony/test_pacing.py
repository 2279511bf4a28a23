"""Read pacing's arithmetic: how many frames a read may take, and the low-water mark that
makes the kernel wake the reader no later than the frame that could decide something."""

from __future__ import annotations

import math
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_gateway.telephony import media as codec
from voice_gateway.telephony.pacing import (
    InboundPacer,
    frames_per_read,
    low_water_mark,
    wire_bytes,
)


def test_frames_per_read_follows_the_slack_up_to_the_limit() -> None:
    assert frames_per_read(0.0, 100) == 1  # the very next frame could decide: read it
    assert frames_per_read(19.9, 100) == 1
    assert frames_per_read(20.0, 100) == 2
    assert frames_per_read(60.0, 100) == 4  # the 4th frame could barge in: wake for it
    assert frames_per_read(580.0, 100) == 6  # a whole silence to go: the limit, 100 ms
    assert frames_per_read(math.inf, 100) == 6
    assert frames_per_read(math.inf, 0) == 1
    assert frames_per_read(math.nan, 100) == 1


def test_a_twilio_media_message_size_on_the_wire() -> None:
    text = codec.twilio_media("MZ" + "0" * 32, 12, 11, 200, b"\xff" * 160)
    # client frames are masked: 2 header + 2 length + 4 mask bytes for 126..65535 bytes
    assert wire_bytes(len(text)) == len(text) + 8
    assert wire_bytes(100) == 106


def test_one_frame_or_less_means_read_on_arrival() -> None:
    assert low_water_mark(1, 340) == 1
    assert low_water_mark(0, 340) == 1
    assert low_water_mark(5, 0) == 1  # no media seen yet


@given(
    frames=st.integers(min_value=2, max_value=12),
    size=st.integers(min_value=200, max_value=2000),
    growth=st.lists(st.integers(min_value=0, max_value=3), min_size=12, max_size=12),
    held=st.integers(min_value=0, max_value=1999),
    extra=st.integers(min_value=0, max_value=500),
)
def test_the_kth_frame_always_reaches_the_mark_and_k_minus_1_never_do(
    frames: int, size: int, growth: list[int], held: int, extra: int
) -> None:
    """Whatever part of a frame aiohttp already holds (``held`` < its size), however the later
    frames grew (sequence numbers get longer), and whatever other messages came in between
    (``extra``), the kernel's queue reaches the mark by the time the k-th frame is whole."""
    held %= size
    mark = low_water_mark(frames, size)
    sizes = [size + sum(growth[: i + 1]) for i in range(frames)]
    # bytes queued in the kernel once the k-th frame is complete (the first one partly read)
    queued_at_kth = sum(sizes) - held + extra
    assert queued_at_kth >= mark
    # and k - 1 whole frames alone, nothing held, nothing else: not yet (the read is batched)
    if not any(growth):
        assert (frames - 1) * size < mark


class _Transport:
    """What ``for_transport`` asks of an asyncio transport: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> socket.socket | None:
        return self.sock if name == "socket" else None


@pytest.mark.skipif(not hasattr(socket, "SO_RCVLOWAT"), reason="no SO_RCVLOWAT here")
def test_after_frame_sets_the_mark_the_pure_functions_give() -> None:
    text_len = 330
    with socket.socket() as sock:
        pacer = InboundPacer.for_transport(_Transport(sock), 100)
        assert pacer is not None
        for slack in (0.0, 10.0, 20.0, 39.9, 40.0, 60.0, 99.0, 100.0, 580.0, math.inf, math.nan):
            pacer.after_frame(text_len, slack)
            expected = low_water_mark(frames_per_read(slack, 100), wire_bytes(text_len))
            assert pacer.low_water_mark == expected, slack
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == expected

"""Media Streams codec against recorded Twilio frames (tests/fixtures/twilio/*.jsonl)."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voice_gateway.errors import PayloadTooLarge, ProtocolError
from voice_gateway.telephony import media as m
from voice_gateway.telephony.media import (
    MULAW_8K_MONO,
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    OutboundClear,
    OutboundEncoder,
    OutboundMark,
    OutboundMedia,
    Start,
    Stop,
    Unknown,
    clear_message,
    mark_message,
    media_message,
    parse_inbound,
    parse_outbound,
    twilio_connected,
    twilio_dtmf,
    twilio_mark,
    twilio_media,
    twilio_start,
    twilio_stop,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
STREAM_FIXTURE = FIXTURES / "twilio" / "media_stream.jsonl"
MALFORMED_FIXTURE = FIXTURES / "twilio" / "malformed.jsonl"
CALLER_ULAW = FIXTURES / "caller.ulaw"

AC = "AC3f2b9a4c1d8e7f60a5b4c3d2e1f0a9b8"
CA = "CA9c7b2e1f4a3d5c6b8e0f1a2b3c4d5e6f"
MZ = "MZ18ad3ab5a668481ce02b83e7395059f0"

RECORDED = STREAM_FIXTURE.read_text(encoding="utf-8").splitlines()


def _frame(index: int) -> bytes:
    """20 ms (160 bytes) of the recorded caller audio the fixture's media payloads came from."""
    audio = CALLER_ULAW.read_bytes()
    return audio[index * 160 : (index + 1) * 160]


def _malformed() -> list[tuple[str, str | bytes]]:
    cases: list[tuple[str, str | bytes]] = []
    for line in MALFORMED_FIXTURE.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        raw = entry["raw"] if "raw" in entry else base64.b64decode(entry["raw_base64"])
        cases.append((entry["case"], raw))
    return cases


MALFORMED = _malformed()

# --------------------------------------------------------------------------- recorded stream


def test_recorded_stream_parses_to_expected_events_in_order() -> None:
    events = [parse_inbound(line) for line in RECORDED]
    assert [type(e) for e in events] == [
        Connected,
        Start,
        Media,
        Media,
        Media,
        Media,
        Dtmf,
        Mark,
        Media,
        Stop,
    ]
    # Every frame after `connected` carries the stream SID and a sequence number counting up
    # from 1, converted from Twilio's string to an int.
    numbered = events[1:]
    assert [e.sequence_number for e in numbered] == list(range(1, 10))  # type: ignore[union-attr]
    assert {e.stream_sid for e in numbered} == {MZ}  # type: ignore[union-attr]


def test_connected() -> None:
    assert parse_inbound(RECORDED[0]) == Connected(protocol="Call", version="1.0.0")


def test_start_carries_call_and_custom_parameters() -> None:
    start = parse_inbound(RECORDED[1])
    assert start == Start(
        sequence_number=1,
        stream_sid=MZ,
        account_sid=AC,
        call_sid=CA,
        tracks=("inbound",),
        custom_parameters={
            "session_id": "ses_01J9ZK3Q7X",
            "stream_token": "AAAAAGdA3kI.q5N0vW2k8m1jB7cY3tR9pXoLz4HsE6fGaDuKiQnVbMw",
            "tenant": 'Acme & Sons <"east">',
        },
        media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1),
    )
    assert isinstance(start, Start)
    assert start.media_format == MULAW_8K_MONO


def test_media_payloads_are_decoded_recorded_audio() -> None:
    media = [e for e in map(parse_inbound, RECORDED) if isinstance(e, Media)]
    assert [(e.chunk, e.timestamp_ms, e.track) for e in media] == [
        (1, 21, "inbound"),
        (2, 41, "inbound"),
        (3, 61, "inbound"),
        (4, 81, "inbound"),
        (5, 101, "inbound"),
    ]
    assert [e.payload for e in media] == [_frame(60), _frame(61), _frame(62), _frame(0), _frame(63)]
    assert all(len(e.payload) == 160 for e in media)
    assert media[3].payload == b"\xff" * 160  # μ-law silence


def test_dtmf_mark_stop() -> None:
    assert parse_inbound(RECORDED[6]) == Dtmf(
        sequence_number=6, stream_sid=MZ, track="inbound_track", digit="5"
    )
    assert parse_inbound(RECORDED[7]) == Mark(sequence_number=7, stream_sid=MZ, name="utt-17")
    assert parse_inbound(RECORDED[9]) == Stop(
        sequence_number=9, stream_sid=MZ, account_sid=AC, call_sid=CA
    )


@pytest.mark.parametrize("line", RECORDED)
def test_bytes_and_str_frames_parse_the_same(line: str) -> None:
    assert parse_inbound(line.encode("utf-8")) == parse_inbound(line)


def test_events_are_immutable() -> None:
    event = parse_inbound(RECORDED[2])  # built by the media fast path
    assert isinstance(event, Media)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.payload = b""  # type: ignore[misc]


def test_fast_path_builds_the_same_object_as_the_constructor() -> None:
    fast = parse_inbound(RECORDED[2])
    slow = m._parse_media(json.loads(RECORDED[2]))
    assert type(fast) is Media
    assert fast == slow
    assert repr(fast) == repr(slow)


def test_integers_sent_as_json_numbers_are_accepted() -> None:
    # Twilio sends strings; a JSON integer means the same thing and is not worth a dropped call.
    data = json.loads(RECORDED[2])
    data["sequenceNumber"] = 2
    data["media"]["chunk"] = 1
    data["media"]["timestamp"] = 21
    event = parse_inbound(json.dumps(data))
    assert isinstance(event, Media)
    assert (event.sequence_number, event.chunk, event.timestamp_ms) == (2, 1, 21)


def test_start_without_custom_parameters_gives_empty_dict() -> None:
    data = json.loads(RECORDED[1])
    del data["start"]["customParameters"]
    event = parse_inbound(json.dumps(data))
    assert isinstance(event, Start)
    assert event.custom_parameters == {}


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("case", "raw"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_malformed_frames_raise_protocol_error(case: str, raw: str | bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_inbound(raw)
    assert not isinstance(info.value, PayloadTooLarge)
    assert info.value.status == 400


def test_malformed_fixture_covers_the_required_cases() -> None:
    cases = {c for c, _ in MALFORMED}
    for required in (
        "bad_json_truncated",
        "media_bad_base64_chars",
        "media_missing_streamSid",
        "start_missing_callSid",
        "non_object_array",
        "binary_garbage",
    ):
        assert required in cases


def test_protocol_error_names_the_field() -> None:
    data = json.loads(RECORDED[1])
    del data["start"]["callSid"]
    with pytest.raises(ProtocolError) as info:
        parse_inbound(json.dumps(data))
    assert info.value.details == {"field": "start.callSid"}


def test_non_text_input_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_inbound(12345)  # type: ignore[arg-type]


def test_oversized_frames_raise_payload_too_large() -> None:
    big = twilio_media(MZ, 2, 1, 20, bytes(60_000))  # 80 KB of base64
    assert len(big) > m.MAX_INBOUND_BYTES
    with pytest.raises(PayloadTooLarge):
        parse_inbound(big)
    with pytest.raises(PayloadTooLarge):
        parse_inbound(big.encode())
    # A smaller limit applies to ordinary frames too.
    with pytest.raises(PayloadTooLarge):
        parse_inbound(RECORDED[2], max_bytes=100)


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    data = json.loads(RECORDED[1])
    data["start"]["customParameters"]["note"] = "€" * 1000  # 1000 characters, 3000 bytes
    message = json.dumps(data, ensure_ascii=False)
    size = len(message.encode("utf-8"))
    assert len(message) < size - 1500
    with pytest.raises(PayloadTooLarge):
        parse_inbound(message, max_bytes=size - 1)
    event = parse_inbound(message, max_bytes=size)  # exactly at the limit is fine
    assert isinstance(event, Start)
    assert event.custom_parameters["note"] == "€" * 1000


def test_unknown_event_is_returned_not_raised() -> None:
    raw = {"event": "speech-started", "sequenceNumber": "12", "streamSid": MZ, "extra": [1]}
    event = parse_inbound(json.dumps(raw))
    assert event == Unknown(event="speech-started", raw=raw)
    # `clear` is something we send, never something Twilio sends: unknown inbound.
    assert isinstance(parse_inbound(clear_message(MZ)), Unknown)


# --------------------------------------------------------------------------- gateway -> Twilio


def test_outbound_media_has_twilios_documented_shape() -> None:
    audio = _frame(61)
    message = OutboundEncoder(MZ).media(audio)
    assert json.loads(message) == {
        "event": "media",
        "streamSid": MZ,
        "media": {"payload": base64.b64encode(audio).decode("ascii")},
    }
    assert len(json.loads(message)["media"]["payload"]) == 216  # 160 bytes -> 216 base64 chars
    assert "\n" not in message


def test_outbound_mark_and_clear_have_twilios_documented_shape() -> None:
    encoder = OutboundEncoder(MZ)
    assert json.loads(encoder.mark("utt-17")) == {
        "event": "mark",
        "streamSid": MZ,
        "mark": {"name": "utt-17"},
    }
    assert json.loads(encoder.clear()) == {"event": "clear", "streamSid": MZ}


@pytest.mark.parametrize(
    "odd", ['MZ"},"event":"x', "MZ\\", "MZ\n\t\x00", "MZ é ☎ 🎧", "</script>", "\ud800"]
)
def test_outbound_builders_escape_sids_and_names(odd: str) -> None:
    encoder = OutboundEncoder(odd)
    assert json.loads(encoder.media(b"\x01\x02"))["streamSid"] == odd
    assert json.loads(encoder.mark(odd)) == {
        "event": "mark",
        "streamSid": odd,
        "mark": {"name": odd},
    }
    assert json.loads(encoder.clear()) == {"event": "clear", "streamSid": odd}


def test_module_level_builders_match_the_encoder() -> None:
    encoder = OutboundEncoder(MZ)
    assert media_message(MZ, b"abc") == encoder.media(b"abc")
    assert mark_message(MZ, "m1") == encoder.mark("m1")
    assert clear_message(MZ) == encoder.clear()


def test_gateway_encode_then_simulator_parse_round_trips() -> None:
    encoder = OutboundEncoder(MZ)
    batch = b"".join(_frame(i) for i in range(60, 110))  # 1 s of speech in one message
    assert parse_outbound(encoder.media(batch)) == OutboundMedia(stream_sid=MZ, payload=batch)
    assert parse_outbound(encoder.mark("a b&c")) == OutboundMark(stream_sid=MZ, name="a b&c")
    assert parse_outbound(encoder.clear()) == OutboundClear(stream_sid=MZ)


@pytest.mark.parametrize(
    "message",
    [
        twilio_start(MZ, AC, CA),  # only media, mark, clear go to Twilio
        twilio_stop(MZ, 9, AC, CA),
        twilio_dtmf(MZ, 3, "1"),
        '{"event":"media","media":{"payload":"AAAA"}}',  # no streamSid
        '{"event":"media","streamSid":"MZ1","media":{"payload":"not base64"}}',
        '{"event":"mark","streamSid":"MZ1","mark":{}}',
        '{"event":"clear"}',
        "not json",
        b"\xff\xfe\x00",
    ],
)
def test_simulator_rejects_what_twilio_rejects(message: str | bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_outbound(message)


# --------------------------------------------------------------------------- simulator encoders


def test_simulator_reproduces_the_recorded_frames() -> None:
    params = json.loads(RECORDED[1])["start"]["customParameters"]
    rebuilt = [
        twilio_connected(),
        twilio_start(MZ, AC, CA, custom_parameters=params),
        twilio_media(MZ, 2, 1, 21, _frame(60)),
        twilio_media(MZ, 3, 2, 41, _frame(61)),
        twilio_media(MZ, 4, 3, 61, _frame(62)),
        twilio_media(MZ, 5, 4, 81, _frame(0)),
        twilio_dtmf(MZ, 6, "5"),
        twilio_mark(MZ, 7, "utt-17"),
        twilio_media(MZ, 8, 5, 101, _frame(63)),
        twilio_stop(MZ, 9, AC, CA),
    ]
    assert [json.loads(x) for x in rebuilt] == [json.loads(x) for x in RECORDED]


def test_simulator_sends_counters_as_strings() -> None:
    frame: dict[str, Any] = json.loads(twilio_media(MZ, 4, 2, 5, b"\xff" * 160))
    assert frame["sequenceNumber"] == "4"
    assert frame["media"]["chunk"] == "2"
    assert frame["media"]["timestamp"] == "5"
    assert json.loads(twilio_start(MZ, AC, CA))["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }


def test_simulator_encode_then_gateway_parse_round_trips() -> None:
    fmt = MediaFormat("audio/x-mulaw", 8000, 1)
    params = {"token": "t.k", "quote": "\"<&>'", "unicode": "ünï ☎"}
    assert parse_inbound(twilio_start(MZ, AC, CA, custom_parameters=params)) == Start(
        1, MZ, AC, CA, ("inbound",), params, fmt
    )
    assert parse_inbound(twilio_media(MZ, 7, 6, 120, b"")) == Media(7, MZ, "inbound", 6, 120, b"")
    assert parse_inbound(twilio_mark(MZ, 8, "é")) == Mark(8, MZ, "é")
    assert parse_inbound(twilio_dtmf(MZ, 9, "#")) == Dtmf(9, MZ, "inbound_track", "#")
    assert parse_inbound(twilio_stop(MZ, 10, AC, CA)) == Stop(10, MZ, AC, CA)


# --------------------------------------------------------------------------- close codes


def test_close_codes() -> None:
    standard = {
        m.CLOSE_NORMAL: 1000,
        m.CLOSE_GOING_AWAY: 1001,
        m.CLOSE_PROTOCOL_ERROR: 1002,
        m.CLOSE_UNSUPPORTED_DATA: 1003,
        m.CLOSE_POLICY_VIOLATION: 1008,
        m.CLOSE_MESSAGE_TOO_BIG: 1009,
        m.CLOSE_INTERNAL_ERROR: 1011,
    }
    assert all(k == v for k, v in standard.items())
    app = [
        m.CLOSE_BAD_STREAM_TOKEN,
        m.CLOSE_UNKNOWN_SESSION,
        m.CLOSE_START_TIMEOUT,
        m.CLOSE_DUPLICATE_STREAM,
    ]
    assert all(4000 <= code <= 4999 for code in app)  # RFC 6455 private-use range
    assert len(set(app) | set(standard)) == len(app) + len(standard)
    for code in [*standard, *app]:  # every code is in the docstring table
        assert f"\n{code}   " in (m.__doc__ or "")


# --------------------------------------------------------------------------- properties

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["event", "sequenceNumber", "streamSid", "media", "start", "mark", "dtmf", "stop", "track"]
)
_event_objects = st.fixed_dictionaries(
    {"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "x"])},
    optional={
        "sequenceNumber": _json | st.from_regex(r"-?[0-9]{1,25}", fullmatch=True),
        "streamSid": _json,
        "protocol": _json,
        "version": _json,
        "media": st.dictionaries(
            st.sampled_from(["track", "chunk", "timestamp", "payload"]),
            _json | st.from_regex(r"[0-9]{1,3}", fullmatch=True) | st.just("AAAA"),
        ),
        "start": st.dictionaries(
            st.sampled_from(
                [
                    "streamSid",
                    "accountSid",
                    "callSid",
                    "tracks",
                    "customParameters",
                    "mediaFormat",
                ]
            ),
            _json,
        ),
        "mark": st.dictionaries(st.just("name"), _json),
        "dtmf": st.dictionaries(st.sampled_from(["track", "digit"]), _json),
        "stop": st.dictionaries(st.sampled_from(["accountSid", "callSid"]), _json),
    },
)


def _parse_or_error(message: str | bytes) -> object:
    try:
        return parse_inbound(message)
    except (ProtocolError, PayloadTooLarge) as exc:
        return type(exc)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text() | st.binary() | _json.map(json.dumps) | _event_objects.map(json.dumps))
def test_parse_inbound_raises_only_protocol_errors(message: str | bytes) -> None:
    _parse_or_error(message)  # any other exception fails the test
    _parse_or_error(message if isinstance(message, bytes) else message.encode("utf-8", "replace"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    seq=st.one_of(st.from_regex(r"[0-9]{1,20}", fullmatch=True), _json),
    chunk=st.one_of(st.from_regex(r"[0-9]{1,3}", fullmatch=True), _json),
    timestamp=st.one_of(st.from_regex(r"[0-9٣]{1,3}", fullmatch=True), _json),
    payload=st.one_of(st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()), _json),
    sid=st.one_of(st.just(MZ), _json),
    drop=st.sets(st.sampled_from(["media", "streamSid", "sequenceNumber", "track", "payload"])),
)
def test_media_fast_path_accepts_and_rejects_like_the_general_path(
    seq: Any, chunk: Any, timestamp: Any, payload: Any, sid: Any, drop: set[str]
) -> None:
    inner = {"track": "inbound", "chunk": chunk, "timestamp": timestamp, "payload": payload}
    data: dict[str, Any] = {"event": "media", "sequenceNumber": seq, "streamSid": sid}
    data["media"] = inner
    for key in drop:
        data.pop(key, None)
        inner.pop(key, None)
    message = json.dumps(data)
    try:
        slow: object = m._parse_media(json.loads(message))
    except ProtocolError:
        slow = ProtocolError
    assert _parse_or_error(message) == slow

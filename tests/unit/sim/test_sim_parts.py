"""TwiML reading, call analysis, audio helpers, the fake REST API and the CLI glue."""

from __future__ import annotations

import argparse

import pytest

from voice_gateway.errors import CallAlreadyEnded, ProtocolError, TwilioRestError
from voice_gateway.sim.audio import (
    SpeechSegment,
    caller_recording,
    caller_recording_info,
    frame_is_speech,
    silence,
    speech_segments,
    tone,
)
from voice_gateway.sim.caller import (
    CallConfig,
    CallResult,
    SimRegistry,
    SimulatedCall,
    parse_twiml,
    percentile,
)
from voice_gateway.sim.cli import SimulationReport, register, summary_lines
from voice_gateway.sim.twilio_api import FakeTwilioApi
from voice_gateway.telephony.rest import TwilioRestClient
from voice_gateway.telephony.twiml import busy, connect_stream, dial, say_and_hangup

ACCOUNT = "AC" + "b" * 32
TOKEN = "fake-api-token"
CALL = "CA" + "c" * 32

# -- TwiML ---------------------------------------------------------------------------------------


def test_parse_connect_stream() -> None:
    plan = parse_twiml(connect_stream("wss://gw/twilio/stream", {"session_id": "s", "t": "a&b"}))
    assert plan.verbs == ["Connect"]
    assert plan.stream_url == "wss://gw/twilio/stream"
    assert plan.stream_parameters == {"session_id": "s", "t": "a&b"}
    assert not plan.hangup and plan.reject is None and not plan.unsupported


def test_parse_say_hangup_reject_dial() -> None:
    plan = parse_twiml(say_and_hangup("Not in service."))
    assert (plan.verbs, plan.said, plan.hangup) == (["Say", "Hangup"], ["Not in service."], True)
    assert parse_twiml(busy()).reject == "busy"
    assert parse_twiml(dial("+15551234567")).dial == ["+15551234567"]
    assert parse_twiml("<Response><Gather/></Response>").unsupported == ["Gather"]


@pytest.mark.parametrize("text", ["not xml", "<Foo/>", "<Response><Say>"])
def test_parse_refuses_non_twiml(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_twiml(text)


# -- analysis ------------------------------------------------------------------------------------


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 99) == 5.0


def test_speech_segments() -> None:
    flags = [False] * 5 + [True] * 10 + [False] * 5 + [True] * 10 + [False] * 20 + [True] * 2
    assert speech_segments(flags) == [SpeechSegment(5, 29)]  # a 100 ms pause does not split
    assert speech_segments(flags, hangover_frames=3) == [
        SpeechSegment(5, 14),
        SpeechSegment(20, 29),
    ]


def test_audio_helpers() -> None:
    assert silence(20) == b"\xff" * 160
    assert len(tone(100)) == 800
    assert frame_is_speech(tone(20)) and not frame_is_speech(silence(20))
    recording = caller_recording()
    info = caller_recording_info()
    assert len(recording) == info["total_frames"] * 160
    flags = [frame_is_speech(recording[i : i + 160]) for i in range(0, len(recording), 160)]
    found = speech_segments(flags)
    assert len(found) == len(info["utterances"])
    for seg, utt in zip(found, info["utterances"], strict=True):
        assert abs(seg.start_frame - utt["start_frame"]) <= 5
        assert abs(seg.end_frame - utt["end_frame"]) <= 10


def _result(
    speech: list[bool],
    media_ms: list[float],
    clears: list[float],
    playout: list[tuple[float, float]],
) -> CallResult:
    res = CallResult(call_sid=CALL, account_sid=ACCOUNT)
    res.speech_flags = speech
    res.send_times_ms = [20.0 * n for n in range(len(speech))]
    res.media_times_ms = media_ms
    res.clears_ms = clears
    res.playout_ms = playout
    return res


def test_turn_latency_and_barge_in() -> None:
    # utterance 1: frames 10-29 (200-580 ms); utterance 2: frames 80-99 (1600-1980 ms)
    speech = [False] * 10 + [True] * 20 + [False] * 50 + [True] * 20 + [False] * 60
    res = _result(
        speech, media_ms=[1000.0, 1020.0, 1040.0], clears=[1700.0], playout=[(1000.0, 1700.0)]
    )
    assert res.turn_latencies_ms() == [pytest.approx(420.0)]  # 580 -> 1000; none after #2
    assert res.barge_in_ms() == [pytest.approx(100.0)]  # onset 1600 during playout -> clear 1700


# -- fake REST API with the gateway's real client ---------------------------------------------


async def test_fake_api_hang_up_and_errors() -> None:
    registry = SimRegistry()
    async with FakeTwilioApi(ACCOUNT, TOKEN, registry=registry) as api:
        client = TwilioRestClient(ACCOUNT, TOKEN, base_url=api.url)
        try:
            with pytest.raises(CallAlreadyEnded):  # unknown call: 20404
                await client.hang_up(CALL)
            api.add_call(CALL)
            await client.hang_up(CALL)
            assert api.updates(CALL) == [{"Status": "completed"}]
            with pytest.raises(CallAlreadyEnded):  # no longer in progress: 21220
                await client.redirect(CALL, dial("+15551234567"))
            other = "CA" + "d" * 32
            api.add_call(other)
            api.fail(other, status=500, code=20500, message="boom", times=1)
            with pytest.raises(TwilioRestError) as info:
                await client.hang_up(other)
            assert not isinstance(info.value, CallAlreadyEnded) and info.value.code == 20500
            await client.redirect(other, dial("+15551234567"))  # the failure was one-shot
            assert "Twiml" in api.updates(other)[0]
        finally:
            await client.close()
        bad = TwilioRestClient(ACCOUNT, "wrong-token", base_url=api.url)
        try:
            with pytest.raises(TwilioRestError) as info:
                await bad.hang_up(CALL)
            assert info.value.code == 20003
        finally:
            await bad.close()
        assert api.requests[-1].authorized is False


async def test_fake_api_reaches_a_running_call() -> None:
    registry = SimRegistry()
    call = SimulatedCall(
        CallConfig(
            base_url="http://127.0.0.1:9",
            auth_token=TOKEN,
            account_sid=ACCOUNT,
            call_sid=CALL,
            registry=registry,
        )
    )
    registry.add(call)
    async with FakeTwilioApi(ACCOUNT, TOKEN, registry=registry) as api:
        client = TwilioRestClient(ACCOUNT, TOKEN, base_url=api.url)
        try:
            await client.hang_up(CALL)
        finally:
            await client.close()
    assert call.result.ended_by == "api-hangup"
    assert call.result.api_updates == [{"Status": "completed"}]
    registry.remove(call, "completed")
    assert registry.get(CALL) is None and registry.ended[CALL] == "completed"


async def test_fake_api_lenient_mode_accepts_any_call() -> None:
    async with FakeTwilioApi(ACCOUNT, TOKEN, strict=False) as api:
        client = TwilioRestClient(ACCOUNT, TOKEN, base_url=api.url)
        try:
            await client.hang_up(CALL)
        finally:
            await client.close()
        assert api.updates(CALL) == [{"Status": "completed"}]


# -- CLI glue --------------------------------------------------------------------------------------


def test_register_adds_simulate() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    register(sub, lambda p: p.add_argument("--config"))
    args = parser.parse_args(["simulate", "--calls", "3", "--loop", "2.5", "--test"])
    assert (args.calls, args.concurrency, args.loop, args.test) == (3, 10, 2.5, True)
    assert args.url is None and args.audio is None
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--calls", "0"])


def test_summary_lines() -> None:
    ok = _result([False] * 10 + [True] * 10 + [False] * 30, [600.0], [], [])
    ok.outcome, ok.close_code, ok.frames_sent, ok.media_received = "completed", 1000, 50, 1
    ok.lateness_ms = [0.5, 2.0]
    refused = CallResult(call_sid=CALL, account_sid=ACCOUNT, outcome="refused", close_code=1008)
    report = SimulationReport([ok, refused], 1.0)
    assert not report.ok and report.failed == [refused]
    text = "\n".join(summary_lines(report))
    assert "close codes            1000 x1, 1008 x1" in text
    assert "turn latency p50       220 ms" in text
    assert "generator lateness     max 2.0 ms" in text


def test_known_speech_boundaries_replace_the_energy_detector() -> None:
    """With the fixture's exact boundaries, utterances end where the recording says, not where
    the energy detector loses a soft ending (it cuts the first utterance 6 frames early)."""
    from voice_gateway.sim.audio import caller_recording, caller_recording_speech
    from voice_gateway.sim.caller import CallConfig, SimulatedCall

    audio = caller_recording()
    speech = caller_recording_speech()
    assert speech[0] == (50, 184)
    heard = speech_segments(
        [frame_is_speech(audio[i : i + 160]) for i in range(0, len(audio), 160)]
    )
    assert heard[0].end_frame < speech[0][1]  # why the boundaries are needed

    looped = SimulatedCall(
        CallConfig("http://gw", "token", audio=audio, speech=speech, loop_seconds=41.0)
    ).result
    looped.frames_sent = 2050  # the 41 s sent: the fixture (919 frames) twice and a bit
    segments = [(s.start_frame, s.end_frame) for s in looped.utterances()]
    assert segments[:4] == speech
    assert segments[4:] == [(a + 919, b + 919) for a, b in speech] + [(50 + 1838, 184 + 1838)]

    cut_short = SimulatedCall(CallConfig("http://gw", "token", audio=audio, speech=speech)).result
    cut_short.frames_sent = 300  # the call ended during the second utterance
    assert [(s.start_frame, s.end_frame) for s in cut_short.utterances()] == [speech[0]]

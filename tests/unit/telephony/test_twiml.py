"""TwiML documents, parsed back with ElementTree the way Twilio reads them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from voice_gateway.telephony.twiml import busy, connect_stream, dial, say_and_hangup

DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'


def _parse(document: str) -> ET.Element:
    assert document.startswith(DECLARATION)
    root = ET.fromstring(document.encode("utf-8"))
    assert root.tag == "Response"
    return root


def test_connect_stream_structure() -> None:
    doc = connect_stream(
        "wss://gw.example.com/twilio/stream",
        {"session_id": "ses_1", "stream_token": "AAAAAGVTc_A.abc-_"},
        status_callback="https://gw.example.com/twilio/stream-status",
    )
    root = _parse(doc)
    assert [child.tag for child in root] == ["Connect"]
    connect = root[0]
    assert connect.attrib == {}
    assert [child.tag for child in connect] == ["Stream"]
    stream = connect[0]
    assert stream.attrib == {
        "url": "wss://gw.example.com/twilio/stream",
        "statusCallback": "https://gw.example.com/twilio/stream-status",
        "statusCallbackMethod": "POST",
    }
    # No `track` attribute: <Connect><Stream> only allows the default inbound_track (31941).
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "session_id", "value": "ses_1"}),
        ("Parameter", {"name": "stream_token", "value": "AAAAAGVTc_A.abc-_"}),
    ]


def test_connect_stream_without_callback_or_parameters() -> None:
    stream = _parse(connect_stream("wss://gw.example.com/s", {}))[0][0]
    assert stream.attrib == {"url": "wss://gw.example.com/s"}
    assert list(stream) == []


def test_connect_action() -> None:
    connect = _parse(
        connect_stream("wss://gw.example.com/s", {}, action="https://gw.example.com/after")
    )[0]
    assert connect.attrib == {"action": "https://gw.example.com/after", "method": "POST"}


@pytest.mark.parametrize(
    "value",
    [
        "Acme & Sons <\"east\"> 'quoted'",
        "]]><Hangup/>",
        "line1\nline2\ttabbed\r",
        "ünïcödé ☎ 🎧",
        "",
        "&amp; already escaped",
    ],
)
def test_parameter_values_round_trip_exactly(value: str) -> None:
    doc = connect_stream("wss://gw.example.com/s", {"v": value, "odd name & <x>": "1"})
    root = _parse(doc)
    params = {p.attrib["name"]: p.attrib["value"] for p in root.iter("Parameter")}
    assert params == {"v": value, "odd name & <x>": "1"}
    assert root.find("Hangup") is None  # nothing injected


@pytest.mark.parametrize(
    "url",
    [
        "https://gw.example.com/s",  # must be a WebSocket URL
        "wss://gw.example.com/s?session=1",  # Twilio rejects query strings (31920)
        "wss://gw.example.com/s#x",
        "wss:///s",
        "gw.example.com/s",
    ],
)
def test_connect_stream_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        connect_stream(url, {})


def test_connect_stream_accepts_ws_for_the_simulator() -> None:
    assert _parse(connect_stream("ws://127.0.0.1:8080/s", {}))[0][0].attrib["url"] == (
        "ws://127.0.0.1:8080/s"
    )


@pytest.mark.parametrize(
    "params", [{"": "x"}, {"k": "bell\x07"}, {"nul\x00": "x"}, {"k": "\ud800"}]
)
def test_connect_stream_rejects_what_xml_cannot_carry(params: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        connect_stream("wss://gw.example.com/s", params)


def test_say_and_hangup() -> None:
    root = _parse(say_and_hangup("Sorry, <all> agents & bots are busy.", voice="Polly.Joanna"))
    assert [child.tag for child in root] == ["Say", "Hangup"]
    say = root[0]
    assert say.text == "Sorry, <all> agents & bots are busy."
    assert say.attrib == {"voice": "Polly.Joanna"}


def test_say_without_voice_and_with_language() -> None:
    root = _parse(say_and_hangup("Bonjour", language="fr-FR"))
    assert root[0].attrib == {"language": "fr-FR"}
    assert _parse(say_and_hangup("Hi"))[0].attrib == {}


def test_say_drops_characters_xml_cannot_carry() -> None:
    root = _parse(say_and_hangup("a\x00b\x1bc"))
    assert root[0].text == "a b c"


def test_busy_rejects_without_answering() -> None:
    root = _parse(busy())
    assert [(child.tag, child.attrib) for child in root] == [("Reject", {"reason": "busy"})]


def test_busy_with_message_answers_says_and_hangs_up() -> None:
    root = _parse(busy("All lines are busy, please call back later."))
    assert [child.tag for child in root] == ["Say", "Hangup"]
    assert root[0].text == "All lines are busy, please call back later."


@pytest.mark.parametrize(
    ("target", "noun", "text"),
    [
        ("+15551234567", "Number", "+15551234567"),
        ("15551234567", "Number", "15551234567"),
        (
            "sip:agent@pbx.example.com;transport=tls",
            "Sip",
            "sip:agent@pbx.example.com;transport=tls",
        ),
        ("client:alice", "Client", "alice"),
    ],
)
def test_dial_targets(target: str, noun: str, text: str) -> None:
    root = _parse(dial(target))
    assert [child.tag for child in root] == ["Dial"]
    assert root[0].attrib == {}
    assert [(child.tag, child.text) for child in root[0]] == [(noun, text)]


def test_dial_caller_id_and_timeout() -> None:
    root = _parse(dial("+15551234567", caller_id="+18005550199", timeout=20))
    assert root[0].attrib == {"callerId": "+18005550199", "timeout": "20"}


@pytest.mark.parametrize(
    "target", ["", "client:", "+1 555 123", "call me", "+1555<Hangup/>", "12", "sip\x00:x"]
)
def test_dial_rejects_unknown_targets(target: str) -> None:
    with pytest.raises(ValueError):
        dial(target)


@pytest.mark.parametrize(
    "values",
    [
        {"session_id": "5b0c1f2e-4a3b-4c5d-9e8f-123456789012", "token": "AAAAAGsC.OLfPN-0P_g"},
        {"session_id": 'a"b<c>&d', "token": "tab\there\nnewline 'quote' ü"},
    ],
)
def test_connect_stream_template_renders_exactly_what_the_builder_does(
    values: dict[str, str],
) -> None:
    from voice_gateway.telephony.twiml import ConnectStreamTemplate

    url = "wss://gw.example.com/twilio/stream"
    template = ConnectStreamTemplate(url, ["session_id", "token"])
    rendered = template.render(values)
    parsed = ET.fromstring(rendered)
    params = {p.get("name"): p.get("value") for p in parsed.iter("Parameter")}
    assert params == values
    assert parsed.find("Connect/Stream").get("url") == url  # type: ignore[union-attr]
    assert ET.fromstring(connect_stream(url, values)).find("Connect/Stream") is not None
    with pytest.raises(ValueError):
        template.render({"session_id": "bad\x01", "token": "t"})

"""The session field codec writes exactly what ``json`` writes (Redis readers parse each field)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from voice_gateway.sessions.keys import mint_session_id
from voice_gateway.sessions.models import Channel, Customer, Session, StreamInfo, Tool, utcnow
from voice_gateway.sessions.store import encode_fields, session_from_fields, session_to_fields

_stdlib = json.JSONEncoder(separators=(",", ":")).encode

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text()
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(values=st.dictionaries(st.text(max_size=8), _json, max_size=6))
def test_each_field_is_the_text_json_writes(values: dict[str, Any]) -> None:
    assert encode_fields(values) == {k: _stdlib(v) for k, v in values.items()}


def test_a_session_round_trips_through_its_fields() -> None:
    session = Session(
        id=mint_session_id("CA" + "7" * 32),
        agent_id="echo",
        name="Zoë ☎",
        customer=Customer(number="+14155550100", name='O"Brien \\ <x>'),
        channel=Channel(service="twilio", type="voice", sid="CA" + "7" * 32),
        metadata={"n": 3, "f": 0.1, "big": 2**70, "nested": {"list": [1, None, "é"]}, "e": {}},
        tools=[Tool(name="lookup", description="find an order")],
        stream=StreamInfo(stream_sid="MZ1", started_at=utcnow()),
        duration=13.25,
    )
    fields = session_to_fields(session)
    assert fields == {k: _stdlib(v) for k, v in session.model_dump(mode="json").items()}
    assert session_from_fields(fields) == session

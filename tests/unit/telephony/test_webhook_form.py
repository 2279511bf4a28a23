"""The webhook's form parser is ``parse_qsl(..., keep_blank_values=True, strict_parsing=True)``."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voice_gateway.telephony.webhooks import parse_form


def _stdlib(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        return "ValueError"


def _ours(text: str) -> list[tuple[str, str]] | str:
    try:
        return parse_form(text)
    except ValueError:
        return "ValueError"


# Bodies made of the characters that matter to the parser, and of anything at all.
_body_chars = st.sampled_from([*"&=+%;aZ09é ", "%2B", "%26", "%3D", "%C3%A9", "%E2", "%zz"])
_bodies = st.lists(_body_chars, max_size=30).map("".join) | st.text(max_size=40)


@given(text=_bodies)
def test_parse_form_is_parse_qsl_strict(text: str) -> None:
    assert _ours(text) == _stdlib(text)


@given(pairs=st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=8))
def test_an_encoded_form_parses_back(pairs: list[tuple[str, str]]) -> None:
    text = urlencode(pairs)
    assert parse_form(text) == _stdlib(text) == pairs


@pytest.mark.parametrize("text", ["a=1&&b=2", "a", "a=1&b", "&", "a=1&"])
def test_fields_without_a_value_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_form(text)

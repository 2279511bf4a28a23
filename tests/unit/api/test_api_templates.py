"""Situation templates: rendered in a sandbox, every failure a 422 on `situation`."""

from __future__ import annotations

from typing import Any

import pytest

from voice_gateway.api.templates import MAX_OUTPUT, render_situation
from voice_gateway.errors import ValidationFailed

VARS: dict[str, Any] = {
    "metadata": {"tier": "gold", "first_name": "Ada", "amount": 250000, "items": ["a", "b"]},
    "user_id": "u-7",
    "agent": {"id": "support", "name": "Support line", "timezone": "Europe/Paris"},
    "session": {"id": "s-1", "name": "Refund"},
}


def render(template: str) -> str:
    return render_situation(template, **VARS)


def refused(template: str) -> str:
    with pytest.raises(ValidationFailed) as caught:
        render(template)
    assert caught.value.details["errors"][0]["field"] == "situation"
    return caught.value.message


def test_variables_filters_and_loops_render() -> None:
    assert render("{{ metadata.first_name }} ({{ metadata.tier|upper }})") == "Ada (GOLD)"
    assert render("{{ agent.name }}/{{ agent.timezone }}/{{ session.name }}/{{ user_id }}") == (
        "Support line/Europe/Paris/Refund/u-7"
    )
    assert render("{% for i in metadata['items'] %}{{ loop.index }}{{ i }} {% endfor %}") == (
        "1a 2b "
    )
    assert render("{{ '%d'|format(metadata.amount) }} {{ 'Hi {}'.format(user_id) }}") == (
        "250000 Hi u-7"
    )
    assert render("{% if metadata.tier == 'gold' %}VIP{% else %}-{% endif %}") == "VIP"
    assert render("<b>{{ '<&>' }}</b>") == "<b><&></b>"  # no autoescaping: it is not HTML


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ metadata.__class__ }}",
        "{{ user_id.__len__() }}",
        "{{ ().__class__.__base__.__subclasses__() }}",
    ],
)
def test_python_internals_are_out_of_reach(template: str) -> None:
    assert "not allowed" in refused(template)


def test_undefined_variables_and_syntax_errors_are_refused() -> None:
    assert "undefined" in refused("Hello {{ customer }}")
    assert "missing_key" in refused("{{ metadata.missing_key }}")
    assert "syntax" in refused("{% if %}")
    assert "syntax" in refused("{{ unclosed")


def test_errors_raised_while_rendering_are_refused() -> None:
    refused("{{ 1 / 0 }}")
    refused("{{ 'a' + 1 }}")
    refused("{% include 'other.txt' %}")
    refused("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 100000000 }}",
        "{{ [0] * 100000000 }}",
        "{{ 9 ** 9999999 }}",
        "{{ 'a'|center(1000000000) }}",
        "{{ '%01000000000d' % 1 }}",
        "{{ '%*d'|format(1000000000, 1) }}",
        "{{ '{:>1000000000}'.format(1) }}",
        "{{ '{:>{w}}'.format(1, w=1000000000) }}",
        "{{ range(1000000000)|list }}",
        "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('ab') }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set s = 'x' * 1000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}",
    ],
)
def test_templates_cannot_exhaust_memory_or_time(template: str) -> None:
    refused(template)


def test_namespace_is_not_available() -> None:
    assert "undefined" in refused("{% set ns = namespace(s='a') %}{{ ns.s }}")


def test_the_output_is_bounded() -> None:
    assert len(render(f"{{{{ 'x' * {MAX_OUTPUT} }}}}")) == MAX_OUTPUT
    refused(f"{{{{ 'x' * {MAX_OUTPUT} }}}}{{{{ 'y' }}}}")
    refused("x" * (MAX_OUTPUT + 1))

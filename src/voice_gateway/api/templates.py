"""Rendering a session's ``situation`` template in a sandbox, with bounded work.

A situation with ``render_templates`` set is a Jinja2 template rendered once, when the session
is created or updated (never in the middle of a call), in an
``ImmutableSandboxedEnvironment`` with ``StrictUndefined`` and no autoescaping. Its variables
are ``metadata``, ``user_id``, ``agent`` (``id``, ``name``, ``timezone``) and ``session``
(``id``, ``name``). Every problem -- a syntax error, an undefined variable, an unsafe attribute
(``SecurityError``), an error raised while rendering, or a template that does too much work --
is a ``ValidationFailed`` naming the ``situation`` field.

The sandbox stops templates from reaching Python internals; the limits below stop them from
blocking the event loop or exhausting memory: every loop iteration, call, filter and guarded
operator spends one step of a budget, numbers handed to calls are bounded, repetition
(``*``, ``**``, ``%`` formatting) is bounded, and the output is cut off at ``MAX_OUTPUT``.
``namespace`` (the one way to carry state out of a loop) and ``lipsum`` are not available.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes, pass_context
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from voice_gateway.api.validation import invalid
from voice_gateway.errors import ValidationFailed

#: Longest template and longest rendered situation, in characters.
MAX_OUTPUT = 32_768
#: Steps (loop iterations, calls, filters, guarded operators) one rendering may take.
MAX_STEPS = 50_000
#: Wall-clock bound of one rendering, in seconds.
MAX_SECONDS = 1.0
#: Largest integer a template may hand to a function or filter (widths, counts, ranges).
MAX_INT_ARG = 100_000
#: Largest integer a template may compute with ``*`` or ``**``, in bits.
MAX_INT_BITS = 1024

_LOOP_GUARD = "__vg_loop_guard"
_BUDGET = "__vg_budget"
#: A width or precision of 6 digits or more, a ``*`` width (``%*d``), or a nested replacement
#: field in a ``str.format`` spec (``{:>{w}}``): ways to make formatting allocate at will.
_WIDE_FORMAT = re.compile(r"\d{6,}|%[^a-zA-Z%]*\*|\{[^{}]*:[^{}]*\{")


class _Budget:
    __slots__ = ("deadline", "steps")

    def __init__(self) -> None:
        self.steps = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS

    def spend(self) -> None:
        self.steps -= 1
        if self.steps < 0:
            raise SecurityError(f"the template takes more than {MAX_STEPS} steps")
        if self.steps % 256 == 0 and time.monotonic() > self.deadline:
            raise SecurityError(f"the template takes longer than {MAX_SECONDS:g} s to render")


def _check_args(values: Iterable[Any], *, numbers: bool = True) -> None:
    """Numbers handed to functions and filters are widths, counts and ranges: bound them.
    Strings are bounded too (a recursive macro could otherwise double one at every call)."""
    for value in values:
        if isinstance(value, str) and len(value) > MAX_OUTPUT:
            raise SecurityError(f"strings passed to functions are limited to {MAX_OUTPUT} chars")
        if (
            numbers
            and isinstance(value, int)
            and not isinstance(value, bool)
            and abs(value) > MAX_INT_ARG
        ):
            raise SecurityError(f"numbers passed to functions are limited to {MAX_INT_ARG}")


def _check_format(spec: Any) -> None:
    if isinstance(spec, str) and _WIDE_FORMAT.search(spec):
        raise SecurityError(
            "format widths and precisions are limited to 5 digits and must be literal"
        )


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
            if sized and len(seq) * count > MAX_OUTPUT:
                raise SecurityError(f"repetition is limited to {MAX_OUTPUT} items")
        ints = isinstance(left, int) and isinstance(right, int)
        if ints and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError("the product is too large")
    elif operator == "**":
        ints = isinstance(left, int) and isinstance(right, int) and right > 0
        if ints and max(left.bit_length(), 1) * right > MAX_INT_BITS:
            raise SecurityError("the power is too large")
    elif operator == "%":
        _check_format(left)


def _budget_of(context: Context) -> _Budget:
    budget = context.get(_BUDGET)
    if not isinstance(budget, _Budget):  # pragma: no cover - always set by ``render``
        raise SecurityError("no render budget")
    return budget


@pass_context
def _loop_guard(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every ``for`` loop's iterable: each item costs one step."""
    budget = _budget_of(context)
    for item in iterable:
        budget.spend()
        yield item


def _guard_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if getattr(f, "jinja_pass_arg", None) is not None else 0  # context / environment

    @functools.wraps(f)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if name == "format":
            _check_format(args[skip] if len(args) > skip else None)
        _check_args((*args[skip + 1 :], *kwargs.values()), numbers=name != "format")
        return f(*args, **kwargs)

    return guarded


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False)
        del self.globals["namespace"]
        del self.globals["lipsum"]  # slow, and no use in a situation
        self.globals[_LOOP_GUARD] = _loop_guard
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Route every ``for`` loop's iterable through the loop guard."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.Name(_LOOP_GUARD, "load"), [loop.iter], [], None, None, lineno=loop.lineno
            )
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _budget_of(context).spend()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if __obj is not _loop_guard:
            _budget_of(__context).spend()
            formatting = getattr(__obj, "__name__", "") in ("format", "format_map")
            _check_args((*args, *kwargs.values()), numbers=not formatting)
        return super().call(__context, __obj, *args, **kwargs)


_ENV = _Environment()


def _fail(message: str) -> ValidationFailed:
    return invalid("situation", message)


def render_situation(
    template: str,
    *,
    metadata: Mapping[str, Any],
    user_id: str | None,
    agent: Mapping[str, Any],
    session: Mapping[str, Any],
) -> str:
    """The rendered situation; ``ValidationFailed`` (field ``situation``) for any problem."""
    if len(template) > MAX_OUTPUT:
        raise _fail(f"the template is longer than {MAX_OUTPUT} characters")
    try:
        compiled = _ENV.from_string(template)
    except TemplateError as exc:
        raise _fail(f"template syntax error: {exc.message or exc}") from None
    variables = {
        "metadata": dict(metadata),
        "user_id": user_id,
        "agent": dict(agent),
        "session": dict(session),
        _BUDGET: _Budget(),
    }
    out: list[str] = []
    size = 0
    try:
        for chunk in compiled.generate(variables):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise _fail(f"the rendered situation is longer than {MAX_OUTPUT} characters")
            out.append(chunk)
    except ValidationFailed:
        raise
    except SecurityError as exc:
        raise _fail(f"not allowed in a template: {exc}") from None
    except TemplateError as exc:
        raise _fail(f"template error: {exc.message or exc}") from None
    except (RecursionError, MemoryError):
        raise _fail("the template does too much work") from None
    except Exception as exc:  # any error the template itself provoked (1/0, 'a' + 1, ...)
        raise _fail(f"template error: {type(exc).__name__}: {exc}") from None
    return "".join(out)

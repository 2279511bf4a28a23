"""Turning invalid input into one 422 shape: ``details.errors`` lists ``{field, message}``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from voice_gateway.errors import ValidationFailed


def invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {message}", details={"errors": [{"field": field, "message": message}]}
    )


def validation_failed(exc: ValidationError) -> ValidationFailed:
    """A pydantic error as a 422 naming each field (``tools.0.parameters``; ``body`` for the
    body as a whole)."""
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]) or "body", "message": err["msg"]}
        for err in exc.errors(include_url=False)
    ]
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ValidationFailed(
        f"{first['field']}: {first['message']}{more}", details={"errors": errors}
    )


def refuse_nul(value: Any, path: str) -> None:
    """No NUL characters anywhere: PostgreSQL cannot store them in text or JSON."""
    if isinstance(value, str):
        if "\x00" in value:
            raise invalid(path or "body", "must not contain NUL (\\u0000) characters")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                raise invalid(path or "body", "keys must not contain NUL (\\u0000) characters")
            refuse_nul(item, where)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            refuse_nul(item, f"{path}.{i}")

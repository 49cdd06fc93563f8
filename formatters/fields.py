"""Field access with the checks every formatter needs: type, NaN, emptiness."""

from __future__ import annotations

import math


class FieldError(ValueError):
    """A raw record's field is missing or has the wrong type; the message names the field."""


def text_field(record: dict, key: str, *, required: bool, allow_empty: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise FieldError(f"missing field {key!r}")
        return ""
    if isinstance(value, float) and math.isnan(value):
        raise FieldError(f"field {key!r} is NaN")
    if not isinstance(value, str):
        raise FieldError(f"field {key!r} is {type(value).__name__}, expected string")
    if required and not allow_empty and not value.strip():
        raise FieldError(f"field {key!r} is empty")
    return value


def first_key(record: dict, keys: list[str]) -> str:
    """The first of several alternative raw keys that the record has ("output" | "response")."""
    for key in keys:
        if key in record:
            return key
    return keys[0]

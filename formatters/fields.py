"""Field access with the checks every formatter needs: type, NaN, emptiness."""

from __future__ import annotations

import math
import re
import unicodedata


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


# An answer that holds nothing but a header ("【答案】", "Answer:"), a placeholder or punctuation
# is no answer: the record would train a model to reply with the bare label.
_HEADER = re.compile(
    r"【[^【】\n]{0,8}】|\[(?:答案|解析|详解|解答)\]"
    r"|(?:参考|标准|正确)?答案(?:为|是)?\s*[:：]|(?:final\s+)?(?:answer|solution)\s*[:：]",
    re.IGNORECASE,
)
_ALNUM = re.compile(r"[^\W_]")  # a letter or a digit
PLACEHOLDERS = frozenset(
    "无 略 暂无 答案略 解析略 见解析 详见解析 见详解 见答案 null none n/a na tbd todo".split()
)
_SHORT = 64  # a text this long or longer that holds a letter is more than a header


def empty_answer(text: str, placeholders: frozenset[str] = PLACEHOLDERS) -> bool:
    """True when `text` holds no answer: only headers, a placeholder, punctuation or space.
    Symbols count as content (an emoji reply, "+", "→")."""
    if _ALNUM.search(text) and len(text) >= _SHORT:
        return False
    rest = _HEADER.sub(" ", text)
    if _ALNUM.search(rest):
        return rest.strip(" \t\n。．.，,：:;；!！?？-—_…").lower() in placeholders
    # a symbol is content; so is a character that is broken or unknown (a lone surrogate,
    # private use, unassigned): it is not an empty answer but bad text, quarantined as such later
    return not any(
        unicodedata.category(ch)[0] == "S" or unicodedata.category(ch) in ("Cs", "Co", "Cn") for ch in rest
    )


def strip_answer_header(text: str) -> str:
    """The answer without a leading header ("【答案】B" -> "B"): the template adds its own."""
    m = re.match(r"\s*(?:" + _HEADER.pattern + r")\s*", text, re.IGNORECASE)
    return text[m.end() :] if m and m.end() < len(text) else text

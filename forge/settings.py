"""Settings that come from environment variables.

A setting is read by the code that needs it, when that code runs, and never when a module
is imported: a bad value then fails only the command that uses it, in one line that names
the variable and the form it accepts, and `forge --version` or `forge --help` never fail.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction

from forge.errors import ForgeError


class SettingError(ForgeError):
    """An environment variable holds a value forge cannot use (printed as one line)."""


# A number, optionally with a fraction, then an optional unit. The units follow GNU dd and
# coreutils: "KB"/"MB"/"GB"/"TB" are powers of 1000; "KiB"/"MiB"/..., and a bare "k"/"M"/...,
# are powers of 1024.
_SIZE = re.compile(
    r"(?P<number>\d+(?:\.\d+)?)\s*(?:(?P<unit>[kmgt])(?P<binary>i)?(?P<bytes>b)?|b)?", re.I | re.ASCII
)
_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}
MAX_BYTES = 1 << 60  # an exbibyte: a larger "size" is a typo, not a setting
SIZE_FORM = "a whole number of bytes or a size such as 64MB, 64MiB or 512k"


def parse_byte_size(text: str) -> int | None:
    """Bytes in `text` ("67108864", "64MB", "64MiB", "512k", "1.5G"), or None when it is
    not a size. Whitespace around the value and the case of the unit do not matter."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or len(match["number"]) > 24:  # more digits than any real size has
        return None
    unit = match["unit"]
    if unit is None:
        if "." in match["number"]:
            return None  # a fraction of a byte is not a size
        size = int(match["number"])
        return size if size <= MAX_BYTES else None
    # "MB" is decimal; "MiB" and a bare "M" are binary. Exact arithmetic: a float made 8.2GB
    # 8,199,999,999 bytes; a fraction of a byte left over is dropped
    base = 1000 if match["bytes"] and not match["binary"] else 1024
    size = int(Fraction(match["number"]) * base ** _POWER[unit.lower()])
    return size if size <= MAX_BYTES else None


def byte_size(name: str, default: int, minimum: int = 1) -> int:
    """The byte size in environment variable `name`, or `default` when it is unset or blank.

    Raises SettingError, naming the variable and the accepted form, when the value is not a
    size or is below `minimum`."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    size = parse_byte_size(raw)
    if size is None:
        raise SettingError(f"{name}={raw!r} is not a byte size; use {SIZE_FORM}")
    if size < minimum:
        raise SettingError(f"{name}={raw!r} is below {minimum} bytes; use {SIZE_FORM}")
    return size

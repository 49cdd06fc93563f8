"""Field-level normalisation and upstream-oddity flags, applied to every built record.

Normalisation (NORMALIZATION, part of every build hash, so changing it rebuilds):
  - instruction, input, output and every history turn lose leading and trailing whitespace
    (Unicode White_Space). Raw corpora end fields in stray spaces and newlines (FLAN's
    sensemaking rationales, GAOKAO answers ending in "\\n"); inside a field nothing changes,
    so code indentation and line breaks survive.

Flags (meta.flags, a list; records are kept, `forge filter` can drop them by query):
  - control_char: the text holds a C0 control character other than tab, newline and
    carriage return, or DEL. Usually an encoding accident upstream; tokenizers treat them
    inconsistently.
Formatters add their own flags (for example dialogue's "embedded_speaker_tag").
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NORMALIZATION = "trim-fields-v1"
TEXT_FIELDS = ("instruction", "input", "output")
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


def trim(values) -> pa.Array:
    array = values if isinstance(values, pa.Array | pa.ChunkedArray) else pa.array(values, pa.string())
    return pc.utf8_trim_whitespace(array)


def trim_history(histories: list | None) -> list | None:
    if histories is None:
        return None
    return [
        [{"user": t["user"].strip(), "assistant": t["assistant"].strip()} for t in turns] if turns else turns
        for turns in histories
    ]


def control_char_rows(table: pa.Table) -> np.ndarray:
    """Row indices whose instruction, input or output holds a control character."""
    hit = np.zeros(table.num_rows, dtype=bool)
    for name in TEXT_FIELDS:
        found = pc.match_substring_regex(pc.fill_null(table.column(name), ""), _CONTROL)
        hit |= found.to_numpy(zero_copy_only=False)
    return np.flatnonzero(hit)


def add_flag(meta: str | None, flag: str) -> str:
    """The meta JSON with `flag` appended to its flags list (created when absent)."""
    data = json.loads(meta) if meta else {}
    if not isinstance(data, dict):
        data = {"value": data}
    flags = data.setdefault("flags", [])
    if flag not in flags:
        flags.append(flag)
    return json.dumps(data, ensure_ascii=False)

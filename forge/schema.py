"""The unified record schema: the one place that says what a forge record is.

Every built shard, every mixture shard and every published dataset carries exactly
these columns, in this order.
"""

from __future__ import annotations

import pyarrow as pa

# 2: lang_output (the answer's language) after lang_score. A build records the version in its
# manifest; readers refuse a version built with another (forge.built.version_problems), and
# the build hash holds it, so `forge build` rebuilds an older version.
# 3: rejected (a preference pair's rejected answer) after output, and kind (sft | pair).
SCHEMA_VERSION = 3

# What a record is for. sft: instruction -> output. pair: a preference pair, `output` the chosen
# answer and `rejected` the rejected answer to the same prompt (DPO / ORPO, train/preference.py).
# The engine derives kind from rejected: a record with a rejected answer is a pair.
RECORD_KINDS = ("sft", "pair")

# One earlier turn of a dialogue. Multi-turn sources keep the *last* assistant turn in
# instruction/input/output and every earlier (user, assistant) pair here, oldest first,
# so a record is one whole conversation and nothing is lost.
TURN = pa.struct([("user", pa.string()), ("assistant", pa.string())])

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # xxh3-128 of source/file/row/variant
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),  # "" unless the record is a pair
        pa.field("history", pa.list_(TURN), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("lang", pa.string(), nullable=False),  # ISO 639-1: the prompt's language, detected
        pa.field("lang_score", pa.float32(), nullable=False),
        pa.field("lang_output", pa.string(), nullable=False),  # ISO 639-1: the answer's language
        pa.field("task", pa.string(), nullable=False),  # MT / TS (catalog)
        pa.field("gen", pa.string(), nullable=False),  # HG / SI / MIX / COL (catalog)
        pa.field("category", pa.string(), nullable=False),  # cot / code / math / dialogue / ...
        pa.field("kind", pa.string(), nullable=False),  # RECORD_KINDS: sft | pair
        # provenance: where the record came from, exactly
        pa.field("raw_file", pa.string(), nullable=False),
        pa.field("raw_row", pa.int64(), nullable=False),  # 0-based record index in raw_file
        pa.field("raw_line", pa.int64(), nullable=False),  # 1-based line where the record starts
        pa.field("template", pa.string(), nullable=True),  # template id when one rendered it
        pa.field("meta", pa.string(), nullable=True),  # source-specific JSON provenance
    ],
    metadata={"forge.schema_version": str(SCHEMA_VERSION)},
)

COLUMNS = RECORD_SCHEMA.names
TEXT_COLUMNS = ("instruction", "input", "output")

# What a formatter hands to the engine: everything except what the engine derives
# (id, lang, lang_score, lang_output, kind) or copies from the catalog (source, task, gen).
# `rejected` is optional: a formatter that emits no pairs leaves it out.
FORMATTED_COLUMNS = (
    "instruction",
    "input",
    "output",
    "rejected",
    "history",
    "category",
    "raw_file",
    "raw_row",
    "raw_line",
    "template",
    "meta",
)

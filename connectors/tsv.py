"""Headerless TSV with no quoting at all (FLAN CoT: question, answer, rationale).

Records are split on "\\n" only: gsm8k carries U+2028 inside fields, which
str.splitlines() would treat as a line break. Fields are split on tabs with no CSV
quoting, because csv's default quoting strips the quotes that start 975 creak fields.

Options: columns (names, in order; default question/answer/rationale), encoding.
"""

from __future__ import annotations

from collections.abc import Iterator

from connectors.base import BATCH_SIZE, RawBatch, Reject, SourceFile, open_binary, show_raw

VERSION = "1"
DEFAULT_COLUMNS = ["question", "answer", "rationale"]


def read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]:
    columns = list(options.get("columns", DEFAULT_COLUMNS))
    encoding = options.get("encoding", "utf-8")
    for f in files:
        batch = RawBatch(f.name)
        row = 0
        with open_binary(f.path) as fh:
            for line_no, raw in enumerate(fh, start=1):
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                if not raw:
                    continue
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as e:
                    reject(
                        show_raw(raw.decode(encoding, "surrogateescape")),
                        f.name,
                        row,
                        line_no,
                        f"undecodable bytes ({encoding}) at byte {e.start}",
                    )
                    row += 1
                    continue
                fields = text.split("\t")
                if len(fields) != len(columns):
                    reject(
                        text,
                        f.name,
                        row,
                        line_no,
                        f"expected {len(columns)} tab-separated fields ({', '.join(columns)}), found {len(fields)}",
                    )
                else:
                    batch.add(dict(zip(columns, fields, strict=True)), row, line_no)
                row += 1
                if len(batch) >= BATCH_SIZE:
                    yield batch
                    batch = RawBatch(f.name)
        if len(batch):
            yield batch

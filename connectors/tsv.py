"""Headerless TSV with no quoting at all (FLAN CoT: question, answer, rationale).

Records are split on "\\n" only: gsm8k carries U+2028 inside fields, which
str.splitlines() would treat as a line break. Fields are split on tabs with no CSV
quoting, because csv's default quoting strips the quotes that start 975 creak fields.

Options: columns (names, in order; default question/answer/rationale), encoding.
"""

from __future__ import annotations

from collections.abc import Iterator

from forge.connectors.base import BATCH_SIZE, RawBatch, Reject, SourceFile, decode_line, open_binary

CHUNK = 4 << 20

VERSION = "1"
DEFAULT_COLUMNS = ["question", "answer", "rationale"]


def read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]:
    columns = list(options.get("columns", DEFAULT_COLUMNS))
    encoding = options.get("encoding", "utf-8")
    for f in files:
        yield from _read_file(f, columns, encoding, reject)


def _regular(texts: list[str], width: int) -> bool:
    tabs = width - 1
    return all(t.count("\t") == tabs and t and not t.endswith("\r") for t in texts)


def _new_batch(f: SourceFile, columns: list[str]) -> RawBatch:
    return RawBatch(f.name, columns={c: [] for c in columns})


def _read_file(f: SourceFile, columns: list[str], encoding: str, reject: Reject) -> Iterator[RawBatch]:
    width = len(columns)
    batch = _new_batch(f, columns)
    cols = list(batch.columns.values())
    row = 0
    line_no = 0
    tail = b""
    with open_binary(f) as fh:
        while True:
            chunk = fh.read(CHUNK)
            data = tail + chunk
            if not chunk:
                lines, tail = ([data] if data else []), b""
            else:
                lines = data.split(b"\n")
                tail = lines.pop()
            try:  # decode the whole chunk at once; only a failing chunk is decoded line by line
                texts = b"\n".join(lines).decode(encoding).split("\n") if lines else []
            except UnicodeDecodeError:
                texts = [None] * len(lines)
            if texts and texts[0] is not None and _regular(texts, width):
                # fast path: every line holds exactly `width` fields, so the fields of the whole
                # chunk can be split at once and taken with a stride
                fields = "\t".join(texts).split("\t")
                start = 0
                while start < len(texts):
                    take = min(BATCH_SIZE - len(batch.rows), len(texts) - start)
                    for c, col in enumerate(cols):
                        col.extend(fields[start * width + c : (start + take) * width : width])
                    batch.rows.extend(range(row, row + take))
                    batch.lines.extend(range(line_no + 1, line_no + take + 1))
                    row, line_no, start = row + take, line_no + take, start + take
                    if len(batch.rows) >= BATCH_SIZE:
                        yield batch
                        batch = _new_batch(f, columns)
                        cols = list(batch.columns.values())
                if not chunk:
                    break
                continue
            for raw, text in zip(lines, texts, strict=True):
                line_no += 1
                if text is None:
                    text = decode_line(raw, encoding, reject, f.name, row, line_no)
                    if text is None:
                        row += 1
                        continue
                if text.endswith("\r"):
                    text = text[:-1]
                if not text:
                    continue
                fields = text.split("\t")
                if len(fields) != width:
                    reject(
                        text,
                        f.name,
                        row,
                        line_no,
                        f"expected {width} tab-separated fields ({', '.join(columns)}), found {len(fields)}",
                    )
                else:
                    for col, value in zip(cols, fields, strict=True):
                        col.append(value)
                    batch.rows.append(row)
                    batch.lines.append(line_no)
                row += 1
                if len(batch.rows) >= BATCH_SIZE:
                    yield batch
                    batch = _new_batch(f, columns)
                    cols = list(batch.columns.values())
            if not chunk:
                break
    if len(batch):
        yield batch

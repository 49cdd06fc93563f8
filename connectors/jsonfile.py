"""JSON-family raw files: JSON arrays, JSONL, and single JSON documents.

Options (catalog ``connector_options``):
  format:        auto (default) | array | jsonl | document
  records_path:  for documents, the key holding the list of records (GAOKAO "example",
                 Auto-CoT "demo"); without it the whole document is one record (MOSS)
  encoding:      declared text encoding, default utf-8

"auto" sniffs the first non-blank character: "[" is an array; "{" is JSONL when the
first line parses as an object on its own, a document otherwise. Many corpora name
JSONL files ".json" (BELLE, DuIE), so the extension is never trusted.

Arrays are parsed element by element from a rolling buffer, so memory stays flat in the
file size. An element that cannot be parsed ends the array: the rest of the file is
quarantined as one entry, because a JSON array has no safe resynchronisation point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import orjson

from connectors.base import (
    BATCH_SIZE,
    RawBatch,
    Reject,
    SourceFile,
    decode_line,
    open_binary,
    open_text,
    show_raw,
)

VERSION = "1"
CHUNK = 1 << 20
MAX_ELEMENT = 64 << 20  # a single array element larger than this is treated as corrupt
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_WS = re.compile(r"[ \t\r\n]*")


def read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]:
    for f in files:
        fmt = options.get("format", "auto")
        encoding = options.get("encoding", "utf-8")
        if fmt == "auto":
            fmt = sniff(f, encoding)
        if fmt == "empty":  # nothing but whitespace: zero records, nothing to quarantine
            continue
        if fmt == "jsonl":
            yield from _read_jsonl(f, encoding, reject)
        elif fmt == "array":
            yield from _read_array(f, encoding, reject)
        elif fmt == "document":
            yield from _read_document(f, encoding, options.get("records_path"), reject)
        else:
            raise ValueError(f"{f.name}: unknown json format {fmt!r} (auto, array, jsonl, document)")


def sniff(path: Path | SourceFile, encoding: str = "utf-8") -> str:
    with open_text(path, encoding) as fh:
        first = ""
        for line in fh:
            if line.strip():
                first = line.strip()
                break
    if not first:
        return "empty"
    if first.startswith("["):
        return "array"
    try:
        return "jsonl" if isinstance(_loads_lenient(first), dict) else "document"
    except ValueError:
        return "document"


def _loads_lenient(text: str | bytes):
    """orjson first (fast); stdlib json as fallback because it accepts bare NaN."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _read_jsonl(f: SourceFile, encoding: str, reject: Reject) -> Iterator[RawBatch]:
    batch = RawBatch(f.name)
    row = 0
    with open_binary(f) as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            text = decode_line(raw, encoding, reject, f.name, row, line_no)
            if text is None:
                row += 1
                continue
            try:
                obj = _loads_lenient(text)
            except ValueError as e:
                reject(text.rstrip("\r\n"), f.name, row, line_no, f"invalid JSON: {e}")
                row += 1
                continue
            if not isinstance(obj, dict):
                reject(
                    text.rstrip("\r\n"),
                    f.name,
                    row,
                    line_no,
                    f"expected a JSON object, found {type(obj).__name__}",
                )
            else:
                batch.add(obj, row, line_no)
            row += 1
            if len(batch) >= BATCH_SIZE:
                yield batch
                batch = RawBatch(f.name)
    if len(batch):
        yield batch


def _read_array(f: SourceFile, encoding: str, reject: Reject) -> Iterator[RawBatch]:
    decoder = json.JSONDecoder()
    batch = RawBatch(f.name)
    with open_text(f, encoding) as fh:
        buf = fh.read(CHUNK)
        eof = len(buf) < CHUNK
        pos, line = 0, 1
        row = 0
        counted = [0, 1]  # newlines are counted incrementally: (buffer position, line there)

        def line_at(p: int) -> int:
            if p < counted[0]:
                counted[:] = [0, line]
            counted[1] += buf.count("\n", counted[0], p)
            counted[0] = p
            return counted[1]

        def refill() -> bool:
            nonlocal buf, pos, eof, line
            if eof:
                return False
            line = line_at(pos)
            more = fh.read(CHUNK)
            eof = len(more) < CHUNK
            buf = buf[pos:] + more
            pos = 0
            counted[:] = [0, line]
            return bool(more)

        def skip_ws() -> None:
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()
                if pos < len(buf) or not refill():
                    return

        skip_ws()
        if pos >= len(buf):  # an empty file holds zero records
            return
        if buf[pos] != "[":
            got = buf[pos : pos + 40] if pos < len(buf) else "end of file"
            reject(show_raw(got), f.name, 0, line_at(pos), "expected a JSON array ('[')")
            return
        pos += 1
        expect_value = True
        while True:
            skip_ws()
            if pos >= len(buf):
                start_line = line_at(pos)
                reject("", f.name, row, start_line, "truncated JSON array: missing closing ']'")
                break
            ch = buf[pos]
            if ch == "]":
                break
            if ch == "," and not expect_value:
                pos += 1
                expect_value = True
                continue
            start_line = line_at(pos)
            err, obj, end = None, None, pos
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    err = None
                    break
                except json.JSONDecodeError as e:
                    err = e
                    if len(buf) - pos < MAX_ELEMENT and refill():
                        start_line = line
                        continue
                    break
                except RecursionError:
                    # too deep for the parser, but still well delimited: skip just this element
                    end = _value_end(buf, pos)
                    if end < 0 and len(buf) - pos < MAX_ELEMENT and refill():
                        start_line = line
                        continue
                    if end < 0:
                        err = json.JSONDecodeError("JSON nested too deeply", buf, pos)
                    else:
                        obj = _TOO_DEEP
                    break
            if obj is _TOO_DEEP and err is None:
                reject(
                    show_raw(buf[pos : min(end, pos + 2000)]),
                    f.name,
                    row,
                    start_line,
                    "invalid JSON: nested too deeply",
                )
                pos, expect_value, row = end, False, row + 1
                continue
            if err is not None:
                tail = buf[pos:]
                reject(
                    show_raw(tail[:2000]),
                    f.name,
                    row,
                    start_line,
                    f"invalid JSON at line {start_line}: {err.msg}; the rest of the file "
                    f"({len(tail)} chars) cannot be split into records",
                )
                break
            raw_text = buf[pos:end]
            pos = end
            expect_value = False
            if _UNDECODABLE.search(raw_text):
                reject(show_raw(raw_text), f.name, row, start_line, f"undecodable bytes ({encoding})")
            elif not isinstance(obj, dict):
                reject(
                    raw_text, f.name, row, start_line, f"expected a JSON object, found {type(obj).__name__}"
                )
            else:
                batch.add(obj, row, start_line)
            row += 1
            if len(batch) >= BATCH_SIZE:
                yield batch
                batch = RawBatch(f.name)
    if len(batch):
        yield batch


_TOO_DEEP = object()


def _value_end(buf: str, pos: int) -> int:
    """End of the bracketed JSON value starting at buf[pos] ('[' or '{'), found by counting
    brackets outside strings; -1 when it does not end inside buf."""
    depth, in_string, escaped = 0, False, False
    for i in range(pos, len(buf)):
        c = buf[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _read_document(
    f: SourceFile, encoding: str, records_path: str | None, reject: Reject
) -> Iterator[RawBatch]:
    with open_text(f, encoding) as fh:
        text = fh.read()
    if _UNDECODABLE.search(text):
        reject(show_raw(text[:2000]), f.name, 0, 1, f"undecodable bytes ({encoding})")
        return
    if not text.strip():  # an empty file holds zero records
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        reject(text[:2000], f.name, 0, e.lineno, f"invalid JSON at line {e.lineno}: {e.msg}")
        return
    except RecursionError:
        reject(text[:2000], f.name, 0, 1, "invalid JSON: nested too deeply")
        return
    if records_path:
        records = doc.get(records_path) if isinstance(doc, dict) else None
        if not isinstance(records, list):
            reject(text[:2000], f.name, 0, 1, f"expected a list under key {records_path!r}")
            return
    else:
        records = [doc]
    batch = RawBatch(f.name)
    for row, rec in enumerate(records):
        if isinstance(rec, dict):
            # documents are not line-addressable; line 0 says "see raw_row"
            batch.add(rec, row, 0)
        else:
            reject(
                json.dumps(rec, ensure_ascii=False)[:2000],
                f.name,
                row,
                0,
                f"expected a JSON object, found {type(rec).__name__}",
            )
    if len(batch):
        yield batch

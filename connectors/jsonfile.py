"""JSON-family raw files: JSON arrays, JSONL, and JSON documents.

Options (catalog ``connector_options``):
  format:        auto (default) | array | jsonl | document
  records_path:  the key of the top-level object that holds the list of records (GAOKAO
                 "example", Auto-CoT "demo"); with format document and no records_path the
                 whole document is one record (MOSS, Natural Instructions, CAMEL)
  encoding:      declared text encoding, default utf-8

"auto" sniffs the start of the file: "[" is an array; an object that ends on its first line,
with more lines after it, is JSONL; anything else is read as a stream of JSON values. Many
corpora name JSONL files ".json" (BELLE, DuIE), so the extension is never trusted.

Every reader goes to the end of the file: nothing in it is skipped without a trace.
- An array is read element by element from a rolling buffer, so memory stays flat in the
  file size. What follows its closing "]" is read too: more arrays and objects are more
  records (concatenated JSON), anything else is quarantined with its line.
- A file that is one object is one record, unless the object wraps the records: when
  exactly one of its members is a list of objects (``{"version": 2, "data": [...]}``), that
  list is the file's records, streamed like an array. An object holding two or more such
  lists is refused in one line naming their keys; records_path picks one.
- A value that cannot be parsed ends the file: the rest of it is quarantined as one entry
  naming its line, because JSON has no safe resynchronisation point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import orjson

from forge.connectors.base import (
    BATCH_SIZE,
    RawBatch,
    Reject,
    SourceFile,
    decode_line,
    open_binary,
    open_text,
    show_raw,
)

VERSION = "2"  # 2: reads past an array's closing bracket; an object wrapping a list is that list
CHUNK = 1 << 20
MAX_ELEMENT = 64 << 20  # a single JSON value larger than this is treated as corrupt
# sniffing reads the first line up to this; a longer one is read as a stream of values,
# which reads JSONL too, record by record
SNIFF_LINE = 8 << 20
RAW_SHOWN = 2000  # characters of an unparsable tail kept in its quarantine entry
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_WS = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()  # the stdlib parser: it can stop at a value's end, and accepts NaN


def read(files: list[SourceFile], options: dict, reject: Reject) -> Iterator[RawBatch]:
    for f in files:
        fmt = options.get("format", "auto")
        encoding = options.get("encoding", "utf-8")
        records_path = options.get("records_path")
        if fmt == "auto":
            fmt = sniff(f, encoding)
        if fmt == "empty":  # nothing but whitespace: zero records, nothing to quarantine
            continue
        if fmt == "jsonl":
            yield from _read_jsonl(f, encoding, reject)
        elif fmt == "document" and not records_path:
            yield from _read_document(f, encoding, reject)
        elif fmt in ("array", "document", "values"):
            yield from _read_values(f, encoding, reject, fmt, records_path)
        else:
            raise ValueError(f"{f.name}: unknown json format {fmt!r} (auto, array, jsonl, document)")


def sniff(path: Path | SourceFile, encoding: str = "utf-8") -> str:
    """What an "auto" file holds: "empty", "array", "jsonl" (its first line parses as an
    object on its own and more lines follow), or "values" (any other stream of JSON values,
    a file that is one object included). Reads a line at most, never the whole file."""
    with open_text(path, encoding) as fh:
        text = _Text(fh)
        first = text.peek()
        if not first:
            return "empty"
        if first == "[":
            return "array"
        line = text.rest_of_line(SNIFF_LINE)
        if first != "{" or line is None:
            return "values"
        try:
            obj = _loads_lenient(line)
        except ValueError:
            return "values"  # a pretty-printed object, or damage the reader quarantines
        text.pos += len(line)
        return "jsonl" if isinstance(obj, dict) and text.peek() else "values"


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


# ---- streamed JSON values -------------------------------------------------------------------


class _Unparsable(Exception):
    """The text at `line` is not JSON; nothing after it can be split into records."""

    def __init__(self, reason: str, line: int):
        super().__init__(reason)
        self.reason, self.line = reason, line


_TOO_DEEP = object()  # stands for a value nested too deeply to parse, but well delimited


class _Text:
    """A rolling window over a text stream, read one JSON value at a time.

    It holds the text not yet consumed: at most one value (up to MAX_ELEMENT) plus one
    chunk, whatever the file size. Line numbers are counted as the window moves."""

    def __init__(self, fh: TextIO):
        self.fh = fh
        self.buf = ""
        self.pos = 0  # the cursor: everything before it is consumed
        self.eof = False
        self.buf_line = 1  # the line buf[0] is on
        self._counted = (0, 1)  # (a position in buf, its line): newlines are counted once
        self._refill()

    def line(self, at: int | None = None) -> int:
        """The 1-based line of buf[at] (default: the cursor)."""
        at = self.pos if at is None else at
        start, line = self._counted
        if at < start:
            start, line = 0, self.buf_line
        line += self.buf.count("\n", start, at)
        self._counted = (at, line)
        return line

    def _refill(self) -> bool:
        """Drop the consumed text and read one more chunk; False at the end of the file."""
        if self.eof:
            return False
        more = self.fh.read(CHUNK)
        if not more:
            self.eof = True
            return False
        line = self.line()
        self.buf = self.buf[self.pos :] + more
        self.pos, self.buf_line, self._counted = 0, line, (0, line)
        return True

    def rest_of_line(self, limit: int) -> str | None:
        """The text from the cursor to the end of its line (its newline excluded), or None
        when the line has no end before the end of the file or runs past `limit` characters."""
        while (end := self.buf.find("\n", self.pos)) < 0:
            if len(self.buf) - self.pos >= limit or not self._refill():
                return None
        return self.buf[self.pos : end]

    def peek(self) -> str:
        """Skip whitespace; the next character, or "" at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._refill():
                return ""

    def skip(self, char: str) -> None:
        """Consume `char`, the character peek() just returned."""
        assert self.buf[self.pos] == char
        self.pos += 1

    def value(self) -> tuple[object, str, int]:
        """Parse the JSON value at the cursor and move past it: (value, its text, its line).
        A value too deep for the parser but well delimited comes back as _TOO_DEEP.
        Raises _Unparsable, with the cursor left at the value, when it is not JSON."""
        line = self.line()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as e:
                if len(self.buf) - self.pos < MAX_ELEMENT and self._refill():
                    continue  # the value may just end in the next chunk
                if len(self.buf) - self.pos >= MAX_ELEMENT:
                    reason = f"invalid JSON at line {line}: a value larger than {MAX_ELEMENT >> 20} MiB"
                else:
                    reason = f"invalid JSON at line {self.line(e.pos)}: {e.msg}"
                raise _Unparsable(reason, line) from None
            except RecursionError:
                # too deep for the parser; when its brackets still close, only it is lost
                end = _value_end(self.buf, self.pos)
                if end < 0 and len(self.buf) - self.pos < MAX_ELEMENT and self._refill():
                    continue
                if end < 0:
                    raise _Unparsable(f"invalid JSON at line {line}: JSON nested too deeply", line) from None
                obj = _TOO_DEEP
                break
        text = self.buf[self.pos : end]
        self.pos = end
        return obj, text, line

    def rest(self) -> tuple[str, int]:
        """Read to the end of the file: the first RAW_SHOWN characters from the cursor, and
        how many characters there were."""
        shown = self.buf[self.pos : self.pos + RAW_SHOWN]
        count = len(self.buf) - self.pos
        while not self.eof and (more := self.fh.read(CHUNK)):
            shown += more[: RAW_SHOWN - len(shown)]
            count += len(more)
        self.buf, self.pos, self.eof = "", 0, True
        return shown, count


def _items(text: _Text) -> Iterator[tuple[object, str, int]]:
    """The elements of the array at the cursor, one at a time, as _Text.value() returns them."""
    text.skip("[")
    expect_value = True
    while True:
        ch = text.peek()
        if not ch:
            raise _Unparsable("truncated JSON array: missing closing ']'", text.line())
        if ch == "]":
            text.skip("]")
            return
        if ch == "," and not expect_value:
            text.skip(",")
            expect_value = True
            continue
        yield text.value()
        expect_value = False


def _members(text: _Text) -> Iterator[tuple[str, int]]:
    """The keys of the object at the cursor, with their lines. After each key the cursor is
    at its value, which the caller consumes (_skip, _items or value()) before asking for the
    next key."""
    text.skip("{")
    while True:
        ch = text.peek()
        if ch == "}":
            text.skip("}")
            return
        if ch == ",":
            text.skip(",")
            continue
        line = text.line()
        if not ch:
            raise _Unparsable("truncated JSON object: missing closing '}'", line)
        if ch != '"':
            raise _Unparsable(f"invalid JSON at line {line}: expected a key or '}}'", line)
        key, _, _ = text.value()
        if text.peek() != ":":
            raise _Unparsable(f"invalid JSON at line {text.line()}: expected ':' after key {key!r}", line)
        text.skip(":")
        text.peek()
        yield key, line


def _skip(text: _Text) -> None:
    """Consume the value at the cursor; a list is read element by element, whatever its size."""
    if text.peek() == "[":
        for _ in _items(text):
            pass
    else:
        text.value()


class _Records:
    """Turns the values of one file into raw batches and quarantine entries, numbering them."""

    def __init__(self, file: str, encoding: str, reject: Reject):
        self.file, self.encoding, self.reject = file, encoding, reject
        self.batch = RawBatch(file)
        self.row = 0  # every value counts, kept or quarantined: rows + quarantined == input

    def add(self, obj: object, raw: str, line: int) -> None:
        if obj is _TOO_DEEP:
            self.bad(show_raw(raw[:RAW_SHOWN]), line, "invalid JSON: nested too deeply")
        elif _UNDECODABLE.search(raw):
            self.bad(show_raw(raw), line, f"undecodable bytes ({self.encoding})")
        elif not isinstance(obj, dict):
            self.bad(raw, line, f"expected a JSON object, found {type(obj).__name__}")
        else:
            self.batch.add(obj, self.row, line)
            self.row += 1

    def bad(self, raw: str, line: int, reason: str) -> None:
        self.reject(raw, self.file, self.row, line, reason)
        self.row += 1

    def full_batch(self) -> RawBatch | None:
        """The batch, handed over once it holds BATCH_SIZE records."""
        return self._hand_over() if len(self.batch) >= BATCH_SIZE else None

    def last_batch(self) -> RawBatch | None:
        """What the batch holds at the end of the file, if anything."""
        return self._hand_over() if len(self.batch) else None

    def _hand_over(self) -> RawBatch:
        batch, self.batch = self.batch, RawBatch(self.file)
        return batch


def _read_values(
    f: SourceFile, encoding: str, reject: Reject, fmt: str, records_path: str | None
) -> Iterator[RawBatch]:
    """Every JSON value in the file, in order: an array's elements and a top-level object are
    records. `fmt` "array" requires the file to start with an array; with `records_path`, or
    with "values" and a file that is one object wrapping one list of records, the records
    are that list."""
    key = records_path
    if key is None and fmt == "values":
        key = _wrapped_list(f, encoding)
    out = _Records(f.name, encoding, reject)
    with open_text(f, encoding) as fh:
        text = _Text(fh)
        first = text.peek()
        if not first:  # an empty file holds zero records
            return
        if fmt == "array" and first != "[":
            out.bad(show_raw(text.buf[text.pos : text.pos + 40]), text.line(), "expected a JSON array ('[')")
            return
        try:
            if key is not None:
                yield from _read_wrapped(text, key, out)
            while ch := text.peek():
                values = _items(text) if ch == "[" else [text.value()]
                for value in values:
                    out.add(*value)
                    if batch := out.full_batch():
                        yield batch
        except _Unparsable as e:
            shown, count = text.rest()
            reason = e.reason
            if count:
                reason += f"; the rest of the file ({count} chars) cannot be split into records"
            out.bad(show_raw(shown), e.line, reason)
    if batch := out.last_batch():
        yield batch


def _read_wrapped(text: _Text, key: str, out: _Records) -> Iterator[RawBatch]:
    """The records of the list under `key` in the object at the cursor; the object's other
    members are metadata, read past without keeping them."""
    line = text.line()
    if text.peek() != "{":
        raise _Unparsable(f"expected a JSON object holding a list under key {key!r}", line)
    shown = text.buf[text.pos : text.pos + RAW_SHOWN]
    found = False
    for name, _ in _members(text):
        if name == key and not found and text.peek() == "[":
            found = True
            for value in _items(text):
                out.add(*value)
                if batch := out.full_batch():
                    yield batch
        else:
            _skip(text)
    if not found:
        out.bad(shown, line, f"expected a list under key {key!r}")


def _wrapped_list(f: SourceFile, encoding: str) -> str | None:
    """A first pass over a file that may be one object wrapping its records: the key of its
    one member that is a list of objects. None when the file is not one object (a stream of
    values, an array), or when no member is such a list (the object is a record itself).

    Raises ValueError, naming the keys and the option that picks one, when two or more
    members are lists of objects: which of them holds the records is not forge's guess."""
    lists: list[str] = []
    with open_text(f, encoding) as fh:
        text = _Text(fh)
        if text.peek() != "{":
            return None
        try:
            for name, _ in _members(text):
                if text.peek() != "[":
                    text.value()
                    continue
                items = _items(text)
                first = next(items, None)
                if first is not None and isinstance(first[0], dict):
                    lists.append(name)
                for _ in items:  # read past the list; its elements are parsed by the second pass
                    pass
            alone = not text.peek()
        except _Unparsable:
            alone = True  # damaged: the second pass reads what it can and quarantines the rest
    if not alone or not lists:
        return None
    if len(lists) > 1:
        keys = ", ".join(repr(k) for k in lists)
        raise ValueError(
            f"one JSON object holding {len(lists)} lists of records ({keys}); pick one with "
            f"connector_options: {{records_path: {lists[0]}}} in the catalog entry, or read the "
            f"object as one record with {{format: document}}"
        )
    return lists[0]


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


def _read_document(f: SourceFile, encoding: str, reject: Reject) -> Iterator[RawBatch]:
    """format: document without records_path: the whole file is one record (MOSS, Natural
    Instructions), so it is read whole; text after the document makes it invalid JSON."""
    with open_text(f, encoding) as fh:
        text = fh.read()
    if _UNDECODABLE.search(text):
        reject(show_raw(text[:RAW_SHOWN]), f.name, 0, 1, f"undecodable bytes ({encoding})")
        return
    if not text.strip():  # an empty file holds zero records
        return
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        reject(text[:RAW_SHOWN], f.name, 0, e.lineno, f"invalid JSON at line {e.lineno}: {e.msg}")
        return
    except RecursionError:
        reject(text[:RAW_SHOWN], f.name, 0, 1, "invalid JSON: nested too deeply")
        return
    if isinstance(doc, dict):
        # documents are not line-addressable; line 0 says "see raw_row"
        yield _one(f.name, doc)
    else:
        reject(
            json.dumps(doc, ensure_ascii=False)[:RAW_SHOWN],
            f.name,
            0,
            0,
            f"expected a JSON object, found {type(doc).__name__}",
        )


def _one(file: str, record: dict) -> RawBatch:
    batch = RawBatch(file)
    batch.add(record, 0, 0)
    return batch

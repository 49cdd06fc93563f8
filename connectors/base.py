"""What every connector shares: the raw batch, file opening, checksums."""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

BATCH_SIZE = 8192

# reject(raw_text, file, row, line, reason): the one way a record leaves the pipeline early
Reject = Callable[[str, str, int, int, str], None]


@dataclass(frozen=True)
class SourceFile:
    path: Path  # where the bytes are on disk (the archive, for a member)
    name: str  # stable name inside the source (relative path); goes into ids and provenance
    member: str | None = None  # the member's path inside the archive at `path` (forge.connectors.archive)
    size: int | None = None  # the member's uncompressed size (or a listed remote file's size)
    # a Hub file known from the repo listing and not downloaded yet: its content id there
    # ("sha256:..." for LFS files, "git:..." for others); the part that reads it fetches it
    remote: str | None = None

    @property
    def nbytes(self) -> int:
        return self.size if self.size is not None else self.path.stat().st_size


@dataclass
class RawBatch:
    """Raw records of one file. Record-shaped formats fill `records` (one dict each);
    column-shaped formats (TSV) fill `columns` (one list per field) and skip the dicts."""

    file: str
    records: list[dict] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # 0-based record index within the file
    lines: list[int] = field(default_factory=list)  # 1-based line where each record starts
    columns: dict[str, list] | None = None

    def add(self, record: dict, row: int, line: int) -> None:
        self.records.append(record)
        self.rows.append(row)
        self.lines.append(line)

    def column(self, name: str) -> list:
        if self.columns is not None:
            return self.columns[name]
        return [r.get(name) for r in self.records]

    def as_records(self) -> list[dict]:
        if self.columns is not None and not self.records:
            names = list(self.columns)
            self.records = [
                dict(zip(names, vals, strict=True)) for vals in zip(*self.columns.values(), strict=True)
            ]
        return self.records

    def __len__(self) -> int:
        return len(self.rows)


def open_binary(source: Path | SourceFile) -> BinaryIO:
    """Open a raw file (or an archive member), decompressing .gz/.bz2/.zst transparently
    (streaming), with a byte-order mark removed: a UTF-8 BOM is skipped, and UTF-16 (LE or BE,
    by its BOM) is transcoded to UTF-8 on the fly, so every connector sees UTF-8 bytes."""
    if isinstance(source, SourceFile) and source.member is not None:
        from forge.connectors.archive import open_member

        raw = open_member(source.path, source.member)
        suffix = Path(source.member).suffix.lower()
    else:
        path = source.path if isinstance(source, SourceFile) else source
        raw = open(path, "rb")
        suffix = path.suffix.lower()
    if suffix == ".gz":
        fh = gzip.GzipFile(fileobj=raw, mode="rb")
        fh.myfileobj = raw  # closed with the gzip stream
    elif suffix == ".bz2":
        fh = bz2.open(raw, "rb")
    elif suffix in (".zst", ".zstd"):
        import zstandard

        fh = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    else:
        fh = raw
    if not hasattr(fh, "peek"):
        fh = io.BufferedReader(fh)
    return _without_bom(fh)


_BOMS = {b"\xef\xbb\xbf": None, b"\xff\xfe": "utf-16-le", b"\xfe\xff": "utf-16-be"}


def _without_bom(fh) -> BinaryIO:
    head = fh.peek(3)[:3]
    for bom, utf16 in _BOMS.items():
        if head.startswith(bom):
            fh.read(len(bom))
            return io.BufferedReader(_Utf16AsUtf8(fh, utf16)) if utf16 else fh
    return fh


class _Utf16AsUtf8(io.RawIOBase):
    """A UTF-16 byte stream read as UTF-8 bytes (lone surrogates pass through as invalid
    UTF-8, so the record holding them is quarantined like any undecodable record)."""

    def __init__(self, fh, encoding: str):
        self.fh = fh
        self.decoder = codecs.getincrementaldecoder(encoding)(errors="surrogatepass")
        self.pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            chunk = self.fh.read(1 << 16)
            self.pending = self.decoder.decode(chunk, final=not chunk).encode("utf-8", "surrogatepass")
            if not chunk:
                break
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.fh.close()
        super().close()


def open_text(path: Path | SourceFile, encoding: str) -> io.TextIOWrapper:
    # surrogateescape keeps undecodable bytes visible (as lone surrogates) so that the
    # record holding them can be quarantined with its position, instead of failing the file
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors="surrogateescape", newline="")


def show_raw(text: str) -> str:
    """Raw text for a quarantine entry, with undecodable bytes shown as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def decode_line(raw: bytes, encoding: str, reject: Reject, file: str, row: int, line: int) -> str | None:
    """Decode one raw line; on undecodable bytes, quarantine it (with the byte offset) and
    return None."""
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        reject(
            show_raw(raw.decode(encoding, "surrogateescape")),
            file,
            row,
            line,
            f"undecodable bytes ({encoding}) at byte {e.start}",
        )
        return None


def hash_file(path: Path, *hashers, chunk: int = 1 << 22) -> list[str]:
    """Feed a file to every hasher in one read; their hex digests, in order."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            for h in hashers:
                h.update(block)
    return [h.hexdigest() for h in hashers]


def sha256_file(path: Path) -> str:
    return hash_file(path, hashlib.sha256())[0]

"""Members of .zip, .tar, .tar.gz/.tgz archives, read as streams (never unpacked to disk).

A catalog source with `members: [GLOB, ...]` reads, from every archive among its located files,
the members whose path matches a glob (fnmatch: `*` also crosses `/`). Each member becomes one
raw file named `ARCHIVE!/MEMBER` in ids and provenance.

Zip and plain tar members are opened directly (the zip central directory and tar headers give
their offsets). A gzipped tar has no index, so members are read in archive order through one
streaming cursor per archive and process: reading them in order costs one pass over the archive.
"""

from __future__ import annotations

import fnmatch
import io
import tarfile
import zipfile
from pathlib import Path
from typing import BinaryIO

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
SEPARATOR = "!/"


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _is_zip(path: Path) -> bool:
    return path.name.lower().endswith(".zip")


def list_members(path: Path, patterns: list[str]) -> list[tuple[str, int]]:
    """(member path, uncompressed size) of the regular-file members matching any pattern,
    in archive order."""

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in patterns) and not name.split("/")[-1].startswith(".")

    if _is_zip(path):
        with zipfile.ZipFile(path) as zf:
            return [(i.filename, i.file_size) for i in zf.infolist() if not i.is_dir() and wanted(i.filename)]
    with tarfile.open(path, "r|*") as tf:  # one streaming pass, also for .tar.gz
        return [(m.name, m.size) for m in tf if m.isfile() and wanted(m.name)]


class _TarCursor:
    """A streaming pass over one gzipped tar, kept open so that members read in archive
    order cost one decompression pass in all."""

    def __init__(self, path: Path):
        self.tf = tarfile.open(path, "r|*")
        self.iter = iter(self.tf)

    def advance_to(self, member: str) -> BinaryIO | None:
        for info in self.iter:
            if info.name == member and info.isfile():
                fh = self.tf.extractfile(info)
                # the stream moves on with the cursor: copy this member out before it does
                return io.BytesIO(fh.read()) if fh else None
        return None


_cursors: dict[Path, _TarCursor] = {}


def open_member(path: Path, member: str) -> BinaryIO:
    """A binary stream of one member (open_binary adds the read buffer)."""
    if _is_zip(path):
        with zipfile.ZipFile(path) as zf:
            return zf.open(member)  # the member keeps the archive's file open until it is closed
    if path.name.lower().endswith(".tar"):
        fh = tarfile.open(path, "r:").extractfile(member)
        if fh is None:
            raise FileNotFoundError(f"{path}: no file member {member!r}")
        return fh
    cursor = _cursors.get(path)
    found = cursor.advance_to(member) if cursor else None
    if found is None:  # not ahead of the cursor: start a new pass
        _cursors[path] = cursor = _TarCursor(path)
        found = cursor.advance_to(member)
    if found is None:
        raise FileNotFoundError(f"{path}: no file member {member!r}")
    return found

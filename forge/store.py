"""Versioned, locked folders: how forge writes a source or a mixture without ever losing
the last good one, and how readers see one complete build from start to end.

Layout of one dataset (a source under sources/, a mixture under mixtures/):

    NAME/CURRENT          the committed version's id ("v000003"), replaced atomically
    NAME/.lock            writer lock (flock); holds the writer's pid for the wait message
    NAME/.last-version    the highest version number handed out: names are never reused
    NAME/v000003/         an immutable version: shards, manifest.json, quarantine.jsonl, .lease
    NAME/.tmp-v000004-PID a version being written; never read
    NAME/failed-build/    the quarantine of the last rejected build (kept for the user to read)

A writer takes the lock, removes what an earlier crashed writer left (it holds the lock, so
anything temporary is stale), writes a new version into a temporary folder, fsyncs it,
renames it to its version id and then commits by replacing CURRENT (write, fsync,
os.replace, fsync of the folder): a crash anywhere before that last rename leaves the
previous version current and untouched; after it, the new one.

Each committed manifest carries its own hash (`manifest_xxh3`, sealed at commit), so a manifest
edited by hand is told from the one forge wrote. A missing CURRENT is re-pointed by the next
writer at the newest complete version; committed versions are never removed for lack of one.

A reader resolves CURRENT once and takes a shared flock on the version's .lease for as long
as its process lives (or until release()), so a version in use is never collected. Old
versions beyond the newest `keep` are collected by writers only when no reader holds them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from forge.errors import ForgeError

CURRENT = "CURRENT"
LOCK = ".lock"
LEASE = ".lease"
FAILED = "failed-build"
SERIAL = ".last-version"  # the highest version number ever handed out
MARKER = ".forge-output"  # put in every --out folder forge writes; only such folders are replaced
# \Z, not $: `$` also matches before a final newline, and "name\n" is no name
_VERSION = re.compile(r"^v(\d{6,})\Z")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
DEFAULT_KEEP = 2


class StoreError(ForgeError):
    pass


def check_name(kind: str, name: str, where: str = "") -> str:
    """The one rule for source and mixture names: letters, digits and ._- , not starting
    with a dot, at most 128 characters. Names become folder names under the data home."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        prefix = f"{where}: " if where else ""
        raise StoreError(
            f"{prefix}invalid {kind} name {name!r}: use letters, digits, '.', '_' and '-', "
            f"not starting with a dot (at most 128 characters)"
        )
    return name


def inside(root: Path, *parts: str) -> Path:
    """root/parts..., refusing any result outside root (absolute parts, '..', symlinks out)."""
    base = Path(root).resolve()
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise StoreError(f"refusing a path outside {base}: {'/'.join(parts)!r}")
    return path


def keep_versions() -> int:
    raw = os.environ.get("FORGE_KEEP_VERSIONS", str(DEFAULT_KEEP))
    try:
        keep = int(raw)
    except ValueError:
        keep = 0
    if keep < 1:
        raise StoreError(f"FORGE_KEEP_VERSIONS must be a positive integer, got {raw!r}")
    return keep


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under path (so a rename after it publishes durable data)."""
    for p in sorted(path.rglob("*"), reverse=True):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write, fsync, rename over the target, fsync the folder: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


MANIFEST = "manifest.json"
SEAL = "manifest_xxh3"  # a manifest's hash of itself: an edited manifest no longer matches it


def manifest_digest(manifest: dict) -> str:
    """xxh3-128 of a manifest's content without its seal (key order and spacing do not count)."""
    import json

    import xxhash

    body = {k: v for k, v in manifest.items() if k != SEAL}
    return xxhash.xxh3_128_hexdigest(json.dumps(body, sort_keys=True, ensure_ascii=False).encode())


def seal_manifest(folder: Path) -> None:
    """Write the manifest's own hash into it; every committed version is sealed."""
    import json

    path = Path(folder) / MANIFEST
    if not path.exists():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest[SEAL] = manifest_digest(manifest)
    write_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))


def seal_broken(manifest: dict) -> bool:
    """True when a sealed manifest was edited after it was written (unsealed, older ones pass)."""
    return SEAL in manifest and manifest[SEAL] != manifest_digest(manifest)


def _version_number(name: str) -> int | None:
    m = _VERSION.match(name)
    return int(m.group(1)) if m else None


def version_id(number: int) -> str:
    return f"v{number:06d}"


# Leases this process holds: version folder -> open file (its shared flock lives as long as it).
_LEASES: dict[Path, object] = {}


def release(path: Path | None = None) -> None:
    """Drop this process's lease on one version folder (or on all of them)."""
    for p in [path] if path is not None else list(_LEASES):
        fh = _LEASES.pop(Path(p), None)
        if fh is not None:
            fh.close()


@dataclass(frozen=True)
class Version:
    name: str  # the dataset's name
    id: str  # "v000003"
    path: Path  # the version folder


class Store:
    """One versioned dataset folder (root/name)."""

    def __init__(self, root: Path, name: str, kind: str = "source"):
        check_name(kind, name)
        self.kind = kind
        self.name = name
        self.root = Path(root)
        self.path = inside(self.root, name)

    # ---- reading ---------------------------------------------------------------------
    def current_id(self) -> str | None:
        try:
            text = (self.path / CURRENT).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise StoreError(f"{self.path / CURRENT}: unreadable version pointer: {e}") from e
        if _version_number(text) is None:
            raise StoreError(f"{self.path / CURRENT}: damaged version pointer {text[:40]!r}")
        return text

    def current(self, lease: bool = True) -> Version | None:
        """The committed version, leased by this process (so no writer collects it while we
        read). None when nothing is committed."""
        for _ in range(100):
            vid = self.current_id()
            if vid is None:
                if (self.path / MANIFEST).exists():
                    raise StoreError(
                        f"{self.path}: built by an older forge (no {CURRENT} pointer); "
                        f"remove the folder and build again"
                    )
                if newest := self.newest_complete():
                    raise StoreError(
                        f"{self.path / CURRENT} is missing, but complete versions are there (newest "
                        f"{newest}); `forge {self._rebuild_verb()} {self.name}` points to it again"
                    )
                return None
            vdir = self.path / vid
            if not (vdir / MANIFEST).exists() and not self._moving(vid):
                newest = self.newest_complete()
                raise StoreError(
                    f"{self.path / CURRENT} names {vid}, which is not there"
                    + (f" (newest complete version: {newest})" if newest else "")
                    + f"; `forge {self._rebuild_verb()} {self.name}` repairs it"
                )
            if not lease:
                return Version(self.name, vid, vdir)
            if self._lease(vdir):
                return Version(self.name, vid, vdir)
            time.sleep(0.01)  # collected between resolve and lease: a newer one is current
        raise StoreError(f"{self.path}: could not pin a version (the pointer kept moving)")

    def _moving(self, vid: str) -> bool:
        """A writer committed a newer version between our read of CURRENT and now."""
        try:
            return self.current_id() != vid
        except StoreError:
            return False

    def _rebuild_verb(self) -> str:
        return "build" if self.kind == "source" else "mix"

    def newest_complete(self) -> str | None:
        """The newest version folder holding a manifest (it was renamed into place whole)."""
        complete = [v for v in self.versions() if (self.path / v / MANIFEST).exists()]
        return complete[-1] if complete else None

    def _lease(self, vdir: Path) -> bool:
        if vdir in _LEASES:
            return True
        try:
            fh = open(vdir / LEASE, "rb")
        except FileNotFoundError:
            return False
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        # a collector renames the folder away while holding LOCK_EX; if it did, retry
        if not (vdir / "manifest.json").exists():
            fh.close()
            return False
        _LEASES[vdir] = fh
        return True

    def versions(self) -> list[str]:
        if not self.path.is_dir():
            return []
        found = [(n, p.name) for p in self.path.iterdir() if (n := _version_number(p.name)) is not None]
        return [name for _, name in sorted(found)]

    # ---- writing ---------------------------------------------------------------------
    @contextmanager
    def lock(self, wait: bool = True, say: Callable[[str], None] | None = None) -> Iterator[None]:
        """The writer lock. A second writer waits (saying so once) or, with wait=False, fails."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / LOCK, "a+")
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                fh.seek(0)
                holder = fh.read().strip() or "?"
                if not wait:
                    raise StoreError(
                        f"{self.kind} {self.name!r} is being written by another forge process "
                        f"(pid {holder}); try again later, or drop --no-wait to wait for it"
                    ) from None
                if say:
                    say(f"waiting for another forge process (pid {holder}) writing {self.kind} {self.name}")
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self.recover()
            yield
        finally:
            fh.close()  # releases the flock

    def recover(self) -> None:
        """Under the writer lock: remove what a crashed writer or collector left behind
        (temporary and trash folders, versions written but never committed). A missing pointer,
        or one naming a version that is gone, is pointed at the newest complete version: which
        versions were committed is then unknown, so none is removed."""
        try:
            current, damaged = self.current_id(), False
        except StoreError:  # damaged pointer: which versions were committed is unknown, keep all
            current, damaged = None, True
        if not damaged and (current is None or not (self.path / current).is_dir()):
            current = self.newest_complete()
            if current is not None:
                write_atomic(self.path / CURRENT, f"{current}\n".encode())
        cur_n = float("inf") if damaged else (_version_number(current) if current else -1)
        for p in list(self.path.iterdir()):
            n = _version_number(p.name)
            stale = p.name.startswith((".tmp-", ".trash-")) or (n is not None and n > cur_n)
            if stale and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(f".{CURRENT}.tmp-"):
                p.unlink(missing_ok=True)

    def new_tmp(self) -> tuple[str, Path]:
        """A fresh temporary folder for the next version (call under the lock)."""
        existing = [_version_number(v) for v in self.versions()]
        serial = self.path / SERIAL
        try:
            last = int(serial.read_text().strip())
        except (OSError, ValueError):
            last = 0
        vid = version_id(max(*existing, last, 0) + 1)
        # remembered before the folder exists: a version removed later never lends its name again
        write_atomic(serial, f"{_version_number(vid)}\n".encode())
        tmp = self.path / f".tmp-{vid}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / LEASE).touch()
        return vid, tmp

    def commit(self, vid: str, tmp: Path, keep: int | None = None) -> Version:
        """Publish a finished temporary folder as version `vid` and make it current."""
        from forge import faults

        seal_manifest(tmp)
        fsync_tree(tmp)
        faults.point("commit:before-rename")
        final = self.path / vid
        os.rename(tmp, final)
        fsync_dir(self.path)
        faults.point("commit:before-pointer")
        write_atomic(self.path / CURRENT, f"{vid}\n".encode())
        faults.point("commit:after-pointer")
        shutil.rmtree(self.path / FAILED, ignore_errors=True)
        self.collect(keep if keep is not None else keep_versions())
        return Version(self.name, vid, final)

    def collect(self, keep: int) -> list[str]:
        """Remove old versions beyond the newest `keep`, skipping any a reader holds."""
        current = self.current_id()
        removed = []
        old = [v for v in self.versions() if v != current]
        for vid in old[: max(0, len(old) - (keep - 1))]:
            vdir = self.path / vid
            try:
                fh = open(vdir / LEASE, "rb")
            except FileNotFoundError:
                fh = None
            try:
                if fh is not None:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        continue  # a reader holds it: collected by a later writer
                trash = self.path / f".trash-{vid}-{os.getpid()}"
                os.rename(vdir, trash)
            finally:
                if fh is not None:
                    fh.close()
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(vid)
        return removed


# ---- --out folders ----------------------------------------------------------------------
def absolute(path: Path) -> Path:
    """An absolute, normalised path without resolving symlinks (`.` and `..` get real names)."""
    return Path(os.path.abspath(path))


def check_out(out: Path, overwrite: bool, flag: str = "--out") -> None:
    """`out` may be written when it is new or empty, or holds forge's marker (an earlier forge
    output) and overwrite is set. Anything else is refused: forge never deletes a folder it
    did not write."""
    out = absolute(out)
    for parent in out.parents:  # `--out afile/sub`: the first existing ancestor must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise StoreError(f"{flag} {out}: {parent} is a file, not a folder; choose another path")
            break
    if out.exists() or out.is_symlink():
        if out.is_symlink() or not out.is_dir():
            raise StoreError(f"{flag} {out}: exists and is not a folder; choose a new folder")
        if any(out.iterdir()):
            if not (out / MARKER).exists():
                raise StoreError(
                    f"{flag} {out}: folder exists and was not written by forge; forge never replaces "
                    f"it. Choose a new or empty folder"
                )
            if not overwrite:
                raise StoreError(
                    f"{flag} {out}: holds an earlier forge output; pass --overwrite to replace it, "
                    f"or choose a new folder"
                )
            added = foreign_file(out)
            if added is not None:
                raise StoreError(
                    f"{flag} {out}: holds {added}, which forge did not write, so forge will not "
                    f"replace the folder; move that file out, or choose a new folder"
                )


def prepare_out(out: Path, overwrite: bool, flag: str = "--out") -> Path:
    """check_out(), then a fresh temporary sibling to build in (finish_out() moves it into
    place). Temporary siblings left by dead forge processes are removed first."""
    out = absolute(out)
    check_out(out, overwrite, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*"):
        _remove_if_dead(stale)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    mark(tmp)
    return tmp


def finish_out(tmp: Path, out: Path, flag: str = "--out") -> None:
    """Move a finished temporary folder into place. The rule of check_out() is applied again at
    the moment of the swap, under a lock on the parent folder: a user's file that appeared in
    `out` while forge ran makes this refuse, and the result stays in `tmp`, named in the error.

    Replacing an empty folder is one rename (POSIX renames onto an empty folder and refuses a
    non-empty one), so a file created at the last instant is never swept away either."""
    from forge import faults

    out = absolute(out)
    faults.point("out:before-swap")

    def intruded() -> StoreError:
        # kept under a visible name that no later forge run cleans up as a stale temporary
        kept = out.with_name(f"{out.name}.forge-result-{os.getpid()}")
        os.rename(tmp, kept)
        return StoreError(
            f"{flag} {out}: files not written by forge appeared there during the run, so nothing "
            f"was replaced; the finished result is in {kept}: move it where you want it"
        )

    with _folder_lock(out.parent):
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            raise intruded()
        mark_files(tmp)
        if out.is_dir() and (out / MARKER).exists():
            if foreign_file(out) is not None:  # a user's file added since check_out()
                raise intruded()
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(tmp, out)  # out absent or empty; a non-empty folder makes this fail
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise intruded() from None
            raise


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive flock on a folder itself: no lock file is left in the user's folder."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock across a read, edit and atomic replace of `path` (catalog.yaml),
    so two forge processes never both read the old file and one of their edits is lost. The
    file itself is replaced, so the lock lives on a sibling `.NAME.lock` that forge owns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        yield


def claim_run_folder(path: Path, overwrite: bool, flag: str = "--output-dir", resume: bool = False) -> Path:
    """A run folder (train, ablate) is written in place while forge works: checkpoints appear as
    training goes. It may be new or empty, or one forge made (it carries the marker): with
    `resume` forge continues in it as it is; with `overwrite` forge's earlier contents are
    removed first. Anything else is refused, with or without overwrite. Returns the folder,
    marked as forge's."""
    path = absolute(path)
    if resume and (path / MARKER).exists():
        return path  # continuing an earlier run: its checkpoints and results are in there
    check_out(path, overwrite, flag)
    if path.is_dir() and (path / MARKER).exists():
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    mark(path)
    return path


MARK_TEXT = "written by forge; forge may replace this folder with --overwrite\n"


def mark(folder: Path) -> None:
    """Mark a folder as forge's: the only kind forge may later replace (with --overwrite)."""
    (Path(folder) / MARKER).write_text(MARK_TEXT)


def mark_files(folder: Path) -> None:
    """Mark a finished --out folder as forge's and list, one per line after the mark, every
    file forge wrote into it: a file added there later is the user's, and --overwrite refuses
    to replace the folder while it holds one (foreign_file)."""
    folder = Path(folder)
    (folder / MARKER).write_text(MARK_TEXT + "".join(f"{f}\n" for f in output_files(folder)))


def foreign_file(folder: Path) -> str | None:
    """The first file in a forge output folder that its marker does not list: one forge did
    not write. None when every file is listed, or the marker lists none (a run folder, written
    in place as training goes, or the output of a forge before 2026-12-05)."""
    folder = Path(folder)
    listed = set((folder / MARKER).read_text().splitlines()[1:])
    if not listed:
        return None
    return next((f for f in output_files(folder) if f not in listed), None)


def output_files(folder: Path) -> list[str]:
    """Every file in an --out folder but forge's marker, as sorted paths relative to it."""
    folder = Path(folder)
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if (p.is_file() or p.is_symlink()) and p != folder / MARKER
    )


def _remove_if_dead(path: Path) -> None:
    """Remove a `.NAME.tmp-PID` folder whose writer process no longer runs."""
    try:
        pid = int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return
    if pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
        return  # still running
    except ProcessLookupError:
        pass
    except PermissionError:
        return
    if path.is_dir() and (path / MARKER).exists():
        shutil.rmtree(path, ignore_errors=True)

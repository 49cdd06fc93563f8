"""Find the raw files of a source: an explicit path, the shipped sample, a local path,
the Hub (through huggingface_hub, revision pinned, cached in the data home) or a URL."""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import os
import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from forge.catalog import Source
from forge.connectors import SourceFile
from forge.connectors.archive import SEPARATOR, is_archive, list_members
from forge.errors import BuildError
from forge.paths import builtin_dir, hub_cache_dir

# what a corpus folder holds besides its data: code, docs, configs, pictures, licences. Data
# files themselves come with any name (Auto-CoT's have no suffix at all), so this is a deny list.
NOT_DATA_SUFFIXES = {
    ".py", ".pyc", ".sh", ".ipynb", ".md", ".rst", ".yaml", ".yml", ".toml", ".cfg", ".ini",
    ".html", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".lock",
}  # fmt: skip
NOT_DATA_NAMES = {"license", "licence", "copying", "notice", "readme", "makefile", "dockerfile"}


def is_data_file(path: Path) -> bool:
    """Not a script, a document, a picture or a licence: a folder given with --from often holds
    those beside the data, and they are not records."""
    return path.suffix.lower() not in NOT_DATA_SUFFIXES and path.name.lower() not in NOT_DATA_NAMES


def skipped_in(folder: Path) -> list[str]:
    """Files of a folder that are not data (reported in the manifest, never read)."""
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and not is_data_file(p)
    )


def _expand(pattern: Path) -> list[Path]:
    if pattern.is_dir():
        return sorted(
            p for p in pattern.rglob("*") if p.is_file() and not p.name.startswith(".") and is_data_file(p)
        )
    if any(ch in str(pattern) for ch in "*?["):
        return sorted(Path(p) for p in glob.glob(str(pattern), recursive=True) if Path(p).is_file())
    return [pattern] if pattern.is_file() else []


def _named(paths: list[Path], root: Path | None = None) -> list[SourceFile]:
    """Give each file a stable name: its path relative to the files' common folder."""
    if not paths:
        return []
    # names come from the paths as given, not resolved: a symlink inside a --from folder may point
    # anywhere, and is named by where it sits in the folder
    absolute = [Path(os.path.abspath(p)) for p in paths]
    if root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    root = Path(os.path.abspath(root))
    return [SourceFile(p.resolve(), os.path.relpath(a, root)) for p, a in zip(paths, absolute, strict=True)]


def resolve(
    src: Source,
    *,
    from_path: Path | None = None,
    sample: bool = False,
    home: Path | None = None,
    offline: bool | None = None,
    revision: str | None = None,
    subsets: list[str] | None = None,
) -> tuple[list[SourceFile], dict]:
    """Files to read and a description of where they came from (for provenance). Archives
    among them are replaced by their members when the source names `members`. `revision`
    overrides the catalog's pinned Hub revision for this build; `subsets` picks files by the
    catalog's hub.subsets glob (xP3's languages) before anything is downloaded.

    A Hub source that the Hub can list comes back as listed files (SourceFile.remote set, not
    downloaded): each build part fetches its own files, so a large source downloads and builds
    file by file, and a rerun fetches only what is missing. Offline, the files cached in the
    data home are used as before."""
    if subsets:
        if not (src.hub and src.hub.subsets) or from_path is not None or sample:
            raise BuildError(
                f"{src.name}: --subset applies to a Hub source whose catalog entry declares hub.subsets "
                f"(for example xp3's languages)"
            )
        src = dataclasses.replace(
            src, hub=dataclasses.replace(src.hub, files=[src.hub.subsets.format(subset=x) for x in subsets])
        )
    if revision is not None:
        if not src.hub or from_path is not None or sample:
            raise BuildError(
                f"{src.name}: --revision applies to a Hub download only (not --from/--sample/url)"
            )
        src = dataclasses.replace(src, hub=dataclasses.replace(src.hub, revision=revision))
    files, origin = _locate(src, from_path=from_path, sample=sample, home=home, offline=offline)
    if src.members:
        files = _members(src, files)
        origin["members"] = src.members
    return files, origin


def _members(src: Source, files: list[SourceFile]) -> list[SourceFile]:
    out = []
    for f in files:
        if not is_archive(f.path):
            out.append(f)
            continue
        try:
            found = list_members(f.path, src.members)
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as e:
            raise BuildError(f"{src.name}: cannot read archive {f.path}: {e}") from e
        if not found:
            raise BuildError(f"{src.name}: archive {f.name} has no member matching {src.members}")
        out.extend(SourceFile(f.path, f"{f.name}{SEPARATOR}{m}", member=m, size=n) for m, n in found)
    return out


def _locate(
    src: Source, *, from_path: Path | None, sample: bool, home: Path | None, offline: bool | None
) -> tuple[list[SourceFile], dict]:
    if from_path is not None:
        files = _expand(Path(from_path))
        if not files:
            raise BuildError(f"{src.name}: no files at {from_path}")
        folder = Path(from_path) if Path(from_path).is_dir() else None
        origin = {"kind": "path", "path": str(from_path)}
        if folder is not None:
            origin["skipped"] = skipped_in(folder)  # not data: never read, listed here
        return _named(files, folder), origin
    if sample:
        if not src.sample:
            raise BuildError(f"{src.name}: the catalog has no shipped sample for this source")
        files = _expand(builtin_dir() / src.sample)
        if not files:
            raise BuildError(f"{src.name}: sample {src.sample} not found under {builtin_dir()}")
        return _named(files), {"kind": "sample", "path": src.sample}
    if src.local:
        pattern = Path(os.path.expandvars(os.path.expanduser(src.local)))
        if not pattern.is_absolute():
            pattern = src.base_dir / pattern
        files = _expand(pattern)
        if files:
            return _named(files), {"kind": "local", "path": str(pattern)}
    if src.hub:
        origin = {"kind": "hub", "repo": src.hub.repo, "revision": src.hub.revision, "files": src.hub.files}
        listed = None if src.members else hub_listing(src, home, offline)
        return (listed if listed is not None else _from_hub(src, home, offline)), origin
    if src.url:
        return _from_urls(src, home), {"kind": "url", "urls": src.url}
    where = f" (local path {src.local} has no files)" if src.local else ""
    raise BuildError(f"{src.name}: no location to read from{where}; pass --from PATH or --sample")


def matches_hub_pattern(path: str, pattern: str) -> bool:
    """huggingface_hub's allow_patterns semantics (fnmatch: `*` also crosses `/`)."""
    return fnmatch.fnmatch(path, pattern)


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids asking the Hub (huggingface_hub's truthy spellings)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_target(src: Source, home: Path | None) -> Path:
    hub = src.hub
    return hub_cache_dir(home) / hub.repo_type / hub.repo.replace("/", "--") / hub.revision


def hub_listing(src: Source, home: Path | None, offline: bool | None) -> list[SourceFile] | None:
    """The source's files as the Hub lists them at the pinned revision (name, size, content
    id), nothing downloaded; None when the Hub cannot be asked (offline or unreachable: the
    download path then says so in one line, or uses the cache)."""
    if offline or hub_offline():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    hub = src.hub
    try:
        entries = list(
            HfApi().list_repo_tree(hub.repo, repo_type=hub.repo_type, revision=hub.revision, recursive=True)
        )
    except Exception:  # noqa: BLE001 - unreachable, offline, not found: the download path reports it
        return None
    patterns = hub.files or ["*"]
    target = _hub_target(src, home)
    files = []
    for e in entries:
        if isinstance(e, RepoFile) and any(matches_hub_pattern(e.path, pat) for pat in patterns):
            content = f"sha256:{e.lfs.sha256}" if e.lfs else f"git:{e.blob_id}"
            files.append(SourceFile(target / e.path, e.path, size=e.size, remote=content))
    if not files:
        raise BuildError(f"{src.name}: {hub.repo}@{hub.revision} has no files matching {patterns}")
    return sorted(files, key=lambda f: f.name)


def fetch(src: Source, f: SourceFile) -> SourceFile:
    """Download one listed Hub file into the data home's cache (skipped when it is there
    already, resumed when partial), check its content against the listing, and return it as
    a local file."""
    from huggingface_hub import hf_hub_download

    from forge.connectors.base import sha256_file

    hub = src.hub
    try:
        path = hf_hub_download(
            hub.repo,
            f.name,
            repo_type=hub.repo_type,
            revision=hub.revision,
            local_dir=str(f.path.parents[len(Path(f.name).parts) - 1]),  # the listing's target folder
            # read now, not at import: a Ray worker may have imported huggingface_hub for an
            # earlier job with other settings
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except Exception as e:  # network, auth, missing file: one clear line
        raise BuildError(
            f"{src.name}: download of {f.name} from {hub.repo}@{hub.revision} failed: {e}"
        ) from e
    if f.remote.startswith("sha256:") and sha256_file(Path(path)) != f.remote.split(":", 1)[1]:
        raise BuildError(f"{src.name}: {f.name} downloaded from {hub.repo} does not match the Hub's sha256")
    return SourceFile(Path(path), f.name)


def _from_hub(src: Source, home: Path | None, offline: bool | None) -> list[SourceFile]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub = src.hub
    target = _hub_target(src, home)
    try:
        root = snapshot_download(
            repo_id=hub.repo,
            repo_type=hub.repo_type,
            revision=hub.revision,
            allow_patterns=hub.files or None,
            local_dir=str(target),  # resumable: finished files are skipped, partial ones resumed
        )
    except LocalEntryNotFoundError as e:
        raise BuildError(
            f"{src.name}: cannot reach the Hub for {hub.repo}@{hub.revision} and nothing is cached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}); pass --from PATH"
        ) from e
    except Exception as e:  # network, auth, missing revision: one clear line
        raise BuildError(
            f"{src.name}: download from {hub.repo}@{hub.revision} failed: {type(e).__name__}: {e}"
        ) from e
    root = Path(root)
    # the download's own pattern semantics, so what was downloaded is exactly what is read
    patterns = hub.files or ["*"]
    paths = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and ".cache" not in p.relative_to(root).parts
        and any(matches_hub_pattern(str(p.relative_to(root)), pat) for pat in patterns)
    ]
    if not paths:
        raise BuildError(f"{src.name}: {hub.repo}@{hub.revision} has no files matching {hub.files}")
    return _named(sorted(set(paths)), root)


def _from_urls(src: Source, home: Path | None) -> list[SourceFile]:
    urls = [src.url] if isinstance(src.url, str) else list(src.url)
    out = []
    for url in urls:
        folder = hub_cache_dir(home) / "url" / hashlib.sha256(url.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / url.rstrip("/").rsplit("/", 1)[-1]
        if not path.exists():
            partial = path.with_suffix(path.suffix + ".part")
            start = partial.stat().st_size if partial.exists() else 0
            req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
            try:
                with (
                    urllib.request.urlopen(req, timeout=60) as resp,
                    open(partial, "ab" if start else "wb") as fh,
                ):
                    if start and resp.status != 206:  # server ignored the range: start over
                        fh.truncate(0)
                    shutil.copyfileobj(resp, fh, 1 << 20)
            except OSError as e:
                raise BuildError(f"{src.name}: download of {url} failed: {e}") from e
            os.replace(partial, path)
        out.append(SourceFile(path, path.name))
    return out

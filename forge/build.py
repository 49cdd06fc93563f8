"""forge build: connector -> formatter -> tagging -> Parquet shards + manifest.

Records move through the stages in batches (a connector batch of up to 8192 raw records
becomes one Arrow table), never one dict at a time through every layer.

Layout under the data home (one immutable version per build, see forge/store.py):
  sources/<name>/CURRENT                          the committed version, e.g. v000003
  sources/<name>/v000003/part-000-00000.parquet   zstd Parquet, RECORD_SCHEMA
  sources/<name>/v000003/manifest.json            rows/bytes/sha256/xxh3 per shard, build hash, tags
  sources/<name>/v000003/quarantine.jsonl         every rejected raw record with file, line, reason
  sources/<name>/.parts/<key>/                    finished parts (hard links), reused by the next
                                                  build when a part's input and options are unchanged

A build writes a new version under the source's writer lock and commits it by replacing
CURRENT; readers pin the version they resolved, so a rebuild never changes what they read.
The parts of a build run on an executor (forge/executor.py): local processes or Ray tasks.

This module plans and commits a build: it resolves and hashes the raw files, groups them into
parts (plan_parts), reuses the unchanged ones from the part cache, runs the others, merges
their counts and quarantines into the manifest and commits the version. What one part does
(connector -> formatter -> tags -> shards) is forge/build_part.py; opening and checking a
committed version for reading is forge/built.py (open_built and read_manifest, the readers'
entry points, are still importable from here).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from forge import lang as langid
from forge import normalize
from forge.build_part import TAG_COUNTS, PartResult, _build_part_staged, _full_disk
from forge.built import damaged_shards, version_problems
from forge.built import open_built as open_built  # re-exported: forge.build's public API
from forge.built import read_manifest as read_manifest
from forge.catalog import Source
from forge.connectors import CONNECTORS
from forge.connectors.archive import SEPARATOR
from forge.errors import BuildError
from forge.executor import Executor
from forge.formatters import FORMATTERS
from forge.locate import resolve
from forge.paths import data_home, source_store, templates_dir
from forge.schema import SCHEMA_VERSION
from forge.settings import byte_size
from forge.store import FAILED, Store, StoreError

DEFAULT_SHARD_ROWS = 250_000
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
# raw bytes per independently built part; None reads FORGE_PART_BYTES (default 64 MiB)
# when a build plans its parts, so a bad value fails that build in one line, not every
# command at import (forge/settings.py)
PART_BYTES: int | None = None
PARALLEL_MIN_BYTES = 32 << 20  # below this, worker start-up costs more than it saves


@dataclass
class BuildResult:
    source: str
    status: str  # "built" | "up-to-date"
    rows: int
    quarantined: int
    input_records: int
    shards: list[dict]
    build_hash: str
    seconds: float
    out_dir: Path
    quarantine_file: Path | None
    tag_counts: dict = field(default_factory=dict)
    version: str = ""


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def build_hash(src: Source, raw: list[dict], detector: str) -> str:
    parts = {
        "schema": SCHEMA_VERSION,
        "connector": [src.connector, CONNECTORS[src.connector].VERSION, src.connector_options],
        "formatter": [src.formatter, FORMATTERS[src.formatter].VERSION, src.options],
        "tags": [src.lang, src.task, src.gen, src.category, detector, langid.VERSION],
        "normalization": normalize.NORMALIZATION,
        "raw": [[r["name"], r.get("remote") or r["sha256"]] for r in raw],
        "members": src.members,
    }
    if src.formatter in ("cot", "tasks"):
        parts["templates"] = _tree_hash(Path(src.options.get("templates_dir") or templates_dir()))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))
    os.replace(tmp, path)


def build_source(
    src: Source,
    *,
    home: Path | None = None,
    from_path: Path | None = None,
    sample: bool = False,
    force: bool = False,
    max_quarantine: float = 0.01,
    detector: str = "fast",
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    wait: bool = True,
    say: Callable[[str], None] | None = None,
    keep: int | None = None,
    revision: str | None = None,
    executor: Executor | None = None,
    subsets: list[str] | None = None,
) -> BuildResult:
    """Build one source into a new immutable version and commit it (forge.store); the
    previous version stays current and untouched until the new one is complete. `revision`
    overrides the catalog's pinned Hub revision for this build (the manifest's origin says
    which was used). `executor` runs the parts (forge.executor: local processes or Ray);
    `workers` is the local one's process count. `subsets` picks a Hub source's files by its
    catalog hub.subsets glob (xP3's languages).

    Parts whose input is unchanged since the last build (same files and contents, same
    options) are not rebuilt: finished parts are kept under the source's .parts folder, so a
    rebuild after one file changed, or a rerun after a crash, builds only what is missing."""
    if not (0.0 <= max_quarantine <= 1.0):  # also refuses NaN
        raise BuildError(f"--max-quarantine must be a fraction between 0 and 1, got {max_quarantine}")
    home = Path(home or data_home())
    t0 = time.perf_counter()
    files, origin = resolve(
        src, from_path=from_path, sample=sample, home=home, revision=revision, subsets=subsets
    )
    if subsets:
        origin["subsets"] = list(subsets)
    raw = []
    content: dict[str, str] = {}  # file path -> what its bytes are (sha256, or the Hub's id)
    from forge.connectors.base import sha256_file

    seen = set()
    for f in files:
        if f.remote:  # listed on the Hub, fetched by the part that reads it
            raw.append({"name": f.name, "remote": f.remote, "bytes": f.size})
            content[str(f.path)] = f.remote
            continue
        if f.path in seen:  # the members of one archive: its bytes are hashed once
            continue
        seen.add(f.path)
        try:
            with open(f.path, "rb") as fh:
                if fh.read(len(LFS_POINTER)) == LFS_POINTER:
                    raise BuildError(
                        f"{src.name}: {f.path} is a Git LFS pointer, not the data; fetch the file "
                        f"(git lfs pull) or point --from at the real one"
                    )
            name = f.name.split(SEPARATOR)[0] if f.member else f.name
            raw.append({"name": name, "sha256": sha256_file(f.path), "bytes": f.path.stat().st_size})
            content[str(f.path)] = raw[-1]["sha256"]
        except OSError as e:
            raise BuildError(f"{src.name}: cannot read {f.path}: {e.strerror}") from e
    bhash = build_hash(src, raw, detector)
    store = source_store(src.name, home)
    try:
        with store.lock(wait=wait, say=say):
            if not force and (done := up_to_date(store, src.name, bhash, t0)):
                return done
            vid, tmp = store.new_tmp()
            executor = executor or Executor("local", workers)
            job = _Job(
                src,
                files,
                raw,
                bhash,
                origin,
                t0,
                max_quarantine,
                detector,
                shard_rows,
                executor,
                force,
                content,
            )
            try:
                return _build_version(job, store, vid, tmp, progress, keep)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except OSError as e:
        if _full_disk(e):
            raise BuildError(
                f"{src.name}: no space left on the device holding {home} "
                f"({e.filename or 'while writing'}); the previous version is intact. Free space and rebuild"
            ) from e
        raise


def up_to_date(store: Store, name: str, bhash: str, t0: float) -> BuildResult | None:
    """The committed version as an "up-to-date" result when it was built with `bhash` and its
    shards are intact; None when it must be (re)built: nothing committed, a damaged pointer or
    manifest, another build hash, or a shard that differs from the manifest."""
    try:
        current = store.current(lease=False)
    except StoreError:
        return None  # a damaged pointer: build a new version and point to it
    if current is None:
        return None
    old, problems = version_problems(current.path)
    if problems or old.get("build_hash") != bhash:
        return None  # damaged or built from other input: rebuild
    return BuildResult(
        name,
        "up-to-date",
        old["rows"],
        old["quarantined"],
        old["input_records"],
        old["shards"],
        bhash,
        time.perf_counter() - t0,
        current.path,
        (current.path / "quarantine.jsonl") if old["quarantined"] else None,
        old["tag_counts"],
        version=current.id,
    )


@dataclass
class _Job:
    """What one build of one source works from, decided before the writer lock is taken."""

    src: Source
    files: list
    raw: list[dict]
    bhash: str
    origin: object
    t0: float
    max_quarantine: float
    detector: str
    shard_rows: int
    executor: Executor
    force: bool = False
    content: dict = field(default_factory=dict)  # file path -> sha256 or Hub content id


def _build_version(job: _Job, store: Store, vid: str, tmp: Path, progress, keep: int | None) -> BuildResult:
    """Build every part into `tmp`, check the quarantine share, write the manifest, commit."""
    from forge import faults

    src, files, raw, bhash, origin, t0 = job.src, job.files, job.raw, job.bhash, job.origin, job.t0
    max_quarantine, detector, shard_rows, executor = (
        job.max_quarantine,
        job.detector,
        job.shard_rows,
        job.executor,
    )

    parts = plan_parts(files)
    cache = store.path / PART_CACHE
    cache.mkdir(exist_ok=True)
    base = build_hash(src, [], detector)  # the options every part shares (templates read once)
    keys = [part_key(base, job, part_files) for part_files in parts]
    todo = [i for i in range(len(parts)) if job.force or not _reusable(cache / keys[i])]
    jobs = [(src, parts[i], i, str(tmp), detector, shard_rows) for i in todo]

    def finished(staged: tuple, count: bool) -> None:
        """Keep a finished part in the cache at once, so a crash later loses none of it."""
        result, attempt = staged
        _keep_part(tmp / attempt, result, cache / keys[result.index])
        faults.point("build:part-kept")
        if count and progress:
            progress(result.formatted_from + result.connector_rejects)

    small = sum(r["bytes"] for r in raw) < PARALLEL_MIN_BYTES
    if executor.name == "local" and (small or len(jobs) <= 1 or executor.workers == 1):
        for j in jobs:
            finished(_build_part_staged(j, progress), count=False)
    elif jobs:
        executor.map(_build_part_staged, jobs, done=lambda r: finished(r, count=True))
    results = [_reuse_part(cache / keys[i], i, tmp) for i in range(len(parts))]
    if progress:
        for i in set(range(len(parts))) - set(todo):
            progress(results[i].formatted_from + results[i].connector_rejects)
    for leftover in tmp.glob(".part-*"):  # attempts whose worker died: never committed
        shutil.rmtree(leftover, ignore_errors=True)
    for marker in tmp.glob(".fault-part-*"):  # forge.faults' test markers
        marker.unlink()
    fetched = {name: sha for r in results for name, sha in r.raw_sha.items()}
    for r in raw:  # Hub files listed before the build: their sha256 is known now
        if "sha256" not in r:
            r["sha256"] = fetched[r["name"]]
    faults.point("build:parts-done")

    shards = [sh for r in results for sh in r.shards]
    rows = sum(r.rows for r in results)
    counts = {k: Counter() for k in TAG_COUNTS}
    reasons: Counter = Counter()
    for r in results:
        for key in counts:
            counts[key].update(r.counts.get(key, {}))
        reasons.update(r.reasons)
    quarantined = sum(r.quarantined for r in results)
    # every raw record either reached the formatter or was rejected by the connector
    input_records = sum(r.formatted_from + r.connector_rejects for r in results)
    qfile = tmp / "quarantine.jsonl"
    if quarantined:
        with open(qfile, "wb") as fh:
            for i in range(len(parts)):
                part = tmp / f".quarantine-{i:03d}.jsonl"
                if part.exists():
                    with open(part, "rb") as src_fh:
                        shutil.copyfileobj(src_fh, fh)
                    part.unlink()
    fraction = quarantined / max(input_records, 1)
    if fraction > max_quarantine:
        # the rejected build's quarantine is kept apart, so the live version's stays its own
        failed = store.path / FAILED
        if failed.is_symlink() or (failed.exists() and not failed.is_dir()):
            raise BuildError(
                f"{src.name}: {failed} is not the folder forge keeps rejected builds in (a link or a "
                f"file); move it away and build again. The previous version is unchanged"
            )
        shutil.rmtree(failed, ignore_errors=True)
        failed.mkdir()
        os.replace(qfile, failed / "quarantine.jsonl")
        raise BuildError(
            f"{src.name}: {quarantined} of {input_records} raw records quarantined ({fraction:.1%} > "
            f"--max-quarantine {max_quarantine:.1%}); see {failed / 'quarantine.jsonl'}. "
            f"Reasons: {dict(reasons.most_common(5))}. The previous version is unchanged"
        )
    tag_counts = {k: dict(sorted(v.items())) for k, v in counts.items()}
    zh_warning = check_zh_content(src.name, tmp, shards, tag_counts, fail=False)
    manifest = {
        "source": src.name,
        "version": vid,
        "schema_version": SCHEMA_VERSION,
        "build_hash": bhash,
        "rows": rows,
        "input_records": input_records,
        "quarantined": quarantined,
        "quarantine_reasons": dict(reasons),
        "shards": shards,
        "raw": raw,
        "origin": origin,
        "tags": {"lang": langid.dataset_lang(tag_counts["lang"]), "task": src.task, "gen": src.gen},
        "tag_counts": tag_counts,
        "connector": {"name": src.connector, "version": CONNECTORS[src.connector].VERSION},
        "formatter": {"name": src.formatter, "version": FORMATTERS[src.formatter].VERSION},
        "detector": detector,
        "license": src.license,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "warnings": [zh_warning] if zh_warning else [],
        "parts": {"built": len(todo), "reused": len(parts) - len(todo)},
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    version = store.commit(vid, tmp, keep)
    for entry in cache.iterdir():  # keep the parts of the committed version only
        if entry.name not in keys:
            shutil.rmtree(entry, ignore_errors=True)
    return BuildResult(
        src.name,
        "built",
        rows,
        quarantined,
        input_records,
        shards,
        bhash,
        time.perf_counter() - t0,
        version.path,
        (version.path / "quarantine.jsonl") if quarantined else None,
        tag_counts,
        version=vid,
    )


def check_zh_content(name: str, folder: Path, shards: list[dict], tag_counts: dict, fail: bool) -> str | None:
    """Whether the zh tags match the content (forge.lang.zh_content_problem). A model stage that
    was asked for Chinese fails on it; a catalog source records it as a warning in its manifest,
    because some real corpora come near it by design (GAOKAO math questions whose LaTeX leaves
    mostly option letters: 4 of the 276 zh records in the real sample; a Chinese instruction
    over an English passage counts as Chinese, by the prompt rule)."""
    if tag_counts["lang"].get("zh", 0) < langid.ZH_CHECK_MIN_RECORDS:
        return None
    import polars as pl

    frame = pl.scan_parquet([str(folder / s["file"]) for s in shards]).select("lang", "instruction", "input")
    problem = langid.zh_content_problem(frame)
    if problem and fail:
        raise BuildError(f"{name}: {problem}. The previous version is unchanged")
    return problem


PART_CACHE = ".parts"


def part_key(base: str, job: _Job, files: list) -> str:
    """What a part's output depends on: the build's options (`base`: its hash without the raw
    files), the shard size and the part's own files and contents."""
    ident = [[f.name, f.member, job.content[str(f.path)]] for f in files]
    return hashlib.sha256(json.dumps([base, job.shard_rows, ident]).encode()).hexdigest()[:32]


def _reusable(entry: Path) -> bool:
    """A cached part can stand in for a rebuild when its result and every shard are intact
    (the cache shares bytes with committed versions: a damaged shard is damaged in both)."""
    try:
        data = json.loads((entry / "result.json").read_text())
    except (OSError, ValueError):
        return False
    return not damaged_shards(entry, data)


def _keep_part(attempt: Path, result: PartResult, entry: Path) -> None:
    """Move a finished attempt folder to the part cache, with its result."""
    import dataclasses

    data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    data["counts"] = {k: dict(v) for k, v in result.counts.items()}  # asdict() garbles Counters
    write_json_atomic(attempt / "result.json", data)
    if entry.exists():  # --force: the new build replaces it
        shutil.rmtree(entry)
    os.replace(attempt, entry)


def _reuse_part(entry: Path, index: int, tmp: Path) -> PartResult:
    """Link a cached part's shards and quarantine into the version folder as part `index`."""
    data = json.loads((entry / "result.json").read_text())
    result = PartResult(**{**data, "counts": {k: Counter(v) for k, v in data["counts"].items()}})
    shards = []
    for n, shard in enumerate(result.shards):
        name = f"part-{index:03d}-{n:05d}.parquet"
        _link(entry / shard["file"], tmp / name)
        shards.append({**shard, "file": name})
    for q in entry.glob(".quarantine-*.jsonl"):
        _link(q, tmp / f".quarantine-{index:03d}.jsonl")
    result.shards, result.index = shards, index
    return result


def _link(src: Path, dst: Path) -> None:
    """A hard link (no copy: the cache and the version share the bytes), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def plan_parts(files: list, target_bytes: int | None = None) -> list[list]:
    """Group files, in order, into parts of about target_bytes. Parts are built
    independently (in parallel when there are several) and the grouping depends only on
    the input, so the output is the same whatever the number of workers."""
    target_bytes = target_bytes or PART_BYTES or byte_size("FORGE_PART_BYTES", 64 << 20)
    parts: list[list] = [[]]
    size = 0
    for f in files:
        n = f.nbytes
        if parts[-1] and size + n > target_bytes:
            parts.append([])
            size = 0
        parts[-1].append(f)
        size += n
    return parts

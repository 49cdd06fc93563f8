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
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from forge import lang as langid
from forge import normalize
from forge.catalog import Source
from forge.connectors import CONNECTORS
from forge.connectors.archive import SEPARATOR
from forge.errors import BuildError
from forge.executor import Executor
from forge.formatters import FORMATTERS
from forge.locate import resolve
from forge.paths import data_home, source_store, templates_dir
from forge.schema import FORMATTED_COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION
from forge.settings import byte_size
from forge.store import FAILED, Store, StoreError, seal_broken

DEFAULT_SHARD_ROWS = 250_000
LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"
# raw bytes per independently built part; None reads FORGE_PART_BYTES (default 64 MiB)
# when a build plans its parts, so a bad value fails that build in one line, not every
# command at import (forge/settings.py)
PART_BYTES: int | None = None
PARALLEL_MIN_BYTES = 32 << 20  # below this, worker start-up costs more than it saves
ROW_GROUP_ROWS = 32_768
TAG_COUNTS = ("lang", "lang_output", "task", "gen", "category")  # counted per value in the manifest


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


def record_id(source: str, file: str, row: int, variant: str) -> str:
    return xxhash.xxh3_128_hexdigest(f"{source}\x1f{file}\x1f{row}\x1f{variant}".encode())


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


def _printable(text: str) -> str:
    """Text that UTF-8 can hold: lone surrogates (broken input) become \\udXXX escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Quarantine:
    """Collects rejected raw records; the file is written only if something is rejected."""

    def __init__(self, source: str, path: Path):
        self.source = source
        self.path = path
        self.count = 0
        self.by_stage: Counter = Counter()
        self.reasons: Counter = Counter()
        self._fh = None

    def stage(self, stage: str) -> Callable[[str, str, int, int, str], None]:
        """The reject callback handed to one stage (connector or formatter)."""

        def reject(raw: str, file: str, row: int, line: int, reason: str) -> None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "w", encoding="utf-8")
            entry = {
                "source": self.source,
                "stage": stage,
                "file": file,
                "row": row,
                "line": line,
                "reason": _printable(reason),
                "raw": _printable(raw),
            }
            self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self.count += 1
            self.by_stage[stage] += 1
            self.reasons[reason.split(":")[0]] += 1

        return reject

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class ShardWriter:
    """Writes RECORD_SCHEMA tables into part-NNNNN.parquet shards of `shard_rows` rows.

    Parquet encoding and zstd compression release the GIL, so writes run on a background
    thread while the next batch is parsed and tagged; at most two writes are in flight.
    """

    def __init__(self, folder: Path, shard_rows: int, prefix: str = "part"):
        from concurrent.futures import ThreadPoolExecutor

        self.prefix = prefix
        self.folder = folder
        self.shard_rows = shard_rows
        self.shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows = 0
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list = []

    def submit(self, table: pa.Table) -> None:
        while len(self._pending) >= 2:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self.write, table))

    def _path(self, i: int) -> Path:
        return self.folder / f"{self.prefix}-{i:05d}.parquet"

    def write(self, table: pa.Table) -> None:
        while table.num_rows:
            if self._writer is None:
                self._writer = pq.ParquetWriter(
                    self._path(len(self.shards)), RECORD_SCHEMA, compression="zstd"
                )
                self._rows = 0
            take = min(self.shard_rows - self._rows, table.num_rows)
            self._writer.write_table(table.slice(0, take), row_group_size=ROW_GROUP_ROWS)
            self._rows += take
            table = table.slice(take)
            if self._rows >= self.shard_rows:
                self._finish()

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        path = self._path(len(self.shards))

        self.shards.append(
            {
                "file": path.name,
                "rows": self._rows,
                "bytes": path.stat().st_size,
                **file_digests(path),
            }
        )
        self._writer = None

    def close(self) -> list[dict]:
        for f in self._pending:
            f.result()  # re-raises a failed write here
        self._pool.shutdown()
        self._finish()
        return self.shards


def assemble(cols: dict, src: Source, detector: str) -> pa.Table:
    """Formatter columns -> a RECORD_SCHEMA table: ids, catalog tags, detected language."""
    n = len(cols["instruction"])
    cols = dict(cols)
    for name in normalize.TEXT_FIELDS:
        cols[name] = normalize.trim(cols[name])
    cols["history"] = normalize.trim_history(cols["history"])
    # only pair formatters hand over rejected answers; a record without one is an sft record
    rejected = cols.get("rejected")
    cols["rejected"] = [""] * n if rejected is None else normalize.trim(rejected)
    arrays = {}
    for name in FORMATTED_COLUMNS:
        value = cols[name]
        ftype = RECORD_SCHEMA.field(name).type
        if name == "history" and value is None:  # single-turn records: n empty lists, built directly
            empty = pa.array([], ftype.value_type)
            value = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), empty)
        arrays[name] = value if isinstance(value, pa.Array) else pa.array(value, type=ftype)
    files, rows, variants = cols["raw_file"], cols["raw_row"], cols["variant"]
    ids = [record_id(src.name, f, r, v) for f, r, v in zip(files, rows, variants, strict=True)]
    arrays["id"] = pa.array(ids, pa.string())
    arrays["source"] = pa.array([src.name] * n, pa.string())
    arrays["task"] = pa.array([src.task] * n, pa.string())
    arrays["gen"] = pa.array([src.gen] * n, pa.string())
    is_pair = pc.not_equal(arrays["rejected"], "")
    arrays["kind"] = pc.if_else(is_pair, "pair", "sft").cast(pa.string())
    table = pa.table({k: arrays[k] for k in arrays})
    flagged = normalize.control_char_rows(table)
    if len(flagged):
        meta = table.column("meta").to_pylist()
        for i in flagged:
            meta[i] = normalize.add_flag(meta[i], "control_char")
        table = table.set_column(table.schema.get_field_index("meta"), "meta", pa.array(meta, pa.string()))
    # template formatters say which raw text holds the content (lang_text, lang_output_text);
    # others are read from their question and output
    question = cols.get("lang_text")
    question = langid.question_text(table) if question is None else normalize.trim(question)
    codes, scores = langid.detect(question, detector, src.lang, whole=langid.record_text(table))
    answer = cols.get("lang_output_text")
    answer = table.column("output").combine_chunks() if answer is None else normalize.trim(answer)
    table = table.append_column("lang", pa.array(codes, pa.string()))
    table = table.append_column("lang_score", pa.array(np.asarray(scores, dtype=np.float32)))
    table = table.append_column("lang_output", langid.detect_output(answer, codes, detector))
    return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


@dataclass
class Built:
    """One committed version of a built source, leased by this process for reading."""

    name: str
    version: str
    path: Path
    manifest: dict

    def files(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]


def open_built(name: str, home: Path | None = None) -> Built | None:
    """The source's current version, pinned for this process (see forge.store) and checked
    against its hashes (verified_manifest), or None when nothing is built."""
    version = source_store(name, home).current()
    if version is None:
        return None
    return Built(name, version.id, version.path, verified_manifest(version.path, f"forge build {name}"))


# version folders this process has checked: versions are immutable and leased while read
_VERIFIED: dict[Path, dict] = {}


def verified_manifest(folder: Path, repair: str) -> dict:
    """A committed version's manifest, after checking that it is the manifest forge wrote (its
    seal) and that every shard has the size and xxh3 it lists. Readers (mix, train, stats,
    filter, dedup, publish) go through here, so a damaged shard that still decodes is never
    used: they fail in one line naming it and the command that repairs it. Once per process
    and version (bench/verify_bench.py measures the cost)."""
    folder = Path(folder)
    if folder in _VERIFIED:
        return _VERIFIED[folder]
    manifest, problems = version_problems(folder)
    if problems:
        raise BuildError(f"{folder}: {'; '.join(problems[:3])}; `{repair}` repairs it")
    _VERIFIED[folder] = manifest
    return manifest


def version_problems(folder: Path) -> tuple[dict | None, list[str]]:
    """The one check of a version folder that readers, `forge verify` and the up-to-date test
    share: (its manifest, what is wrong with it). The manifest is None when it cannot be read;
    the list is empty when the seal holds and every shard matches its size and xxh3."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        problems = damaged_shards(Path(folder), manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, [f"manifest.json unreadable ({type(e).__name__})"]
    if seal_broken(manifest):
        problems.insert(0, "manifest.json (edited after forge wrote it)")
    built_with = manifest.get("schema_version", SCHEMA_VERSION)  # mixtures record none
    if built_with != SCHEMA_VERSION:
        problems.insert(
            0,
            f"built with record schema v{built_with}; this forge reads v{SCHEMA_VERSION} "
            f"(v2 added the lang_output column, v3 the rejected and kind columns of preference pairs)",
        )
    return manifest, problems


def read_manifest(name: str, home: Path | None = None) -> dict | None:
    built = open_built(name, home)
    return built.manifest if built else None


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))
    os.replace(tmp, path)


def _full_disk(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


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


@dataclass
class PartResult:
    shards: list[dict]
    rows: int
    counts: dict
    formatted_from: int
    connector_rejects: int
    quarantined: int
    reasons: dict
    index: int = 0
    raw_sha: dict = field(default_factory=dict)  # Hub files this part fetched: name -> sha256


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


def _build_part_staged(job: tuple, progress: Callable[[int], None] | None = None) -> tuple[PartResult, str]:
    """Build one part into a folder of its own inside the build's temporary folder. The
    driver keeps (in the part cache) only the attempt whose result it received, so a
    part whose worker died and was retried (Ray) is committed exactly once."""
    import uuid

    from forge import faults
    from forge.connectors.base import sha256_file
    from forge.locate import fetch

    src, files, index, out_dir, detector, shard_rows = job
    attempt = Path(out_dir) / f".part-{index:03d}.{uuid.uuid4().hex[:12]}"
    attempt.mkdir()
    local, raw_sha = [], {}
    for f in files:  # Hub files are fetched here, by the part (the task) that reads them
        if f.remote:
            got = fetch(src, f)
            raw_sha[f.name] = f.remote[7:] if f.remote.startswith("sha256:") else sha256_file(got.path)
            local.append(got)
        else:
            local.append(f)
    result = _build_part((src, local, index, attempt, detector, shard_rows), progress)
    result.index, result.raw_sha = index, raw_sha
    faults.part_attempt(index, out_dir)
    return result, attempt.name


def _build_part(job: tuple, progress: Callable[[int], None] | None = None) -> PartResult:
    """connector -> formatter -> assemble -> shards, for one part's files."""
    src, files, index, out_dir, detector, shard_rows = job
    quarantine = Quarantine(src.name, out_dir / f".quarantine-{index:03d}.jsonl")
    writer = ShardWriter(out_dir, shard_rows, prefix=f"part-{index:03d}")
    options = dict(src.options)
    if src.formatter in ("cot", "tasks"):
        options.setdefault("templates_dir", str(templates_dir()))
    counts = {k: Counter() for k in TAG_COUNTS}
    rows = formatted_from = 0  # formatted_from: raw records that reached the formatter
    try:
        try:
            fmt = FORMATTERS[src.formatter].make(options, src.name)
        except ValueError as e:
            raise BuildError(f"{src.name}: {e}") from e
        reject_raw, reject_fields = quarantine.stage("connector"), quarantine.stage("formatter")
        for f in files:  # one file at a time, so a whole-file failure names its file
            try:
                for batch in CONNECTORS[src.connector].read([f], src.connector_options, reject_raw):
                    formatted_from += len(batch)
                    for table in format_batch(fmt, batch, src, detector, reject_fields):
                        writer.submit(table)
                        rows += table.num_rows
                        for key in counts:
                            counts[key].update(table.column(key).to_pylist())
                    if progress:
                        progress(len(batch))
            except OSError as e:
                if _full_disk(e):
                    raise
                raise BuildError(f"{src.name}: {f.path}: cannot read: {e.strerror or e}") from e
            except (EOFError, zlib.error) as e:
                raise BuildError(f"{src.name}: {f.path}: truncated or corrupt compressed file ({e})") from e
            except ValueError as e:
                raise BuildError(f"{src.name}: {f.path}: {e}") from e
        shards = writer.close()
    finally:
        quarantine.close()
    return PartResult(
        shards,
        rows,
        counts,
        formatted_from,
        quarantine.by_stage["connector"],
        quarantine.count,
        dict(quarantine.reasons),
    )


def format_batch(fmt, batch, src: Source, detector: str, reject) -> list[pa.Table]:
    """Format and assemble one raw batch. When the batch fails as a whole (a record nested
    too deep, text Arrow cannot encode, a template that raises on one record), it is retried
    record by record and only the failing records are quarantined, with the error as reason.
    Rejections are held back until an attempt succeeds, so no record is counted twice."""
    held: list[tuple] = []
    try:
        cols = fmt(batch, lambda *a: held.append(a))
        tables = [assemble(cols, src, detector)] if len(cols["instruction"]) else []
    except (OSError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - any per-record failure becomes a quarantine entry
        if len(batch) == 1:
            reason = f"{type(e).__name__}: {str(e)[:300]}".replace("\n", " ")
            reject(_raw_text(batch), batch.file, batch.rows[0], batch.lines[0], f"record failed: {reason}")
            return []
        return [t for one in _singles(batch) for t in format_batch(fmt, one, src, detector, reject)]
    for args in held:
        reject(*args)
    return tables


def _singles(batch):
    from forge.connectors.base import RawBatch

    if batch.columns is not None:
        for i in range(len(batch)):
            yield RawBatch(
                batch.file,
                rows=[batch.rows[i]],
                lines=[batch.lines[i]],
                columns={k: [v[i]] for k, v in batch.columns.items()},
            )
    else:
        for rec, row, line in zip(batch.records, batch.rows, batch.lines, strict=True):
            yield RawBatch(batch.file, records=[rec], rows=[row], lines=[line])


def _raw_text(batch) -> str:
    """The raw record for a quarantine entry, even when it cannot be serialised as it is."""
    record = batch.as_records()[0]
    try:
        text = json.dumps(record, ensure_ascii=False, default=str)
    except (RecursionError, ValueError, TypeError):
        text = f"<record of {len(record)} fields that cannot be printed: nested too deep>"
    return text[:20000]


def file_digests(path: Path) -> dict:
    """sha256 (for the dataset card) and xxh3-128 (for fast integrity checks), one read."""
    from forge.connectors.base import hash_file

    sha, xx = hash_file(path, hashlib.sha256(), xxhash.xxh3_128())
    return {"sha256": sha, "xxh3": xx}


def shard_digest(path: Path) -> str:
    """xxh3-128 of a file: fast enough to check every shard before saying "up to date"."""
    from forge.connectors.base import hash_file

    return hash_file(path, xxhash.xxh3_128())[0]


def damaged_shards(folder: Path, manifest: dict) -> list[str]:
    """Shards of a version that are missing, or whose size or xxh3 differs from the manifest."""
    bad = []
    for s in manifest["shards"]:
        path = folder / s["file"]
        try:
            if path.stat().st_size != s["bytes"] or shard_digest(path) != s.get("xxh3"):
                bad.append(f"{s['file']} (content differs from the manifest)")
        except OSError:
            bad.append(f"{s['file']} (missing)")
    return bad


def verify_store(store: Store) -> list[str]:
    """Problems with a dataset's committed version (sources and mixtures alike): an
    unreadable pointer or manifest, missing shards, shards whose bytes differ from the
    xxh3 in the manifest. Empty when it is intact."""
    try:
        version = store.current(lease=False)
    except StoreError as e:
        return [str(e)]
    if version is None:
        return ["not built"]
    manifest, found = version_problems(version.path)
    problems = [f"{version.id}/{p}" for p in found]
    if manifest is None:
        return problems
    if "ids_sha256" in manifest:  # a mixture's lineage file
        from forge.connectors.base import sha256_file

        ids = version.path / "ids.parquet"
        if not ids.exists() or sha256_file(ids) != manifest["ids_sha256"]:
            problems.append(f"{version.id}/ids.parquet (content differs from the manifest)")
    return problems

"""forge build: connector -> formatter -> tagging -> Parquet shards + manifest.

Records move through the stages in batches (a connector batch of up to 8192 raw records
becomes one Arrow table), never one dict at a time through every layer.

Layout under the data home:
  sources/<name>/part-00000.parquet ...   zstd Parquet, RECORD_SCHEMA
  sources/<name>/manifest.json            rows/bytes/sha256 per shard, build hash, tag counts
  quarantine/<name>/quarantine.jsonl      every rejected raw record with file, line, reason

Writes are atomic: the build goes to a temporary folder beside the target, which replaces
the old folder with a rename only when every shard and the manifest are complete.
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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from connectors import CONNECTORS
from forge import lang as langid
from forge.catalog import Source
from forge.errors import BuildError
from forge.locate import resolve
from forge.paths import data_home, quarantine_dir, source_dir, templates_dir
from forge.schema import FORMATTED_COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION
from formatters import FORMATTERS

DEFAULT_SHARD_ROWS = 250_000
PART_BYTES = 64 << 20  # raw bytes per independently built part
PARALLEL_MIN_BYTES = 32 << 20  # below this, worker start-up costs more than it saves
ROW_GROUP_ROWS = 32_768


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
        "tags": [src.lang, src.task, src.gen, src.category, detector],
        "raw": [[r["name"], r["sha256"]] for r in raw],
    }
    if src.formatter in ("cot", "tasks"):
        parts["templates"] = _tree_hash(Path(src.options.get("templates_dir") or templates_dir()))
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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
                "reason": reason,
                "raw": raw,
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
        from connectors.base import sha256_file

        self.shards.append(
            {"file": path.name, "rows": self._rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
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
    table = pa.table({k: arrays[k] for k in arrays})
    codes, scores = langid.detect(langid.record_text(table), detector)
    table = table.append_column("lang", pa.array(codes, pa.string()))
    table = table.append_column("lang_score", pa.array(np.asarray(scores, dtype=np.float32)))
    return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


def read_manifest(name: str, home: Path | None = None) -> dict | None:
    path = source_dir(name, home) / "manifest.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))
    os.replace(tmp, path)


def _swap_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


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
) -> BuildResult:
    home = Path(home or data_home())
    t0 = time.perf_counter()
    files, origin = resolve(src, from_path=from_path, sample=sample, home=home)
    raw = []
    from connectors.base import sha256_file

    for f in files:
        try:
            raw.append({"name": f.name, "sha256": sha256_file(f.path), "bytes": f.path.stat().st_size})
        except OSError as e:
            raise BuildError(f"{src.name}: cannot read {f.path}: {e.strerror}") from e
    bhash = build_hash(src, raw, detector)
    out = source_dir(src.name, home)
    old = read_manifest(src.name, home)
    if old and old.get("build_hash") == bhash and not force and _shards_intact(out, old):
        return BuildResult(
            src.name,
            "up-to-date",
            old["rows"],
            old["quarantined"],
            old["input_records"],
            old["shards"],
            bhash,
            time.perf_counter() - t0,
            out,
            None,
            old["tag_counts"],
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{src.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    qdir = quarantine_dir(src.name, home)
    qtmp = qdir.with_name(f".{src.name}.tmp-{os.getpid()}")
    shutil.rmtree(qtmp, ignore_errors=True)

    parts = plan_parts(files)
    jobs = [(src, part_files, i, tmp, qtmp, detector, shard_rows) for i, part_files in enumerate(parts)]
    n_workers = min(workers or os.cpu_count() or 1, len(parts))
    try:
        if n_workers > 1 and sum(r["bytes"] for r in raw) >= PARALLEL_MIN_BYTES:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: polars and Arrow keep thread pools that do not survive a fork
            with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
                results = []
                for r in pool.map(_build_part, jobs):
                    results.append(r)
                    if progress:
                        progress(r.formatted_from + r.connector_rejects)
        else:
            results = [_build_part(job, progress) for job in jobs]
    except BuildError:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(qtmp, ignore_errors=True)
        raise

    shards = [sh for r in results for sh in r.shards]
    rows = sum(r.rows for r in results)
    counts = {k: Counter() for k in ("lang", "task", "gen", "category")}
    reasons: Counter = Counter()
    for r in results:
        for key in counts:
            counts[key].update(r.counts[key])
        reasons.update(r.reasons)
    quarantined = sum(r.quarantined for r in results)
    # every raw record either reached the formatter or was rejected by the connector
    input_records = sum(r.formatted_from + r.connector_rejects for r in results)
    qfile = None
    if quarantined:
        with open(qtmp / "quarantine.jsonl", "wb") as fh:
            for i in range(len(parts)):
                part = qtmp / f"part-{i:03d}.jsonl"
                if part.exists():
                    fh.write(part.read_bytes())
                    part.unlink()
        qdir.parent.mkdir(parents=True, exist_ok=True)
        _swap_dir(qtmp, qdir)
        qfile = qdir / "quarantine.jsonl"
    else:
        shutil.rmtree(qtmp, ignore_errors=True)
        shutil.rmtree(qdir, ignore_errors=True)
    fraction = quarantined / max(input_records, 1)
    if fraction > max_quarantine:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(
            f"{src.name}: {quarantined} of {input_records} raw records quarantined ({fraction:.1%} > "
            f"--max-quarantine {max_quarantine:.1%}); see {qfile}. Reasons: {dict(reasons.most_common(5))}"
        )
    tag_counts = {k: dict(sorted(v.items())) for k, v in counts.items()}
    manifest = {
        "source": src.name,
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
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    _swap_dir(tmp, out)
    return BuildResult(
        src.name,
        "built",
        rows,
        quarantined,
        input_records,
        shards,
        bhash,
        time.perf_counter() - t0,
        out,
        qfile,
        tag_counts,
    )


@dataclass
class PartResult:
    shards: list[dict]
    rows: int
    counts: dict
    formatted_from: int
    connector_rejects: int
    quarantined: int
    reasons: dict


def plan_parts(files: list, target_bytes: int = PART_BYTES) -> list[list]:
    """Group files, in order, into parts of about target_bytes. Parts are built
    independently (in parallel when there are several) and the grouping depends only on
    the input, so the output is the same whatever the number of workers."""
    parts: list[list] = [[]]
    size = 0
    for f in files:
        n = f.path.stat().st_size
        if parts[-1] and size + n > target_bytes:
            parts.append([])
            size = 0
        parts[-1].append(f)
        size += n
    return parts


def _build_part(job: tuple, progress: Callable[[int], None] | None = None) -> PartResult:
    """connector -> formatter -> assemble -> shards, for one part's files."""
    src, files, index, out_dir, qdir, detector, shard_rows = job
    quarantine = Quarantine(src.name, qdir / f"part-{index:03d}.jsonl")
    writer = ShardWriter(out_dir, shard_rows, prefix=f"part-{index:03d}")
    options = dict(src.options)
    if src.formatter in ("cot", "tasks"):
        options.setdefault("templates_dir", str(templates_dir()))
    counts = {k: Counter() for k in ("lang", "task", "gen", "category")}
    rows = formatted_from = 0  # formatted_from: raw records that reached the formatter
    try:
        fmt = FORMATTERS[src.formatter].make(options, src.name)
        reject_raw, reject_fields = quarantine.stage("connector"), quarantine.stage("formatter")
        for batch in CONNECTORS[src.connector].read(files, src.connector_options, reject_raw):
            formatted_from += len(batch)
            cols = fmt(batch, reject_fields)
            if len(cols["instruction"]):
                table = assemble(cols, src, detector)
                writer.submit(table)
                rows += table.num_rows
                for key in counts:
                    counts[key].update(table.column(key).to_pylist())
            if progress:
                progress(len(batch))
        shards = writer.close()
    except OSError as e:
        raise BuildError(f"{src.name}: cannot read input: {e}") from e
    except ValueError as e:
        raise BuildError(f"{src.name}: {e}") from e
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


def _shards_intact(folder: Path, manifest: dict) -> bool:
    return all(
        (folder / s["file"]).exists() and (folder / s["file"]).stat().st_size == s["bytes"]
        for s in manifest["shards"]
    )

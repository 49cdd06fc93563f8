"""One part of a build: its raw files -> connector -> formatter -> tags -> Parquet shards.

A build (forge/build.py) plans its raw files into parts and runs each part here, in this process
or in a worker the executor started (forge/executor.py: spawned processes or Ray tasks, which
find `_build_part_staged` by its module-level name). A part reads only its own files and writes
only its own attempt folder, so it is apart from the build's planning, part cache and commit:
data in (the part's files and the source's options), data out (shards, a quarantine file and a
PartResult of counts).

Records move in batches (a connector batch of up to 8192 raw records becomes one Arrow table);
a batch that fails as a whole is retried record by record, so only the failing records are
quarantined.
"""

from __future__ import annotations

import errno
import json
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
from forge.built import file_digests
from forge.catalog import Source
from forge.connectors import CONNECTORS
from forge.errors import BuildError
from forge.formatters import FORMATTERS
from forge.paths import templates_dir
from forge.schema import FORMATTED_COLUMNS, RECORD_SCHEMA

ROW_GROUP_ROWS = 32_768
TAG_COUNTS = ("lang", "lang_output", "task", "gen", "category")  # counted per value in the manifest


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


def record_id(source: str, file: str, row: int, variant: str) -> str:
    return xxhash.xxh3_128_hexdigest(f"{source}\x1f{file}\x1f{row}\x1f{variant}".encode())


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


def _printable(text: str) -> str:
    """Text that UTF-8 can hold: lone surrogates (broken input) become \\udXXX escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


def _full_disk(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT)

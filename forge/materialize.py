"""A mixture written to disk: `forge mix` writes its stream as a new version of Parquet shards
plus the ids.parquet lineage (materialize), and publish / predict read the current version back
(read_materialized).

Separate from forge.mixture, which decides what a mixture holds and streams it: this module is
only the writer, one shard per task. write_shard stays module-level because forge.executor
sends it to Ray workers by its qualified name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge.mixture import Mixture, MixtureStream
from forge.paths import mixture_store
from forge.schema import RECORD_SCHEMA


def materialize(
    mix: Mixture,
    home: Path | None = None,
    shard_rows: int = 250_000,
    *,
    wait: bool = True,
    say=None,
    keep: int | None = None,
    executor=None,
) -> dict:
    """Write the mixture as Parquet shards in stream order, plus its lineage manifest:
    ``ids.parquet`` holds (position, id, component, source, raw_file, raw_row) for every
    example, so any training example traces back to its raw file and row. Written as a new
    version of the mixture under its writer lock (forge.store); the manifest names the
    version of every source it read. `executor` (forge.executor) writes the shards: in this
    process by default, or one Ray task per shard; the bytes are the same."""
    import shutil

    store = mixture_store(mix.name, home)
    with store.lock(wait=wait, say=say):
        vid, tmp = store.new_tmp()
        try:
            manifest = _write_mixture(mix, home, tmp, shard_rows, vid, executor)
            store.commit(vid, tmp, keep)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def read_materialized(name: str, home: Path | None = None) -> tuple[Path, dict] | None:
    """The current version folder of a materialised mixture and its manifest, pinned."""
    from forge.built import verified_manifest

    version = mixture_store(name, home).current()
    if version is None:
        return None
    return version.path, verified_manifest(version.path, f"forge mix {name}")


LINEAGE_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("id", pa.string()),
        ("component", pa.string()),
        ("source", pa.string()),
        ("raw_file", pa.string()),
        ("raw_row", pa.int64()),
    ]
)
COUNTED_TAGS = ("source", "lang", "category")


@dataclass
class ShardJob:
    """Output shard `index` of a mixture: stream positions [index * rows, (index + 1) * rows)."""

    mix: Mixture
    home: str | None
    folder: str
    index: int
    rows: int


def write_shard(job: ShardJob) -> tuple[dict, dict]:
    """Write one output shard and its piece of the lineage; return (shard entry, tag counts).
    Each shard seeks the stream to its first position, so shards are independent tasks
    (forge.executor) and the bytes do not depend on which process wrote them."""
    from forge.build_part import ROW_GROUP_ROWS
    from forge.built import file_digests

    folder = Path(job.folder)
    start, end = job.index * job.rows, min((job.index + 1) * job.rows, job.mix.total)
    name = f"part-{job.index:05d}.parquet"
    stream = MixtureStream(job.mix, Path(job.home) if job.home else None)
    stream.position = start
    counts: dict[str, dict] = {k: {} for k in COUNTED_TAGS}
    tmp_name = f".{name}.tmp-{os.getpid()}"
    writer = pq.ParquetWriter(folder / tmp_name, RECORD_SCHEMA, compression="zstd")
    lineage = pq.ParquetWriter(
        folder / f".ids-{job.index:05d}.{os.getpid()}", LINEAGE_SCHEMA, compression="zstd"
    )
    n = 0
    for table in stream:
        table = table.slice(0, end - int(table["_position"][0].as_py()))
        lineage.write_table(
            pa.table(
                {
                    "position": table["_position"],
                    "id": table["id"],
                    "component": table["_component"],
                    "source": table["source"],
                    "raw_file": table["raw_file"],
                    "raw_row": table["raw_row"],
                },
                schema=LINEAGE_SCHEMA,
            )  # fmt: skip
        )
        records = table.drop_columns(["_position", "_component"]).cast(RECORD_SCHEMA)
        writer.write_table(records, row_group_size=ROW_GROUP_ROWS)
        n += records.num_rows
        for key in counts:
            for value, c in zip(
                *np.unique(np.asarray(records[key].to_pylist(), dtype=object), return_counts=True),
                strict=True,
            ):
                counts[key][value] = counts[key].get(value, 0) + int(c)
        if stream.position >= end:
            break
    writer.close()
    lineage.close()
    os.replace(folder / tmp_name, folder / name)
    os.replace(folder / f".ids-{job.index:05d}.{os.getpid()}", folder / f".ids-{job.index:05d}.parquet")
    shard = {"file": name, "rows": n, "bytes": (folder / name).stat().st_size, **file_digests(folder / name)}
    return shard, counts


def _write_mixture(
    mix: Mixture, home: Path | None, tmp: Path, shard_rows: int, vid: str, executor=None
) -> dict:
    from forge import faults
    from forge.build import write_json_atomic

    jobs = [
        ShardJob(mix, str(home) if home else None, str(tmp), i, shard_rows)
        for i in range(-(-mix.total // shard_rows))
    ]
    if executor is not None and executor.name == "ray":
        results = executor.map(write_shard, jobs)
    else:
        results = [write_shard(job) for job in jobs]
    shards = [shard for shard, _ in results]
    n = sum(s["rows"] for s in shards)
    counts: dict[str, dict] = {k: {} for k in COUNTED_TAGS}
    for _, part in results:
        for key, values in part.items():
            for value, c in values.items():
                counts[key][value] = counts[key].get(value, 0) + c
    # the lineage pieces become one ids.parquet, row group by row group: the same bytes
    # whichever executor wrote the pieces
    with pq.ParquetWriter(tmp / "ids.parquet", LINEAGE_SCHEMA, compression="zstd") as lineage:
        for job in jobs:
            piece = tmp / f".ids-{job.index:05d}.parquet"
            with pq.ParquetFile(piece) as pf:
                for g in range(pf.num_row_groups):
                    lineage.write_table(pf.read_row_group(g))
            piece.unlink()
    from forge.connectors.base import sha256_file

    manifest = {
        "mixture": mix.name,
        "fingerprint": mix.fingerprint(),
        "ids_sha256": sha256_file(tmp / "ids.parquet"),
        "seed": mix.seed,
        "spec": mix.spec,
        "rows": n,
        "components": [
            {
                "label": leaf.label,
                "source": leaf.source,
                "where": leaf.where,
                "size": leaf.size,
                "count": leaf.count,
                "epochs": round(leaf.epochs, 4),
            }
            for leaf in mix.leaves
        ],
        "shortfall": mix.shortfall,
        "warnings": mix.repeat_warnings(),
        "build_hashes": mix.build_hashes,
        "source_versions": mix.versions,
        "version": vid,
        "tag_counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "shards": shards,
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    faults.point("mix:written")
    return manifest

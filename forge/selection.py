"""Tag queries over built sources: forge.select (the function in forge/__init__.py), forge stats, and derived datasets.

Everything here is a lazy polars scan of the sources' Parquet shards with the query
pushed down, so only matching row groups and the needed columns are read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from forge.build import write_json_atomic
from forge.built import open_built
from forge.errors import ForgeError
from forge.paths import data_home
from forge.query import parse
from forge.store import CURRENT, NAME_RE, finish_out, prepare_out


def built_sources(home: Path | None = None) -> list[str]:
    root = (home or data_home()) / "sources"
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CURRENT).exists() and NAME_RE.match(p.name))


def shard_files(sources: list[str], home: Path | None = None) -> list[str]:
    """The shard paths of each source's current version, pinned for this process."""
    files = []
    for s in sources:
        built = open_built(s, home)
        if built is None:
            raise ForgeError(f"source {s!r} is not built; run: forge build {s}")
        files += [str(p) for p in built.files()]
    return files


def select(
    query: str | None = None, sources: list[str] | None = None, home: Path | None = None
) -> pl.LazyFrame:
    """A lazy frame of the records matching `query` (tag query language, forge.query)
    across `sources` (default: every built source). Nothing is read until you collect."""
    sources = sources or built_sources(home)
    if not sources:
        raise ForgeError("no built sources; run forge build first")
    lf = pl.scan_parquet(shard_files(sources, home))
    return lf.filter(parse(query)) if query else lf


def stats(query: str | None, sources: list[str] | None, home: Path | None = None) -> dict:
    """Counts by tag and length percentiles of the matching records."""
    lf = select(query, sources, home)
    out: dict = {"rows": lf.select(pl.len()).collect().item()}
    for key in ("source", "lang", "lang_output", "task", "gen", "category"):
        df = lf.group_by(key).agg(pl.len().alias("n")).sort(["n", key], descending=[True, False]).collect()
        out[key] = dict(zip(df[key].to_list(), df["n"].to_list(), strict=True))
    lengths = lf.select(
        (pl.col("instruction").str.len_chars() + pl.col("input").str.len_chars()).alias("prompt_chars"),
        pl.col("output").str.len_chars().alias("output_chars"),
    ).collect()
    out["lengths"] = {}
    for col in ("prompt_chars", "output_chars"):
        s = lengths[col]
        qs = [0.0, 0.1, 0.5, 0.9, 0.99, 1.0]
        out["lengths"][col] = (
            {f"p{int(q * 100)}": int(s.quantile(q, "nearest") or 0) for q in qs} if len(s) else {}
        )
        out["lengths"][col + "_hist"] = _histogram(s)
    return out


def _histogram(s: pl.Series, bins: int = 12) -> list[tuple[int, int, int]]:
    """(low, high, count) bins, low inclusive and high exclusive: equal bins up to the 99th
    percentile, then one last bin from there to the longest value, labelled with its range."""
    if len(s) == 0:
        return []
    hi = max(1, int(s.quantile(0.99, "nearest")))
    width = max(1, -(-hi // bins))
    top = width * -(-hi // width)  # the regular bins end here
    regular = s.filter(s < top)
    counts = (regular // width).value_counts().sort(s.name) if len(regular) else None
    out = (
        [(int(b) * width, int(b + 1) * width, int(n)) for b, n in counts.iter_rows()]
        if counts is not None
        else []
    )
    over = int((s >= top).sum())
    if over:
        out.append((top, int(s.max()) + 1, over))
    return out


def filter_to_folder(
    query: str,
    sources: list[str],
    out: Path,
    steps: list | None = None,
    home: Path | None = None,
    extra: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Write the records matching `query` that pass the quality `steps` as a dataset folder:
    part-00000.parquet (kept), dropped.parquet (every record a step removed, with its reason),
    manifest.json. Streams: the query runs as a pushed-down scan sunk straight to Parquet, and
    the quality steps then read that file batch by batch."""

    files = shard_files(sources, home)  # pinned before anything is written
    tmp = prepare_out(out, overwrite)
    try:
        return _filter_into(tmp, query, files, out, steps, sources, extra)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _filter_into(tmp: Path, query: str, files: list[str], out: Path, steps, sources, extra) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from forge import quality

    matched = tmp / ("matched.parquet" if steps else "part-00000.parquet")
    pl.scan_parquet(files).filter(parse(query)).sink_parquet(matched, compression="zstd")
    reasons: dict[str, int] = {}
    if steps:
        reader = pq.ParquetFile(matched)
        schema = reader.schema_arrow
        kept_w = pq.ParquetWriter(tmp / "part-00000.parquet", schema, compression="zstd")
        drop_w = pq.ParquetWriter(
            tmp / "dropped.parquet", schema.append(pa.field("reason", pa.large_string())), compression="zstd"
        )
        for batch in reader.iter_batches(batch_size=65_536):
            kept, dropped = quality.apply(pl.from_arrow(batch), steps)
            kept_w.write_table(kept.to_arrow().cast(schema))
            if dropped.height:
                drop_w.write_table(dropped.to_arrow().cast(drop_w.schema))
                for r, n in dropped.group_by("reason").len().iter_rows():
                    reasons[r] = reasons.get(r, 0) + n
        kept_w.close()
        drop_w.close()
        matched.unlink()
    else:  # every derived folder has its dropped.parquet, empty when nothing was dropped
        schema = pq.read_schema(matched)
        pq.write_table(
            schema.append(pa.field("reason", pa.large_string())).empty_table(), tmp / "dropped.parquet"
        )
    manifest = {
        "name": out.name,
        "query": query,
        "sources": sources,
        **(extra or {}),
        "dropped": sum(reasons.values()),
        "dropped_reasons": reasons,
    }
    return finish_derived(tmp, out, manifest)


def finish_derived(tmp: Path, out: Path, manifest: dict) -> dict:
    """Complete a derived dataset folder built in `tmp` (its part-00000.parquet is written):
    add rows, shard and tag counts to the manifest, write it, and move the folder into place."""
    kept = pl.scan_parquet(tmp / "part-00000.parquet")
    rows = kept.select(pl.len()).collect().item()
    manifest = {
        **manifest,
        "rows": rows,
        "shards": [
            {"file": "part-00000.parquet", "rows": rows, "bytes": (tmp / "part-00000.parquet").stat().st_size}
        ],
        "tag_counts": {
            k: dict(kept.group_by(k).len().sort(k).collect().iter_rows())
            for k in ("source", "lang", "lang_output", "task", "gen", "category")
        },
    }
    write_json_atomic(tmp / "manifest.json", manifest)
    finish_out(tmp, out)
    return manifest

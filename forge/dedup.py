"""Exact and near-duplicate removal, within and across sources, plus eval decontamination.

Text of a record = the whole conversation: every history turn, then instruction + input (one
user turn) and the output. Two replies "You're welcome!" after different dialogues are not
duplicates.

Exact duplicates: equal xxh3-64 of the conversation folded for comparison (exact_texts): NFKC
(full- and half-width forms are one character), lower case, each run of whitespace one space;
digits, operators, signs and punctuation are kept ("7 > 3" is not "7 < 3"), and so are turn
boundaries (a dialogue is not a copy of the same words flattened into one instruction).

Near duplicates: exact Jaccard similarity of shingle sets (character 5-grams of the folded
conversation without punctuation and symbols other than operators and signs; turn marks stay:
record_texts), at or above 0.7. MinHash with LSH (forge.minhash: 64 bins, 16 bands x 4 rows)
proposes the pairs; each is confirmed by the exact measure, and which pairs are compared, how
an oversized bucket is bounded, and the prefilter are in forge.dedup_exact.

Clusters are stars around survivors, so similarity is never chained: records are visited in
survival order (the source's catalog `priority`, default 100, then the id); a record is
dropped only when it is an exact copy of, or verified similar to, a record that survives, and
that survivor is its `dup_of`. So every dropped record is within the threshold of the record
named as its copy, by the exact measure (A~B~C never drops C for A).

Variants are not duplicates: records rendered from one raw record (same raw file bytes and
row: a zero-shot and an inversion template, or flan_cot and cot_zh over one TSV row) never
remove each other unless across_variants is set. Every dropped record is kept in a side
file with the id of the record it duplicates, its kind (exact/near) and the exact similarity.

Memory: bounded by one batch, one partition and the duplicate graph, not by the corpus
(see run(): keys, signatures and texts are spilled to disk). The input is streamed twice:
once to sign, once to write kept and dropped records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from forge.dedup_exact import (
    BUCKET_ALL,
    BUCKET_HEAD,
    BUCKET_WINDOW,
    PREFILTER_MARGIN,
    SCALE,
    SHINGLE,
    TURN,  # noqa: F401 (forge.dedup's interface)
    Buckets,
    SpilledTexts,
    Texts,
    agreeing_bytes,
    exact_texts,
    normalize,
    oversized,
    record_texts,  # noqa: F401 (forge.dedup's interface)
    sorted_unique,
    strip_marks,
    verify,
    write_texts,
)
from forge.minhash import (  # noqa: F401 (signatures, contaminated: forge.dedup's interface, used by forge eval)
    BAND_ROW,
    BANDS,
    ROWS,
    THRESHOLD,
    K,
    band_keys,
    band_rows,
    contaminated,
    mix64,
    signatures,
    unique_rows,
)


def prompt_texts(table: pa.Table) -> pa.Array:
    """The normalized prompt of each record (instruction and input): what an eval question
    is compared with when checking for contamination."""
    joined = pc.binary_join_element_wise(
        pc.fill_null(table["instruction"], ""), pc.fill_null(table["input"], ""), " "
    )
    return normalize(joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined)


def exact_keys(texts: pa.Array) -> np.ndarray:
    return np.array([xxhash.xxh3_64_intdigest(t.encode()) for t in texts.to_pylist()], dtype=np.uint64)


@dataclass
class DedupResult:
    dup_of: np.ndarray  # index of the surviving record, or -1 for survivors
    kind: np.ndarray  # "", "exact" or "near"
    sim: np.ndarray  # exact Jaccard similarity to the survivor (1.0 for exact copies)


def decide(
    rank: np.ndarray,
    exact: np.ndarray,
    texts: list[str] | None,
    threshold: float = THRESHOLD,
    origin: np.ndarray | None = None,
) -> DedupResult:
    """Star clustering of records held in memory (the reference that run()'s partitioned
    pipeline must equal). rank: lower survives (priority, then id, folded into one order).
    exact: exact keys; texts: record_texts, or None for exact duplicates only.
    origin: equal values mark variants of one raw record, which never drop each other."""
    idx = np.arange(len(rank))
    edges = [exact_groups(idx[np.lexsort((idx, exact))], np.sort(exact))]
    if texts is not None and len(rank):
        sig = signatures(pa.array(texts, pa.large_string()))
        rows = band_rows(sig, idx, exact)
        buckets = Buckets(rows)
        edges.append(near_edges(buckets, lambda i: sig[i], Texts(texts), threshold, oversized(rows))[0])
    return star(rank, exact, np.concatenate(edges), origin)


def near_edges(
    buckets: Buckets, sig, texts: Texts, threshold: float, oversize: np.ndarray
) -> tuple[np.ndarray, dict]:
    """(i, j, round(Jaccard * SCALE)) for the candidate pairs of `buckets` (Buckets.pairs)
    whose exact Jaccard reaches `threshold`, and counts: candidate pairs, pairs checked
    exactly, pairs left out in oversized buckets (the same however the rows are partitioned;
    a pair in several buckets counts once per bucket, except in checked: once). `sig` maps
    record indices to signatures (read back from disk in run()), `texts` gives their texts,
    `oversize` holds the keys of every oversized bucket (dedup_exact.oversized) of every partition."""
    stats = {"candidates": 0, "checked": 0, "skipped": 0}
    r = buckets.rows
    s = sig(r["idx"])  # one signature per bucket row: every pair below reads from memory
    # the low byte of each bin, 8 bins to a word: a first pass at a quarter of the memory
    # traffic, which can only overcount agreeing bins (never rejects what the full bins keep)
    low = np.ascontiguousarray(s.astype(np.uint8)).view(np.uint64)
    cut = (threshold - PREFILTER_MARGIN) * K  # agreeing bins below this: not worth checking
    passed = []
    for p, q, skipped in buckets.pairs():
        stats["skipped"] += skipped
        stats["candidates"] += len(p)
        for lo in range(0, len(p), 1 << 16):  # bounded temporaries
            a, b = p[lo : lo + (1 << 16)], q[lo : lo + (1 << 16)]
            ok = agreeing_bytes(low[a] ^ low[b]) >= cut
            a, b = a[ok], b[ok]
            ok = (s[a] == s[b]).sum(axis=1) >= cut  # the MinHash estimate only skips pairs
            a, b = a[ok], b[ok]
            # a pair in several ordinary buckets is checked in the first one's band only
            ka, kb = band_keys(s[a]), band_keys(s[b])
            at = np.minimum(np.searchsorted(oversize, ka), max(len(oversize) - 1, 0))
            shared = (ka == kb) & ~(oversize[at] == ka if len(oversize) else False)
            first = np.where(shared.any(axis=1), shared.argmax(axis=1), -1)
            mine = (first == r["band"][b]) | (first < 0)
            stats["checked"] += int(mine.sum())
            passed.append(np.stack([r["idx"][a[mine]], r["idx"][b[mine]]], axis=1))
    pairs = unique_rows(np.concatenate(passed)) if passed else np.zeros((0, 2), np.int64)
    return verify(pairs, texts, threshold), stats


def star(rank: np.ndarray, exact: np.ndarray, e: np.ndarray, origin: np.ndarray | None = None) -> DedupResult:
    """Visit records in survival order; drop one when it is an exact copy of, or similar to,
    a record that survives, and name the best such survivor (most similar, then first in
    survival order) its dup_of. Edges (i, j, score): an exact copy to its group's first record
    (equal exact keys, score SCALE), or a verified pair of texts (score round(Jaccard * SCALE))
    between the first records of their groups, which holds for every member of both groups."""
    n = len(rank)
    dup_of = np.full(n, -1, dtype=np.int64)
    kind = np.full(n, "", dtype=object)
    sim = np.zeros(n, dtype=np.float32)
    copy = exact[e[:, 0]] == exact[e[:, 1]]
    group = np.arange(n)  # each record's group: the first record of its text
    np.minimum.at(group, e[copy, 0], e[copy, 1])
    np.minimum.at(group, e[copy, 1], e[copy, 0])
    near = e[~copy]
    a, b = group[near[:, 0]], group[near[:, 1]]
    src, dst, score = np.r_[a, b], np.r_[b, a], np.r_[near[:, 2], near[:, 2]]
    by = np.lexsort((-score, src))  # each group's neighbours, most similar first
    src, dst, score = src[by], dst[by], score[by]
    starts = np.searchsorted(src, np.arange(n)).tolist()
    ends = np.searchsorted(src, np.arange(n), side="right").tolist()
    dst, score, ranks, groups = dst.tolist(), score.tolist(), rank.tolist(), group.tolist()
    org = (origin if origin is not None else np.arange(n)).tolist()
    kept: dict[int, list[int]] = {}  # group -> its survivors, in survival order

    def survivor(g: int, x: int) -> int:  # the first survivor of group g that x may copy
        return next((y for y in kept.get(g, ()) if org[y] != org[x]), -1)

    for x in np.argsort(rank, kind="stable").tolist():
        g = groups[x]
        best = survivor(g, x)
        best_score = SCALE if best >= 0 else -1
        for k in range(starts[g], ends[g]):
            if score[k] < best_score:
                break
            y = survivor(dst[k], x)
            if y >= 0 and (score[k] > best_score or ranks[y] < ranks[best]):
                best, best_score = y, score[k]
        if best >= 0:
            dup_of[x] = best
            kind[x] = "exact" if groups[best] == g else "near"
            sim[x] = 1.0 if kind[x] == "exact" else best_score / SCALE
        else:
            kept.setdefault(g, []).append(x)
    return DedupResult(dup_of, kind, sim)


def exact_groups(idx: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(i, first, SCALE) for each record `idx` (sorted by exact key, then index) whose key an
    earlier record has: its group's first record."""
    if len(idx) < 2:
        return np.zeros((0, 3), np.int64)
    head = np.r_[True, keys[1:] != keys[:-1]]
    first = idx[np.maximum.accumulate(np.where(head, np.arange(len(idx)), 0))]
    member = ~head
    return np.column_stack([idx[member], first[member], np.full(member.sum(), SCALE)]).astype(np.int64)


def _scan(files: list[str], columns: list[str], batch_size: int = 8192):
    """Record batches of `files`, in order, one row group read at a time: Arrow's dataset
    scanner reads ahead of a slow consumer (the dedup writer) and held ~300 MB at 1M records."""
    import pyarrow.parquet as pq

    for f in files:
        with pq.ParquetFile(f) as pf:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def load_eval_texts(path) -> list[tuple[str, int, str]]:
    """(file, row, question text) from an eval file: JSON/JSONL records with a question-like
    field (question, instruction, prompt, input, 题目), or a {example: [...]} document (GAOKAO)."""
    import json
    from pathlib import Path

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
        records = doc.get("example", doc.get("data", [doc])) if isinstance(doc, dict) else doc
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            continue
        q = next(
            (
                r[k]
                for k in ("question", "instruction", "prompt", "input", "题目")
                if isinstance(r.get(k), str)
            ),
            None,
        )
        if q:
            out.append((path.name, i, q))
    return out


# The partitioned pipeline behind run(). Memory is bounded by one input shard's batch, one
# partition and the duplicate graph, never by the corpus, and each step is a task that a
# Ray cluster can run (forge.executor); the driver only joins edges and writes the output.
#
#   sign       per input shard: exact key, MinHash signature and normalized text (kept in
#              spill files, read back by record index), and one row per (record, band)
#              appended to partition hash(key) mod P; exact keys go to their own partitions
#   pairs      per partition: exact copies to the first record of their text; candidate
#              pairs inside buckets, checked by exact Jaccard on texts read back from the
#              spill: edges (i, j, score), and the pair counts for the manifest
#   decide     driver: star clustering over the records that have edges (forge.dedup.star)
#   write      driver: stream the input again, kept and dropped records to Parquet
#
# A bucket (band, key) lands whole in one partition and its members keep their input order,
# so the edges, and hence the survivors and dup_of, equal decide() on the whole input.

EXACT_ROW = np.dtype([("key", "<u8"), ("idx", "<i8")])
META_ROW = np.dtype([("exact", "<u8"), ("origin", "<u8"), ("prio", "<i8"), ("id", "S32")])
# band-row bytes per partition; None reads FORGE_DEDUP_PARTITION_BYTES (default 8 MiB)
# when a run needs it, never at import (forge/settings.py)
PARTITION_BYTES: int | None = None
# records signed at a time: each worker's memory follows it (4,096 held 55 MB less than 8,192
# at 250k records, in the same time; 2,048 saved 15 MB more and cost 10% of the time)
SIGN_BATCH = 4096
PARALLEL_MIN_ROWS = 200_000  # below this, starting worker processes costs more than it saves


@dataclass
class SignJob:
    file: str
    index: int  # the shard's position in the input: names its spill files
    first: int  # the global index of its first record
    spill: str
    partitions: int
    near: bool
    raw_sha: dict  # (source, raw file) -> sha256, names raw records across sources
    priorities: dict
    eval_sig: np.ndarray | None  # signatures of eval questions (contamination check)
    threshold: float


def sign_shard(job: SignJob) -> list[tuple[int, int, float]]:
    """Spill one shard's keys and signatures; return its contamination hits (idx, eval, sim).
    Files are written under temporary names and renamed, so a retried task is harmless."""
    spill = Path(job.spill)
    columns = ["id", "source", "instruction", "input", "output", "history", "raw_file", "raw_row"]
    out: dict[str, object] = {}

    def append(name: str, array: np.ndarray) -> None:
        if name not in out:
            out[name] = open(spill / f".{name}.tmp-{os.getpid()}", "wb")
        array.tofile(out[name])

    at, text_at = job.first, 0
    hits = []
    for batch in _scan([job.file], columns, SIGN_BATCH):
        table = pa.Table.from_batches([batch])
        n = table.num_rows
        idx = np.arange(at, at + n, dtype=np.int64)
        at += n
        folded = exact_texts(table)
        ids, srcs = table["id"].to_pylist(), table["source"].to_pylist()
        if any(len(i) > 32 for i in ids):
            raise ValueError(f"{job.file}: record ids longer than 32 characters; rebuild the source")
        meta = np.empty(n, META_ROW)
        meta["exact"] = exact_keys(folded)
        meta["origin"] = [
            xxhash.xxh3_64_intdigest(f"{job.raw_sha.get((s, f), s + f)}:{r}".encode())
            for s, f, r in zip(srcs, table["raw_file"].to_pylist(), table["raw_row"].to_pylist(), strict=True)
        ]
        meta["prio"] = [job.priorities.get(s, 100) for s in srcs]
        meta["id"] = ids
        append(f"meta-{job.index:05d}", meta)
        exact = np.empty(n, EXACT_ROW)
        exact["key"], exact["idx"] = meta["exact"], idx
        _append_partitioned(append, f"exact-{job.index:05d}", exact, exact["key"], job.partitions)
        if job.near:
            norm = strip_marks(folded)
            text_at = write_texts(append, job.index, norm, text_at)
            sig = signatures(norm)
            append(f"sig-{job.index:05d}", sig)
            rows = band_rows(sig, idx, meta["exact"])
            _append_partitioned(append, f"band-{job.index:05d}", rows, rows["key"], job.partitions)
        if job.eval_sig is not None:
            found = contaminated(signatures(prompt_texts(table)), job.eval_sig, job.threshold)
            hits += [(int(idx[i]), j, sim) for i, j, sim in found]
    for name, fh in out.items():
        fh.close()
        os.replace(spill / f".{name}.tmp-{os.getpid()}", spill / f"{name}.bin")
    return hits


def _append_partitioned(append, prefix: str, rows: np.ndarray, keys: np.ndarray, partitions: int) -> None:
    part = (mix64(keys ^ np.uint64(0x5EED)) % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(part, kind="stable")
    rows, part = rows[order], part[order]
    bounds = np.searchsorted(part, np.arange(partitions + 1))
    for p in range(partitions):
        if bounds[p + 1] > bounds[p]:
            append(f"{prefix}-{p:04d}", rows[bounds[p] : bounds[p + 1]])


@dataclass
class PairJob:
    partition: int
    spill: str
    firsts: list[int]  # global index of each input shard's first record, plus the total
    near: bool
    threshold: float
    oversize: np.ndarray | None = None  # keys of every oversized bucket (partition_oversized)


def partition_oversized(job: PairJob) -> np.ndarray:
    """Keys of the oversized buckets of one partition (dedup_exact.oversized)."""
    return oversized(_read_rows(Path(job.spill), f"band-*-{job.partition:04d}.bin", BAND_ROW))


def partition_edges(job: PairJob) -> tuple[np.ndarray, dict]:
    """Edges (i, j, score) among the records of one partition's buckets, and near_edges'
    pair counts."""
    spill = Path(job.spill)
    edges = []
    exact = _read_rows(spill, f"exact-*-{job.partition:04d}.bin", EXACT_ROW)
    if len(exact):
        order = np.lexsort((exact["idx"], exact["key"]))
        edges.append(exact_groups(exact["idx"][order], exact["key"][order]))
    del exact
    stats = {}
    if job.near:
        buckets = Buckets(_read_rows(spill, f"band-*-{job.partition:04d}.bin", BAND_ROW))
        sig = lambda idx: _spilled(spill, job.firsts, "sig", idx, (K,))  # noqa: E731
        near, stats = near_edges(buckets, sig, SpilledTexts(spill, job.firsts), job.threshold, job.oversize)
        edges.append(near)
    return (np.concatenate(edges) if edges else np.zeros((0, 3), np.int64)), stats


def _read_rows(spill: Path, pattern: str, dtype: np.dtype) -> np.ndarray:
    parts = [np.fromfile(f, dtype) for f in sorted(spill.glob(pattern))]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _spilled(spill: Path, firsts: list[int], name: str, idx: np.ndarray, shape: tuple, dtype=np.uint32):
    """Rows `idx` (global record indices) of the per-shard spill files `name`-NNNNN.bin."""
    out = np.empty((len(idx), *shape), dtype) if shape else np.empty(len(idx), dtype)
    shard = np.searchsorted(firsts, idx, side="right") - 1
    for s in np.unique(shard).tolist():
        sel = np.flatnonzero(shard == s)
        rows = firsts[s + 1] - firsts[s]
        mm = np.memmap(spill / f"{name}-{s:05d}.bin", dtype, "r", shape=(rows, *shape))
        out[sel] = mm[idx[sel] - firsts[s]]
        del mm  # unmapped at once: the pages read do not stay in this process
    return out


def run(
    sources: list[str],
    out,
    *,
    home=None,
    near: bool = True,
    threshold: float = THRESHOLD,
    priorities: dict[str, int] | None = None,
    against: list | None = None,
    drop_contaminated: bool = False,
    overwrite: bool = False,
    across_variants: bool = False,
    executor=None,
) -> dict:
    """Deduplicate `sources` together into a derived dataset folder `out`:
    part-00000.parquet (kept), dropped.parquet (every removed record + reason, dup_of,
    kind, similarity), contamination.json (when `against` eval files are given), manifest.json.
    `executor` (forge.executor) runs the sign and pairs steps: local worker processes for a
    large input (else this process), or Ray tasks; the output is the same."""
    import json
    import shutil

    import pyarrow.parquet as pq

    from forge.built import open_built
    from forge.executor import Executor
    from forge.selection import finish_derived, shard_files
    from forge.settings import byte_size
    from forge.store import check_out, prepare_out

    executor = executor or Executor()
    home = Path(home) if home is not None else None
    priorities = priorities or {}
    files = shard_files(sources, home)
    check_out(Path(out), overwrite)  # before the expensive part, so a refusal comes at once
    built = {s: open_built(s, home) for s in sources}
    # a raw record is named by its raw file's bytes and its row, whichever source rendered it
    raw_sha = {(s, r["name"]): r["sha256"] for s in sources for r in built[s].manifest["raw"]}
    file_source = [s for s in sources for _ in built[s].files()]  # shard_files' order
    firsts = np.cumsum([0] + [pq.ParquetFile(f).metadata.num_rows for f in files]).tolist()
    n = firsts[-1]
    # partitions sized so that one holds about PARTITION_BYTES of band rows
    partition_bytes = PARTITION_BYTES or byte_size("FORGE_DEDUP_PARTITION_BYTES", 8 << 20)
    partitions = max(1, -(-n * BANDS * BAND_ROW.itemsize // partition_bytes))
    evals = [item for f in against or [] for item in load_eval_texts(f)]
    eval_sig = signatures(normalize(pa.array([q for _, _, q in evals], pa.string()))) if evals else None

    out = Path(out)
    tmp = prepare_out(out, overwrite)
    try:
        spill = tmp / ".spill"
        spill.mkdir()
        jobs = [
            SignJob(f, i, firsts[i], str(spill), partitions, near, raw_sha, priorities, eval_sig, threshold)
            for i, f in enumerate(files)
        ]
        hits = sorted(h for found in _map(executor, sign_shard, jobs, n) for h in found)
        pair_jobs = [PairJob(p, str(spill), firsts, near, threshold) for p in range(partitions)]
        if near:  # every partition needs to know every oversized bucket (near_edges)
            oversize = np.sort(np.concatenate(_map(executor, partition_oversized, pair_jobs, n)))
            for job in pair_jobs:
                job.oversize = oversize
        # one pair shares a bucket in up to BANDS partitions: merge edges as they arrive, so
        # the driver holds the distinct edges, not every band's copy of them
        edge_set = EdgeSet()
        pair_counts = {"candidates": 0, "checked": 0, "skipped": 0}

        def collect(found: tuple[np.ndarray, dict]) -> None:
            edge_set.add(found[0])
            for k, v in found[1].items():
                pair_counts[k] += v

        _map(executor, partition_edges, pair_jobs, n, done=collect)
        e = edge_set.result()

        # the duplicate graph: only records with an edge, relabelled 0..m-1
        nodes = sorted_unique(e[:, :2].ravel())
        meta = _spilled(spill, firsts, "meta", nodes, (), META_ROW)
        rank = np.empty(len(nodes), np.int64)
        rank[np.lexsort((meta["id"], meta["prio"]))] = np.arange(len(nodes))
        local = np.column_stack([np.searchsorted(nodes, e[:, 0]), np.searchsorted(nodes, e[:, 1]), e[:, 2]])
        origin = None if across_variants else meta["origin"]
        result = star(rank, meta["exact"], local, origin)
        dropped_at = np.flatnonzero(result.dup_of >= 0)  # node positions, ascending = global order
        dropped_idx = nodes[dropped_at]
        node_ids = meta["id"]  # bytes; decoded only for the records written as dropped

        contamination = []
        if hits:
            hit_meta = _spilled(spill, firsts, "meta", np.array([h[0] for h in hits], np.int64), (), META_ROW)
            for (i, j, sim), m in zip(hits, hit_meta, strict=True):
                contamination.append(
                    {
                        "id": m["id"].decode(),
                        "source": file_source[int(np.searchsorted(firsts, i, side="right")) - 1],
                        "eval_file": evals[j][0],
                        "eval_row": evals[j][1],
                        "similarity": round(sim, 3),
                        "eval_text": evals[j][2][:200],
                    }
                )
        contaminated_idx = (
            np.unique([h[0] for h in hits]) if drop_contaminated and hits else np.zeros(0, np.int64)
        )
        shutil.rmtree(spill)

        from forge.schema import RECORD_SCHEMA

        dropped_schema = (
            RECORD_SCHEMA.append(pa.field("reason", pa.string()))
            .append(pa.field("dup_of", pa.string()))
            .append(pa.field("similarity", pa.float32()))
        )
        kept_w = pq.ParquetWriter(tmp / "part-00000.parquet", RECORD_SCHEMA, compression="zstd")
        drop_w = pq.ParquetWriter(tmp / "dropped.parquet", dropped_schema, compression="zstd")
        at = 0
        reasons: dict[str, int] = {}
        for batch in _scan(files, RECORD_SCHEMA.names):
            table = pa.Table.from_batches([batch]).cast(RECORD_SCHEMA)
            idx = np.arange(at, at + table.num_rows)
            at += table.num_rows
            # pos: the record's node position when it is dropped as a duplicate, else -1
            at_dropped = np.searchsorted(dropped_idx, idx)
            found = at_dropped < len(dropped_idx)
            found[found] = dropped_idx[at_dropped[found]] == idx[found]
            pos = np.where(
                found, dropped_at[np.minimum(at_dropped, len(dropped_at) - 1)] if len(dropped_at) else -1, -1
            )
            cont = np.isin(idx, contaminated_idx) & ~found
            drop = found | cont
            kept_w.write_table(table.filter(pa.array(~drop)))
            if drop.any():
                why, dup_ids, sims = [], [], []
                for p in pos[drop].tolist():
                    why.append(
                        f"{result.kind[p]} duplicate"
                        if p >= 0
                        else "contaminated: near-duplicates an eval item"
                    )
                    dup_ids.append(node_ids[result.dup_of[p]].decode() if p >= 0 else None)
                    sims.append(result.sim[p] if p >= 0 else 0.0)
                for w in why:
                    reasons[w] = reasons.get(w, 0) + 1
                dropped = table.filter(pa.array(drop))
                dropped = dropped.append_column("reason", pa.array(why, pa.string()))
                dropped = dropped.append_column("dup_of", pa.array(dup_ids, pa.string()))
                dropped = dropped.append_column("similarity", pa.array(sims, pa.float32()))
                drop_w.write_table(dropped)
        kept_w.close()
        drop_w.close()
        manifest = {
            "name": out.name,
            "across_variants": across_variants,
            "kind": "dedup",
            "sources": sources,
            "input_rows": n,
            "dropped": sum(reasons.values()),
            "dropped_reasons": reasons,
            "params": {
                "near": near,
                "threshold": threshold,
                "shingle": SHINGLE,
                "bins": K,
                "bands": BANDS,
                "rows_per_band": ROWS,
                "similarity": "exact Jaccard of the shingle sets",
                "bucket_all": BUCKET_ALL,
                "bucket_head": BUCKET_HEAD,
                "bucket_window": BUCKET_WINDOW,
                "prefilter_margin": PREFILTER_MARGIN,
            },
            # candidates and checked count a pair once per partition that proposed it;
            # skipped: pairs of oversized buckets not compared there (forge.dedup_exact)
            "near_pairs": pair_counts if near else None,
            "contaminated": len(contamination),
            "against": [str(a) for a in against or []],
        }
        if against:
            (tmp / "contamination.json").write_text(json.dumps(contamination, ensure_ascii=False, indent=1))
        return finish_derived(tmp, out, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _map(executor, fn, jobs: list, rows: int, done=None) -> list:
    """Ray: tasks. Local: worker processes for a large input (each step is bounded in memory,
    and the cores work together), else one job after another in this process. With `done`,
    each result goes to it as it arrives and none is kept."""
    from forge.executor import Executor

    if executor.name == "local" and rows < PARALLEL_MIN_ROWS:
        executor = Executor("local", workers=1)
    return executor.map(fn, jobs, done=done, keep=done is None)


class EdgeSet:
    """Distinct edges (i, j, score), merged in batches as partitions report them."""

    def __init__(self, batch: int = 1 << 22):
        self.batch = batch
        self.merged = np.zeros((0, 3), np.int64)
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0

    def add(self, edges: np.ndarray) -> None:
        if len(edges):
            self.pending.append(edges)
            self.pending_rows += len(edges)
            if self.pending_rows >= max(self.batch, len(self.merged)):
                self._merge()

    def _merge(self) -> None:
        if self.pending:
            self.merged = unique_rows(np.concatenate([self.merged, *self.pending]))
            self.pending, self.pending_rows = [], 0

    def result(self) -> np.ndarray:
        self._merge()
        return self.merged

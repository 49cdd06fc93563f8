"""Exact and near-duplicate removal, within and across sources, plus eval decontamination.

Text of a record = the whole conversation (every history turn, then instruction + input +
output), normalized: lower case, punctuation removed, runs of whitespace collapsed to one
space. Two replies "You're welcome!" after different dialogues are not duplicates.

Exact duplicates: equal xxh3-64 of the normalized text.

Near duplicates: MinHash with one-permutation hashing.
  shingles     character 5-grams of the normalized text (works for CJK and Latin alike)
  signature    K = 64 bins; each shingle hash goes to bin (h mod 64) and the bin keeps its
               minimum; empty bins borrow from the next non-empty bin to the right
               (densification), so short texts still get a full signature
  LSH          16 bands x 4 rows: records sharing any band are candidates
  threshold    a candidate pair is a duplicate when >= 70% of the 64 bins agree (estimated
               Jaccard similarity of the shingle sets >= 0.7)
Clusters are stars around survivors, so similarity is never chained: records are visited in
survival order (the source's catalog `priority`, default 100, then the id); a record is
dropped only when it has a verified edge (exact match, or estimated similarity >= threshold)
to a record that survives, and that survivor is its `dup_of`. So every dropped record is
within the threshold of the record named as its copy (A~B~C no longer drops C for A).

Variants are not duplicates: records rendered from one raw record (same raw file bytes and
row: a zero-shot and an inversion template, or flan_cot and cot_zh over one TSV row) never
remove each other unless across_variants is set. Every dropped record is kept in a side
file with the id of the record it duplicates, its kind (exact/near) and the similarity.

Memory: signatures only (64 x 4 bytes per record), computed batch by batch; the text is
streamed twice (once to sign, once to write kept and dropped records).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

K = 64
BANDS = 16
ROWS = K // BANDS
SHINGLE = 5
THRESHOLD = 0.7
_EMPTY = np.uint32(0xFFFFFFFF)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def normalize(texts: pa.Array) -> pa.Array:
    import polars as pl

    # polars' regex engine is multi-threaded; pyarrow's replace_substring_regex is not
    s = pl.Series(texts).str.to_lowercase().str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars()
    return s.to_arrow()


def record_texts(table: pa.Table) -> pa.Array:
    """The normalized conversation of each record: history turns first, then the last turn."""
    import polars as pl

    cols = [
        pc.fill_null(table.column(c), "").cast(pa.large_string()) for c in ("instruction", "input", "output")
    ]
    if "history" in table.column_names:
        turns = pl.Series(table.column("history").combine_chunks())
        history = turns.list.eval(
            pl.element().struct.field("user") + " " + pl.element().struct.field("assistant")
        ).list.join(" ")
        cols.insert(0, pc.fill_null(history.to_arrow(), "").cast(pa.large_string()))
    return normalize(pc.binary_join_element_wise(*cols, pa.scalar(" ", pa.large_string())).combine_chunks())


def prompt_texts(table: pa.Table) -> pa.Array:
    """The normalized prompt of each record (instruction and input): what an eval question
    is compared with when checking for contamination."""
    joined = pc.binary_join_element_wise(
        pc.fill_null(table["instruction"], ""), pc.fill_null(table["input"], ""), " "
    )
    return normalize(joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined)


def exact_keys(norm: pa.Array) -> np.ndarray:
    return np.array([xxhash.xxh3_64_intdigest(t.encode()) for t in norm.to_pylist()], dtype=np.uint64)


def signatures(norm: pa.Array, chunk: int = 2048) -> np.ndarray:
    """(n, K) uint32 MinHash signatures (one-permutation hashing + densification)."""
    texts = norm.to_pylist()
    sig = np.full((len(texts), K), _EMPTY, dtype=np.uint32)
    # small chunks keep every temporary array in cache; large ones thrash memory
    for start in range(0, len(texts), chunk):
        _sign_chunk(texts[start : start + chunk], sig[start : start + chunk])
    return _densify(sig)


def _sign_chunk(texts: list[str], sig: np.ndarray) -> None:
    n = len(texts)
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    # one UTF-32 buffer with a NUL after each record: all codepoints, vectorized
    cp = np.frombuffer("\x00".join(texts).encode("utf-32-le") + b"\x00\x00\x00\x00", dtype=np.uint32).astype(
        np.uint64
    )
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths + 1)
    owner[np.cumsum(lengths + 1) - 1] = -1  # separators belong to nobody
    m = len(cp) - SHINGLE + 1
    if m > 0:
        with np.errstate(over="ignore"):
            h = cp[:m].copy()
            for j in range(1, SHINGLE):
                h *= np.uint64(1_000_003)
                h += cp[j : j + m]
        valid = (owner[:m] >= 0) & (owner[:m] == owner[SHINGLE - 1 : SHINGLE - 1 + m])
        h = _mix(h[valid])
        slot = owner[:m][valid] * K + (h & np.uint64(K - 1)).astype(np.int64)
        np.minimum.at(sig.reshape(-1), slot, (h >> np.uint64(32)).astype(np.uint32))
    # texts with no shingle at all (shorter than SHINGLE): one pseudo-shingle, the whole text
    for i in np.flatnonzero((sig == _EMPTY).all(axis=1)):
        hv = xxhash.xxh3_64_intdigest(texts[i].encode())
        sig[i, hv % K] = np.uint32(hv >> 32)


def _densify(sig: np.ndarray) -> np.ndarray:
    n = sig.shape[0]
    empty = sig == _EMPTY
    if not empty.any():
        return sig
    cols = np.arange(K)
    idx = np.where(~empty, cols, 4 * K)
    idx2 = np.concatenate([idx, np.where(idx < 4 * K, idx + K, 4 * K)], axis=1)
    nxt = np.minimum.accumulate(idx2[:, ::-1], axis=1)[:, ::-1][
        :, :K
    ]  # next non-empty at or right of j (circular)
    src = nxt % K
    dist = (nxt - cols).astype(np.uint64)
    borrowed = sig[np.arange(n)[:, None], src]
    salt = (_mix(dist + np.uint64(0x9E37)) >> np.uint64(32)).astype(np.uint32)
    return np.where(empty, borrowed ^ salt, sig)


def band_keys(sig: np.ndarray) -> np.ndarray:
    """(n, BANDS) uint64 bucket keys."""
    s = sig.astype(np.uint64).reshape(len(sig), BANDS, ROWS)
    key = np.zeros((len(sig), BANDS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(ROWS):
            key = _mix(key ^ s[:, :, r] ^ np.uint64(r + 1))
        key = _mix(key ^ np.arange(BANDS, dtype=np.uint64))
    return key


def similarity(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (sig[a] == sig[b]).mean(axis=1)


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """Pairs (i, j), i < j, that share a bucket in some band: each member is paired with
    the bucket's first member and with its predecessor in the bucket."""
    pairs = []
    for band in range(keys.shape[1]):
        k = keys[:, band]
        order = np.argsort(k, kind="stable")
        ks = k[order]
        same = ks[1:] == ks[:-1]
        if not same.any():
            continue
        starts = np.r_[0, np.flatnonzero(~same) + 1]
        group_first = order[np.repeat(starts, np.diff(np.r_[starts, len(ks)]))]
        members = np.flatnonzero(np.r_[False, same])
        pairs.append(np.stack([order[members - 1], order[members]], axis=1))
        pairs.append(np.stack([group_first[members], order[members]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    p = np.concatenate(pairs)
    p = np.sort(p, axis=1)
    p = p[p[:, 0] != p[:, 1]]
    return np.unique(p, axis=0)


@dataclass
class DedupResult:
    dup_of: np.ndarray  # index of the surviving record, or -1 for survivors
    kind: np.ndarray  # "", "exact" or "near"
    sim: np.ndarray  # estimated similarity to the survivor (1.0 for exact)


def decide(
    rank: np.ndarray,
    exact: np.ndarray,
    sig: np.ndarray | None,
    threshold: float = THRESHOLD,
    origin: np.ndarray | None = None,
) -> DedupResult:
    """Star clustering. rank: lower survives (priority, then id, folded into one order).
    origin: equal values mark variants of one raw record, which never drop each other."""
    n = len(rank)
    dup_of = np.full(n, -1, dtype=np.int64)
    kind = np.full(n, "", dtype=object)
    sim = np.zeros(n, dtype=np.float32)
    edges = [_exact_edges(rank, exact)]
    if sig is not None and n:
        pairs = candidate_pairs(band_keys(sig))
        if len(pairs):
            s = similarity(sig, pairs[:, 0], pairs[:, 1])
            ok = s >= threshold
            edges.append(np.column_stack([pairs[ok], np.round(s[ok] * K).astype(np.int64)]))
    e = np.concatenate(edges) if edges else np.zeros((0, 3), np.int64)
    if origin is not None and len(e):
        e = e[origin[e[:, 0]] != origin[e[:, 1]]]  # variants of one raw record are kept
    # each edge points from the later record (in survival order) to the earlier one
    later = np.where(rank[e[:, 0]] > rank[e[:, 1]], e[:, 0], e[:, 1])
    earlier = np.where(rank[e[:, 0]] > rank[e[:, 1]], e[:, 1], e[:, 0])
    score = e[:, 2]  # agreeing bins out of K (K for exact matches)
    by_later = np.argsort(later, kind="stable")
    later, earlier, score = later[by_later], earlier[by_later], score[by_later]
    starts = np.searchsorted(later, np.arange(n))
    ends = np.searchsorted(later, np.arange(n), side="right")
    for x in np.argsort(rank, kind="stable").tolist():
        best, best_score = -1, -1
        for k in range(starts[x], ends[x]):
            y = int(earlier[k])
            if dup_of[y] < 0 and (score[k] > best_score or (score[k] == best_score and rank[y] < rank[best])):
                best, best_score = y, int(score[k])
        if best >= 0:  # a verified edge to a survivor
            dup_of[x] = best
            kind[x] = "exact" if exact[x] == exact[best] else "near"
            sim[x] = 1.0 if kind[x] == "exact" else best_score / K
    return DedupResult(dup_of, kind, sim)


def _exact_edges(rank: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """(i, j, K) for records with equal keys: each member to its group's first member and to
    its predecessor (in survival order), enough for the star clustering to find a survivor."""
    n = len(rank)
    if n < 2:
        return np.zeros((0, 3), np.int64)
    order = np.lexsort((rank, exact))
    ks = exact[order]
    same = ks[1:] == ks[:-1]
    first = np.r_[True, ~same]
    head = order[np.maximum.accumulate(np.where(first, np.arange(n), 0))]
    members = np.flatnonzero(~first)
    pairs = np.concatenate(
        [np.stack([order[members], head[members]], 1), np.stack([order[members], order[members - 1]], 1)]
    )
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.column_stack([pairs, np.full(len(pairs), K, np.int64)])


def contaminated(
    train_sig: np.ndarray, eval_sig: np.ndarray, threshold: float = THRESHOLD
) -> list[tuple[int, int, float]]:
    """(train index, eval index, similarity) for training records that near-duplicate an eval item."""
    tk, ek = band_keys(train_sig), band_keys(eval_sig)
    found: dict[tuple[int, int], float] = {}
    for band in range(BANDS):
        lookup: dict[int, list[int]] = {}
        for j, key in enumerate(ek[:, band].tolist()):
            lookup.setdefault(key, []).append(j)
        hits = np.flatnonzero(np.isin(tk[:, band], ek[:, band]))
        for i in hits.tolist():
            for j in lookup[int(tk[i, band])]:
                if (i, j) not in found:
                    found[(i, j)] = float((train_sig[i] == eval_sig[j]).mean())
    return sorted((i, j, s) for (i, j), s in found.items() if s >= threshold)


def _scan(files: list[str], columns: list[str], batch_size: int = 32_768):
    import pyarrow.dataset as ds

    return ds.dataset(files, format="parquet").to_batches(columns=columns, batch_size=batch_size)


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
) -> dict:
    """Deduplicate `sources` together into a derived dataset folder `out`:
    part-00000.parquet (kept), dropped.parquet (every removed record + reason, dup_of,
    kind, similarity), contamination.json (when `against` eval files are given), manifest.json."""
    import json
    import shutil
    from pathlib import Path

    import pyarrow.parquet as pq

    from forge.build import open_built
    from forge.select import shard_files
    from forge.store import check_out, prepare_out

    priorities = priorities or {}
    files = shard_files(sources, home)
    check_out(Path(out), overwrite)  # before the expensive part, so a refusal comes at once
    # a raw record is named by its raw file's bytes and its row, whichever source rendered it
    raw_sha = {(s, r["name"]): r["sha256"] for s in sources for r in open_built(s, home).manifest["raw"]}
    ids, srcs, keys, sigs, prompt_sigs, origins = [], [], [], [], [], []
    columns = ["id", "source", "instruction", "input", "output", "history", "raw_file", "raw_row"]
    for batch in _scan(files, columns):
        table = pa.Table.from_batches([batch])
        norm = record_texts(table)
        ids.extend(table["id"].to_pylist())
        srcs.extend(table["source"].to_pylist())
        origins.extend(
            xxhash.xxh3_64_intdigest(f"{raw_sha.get((s, f), s + f)}:{r}".encode())
            for s, f, r in zip(
                table["source"].to_pylist(),
                table["raw_file"].to_pylist(),
                table["raw_row"].to_pylist(),
                strict=True,
            )
        )
        keys.append(exact_keys(norm))
        if near:
            sigs.append(signatures(norm))
        if against:
            prompt_sigs.append(signatures(prompt_texts(table)))
    n = len(ids)
    exact = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
    sig = np.concatenate(sigs) if sigs else None
    prio = np.array([priorities.get(s, 100) for s in srcs], dtype=np.int64)
    order = np.lexsort((np.array(ids, dtype=object).astype(str), prio))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    origin = None if across_variants else np.array(origins, dtype=np.uint64)
    result = decide(rank, exact, sig, threshold, origin)

    contamination, contaminated_idx = [], []
    if against:
        evals = [item for f in against for item in load_eval_texts(f)]
        eval_sig = signatures(normalize(pa.array([q for _, _, q in evals], pa.string())))
        for i, j, s in contaminated(np.concatenate(prompt_sigs), eval_sig, threshold):
            contaminated_idx.append(i)
            contamination.append(
                {
                    "id": ids[i],
                    "source": srcs[i],
                    "eval_file": evals[j][0],
                    "eval_row": evals[j][1],
                    "similarity": round(s, 3),
                    "eval_text": evals[j][2][:200],
                }
            )
    contaminated_rows = set(contaminated_idx) if drop_contaminated else set()

    out = Path(out)
    tmp = prepare_out(out, overwrite)
    try:
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
            dup = result.dup_of[idx] >= 0
            cont = np.array([i in contaminated_rows for i in idx], dtype=bool) & ~dup
            drop = dup | cont
            kept_w.write_table(table.filter(pa.array(~drop)))
            if drop.any():
                d_idx = idx[drop]
                why = [
                    f"{result.kind[i]} duplicate"
                    if result.dup_of[i] >= 0
                    else "contaminated: near-duplicates an eval item"
                    for i in d_idx
                ]
                for w in why:
                    reasons[w] = reasons.get(w, 0) + 1
                dropped = table.filter(pa.array(drop))
                dropped = dropped.append_column("reason", pa.array(why, pa.string()))
                dropped = dropped.append_column(
                    "dup_of",
                    pa.array(
                        [ids[result.dup_of[i]] if result.dup_of[i] >= 0 else None for i in d_idx], pa.string()
                    ),
                )
                dropped = dropped.append_column("similarity", pa.array(result.sim[d_idx], pa.float32()))
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
            },
            "contaminated": len(contamination),
            "against": [str(a) for a in against or []],
        }
        if against:
            (tmp / "contamination.json").write_text(json.dumps(contamination, ensure_ascii=False, indent=1))
        from forge.select import finish_derived

        return finish_derived(tmp, out, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""forge dedup against datatrove's MinHash pipeline and datasketch's MinHashLSH on real text,
side by side in one run, with precision and recall against exact Jaccard.

Corpus, per size in --sizes (records): the real records of ../shared/corpora (FLAN CoT's 7 TSVs,
alpaca, code_alpaca, GAOKAO: about 36k), then, in random order,
  unique  records recombined from those records' sentences (a prompt of 1-2, an answer of 2-6,
          within one corpus): real text that overlaps others only a little
  near    12%: a copy of an earlier record with words (characters in Chinese) substituted,
          deleted or inserted at a rate drawn from 0-30%, sometimes a sentence dropped or
          added: exact Jaccard from about 0.2 to 1, half of them >= 0.7
  exact   3%: a copy with case and whitespace changed (equal once folded)
written as two JSONL files, which every side reads (forge through a built source; the build
is not timed).

Every side sees the same shingles: character 5-grams of the same normalized text (forge's
rule, written again here: NFKC, lower case, each run of punctuation, symbols other than
operators and signs, and whitespace one space; prompt and answer joined by a turn mark), and
the same 64 hashes in 16 bands x 4 rows:
  forge       forge.dedup.run, default local executor (2 worker processes); every candidate
              pair is confirmed by exact Jaccard >= 0.7, clusters are stars around survivors
  datatrove   0.10.1 MinhashDedupSignature -> Buckets -> Cluster -> Filter,
              MinhashConfig(n_grams=5, num_buckets=16, hashes_per_bucket=4), 64-bit xxhash
              (its default). datatrove shingles words; its documented hook (a WordTokenizer
              passed as `language`) makes the "words" characters, and TextNormConfig is all
              off because the tokenizer applies the normalization above. LocalPipelineExecutor
              with 2 tasks and 2 workers (buckets: 16 tasks, 2 workers; cluster: 1 task). No
              exact check: a pair sharing a band is a duplicate, clusters are union-find
  datasketch  2.0.0 MinHash.bulk(num_perm=64, hashfunc=xxh32) in 2 worker processes, then
              MinHashLSH(num_perm=64, params=(16, 4)) streaming: a record whose query finds an
              earlier kept record is removed, else inserted. No exact check
Each side runs as a child process; memory is sampled from /proc every 50 ms over the child
and all its descendants: `peak RSS` is the largest single process (VmHWM), `tree` the largest
sum of RSS over all of them at one moment, `tree PSS` the same with PSS (shared pages split among
the processes that share them: what the tree takes from the machine).

Precision and recall: each side's decisions as pairs. A removed record and the record it was
removed for (forge: dup_of; datatrove: the record its cluster keeps; datasketch: the first
earlier kept record its query found) is an asserted pair. Four strata of candidate pairs:
each side's asserted pairs, and the candidates (the planted (original, near copy) pairs and
datatrove's bucket matches: records adjacent in a shared bucket). 500 pairs are drawn
uniformly from each stratum (2,000 in all; pairs of identical normalized texts are drawn but
left out: every side removes those) and their exact Jaccard of 5-gram sets is computed here,
with this file's own code. precision = asserted pairs in the side's stratum sample with
Jaccard >= 0.7; recall = pairs with Jaccard >= 0.7 of which the side no longer keeps both,
over all strata, each pair weighted by the inverse of its chance of being drawn (so it is the
recall over the union of all strata).

At 1M records only forge runs by default (--anchor-max 250000): on this box (2 cores, shared)
datatrove took 278 s and datasketch 136 s at 250k, so 1M would take about 19 and 9 minutes, far
past the 10 minutes a default run may take; `--sizes 1000000 --anchor-max 1000000` runs them.

    .venv/bin/python bench/dedup_bench.py [--sizes 250000,1000000] [--anchor-max 250000]
                                          [--per 500] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import random
import re
import signal
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import regex
import xxhash
from _common import SHARED, add_keep, now, run_child, run_child_tree, stop_children, table, work_dir
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer

BENCH = Path(__file__).resolve().parent
FLAN = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]
TURN = "\x1e"
THRESHOLD = 0.7
SHINGLE = 5
MARKS = regex.compile(r"[[\p{P}\p{S}\s\p{Cc}]--[\p{Sm}\p{Sc}\-*/^%\x1e]]+", regex.V1)
SENTENCE = re.compile(r"(?<=[.!?。！？\n])\s*")
WORD = re.compile(r"\w\w")


# ---------------------------------------------------------------- the normalized text, shingles


def conversation(rec: dict) -> str:
    return f"{rec['instruction']} {rec['input']}{TURN}{rec['output']}"


def fold(text: str) -> str:
    """forge's documented rule (forge.dedup_exact), written independently."""
    text = MARKS.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return text.replace(f" {TURN}", TURN).replace(f"{TURN} ", TURN).strip(" ")


def shingles(text: str) -> set[str]:
    return {text[i : i + SHINGLE] for i in range(len(text) - SHINGLE + 1)} or {text}


def jaccard(a: str, b: str) -> float:
    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


class CharTokenizer(WordTokenizer):
    """datatrove's word tokenizer hook, returning characters of the normalized text: its
    n_grams=5 then are character 5-grams."""

    def word_tokenize(self, text: str) -> list[str]:
        return list(fold(text))

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def _xxh64(text: str) -> int:
    return xxhash.xxh64_intdigest(text.encode())


class Signature(MinhashDedupSignature):
    """datatrove's signature step with its default hash (xxhash64) working: datatrove 0.10.1
    hands it str, which xxhash 4 (our lock) refuses ("Strings must be encoded before
    hashing"); xxhash 3 encoded str as UTF-8 itself, and so does this."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hash_func = _xxh64


def _record_adapter(self, data: dict, path: str, id_in_file) -> dict:
    return {"text": conversation(data), "id": f"{path}/{id_in_file}", "metadata": {}}


# ---------------------------------------------------------------- the corpus


def base_records() -> list[tuple[str, str, str, int]]:
    """(instruction, input, output, corpus) of the real records."""
    out = []
    for name in FLAN:
        for line in (SHARED / "flan_cot" / f"{name}_train.tsv").read_text().split("\n"):
            if line:
                q, a, r = (x.replace("\\n", "\n") for x in line.split("\t"))
                out.append((q, "", f"{r}\nSo the answer is {a}.", 0))
    for corpus, path in ((1, "alpaca/alpaca_5000.json"), (2, "code_alpaca/code_alpaca_2k.json")):
        for r in json.loads((SHARED / path).read_text()):
            out.append((r["instruction"], r["input"], r["output"], corpus))
    for path in sorted((SHARED / "gaokao").glob("*/*.json")):
        for e in json.loads(path.read_text())["example"]:
            answer = "".join(e["answer"]) if isinstance(e["answer"], list) else str(e["answer"])
            out.append((e["question"], "", f"{e['analysis']}\n答案：{answer}", 3))
    # forge quarantines a record without words in its prompt or answer: leave those out
    return [r for r in out if WORD.search(r[0]) and WORD.search(r[2])]


class Corpus:
    """n records as recipes (kind, parent, seed); a record's text is made again on demand."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        base = base_records()
        # all real records from 252k records up; below, a random seventh of the records
        pick = np.sort(rng.choice(len(base), min(len(base), n // 7), replace=False))
        self.base = [base[i] for i in pick.tolist()]
        nb = len(self.base)
        self.kind = np.zeros(n, np.int8)  # 0 base, 1 unique, 2 near, 3 exact
        u = rng.random(n)
        self.kind[nb:] = np.where(u[nb:] < 0.12, 2, np.where(u[nb:] < 0.15, 3, 1))
        self.parent = np.full(n, -1, np.int64)
        at = np.arange(n)
        copy = self.kind >= 2
        self.parent[copy] = (rng.random(int(copy.sum())) * at[copy]).astype(np.int64)
        self.seed = seed
        self.pieces: dict[int, list[str]] = {}
        self.words: dict[int, list[str]] = {}
        for q, i, o, c in base:  # sentences and words of all real records
            for field in (q, i, o):
                self.pieces.setdefault(c, []).extend(p for p in SENTENCE.split(field) if WORD.search(p))
                self.words.setdefault(c, []).extend(field.split()[:40])
        self.corpus_p = np.bincount([c for *_, c in base], minlength=4) / len(base)

    def __len__(self) -> int:
        return len(self.kind)

    def record(self, i: int) -> tuple[str, str, str, int]:
        kind = self.kind[i]
        if kind == 0:
            return self.base[i]
        rng = random.Random(int(i) * 1_000_003 + self.seed)
        if kind == 1:
            c = rng.choices(range(4), self.corpus_p)[0]
            pool, sep = self.pieces[c], "\n" if c == 2 else " "
            q = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 2)))
            return q, "", sep.join(rng.choice(pool) for _ in range(rng.randint(2, 6))), c
        q, inp, out, c = self.record(int(self.parent[i]))
        if kind == 3:  # equal once folded: case and whitespace only
            return q.upper(), inp, "  ".join(out.split(" ")) + " ", c
        rate = rng.uniform(0.0, 0.3)
        # an edit that leaves a field without words keeps the field (forge would quarantine it)
        q, inp, out = (e if WORD.search(e) or not WORD.search(f) else f
                       for f in (q, inp, out) for e in [self.edit(f, rate, c, rng)])  # fmt: skip
        if rng.random() < 0.2:  # a sentence dropped, or one more
            parts = SENTENCE.split(out)
            if len(parts) > 2 and rng.random() < 0.5:
                parts.pop(rng.randrange(len(parts)))
            else:
                parts.insert(rng.randrange(len(parts) + 1), rng.choice(self.pieces[c]))
            out = " ".join(parts)
        return q, inp, out, c

    def edit(self, text: str, rate: float, c: int, rng: random.Random) -> str:
        chinese = text.count(" ") < len(text) / 20
        units = list(text) if chinese else text.split(" ")
        vocab = self.pieces[c] if chinese else self.words[c]
        out = []
        for u in units:
            if rng.random() >= rate:
                out.append(u)
                continue
            op = rng.random()
            new = rng.choice(vocab)
            new = rng.choice(new) if chinese else new
            if op < 0.4:
                out.append(new)
            elif op < 0.7:
                out += [u, new]
        return ("" if chinese else " ").join(out)

    def text(self, i: int) -> str:
        q, inp, out, _ = self.record(i)
        return conversation({"instruction": q, "input": inp, "output": out})

    def write(self, folder: Path) -> list[int]:
        """Two JSONL files (the first and second half); returns each file's first record."""
        folder.mkdir(parents=True, exist_ok=True)
        n = len(self)
        firsts = [0, n // 2, n]
        for f in range(2):
            with open(folder / f"part-{f}.jsonl", "w") as fh:
                for i in range(firsts[f], firsts[f + 1]):
                    q, inp, out, _ = self.record(i)
                    rec = {"instruction": q, "input": inp, "output": out}
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return firsts


# ---------------------------------------------------------------- the sides (child processes)

CATALOG = """
sources:
  bench_dedup:
    {{description: bench, connector: json, connector_options: {{format: jsonl}}, formatter: columns, local: "{data}/*.jsonl", lang: EN, task: MT, gen: SI}}
"""

BUILD = """
from pathlib import Path
from forge.build import build_source
from forge.catalog import load_catalog
from forge.executor import Executor
_ROWS = build_source(load_catalog(Path({catalog!r})).get("bench_dedup"), home=Path({home!r}),
                     executor=Executor("local", 2), workers=2).rows
"""

FORGE = """
from pathlib import Path
from forge.dedup import run
m = run(["bench_dedup"], Path({out!r}), home=Path({home!r}), overwrite=True)
_ROWS = m["input_rows"]
"""

ANCHOR = """
import sys
sys.path.insert(0, {bench!r})
import dedup_bench
_ROWS = dedup_bench.{fn}({data!r}, {work!r})
"""


def run_datatrove(data: str, work: str, workers: int = 2) -> int:
    """datatrove's four MinHash stages; kept records to kept/, removed ones to removed/."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.text import TextNormConfig

    off = TextNormConfig(False, False, False, False, False, False, False)
    config = MinhashConfig(n_grams=SHINGLE, num_buckets=16, hashes_per_bucket=4, norm_config=off)

    def read():
        return JsonlReader(data, adapter=_record_adapter, glob_pattern="*.jsonl")

    def stage(name, pipeline, tasks, w=workers):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=w, logging_dir=f"{work}/logs/{name}").run()

    stage(
        "sig",
        [read(), Signature(f"{work}/sigs", config=config, language=CharTokenizer())],
        workers,
    )
    stage("buckets", [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)], 16)
    stage(
        "cluster",
        [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config, save_cluster_id=True)],
        1,
        1,
    )
    removed = JsonlWriter(f"{work}/removed", compression=None)
    kept = JsonlWriter(f"{work}/kept", compression=None)
    stage("filter", [read(), MinhashDedupFilter(f"{work}/remove", exclusion_writer=removed), kept], workers)
    return sum(1 for f in Path(work, "kept").glob("*.jsonl") for _ in open(f)) + sum(
        1 for f in Path(work, "removed").glob("*.jsonl") for _ in open(f)
    )


def _ds_sign(texts: list[str]) -> np.ndarray:
    import xxhash
    from datasketch import MinHash

    sets = [[s.encode() for s in shingles(fold(t))] for t in texts]
    return np.stack([m.hashvalues for m in MinHash.bulk(sets, num_perm=64, hashfunc=xxhash.xxh32_intdigest)])


def run_datasketch(data: str, work: str, workers: int = 2, chunk: int = 2000) -> int:
    """MinHashLSH, streaming: dup_of (the first kept record found, or -1) to work/dup_of.npy."""
    from multiprocessing import Pool

    from datasketch import LeanMinHash, MinHashLSH

    def chunks():
        buf = []
        for f in sorted(Path(data).glob("*.jsonl")):
            for line in open(f):
                buf.append(conversation(json.loads(line)))
                if len(buf) == chunk:
                    yield buf
                    buf = []
        if buf:
            yield buf

    lsh = MinHashLSH(num_perm=64, params=(16, 4))
    dup_of, i = [], 0
    with Pool(workers) as pool:
        for sigs in pool.imap(_ds_sign, chunks()):
            for hv in sigs:
                m = LeanMinHash(seed=1, hashvalues=hv, scheme="affine32")
                found = lsh.query(m)
                if found:
                    dup_of.append(min(found))
                else:
                    lsh.insert(i, m)
                    dup_of.append(-1)
                i += 1
    np.save(Path(work) / "dup_of.npy", np.array(dup_of, np.int64))
    return i


# ---------------------------------------------------------------- decisions and scoring


def forge_decisions(home: Path, out: Path, firsts: list[int]) -> np.ndarray:
    """dup_of (global record index, -1 when kept) from forge's dropped.parquet."""
    import pyarrow.parquet as pq

    def index(t) -> np.ndarray:
        part = np.array([int(Path(f).stem.split("-")[1]) for f in t["raw_file"].to_pylist()], np.int64)
        return np.array(firsts)[part] + t["raw_row"].to_numpy()

    built = [pq.read_table(f, columns=["id", "raw_file", "raw_row"])
             for f in sorted(home.glob("sources/bench_dedup/*/*.parquet"))]  # fmt: skip
    ids = {i: g for t in built for i, g in zip(t["id"].to_pylist(), index(t).tolist(), strict=True)}
    dropped = pq.read_table(out / "dropped.parquet", columns=["raw_file", "raw_row", "dup_of"])
    dup_of = np.full(firsts[-1], -1, np.int64)
    dup_of[index(dropped)] = [ids[d] for d in dropped["dup_of"].to_pylist()]
    return dup_of


def datatrove_decisions(work: Path, firsts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """dup_of (the record each removed record's cluster keeps) and the bucket matches."""
    dup_of = np.full(firsts[-1], -1, np.int64)
    removed, members, cluster = [], [], []
    for rank in range(len(firsts) - 1):
        f = work / "remove" / f"{rank:06d}.remove"
        if f.exists():
            removed.append(np.fromfile(f, np.uint32).astype(np.int64) + firsts[rank])
        f = work / "remove" / f"{rank:06d}.clusters"
        if f.exists():
            dc = np.fromfile(f, np.uint32).reshape(-1, 2).astype(np.int64)
            members.append(dc[:, 0] + firsts[rank])
            cluster.append(dc[:, 1])
    if members:
        members, cluster = np.concatenate(members), np.concatenate(cluster)
        gone = np.zeros(firsts[-1], bool)
        gone[np.concatenate(removed)] = True
        keeper = np.full(cluster.max() + 1, -1, np.int64)
        keeper[cluster[~gone[members]]] = members[~gone[members]]
        dup_of[members[gone[members]]] = keeper[cluster[gone[members]]]
    dups = [
        np.fromfile(f, np.uint32).reshape(-1, 4).astype(np.int64) for f in (work / "buckets").glob("*.dups")
    ]
    d = np.concatenate(dups) if dups else np.zeros((0, 4), np.int64)
    return dup_of, np.stack(
        [np.array(firsts)[d[:, 0]] + d[:, 1], np.array(firsts)[d[:, 2]] + d[:, 3]], axis=1
    )


def keys(pairs: np.ndarray) -> np.ndarray:
    """Sorted distinct uint64 keys (low << 32 | high) of record pairs, self-pairs left out."""
    lo, hi = pairs.min(axis=1).astype(np.uint64), pairs.max(axis=1).astype(np.uint64)
    k = np.unique((lo << np.uint64(32)) | hi)
    return k[(k >> np.uint64(32)) != (k & np.uint64(0xFFFFFFFF))]


def asserted(dup_of: np.ndarray) -> np.ndarray:
    gone = np.flatnonzero(dup_of >= 0)
    return keys(np.stack([gone, dup_of[gone]], axis=1))


def score(
    corpus: Corpus, strata: dict[str, np.ndarray], kept: dict[str, np.ndarray], per: int, seed: int = 0
):
    """(precision per side, recall per side, counts), the rule in the module docstring."""
    rng = np.random.default_rng(seed)
    texts: dict[int, str] = {}

    def folded(i: int) -> str:
        if i not in texts:
            texts[i] = fold(corpus.text(i))
        return texts[i]

    sims: dict[int, float] = {}
    drawn: dict[str, list[int]] = {}
    frac = {}
    for name, k in strata.items():
        got, walked = [], 0
        for key in k[rng.permutation(len(k))].tolist():
            walked += 1
            a, b = key >> 32, key & 0xFFFFFFFF
            if folded(a) == folded(b):
                continue
            got.append(key)
            if key not in sims:
                sims[key] = jaccard(folded(a), folded(b))
            if len(got) == per:
                break
        drawn[name], frac[name] = got, walked / max(len(k), 1)
    precision = {
        s: np.mean([sims[k] >= THRESHOLD for k in drawn[s]]) if drawn[s] else float("nan") for s in kept
    }
    pairs = np.array(sorted(sims), np.uint64)
    miss = np.ones(len(pairs))
    for name, k in strata.items():
        at = np.minimum(np.searchsorted(k, pairs), max(len(k) - 1, 0))
        member = (k[at] == pairs) if len(k) else np.zeros(len(pairs), bool)
        miss *= 1 - member * frac[name]
    weight = 1 / (1 - miss)
    true = np.array([sims[k] >= THRESHOLD for k in pairs.tolist()], bool)
    a, b = (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    recall = {
        s: float((weight * true * ~(kk[a] & kk[b])).sum() / (weight * true).sum()) for s, kk in kept.items()
    }
    counts = {
        "scored": len(pairs),
        "true": int(true.sum()),
        **{f"drawn {n}": len(v) for n, v in drawn.items()},
    }
    return precision, recall, counts


def check_fold(corpus: Corpus, m: int = 5000) -> float:
    """Share of records whose fold() here equals forge's record_texts (the same rule)."""
    import pyarrow as pa

    from forge.dedup_exact import record_texts

    idx = np.random.default_rng(1).choice(len(corpus), min(m, len(corpus)), replace=False).tolist()
    recs = [corpus.record(i) for i in idx]
    t = pa.table({k: [r[j] for r in recs] for j, k in enumerate(("instruction", "input", "output"))})
    theirs = record_texts(t).to_pylist()
    return float(np.mean([fold(corpus.text(i)) == x for i, x in zip(idx, theirs, strict=True)]))


def bench_size(work: Path, n: int, per: int, anchors: bool) -> None:
    import shutil

    t0 = time.perf_counter()
    corpus = Corpus(n)
    data = work / f"data-{n}"
    firsts = corpus.write(data)
    home, cat = work / f"home-{n}", work / f"catalog-{n}.yaml"
    cat.write_text(CATALOG.format(data=data))
    run_child(BUILD.format(catalog=str(cat), home=str(home)))
    kinds = np.bincount(corpus.kind, minlength=4)
    print(f"\n{n:,} records: {kinds[0]:,} real, {kinds[1]:,} recombined, {kinds[2]:,} near copies, "
          f"{kinds[3]:,} exact copies (written and built in {time.perf_counter() - t0:.0f} s); "
          f"normalization here = forge's record_texts on {check_fold(corpus):.2%} of 5,000 records")  # fmt: skip
    results, dup_of = {}, {}
    print(f"load before the timed runs: {Path('/proc/loadavg').read_text().strip()}")
    results["forge"] = run_child_tree(FORGE.format(out=str(work / f"forge-{n}"), home=str(home)))
    dup_of["forge"] = forge_decisions(home, work / f"forge-{n}", firsts)
    dt, ds = work / f"datatrove-{n}", work / f"datasketch-{n}"
    buckets = np.zeros((0, 2), np.int64)
    if anchors:
        code = ANCHOR.format(bench=str(BENCH), fn="run_datatrove", data=str(data), work=str(dt))
        results["datatrove"] = run_child_tree(code)
        dup_of["datatrove"], buckets = datatrove_decisions(dt, firsts)
        ds.mkdir()
        code = ANCHOR.format(bench=str(BENCH), fn="run_datasketch", data=str(data), work=str(ds))
        results["datasketch"] = run_child_tree(code)
        dup_of["datasketch"] = np.load(ds / "dup_of.npy")
    planted = np.flatnonzero(corpus.kind == 2)
    strata = {s: asserted(d) for s, d in dup_of.items()}
    strata["candidates"] = keys(
        np.concatenate([np.stack([corpus.parent[planted], planted], axis=1), buckets])
    )
    kept = {s: d < 0 for s, d in dup_of.items()}
    precision, recall, counts = score(corpus, strata, kept, per)
    rows = []
    for side, r in results.items():
        rows.append((side, f"{r['seconds']:.1f}", f"{n / r['seconds']:,.0f}", f"{int((dup_of[side] >= 0).sum()):,}",
                     f"{r['peak_mb']:,.0f}", f"{r['tree_mb']:,.0f}", f"{r['tree_pss_mb']:,.0f}", f"{precision[side]:.3f}",
                     f"{recall[side]:.3f}"))  # fmt: skip
    header = ("side", "seconds", "records/s", "removed", "peak RSS MB", "tree MB", "tree PSS MB", "precision",
              "recall")  # fmt: skip
    print(table(rows, header))
    f = results["forge"]
    for side in list(results)[1:]:
        r = results[side]
        print(f"{side} / forge: time {r['seconds'] / f['seconds']:.1f}x, peak RSS {r['peak_mb'] / f['peak_mb']:.1f}x, "
              f"tree {r['tree_mb'] / f['tree_mb']:.1f}x, tree PSS {r['tree_pss_mb'] / f['tree_pss_mb']:.1f}x")  # fmt: skip
    print("pairs scored: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) +
          " (strata sizes: " + ", ".join(f"{k} {len(v):,}" for k, v in strata.items()) + ")")  # fmt: skip
    for side, r in results.items():
        assert r["rows"] == n, f"{side} read {r['rows']} records, not {n}"
    # every side removes one of each planted exact copy and its original (equal signatures)
    exact = np.flatnonzero(corpus.kind == 3)
    for side, d in dup_of.items():
        both = int(((d[exact] < 0) & (d[corpus.parent[exact]] < 0)).sum())
        assert both == 0, f"{side} kept both records of {both} exact copies"
    for path in (data, home, dt, ds, work / f"forge-{n}"):
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="250000,1000000", help="records per run, comma-separated")
    ap.add_argument("--anchor-max", type=int, default=250_000,
                    help="run datatrove and datasketch only at sizes up to this (default 250000: at 1M they "
                    "take far longer than the 10 minutes a default run may)")  # fmt: skip
    ap.add_argument("--per", type=int, default=500, help="pairs drawn per stratum (4 strata)")
    ap.add_argument("--quick", action="store_true", help="one run of 30,000 records, 200 pairs per stratum")
    add_keep(ap)
    args = ap.parse_args()
    work = work_dir("forge-bench-dedup-", args.keep)
    atexit.register(stop_children)  # runs before the work folder is removed (atexit is LIFO)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so atexit runs on a kill too
    os.environ["HF_HUB_OFFLINE"] = "1"
    sizes = [30_000] if args.quick else [int(x) for x in args.sizes.split(",")]
    per = 200 if args.quick else args.per
    print(f"dedup bench {now()}, {os.cpu_count()} cores; threshold {THRESHOLD}, character {SHINGLE}-grams, "
          "64 hashes, 16 bands x 4 rows")  # fmt: skip
    for n in sizes:
        bench_size(work, n, per, anchors=n <= args.anchor_max)


if __name__ == "__main__":
    main()

"""Dedup is right by the exact measure (issue #31).

On a union of real corpora from ../shared/corpora (FLAN CoT, cot_zh, code_alpaca, alpaca,
GAOKAO, BELLE, GPTeacher, Chinese medical dialogue: 80,150 records), checked by code written
here and not forge's: every near-duplicate drop has an exact Jaccard similarity to its dup_of
at or above the threshold, and recall of pairs whose exact Jaccard is at least the threshold
+ 0.05 is at least 99%, measured by a complete search from a random sample of 10,000 records
against the whole union (an all-pairs search is out of reach here: FLAN's templates make tens
of millions of pairs share rare 5-grams). Exact dedup keeps operators, signs and turn
boundaries apart and merges full- and half-width forms.
"""

import json
import textwrap
import unicodedata

import numpy as np
import polars as pl
import pytest

from forge.build import build_source
from forge.catalog import load_catalog
from forge.dedup import THRESHOLD, record_texts, run
from tests.conftest import current, shared

REAL = {  # catalog source -> real raw sample under ../shared/corpora
    "flan_cot": "flan_cot",
    "cot_zh": "flan_cot/gsm8k_train.tsv",
    "code_alpaca": "code_alpaca/code_alpaca_2k.json",
    "alpaca": "alpaca/alpaca_5000.json",
    "gaokao": "gaokao",
    "belle_1m": "belle/dev1K.json",
    "gpteacher_codegen": "gpteacher/codegen-instruct.json",
    "gpteacher_roleplay": "gpteacher/roleplay-simple-deduped-roleplay-instruct.json",
    "gpteacher_toolformer": "gpteacher/toolformer-similarity-0.6-dataset.json",
    "chinese_medical": "chinese_medical/sample_IM_neike_5000-6000.csv",
}
SAMPLE = 10_000  # records compared with the whole union in the recall check
OPERATORS = set("-*/^%")  # kept as text besides math symbols (Sm) and currency signs (Sc)


def _text(r: dict) -> str:
    """A record's text as the dedup docstring defines it, written independently of forge:
    NFKC, lower case; punctuation, symbols and whitespace one space, except operators and
    signs; turns (history, then instruction + input, then output) joined by U+001E."""

    def fold(s: str | None) -> str:
        s = unicodedata.normalize("NFKC", s or "").lower()
        out = []
        for c in s:
            cat = unicodedata.category(c)
            keep = cat in ("Sm", "Sc") or c in OPERATORS
            out.append(" " if not keep and (cat[0] in "PSZ" or cat == "Cc") else c)
        return " ".join(w for w in "".join(out).split(" ") if w)

    turns = [x for t in r["history"] or [] for x in (t["user"], t["assistant"])]
    turns.append(f"{r['instruction'] or ''} {r['input'] or ''}")
    turns.append(r["output"])
    return "\x1e".join(fold(t) for t in turns)


def _grams(t: str) -> set[str]:
    return {t[i : i + 5] for i in range(len(t) - 4)} if len(t) >= 5 else {t}


def _jaccard(a: str, b: str) -> float:
    x, y = _grams(a), _grams(b)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def union(tmp_path_factory):
    home = tmp_path_factory.mktemp("union")
    catalog = load_catalog()
    for name, rel in REAL.items():
        build_source(catalog.get(name), home=home, from_path=shared(rel), say=lambda *a: None)
    m = run(list(REAL), home / "dd", home=home)
    kept = pl.read_parquet(home / "dd" / "part-00000.parquet")
    dropped = pl.read_parquet(home / "dd" / "dropped.parquet")
    return home, m, kept, dropped


def test_every_drop_reaches_the_threshold_by_exact_jaccard(union):
    _, m, kept, dropped = union
    assert m["input_rows"] == kept.height + dropped.height >= 50_000
    assert 1000 < dropped.height < 3000, dropped.height
    by_id = {r["id"]: r for r in pl.concat([kept, dropped.select(kept.columns)]).iter_rows(named=True)}
    below, misstated = [], []
    for r in dropped.iter_rows(named=True):
        j = _jaccard(_text(r), _text(by_id[r["dup_of"]]))
        if j < THRESHOLD:
            below.append((r["id"], r["dup_of"], r["similarity"], round(j, 3)))
        if abs(r["similarity"] - j) > 1e-6:  # the recorded similarity is the exact one, not an estimate
            misstated.append((r["id"], r["similarity"], j))
        assert (r["reason"] == "exact duplicate") == (_exact(r) == _exact(by_id[r["dup_of"]]))
    assert not below, f"{len(below)} of {dropped.height} drops are below {THRESHOLD}: {below[:5]}"
    assert not misstated, misstated[:5]
    assert set(dropped["dup_of"]) <= set(kept["id"])  # every copy names a record that survives
    pairs = m["near_pairs"]
    print("near pairs", pairs, "dropped", m["dropped_reasons"])
    assert pairs["checked"] <= pairs["candidates"] and pairs["skipped"] > 0  # FLAN has oversized buckets


def _exact(r: dict) -> str:
    """The exact-dedup text: NFKC, lower case, whitespace folded; everything else kept."""

    def fold(s: str | None) -> str:
        s = unicodedata.normalize("NFKC", s or "").lower()
        return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in s).split())

    turns = [x for t in r["history"] or [] for x in (t["user"], t["assistant"])]
    turns += [f"{fold(r['instruction'])} {fold(r['input'])}", r["output"]]
    return "\x1e".join(fold(t) for t in turns)


def test_recall_of_pairs_above_the_threshold_by_exact_search(union):
    """Every record of a random sample is compared with every record of the union: a complete
    search by prefix filtering (a pair at Jaccard t shares one of the rarest |r| - ceil(t|r|) + 1
    grams of r; a longer prefix bounds the overlap and prunes), then the exact Jaccard. Of the
    pairs at threshold + 0.05 or more, apart from renderings of one raw record (which dedup
    keeps by design), at least 99% must lose one of the two records."""
    home, _, kept, dropped = union
    everything = pl.concat([kept, dropped.select(kept.columns)])
    texts = record_texts(everything.to_arrow()).to_pylist()
    n, t = len(texts), THRESHOLD + 0.05
    raw_sha = {}
    for s in REAL:
        manifest = json.loads((current(home, "sources", s) / "manifest.json").read_text())
        raw_sha |= {(s, f["name"]): f["sha256"] for f in manifest["raw"]}
    origin = [
        f"{raw_sha.get((s, f), s + f)}:{row}"
        for s, f, row in zip(everything["source"], everything["raw_file"], everything["raw_row"], strict=True)
    ]
    survives = np.r_[np.ones(kept.height, bool), np.zeros(dropped.height, bool)]
    rec, gram, df = _gram_sets(texts)
    size = np.bincount(rec, minlength=n)
    start = np.r_[0, np.cumsum(size)]
    # each record's grams, rarest first: one sort of (record, gram count, gram) side by side
    gb, db = int(len(df)).bit_length(), int(df.max()).bit_length()
    assert gb + db + int(n).bit_length() <= 64
    rare = np.sort(
        (rec.astype(np.uint64) << np.uint64(gb + db))
        | (df[gram].astype(np.uint64) << np.uint64(gb))
        | gram.astype(np.uint64)
    )
    rare = (rare & np.uint64((1 << gb) - 1)).astype(np.int64)
    postings = np.sort((gram.astype(np.uint64) << np.uint64(32)) | rec.astype(np.uint64))
    postings = (postings & np.uint64(0xFFFFFFFF)).astype(np.int64)
    post_start = np.r_[0, np.cumsum(df)]
    prefix = np.maximum(
        size - np.ceil(t * size - 1e-9).astype(np.int64) + 1, np.ceil(0.3 * size).astype(np.int64)
    )

    def ragged(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        return (
            np.repeat(starts, lengths)
            + np.arange(lengths.sum())
            - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )

    sample = np.random.default_rng(31).choice(np.flatnonzero(size > 1), SAMPLE, replace=False)
    pairs = set()
    for lo in range(0, SAMPLE, 64):
        chunk = sample[lo : lo + 64]
        r = np.repeat(np.arange(len(chunk)), prefix[chunk])  # a prefix gram of chunk[r] ...
        g = rare[ragged(start[chunk], prefix[chunk])]
        y = postings[ragged(post_start[g], df[g])]  # ... held by record y
        key = np.sort(np.repeat(r, df[g]) * n + y)
        first = np.r_[True, key[1:] != key[:-1]]
        shared = np.diff(np.r_[np.flatnonzero(first), len(key)])  # prefix grams chunk[r] shares with y
        r, y = chunk[key[first] // n], key[first] % n
        need = np.ceil(t / (1 + t) * (size[r] + size[y]) - 1e-9)  # overlap that Jaccard t needs
        possible = np.minimum(shared + size[r] - prefix[r], size[y]) >= need
        for a, b in zip(r[possible].tolist(), y[possible].tolist(), strict=True):
            x, z = rare[start[a] : start[a + 1]], rare[start[b] : start[b + 1]]
            inter = len(np.intersect1d(x, z, assume_unique=True))
            if a != b and inter >= t * (len(x) + len(z) - inter) - 1e-9 and origin[a] != origin[b]:
                pairs.add((min(a, b), max(a, b)))
    for a, b in list(pairs)[:300]:  # the gram ids agree with the plain-Python measure
        assert _jaccard(texts[a], texts[b]) >= t - 1e-9
    both_kept = [(a, b) for a, b in pairs if survives[a] and survives[b]]
    recall = 1 - len(both_kept) / len(pairs)
    print(f"recall {recall:.4f} over {len(pairs)} pairs; both kept: {both_kept[:5]}")
    assert len(pairs) >= 300 and recall >= 0.99, (recall, len(pairs))


def _gram_sets(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(record, gram id) for each distinct 5-gram of each text of 5 characters or more, and
    each gram's number of records. A gram id is its five character ranks side by side."""
    lengths = np.array([len(x) for x in texts])
    cp = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    present = np.zeros(0x110000, bool)
    present[cp] = True
    rank = (np.cumsum(present) - 1).astype(np.uint64)[cp]
    bits = int(present.sum() - 1).bit_length()
    assert 5 * bits <= 64
    count = np.maximum(lengths - 4, 0)
    owner = np.repeat(np.arange(len(texts)), count)
    at = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
    at += np.repeat(np.cumsum(lengths) - lengths, count)
    code = np.zeros(len(owner), np.uint64)
    for k in range(5):
        code = (code << np.uint64(bits)) | rank[at + k]
    vocab = np.sort(code)
    vocab = vocab[np.r_[True, vocab[1:] != vocab[:-1]]]
    pairs = np.sort(
        (owner.astype(np.uint64) << np.uint64(32)) | np.searchsorted(vocab, code).astype(np.uint64)
    )
    pairs = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    rec, gram = (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return rec, gram, np.bincount(gram, minlength=len(vocab))


def test_exact_dedup_keeps_operators_signs_and_turns_and_folds_width(home, tmp_path):
    rows = [
        {"instruction": "Simplify: (x+1)(x+1)", "output": "x^2+2x+1"},
        {"instruction": "Simplify: (x-1)(x-1)", "output": "x^2-2x+1"},
        {"instruction": "Is it true that 7 > 3?", "output": "Yes."},
        {"instruction": "Is it true that 7 < 3?", "output": "Yes."},
        {"history": [{"user": "What is 2+2?", "assistant": "4"}], "instruction": "And 3+3?", "output": "6"},
        {"instruction": "What is 2+2? 4 And 3+3?", "output": "6"},
        {"instruction": "（１）求函数ｆ（ｘ）＝ｘ＋１的零点。", "output": "ｘ＝－１"},
        {"instruction": "(1)求函数f(x)=x+1的零点。", "output": "x=-1"},
        {"instruction": "Name  a  PRIME number.", "output": "7"},
        {"instruction": "name a prime number.", "output": "7"},
    ]
    (tmp_path / "e.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    cat = tmp_path / "catalog.yaml"
    cat.write_text(
        textwrap.dedent(f"""
        sources:
          cases:
            {{description: x, connector: json, formatter: columns, options: {{history: history}}, local: {tmp_path / "e.jsonl"}, lang: EN, task: MT, gen: HG}}
        """)
    )
    build_source(load_catalog(cat).get("cases"), home=home)
    for near in (False, True):
        out = tmp_path / f"dd-{near}"
        m = run(["cases"], out, home=home, near=near)
        dropped = pl.read_parquet(out / "dropped.parquet")
        row = dict(
            pl.read_parquet(current(home, "sources", "cases") / "*.parquet")
            .select("id", "raw_row")
            .iter_rows()
        )
        copies = {frozenset((row[i], row[d])) for i, d in zip(dropped["id"], dropped["dup_of"], strict=True)}
        # only the width variant and the case/whitespace variant are copies, and exact ones
        assert copies == {frozenset((6, 7)), frozenset((8, 9))}, (near, dropped.select("raw_row", "reason"))
        assert set(dropped["reason"]) == {"exact duplicate"} and m["dropped"] == 2

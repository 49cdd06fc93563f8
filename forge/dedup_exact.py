"""What dedup compares (forge.dedup), and the exact check behind near-duplicate removal:
which pairs are compared, and how a pair is confirmed.

Texts: exact_texts folds a conversation for exact comparison (NFKC, lower case, whitespace;
everything else kept, turns joined by TURN); record_texts is what MinHash and the exact check
read: the same text without punctuation and symbols other than operators and signs.

MinHash only proposes pairs. A pair is a near duplicate when the exact Jaccard similarity of
the two records' shingle sets (character SHINGLE-grams of record_texts, the shingles the
signatures are made of) reaches the threshold; the estimate never confirms a pair.

  candidates  every pair of distinct texts that share an LSH bucket (band, key). Exact copies
              have equal signatures, so they share every bucket: a bucket is reduced to one
              record per text (its first), and copies are joined by the exact-key step instead.
              A pair in several buckets is checked once, in the first band where it shares
              an ordinary bucket.
  oversized   a bucket of more than BUCKET_ALL distinct texts is degenerate: its band's bins
              are held by shingles that many texts share (template wording: 3,280 FLAN
              sensemaking prompts at a true similarity near 0.2 share one band). There each
              text is paired with the bucket's first BUCKET_HEAD texts and with the
              BUCKET_WINDOW texts before it (record order), at most BUCKET_HEAD + BUCKET_WINDOW
              pairs per text; the pairs left out are counted (manifest `near_pairs.skipped`).
              A true near duplicate shares several of the 16 bands (at Jaccard 0.75, all 16
              miss each other with probability 0.2%), so it is nearly always met in an
              ordinary bucket too.
  prefilter   a candidate whose MinHash estimate is below threshold - PREFILTER_MARGIN is
              rejected without the exact check. This only saves work (FLAN's templates
              propose 1.7M pairs, 0.2M of them past the prefilter); it can miss a pair, never
              drop one wrongly. The estimate spreads more than a binomial over 64 bins (bins
              that borrow by densification move together): on 80k real records (FLAN CoT,
              code_alpaca, GAOKAO, ...) the lowest estimate of a pair at exact Jaccard >= 0.7
              was 0.52, and at >= 0.75 it was 0.59; the cut is 0.45.
  exact       Jaccard of the two shingle sets, on the texts read back by record index, a
              bounded batch of texts at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

SHINGLE = 5
BUCKET_ALL = 64
BUCKET_HEAD = 32
BUCKET_WINDOW = 32
PREFILTER_MARGIN = 0.25
SCALE = 1 << 24  # similarities travel in edge arrays as integers: round(Jaccard * SCALE)
_CHUNK_PAIRS = 1 << 20  # candidate pairs generated at a time
_BATCH_CHARS = 1 << 22  # text characters compared at a time


TURN = "\x1e"  # between the turns of a folded conversation; never inside a folded field
# what MinHash does not read: punctuation, symbols and whitespace, except operators and signs
# (+ - * / ^ % = < > ± $ ...: "7 > 3" is not "7 < 3") and turn marks
_MARKS = r"[[\p{P}\p{S}\s\p{Cc}]--[\p{Sm}\p{Sc}\-*/^%\x1e]]+"


def normalize(texts: pa.Array) -> pa.Array:
    """Text as MinHash sees it: NFKC, lower case, each run of punctuation, symbols other
    than operators and signs, and whitespace one space."""
    import polars as pl

    # polars' regex engine is multi-threaded; pyarrow's replace_substring_regex is not
    return strip_marks(_fold(pl.Series(texts).fill_null("").str.replace_all(TURN, " ", literal=True)))


def _fold(s):
    """Fold a polars Series of texts for exact comparison: NFKC (width), lower case, each run
    of whitespace and control characters one space; no space beside a TURN."""
    import polars as pl

    # NFKC is the costly step and leaves ASCII as it is: run it on the other texts only
    other = s.str.contains(r"[^\x00-\x7F]")
    if other.any():
        s = s.scatter(other.arg_true(), s.filter(other).str.normalize("NFKC"))
    s = s.str.to_lowercase().str.replace_all(rf"[[\s\p{{Cc}}]--{TURN}]+", " ")
    return s.str.replace_all(f" ?{TURN} ?", TURN).str.strip_chars(" ").cast(pl.String)


def exact_texts(table: pa.Table) -> pa.Array:
    """Each record's conversation folded for exact comparison: the history's user and
    assistant turns, then instruction + input as one user turn, then the output, joined by
    TURN (a TURN inside a field is a space) and folded (_fold)."""
    import polars as pl

    def field(e):
        return e.fill_null("").str.replace_all(TURN, " ", literal=True)

    cols = ["instruction", "input", "output"] + (["history"] if "history" in table.column_names else [])
    frame = pl.from_arrow(table.select(cols))
    last = pl.concat_str([field(pl.col("instruction")), field(pl.col("input"))], separator=" ")
    conv = pl.concat_str([last, field(pl.col("output"))], separator=TURN)
    if "history" in cols:
        turn = [field(pl.element().struct.field("user")), field(pl.element().struct.field("assistant"))]
        turns = pl.col("history").list.eval(pl.concat_str(turn, separator=TURN))
        has = turns.list.len().fill_null(0) > 0
        conv = pl.when(has).then(pl.concat_str([turns.list.join(TURN), conv], separator=TURN)).otherwise(conv)
    return _fold(frame.select(conv.alias("t")).to_series()).to_arrow().cast(pa.large_string())


def record_texts(table: pa.Table) -> pa.Array:
    """The text MinHash and the exact Jaccard check read: exact_texts without punctuation
    (normalize's rule); turn marks stay. A function of exact_texts, so exact copies always
    have equal texts."""
    return strip_marks(exact_texts(table))


def strip_marks(folded: pa.Array) -> pa.Array:
    """exact_texts (or folded text) -> the text MinHash reads (normalize's rule)."""
    import polars as pl

    s = pl.Series(folded).str.replace_all(_MARKS, " ").str.replace_all(f" ?{TURN} ?", TURN)
    return s.str.strip_chars(" ").to_arrow().cast(pa.large_string())


def oversized(rows: np.ndarray) -> np.ndarray:
    """Sorted keys of the buckets in band rows `rows` that hold more than BUCKET_ALL distinct
    texts. A bucket key is unique across bands (the band is mixed into it)."""
    if len(rows) <= BUCKET_ALL:
        return np.zeros(0, np.uint64)
    order = np.argsort(rows["key"])
    key = rows["key"][order]
    start = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    size = np.diff(np.r_[start, len(key)])
    # only a bucket of more than BUCKET_ALL records can hold that many texts
    big = rows[order[np.repeat(size > BUCKET_ALL, size)]]
    if not len(big):
        return np.zeros(0, np.uint64)
    big = big[np.lexsort((big["exact"], big["key"]))]
    new_text = np.r_[True, (big["key"][1:] != big["key"][:-1]) | (big["exact"][1:] != big["exact"][:-1])]
    texts = big["key"][new_text]  # one entry per (bucket, text)
    start = np.flatnonzero(np.r_[True, texts[1:] != texts[:-1]])
    return texts[start[np.diff(np.r_[start, len(texts)]) > BUCKET_ALL]]


class Buckets:
    """The buckets of some band rows (forge.minhash.BAND_ROW) that hold two texts or more: one
    row per (bucket, text), the text's first record (`rows`, sorted by bucket and then
    record), and the start and size of each bucket. Any subset of band rows holding whole
    buckets gives the same buckets, which is what lets dedup split the rows into partitions."""

    def __init__(self, rows: np.ndarray):
        # most buckets hold one record: find them by key alone (one cheap sort) and leave them
        order = np.argsort(rows["key"])
        key = rows["key"][order]
        differs = key[1:] != key[:-1]
        rows = rows[order[~(np.r_[True, differs] & np.r_[differs, True])]] if len(rows) else rows
        if not len(rows):
            self.rows, self.size, self.start = rows, np.zeros(0, np.int64), np.zeros(0, np.int64)
            return
        r = rows[np.lexsort((rows["idx"], rows["exact"], rows["key"], rows["band"]))]
        first = np.r_[True, (r["band"][1:] != r["band"][:-1]) | (r["key"][1:] != r["key"][:-1])
                      | (r["exact"][1:] != r["exact"][:-1])]  # fmt: skip
        r = r[first]
        r = r[np.lexsort((r["idx"], r["key"], r["band"]))]  # each bucket's texts in record order
        new = np.r_[True, (r["band"][1:] != r["band"][:-1]) | (r["key"][1:] != r["key"][:-1])]
        size = np.diff(np.r_[np.flatnonzero(new), len(r)])
        keep = np.repeat(size > 1, size)  # copies of one text alone have no pair
        self.rows, self.size = r[keep], size[size > 1]
        self.start = np.r_[0, np.cumsum(self.size)[:-1]].astype(np.int64)

    def pairs(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(p, q, skipped), a bounded chunk at a time: positions in `rows` of the two texts of
        each candidate pair (the rule in the module docstring; rows[p] comes first in record
        order); skipped counts the pairs of oversized buckets that the rule leaves out."""
        size, n = self.size, len(self.rows)
        if not n:
            return
        pos = np.arange(n) - np.repeat(self.start, size)  # place of each text in its bucket
        big = np.repeat(size > BUCKET_ALL, size)
        # partners of the text at place p: places q < p with q < head, or p - q <= window
        head = np.where(big, np.minimum(pos, BUCKET_HEAD), pos)
        tail = np.where(big, np.clip(pos - BUCKET_HEAD, 0, BUCKET_WINDOW), 0)
        count = head + tail
        m = size[size > BUCKET_ALL].astype(np.int64)
        skipped = int((m * (m - 1) // 2).sum() - count[big].sum())
        cum = np.cumsum(count)
        # rows are cut into chunks of about _CHUNK_PAIRS pairs (a row has at most 63)
        cuts = np.searchsorted(cum, np.arange(_CHUNK_PAIRS, cum[-1], _CHUNK_PAIRS), side="right")
        bounds = np.unique(np.r_[0, cuts, n])
        for k, (lo, hi) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)):
            c = count[lo:hi]
            row = np.repeat(np.arange(lo, hi), c)
            j = np.arange(len(row)) - np.repeat(np.cumsum(c) - c, c)  # which partner of its row
            q = np.where(j < head[row], j, pos[row] - tail[row] + (j - head[row]))
            yield row - pos[row] + q, row, skipped if k == 0 else 0


def agreeing_bytes(x: np.ndarray) -> np.ndarray:
    """Per row of uint64 words, the number of zero bytes (SWAR: a byte's high bit is set in
    t exactly when the byte is zero)."""
    low7 = np.uint64(0x7F7F7F7F7F7F7F7F)
    t = ~(((x & low7) + low7) | x | low7)
    return np.bitwise_count(t).sum(axis=1, dtype=np.int64)


class Texts:
    """Normalized texts by record index: a list held in memory (forge.dedup.decide)."""

    def __init__(self, texts: list[str]):
        self.items = texts

    def lengths(self, idx: np.ndarray) -> np.ndarray:
        return np.array([len(self.items[i]) for i in idx.tolist()], np.int64)

    def get(self, idx: np.ndarray) -> list[str]:
        return [self.items[i] for i in idx.tolist()]


class SpilledTexts(Texts):
    """Normalized texts by global record index, read back from the spill files that dedup's
    sign step writes per input shard: text-NNNNN.bin (UTF-8, back to back) and
    tend-NNNNN.bin (int64 end offset of each record's text)."""

    def __init__(self, spill: Path, firsts: list[int]):
        self.spill, self.firsts = Path(spill), firsts

    def _spans(self, idx: np.ndarray) -> Iterator[tuple[np.ndarray, int, np.ndarray, np.ndarray]]:
        shard = np.searchsorted(self.firsts, idx, side="right") - 1
        for s in np.unique(shard).tolist():
            sel = np.flatnonzero(shard == s)
            local = idx[sel] - self.firsts[s]
            rows = self.firsts[s + 1] - self.firsts[s]
            ends = np.memmap(self.spill / f"tend-{s:05d}.bin", np.int64, "r", shape=(rows,))
            yield sel, s, np.where(local > 0, ends[np.maximum(local - 1, 0)], 0), ends[local]

    def lengths(self, idx: np.ndarray) -> np.ndarray:  # in bytes: enough to size a batch
        out = np.zeros(len(idx), np.int64)
        for sel, _, lo, hi in self._spans(idx):
            out[sel] = hi - lo
        return out

    def get(self, idx: np.ndarray) -> list[str]:
        out = [""] * len(idx)
        for sel, s, lo, hi in self._spans(idx):
            with open(self.spill / f"text-{s:05d}.bin", "rb") as fh:
                for k, a, b in zip(sel.tolist(), lo.tolist(), hi.tolist(), strict=True):
                    fh.seek(a)
                    out[k] = fh.read(b - a).decode()
        return out


def write_texts(append, index: int, texts, at: int) -> int:
    """Append a batch of normalized texts (a pyarrow large_string array) to shard `index`'s
    text spill; return the byte offset after them."""
    texts = texts.cast(pa.large_string())
    offsets = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset : texts.offset + len(texts) + 1]
    data = texts.buffers()[2]
    body = (
        np.frombuffer(data, np.uint8)[offsets[0] : offsets[-1]] if data is not None else np.zeros(0, np.uint8)
    )
    append(f"text-{index:05d}", body)
    append(f"tend-{index:05d}", (offsets[1:] - offsets[0] + at).astype(np.int64))
    return at + len(body)


def verify(pairs: np.ndarray, texts: Texts, threshold: float) -> np.ndarray:
    """(i, j, round(Jaccard * SCALE)) for the pairs whose exact Jaccard reaches `threshold`,
    comparing a bounded batch of texts at a time."""
    if not len(pairs):
        return np.zeros((0, 3), np.int64)
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]  # a record's pairs together
    cost = np.cumsum(texts.lengths(pairs[:, 0]) + texts.lengths(pairs[:, 1]))
    batch = np.r_[0, np.flatnonzero(np.diff(cost // _BATCH_CHARS)) + 1, len(pairs)]
    out = []
    for lo, hi in zip(batch[:-1].tolist(), batch[1:].tolist(), strict=True):
        p = pairs[lo:hi]
        uniq, local = _unique_inverse(p.ravel())
        local = local.reshape(p.shape)
        sim = jaccard(texts.get(uniq), local[:, 0], local[:, 1])
        ok = sim >= threshold
        out.append(np.column_stack([p[ok], np.rint(sim[ok] * SCALE).astype(np.int64)]))
    return np.concatenate(out)


def jaccard(texts: list[str], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of the shingle sets of texts[a[k]] and texts[b[k]]."""
    keys, start, bits = shingle_sets(texts)
    size = np.diff(start)
    # each shingle of the smaller set is looked up in the larger one
    small, large = np.where(size[a] <= size[b], a, b), np.where(size[a] <= size[b], b, a)
    n = size[small]
    pair = np.repeat(np.arange(len(a)), n)
    at = np.repeat(start[small], n) + np.arange(len(pair)) - np.repeat(np.cumsum(n) - n, n)
    mask = np.uint64((1 << bits) - 1)
    query = (large[pair].astype(np.uint64) << np.uint64(bits)) | (keys[at] & mask)
    found = keys[np.minimum(np.searchsorted(keys, query), len(keys) - 1)] == query
    inter = np.bincount(pair[found], minlength=len(a))
    return inter / (size[a] + size[b] - inter)


def shingle_sets(texts: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
    """Each text's distinct shingles, as sorted keys (text << bits | shingle id; ids are
    equal exactly when the shingles are, within this call), the start of each text's run
    (len(texts) + 1 entries), and the ids' width in bits. A text shorter than a shingle is
    one shingle, itself."""
    n = len(texts)
    # padded with NUL, which normalized texts never hold, so a short text is one shingle
    texts = [t if len(t) >= SHINGLE else t + "\x00" * (SHINGLE - len(t)) for t in texts]
    lengths = np.fromiter(map(len, texts), np.int64, n)
    cp = np.frombuffer("".join(texts).encode("utf-32-le"), np.uint32)
    alphabet, sym = _unique_inverse(cp)  # the d characters present, as 0..d-1
    sym = sym.astype(np.uint64)
    count = lengths - SHINGLE + 1
    owner = np.repeat(np.arange(n), count)
    pos = (
        np.arange(len(owner))
        - np.repeat(np.cumsum(count) - count, count)
        + np.repeat(np.cumsum(lengths) - lengths, count)
    )
    bits = max(1, (len(alphabet) - 1).bit_length())
    if SHINGLE * bits <= 64:  # a shingle is one integer: its symbols side by side
        ids = np.zeros(len(owner), np.uint64)
        for k in range(SHINGLE):
            ids = (ids << np.uint64(bits)) | sym[pos + k]
        bits *= SHINGLE
    else:  # too many distinct characters for 64 bits: rank the shingles by two keys
        hi = (sym[pos] << np.uint64(42)) | (sym[pos + 1] << np.uint64(21)) | sym[pos + 2]
        lo = (sym[pos + 3] << np.uint64(21)) | sym[pos + 4]
        order = np.lexsort((lo, hi))
        new = np.r_[True, (hi[order][1:] != hi[order][:-1]) | (lo[order][1:] != lo[order][:-1])]
        ids = np.empty(len(owner), np.uint64)
        ids[order] = np.cumsum(new) - 1
        bits = max(1, int(ids.max(initial=0)).bit_length())
    if bits + n.bit_length() > 64:
        ids, bits = _dense(ids)
    key = np.sort((owner.astype(np.uint64) << np.uint64(bits)) | ids)
    key = key[np.r_[True, key[1:] != key[:-1]]]
    start = np.r_[0, np.cumsum(np.bincount((key >> np.uint64(bits)).astype(np.int64), minlength=n))]
    return key, start, bits


def _dense(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """The same ids renumbered 0..u-1 (equal stays equal), and their width in bits."""
    uniq = sorted_unique(ids)
    return np.searchsorted(uniq, ids).astype(np.uint64), max(1, (len(uniq) - 1).bit_length())


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique(x) by one sort: numpy 2's hash-based unique is many times slower here."""
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(x, return_inverse=True), by one sort and a binary search."""
    uniq = sorted_unique(x)
    return uniq, np.searchsorted(uniq, x)

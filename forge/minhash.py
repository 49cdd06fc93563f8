"""MinHash signatures and LSH band keys: the estimate that proposes near-duplicate pairs
(forge.dedup confirms each by exact Jaccard; forge.dedup_exact says how).

  shingles     character SHINGLE-grams (forge.dedup_exact) of a text, hashed with a
               polynomial over its codepoints and mixed (splitmix64's finalizer)
  signature    K = 64 bins; each shingle hash goes to bin (h mod 64) and the bin keeps its
               minimum (one-permutation hashing); empty bins borrow from the next non-empty
               bin to the right (densification), so short texts still get a full signature
  LSH          BANDS = 16 bands of ROWS = 4 bins; records sharing a band's key are candidates

Kept apart from forge.dedup so that the arithmetic can be read, and tested, without the
partitioned pipeline around it; the eval contamination check (forge eval) uses it too.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import xxhash

from forge.dedup_exact import SHINGLE

K = 64
BANDS = 16
ROWS = K // BANDS
THRESHOLD = 0.7  # Jaccard similarity at which two texts are near duplicates (forge dedup's default)
_EMPTY = np.uint32(0xFFFFFFFF)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on each uint64: every input bit moves every output bit, so any
    slice of the result (a bin, a band key, a partition) is as good as a fresh hash."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


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
        h = mix64(h[valid])
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
    salt = (mix64(dist + np.uint64(0x9E37)) >> np.uint64(32)).astype(np.uint32)
    return np.where(empty, borrowed ^ salt, sig)


def band_keys(sig: np.ndarray) -> np.ndarray:
    """(n, BANDS) uint64 bucket keys."""
    s = sig.astype(np.uint64).reshape(len(sig), BANDS, ROWS)
    key = np.zeros((len(sig), BANDS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(ROWS):
            key = mix64(key ^ s[:, :, r] ^ np.uint64(r + 1))
        key = mix64(key ^ np.arange(BANDS, dtype=np.uint64))
    return key


BAND_ROW = np.dtype([("key", "<u8"), ("band", "<u2"), ("idx", "<i8"), ("exact", "<u8")])


def band_rows(sig: np.ndarray, idx: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """One BAND_ROW per (record, band): the unit that dedup partitions by key. The record's
    exact key rides along, so exact duplicates need no signature read to be verified."""
    keys = band_keys(sig)
    rows = np.empty(keys.size, BAND_ROW)
    rows["key"] = keys.reshape(-1)
    rows["band"] = np.tile(np.arange(BANDS, dtype=np.uint16), len(sig))
    rows["idx"] = np.repeat(idx, BANDS)
    rows["exact"] = np.repeat(exact, BANDS)
    return rows


def unique_rows(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of an (n, 2 or 3) array of record index pairs (plus a score that the
    pair decides), sorted by (i, j). One uint64 key per pair: far faster than unique(axis=0)."""
    if len(pairs) < 2:
        return pairs
    if pairs[:, :2].max() >= 1 << 32:  # beyond 4G records: the general (slow) way
        return np.unique(pairs, axis=0)
    key = (pairs[:, 0].astype(np.uint64) << np.uint64(32)) | pairs[:, 1].astype(np.uint64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    return pairs[order[np.r_[True, key[1:] != key[:-1]]]]


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

"""Mixture sampling semantics — the one place they are defined.

Given leaf components i = 1..K with n_i records and target counts c_i (how many draws the
mixture takes from each, see forge.mixture for how strategies set c_i):

1. Order of components (low-discrepancy, not i.i.d.). Draw j of component i gets the key
   (j + u_i) / c_i, where u_i in [0, 1) comes from the seed. The stream is all draws
   sorted by key (ties: lower component first). So every component is spread evenly
   over the stream, and in any prefix of length L, component i holds within +-1 of
   L * c_i / N draws (N = sum c_i): exact in expectation, bounded in deviation.

2. Records within a component: without replacement. Draw j is record
   perm_{i,e}(j mod n_i) with epoch e = j div n_i, where perm_{i,e} is a seeded
   pseudo-random permutation of [0, n_i). A record repeats only after all n_i have been
   used, and then in a fresh order.
   perm_{i,e} is two-level, so that reading it is sequential and memory is bounded by a
   window, not by n_i: the records are cut into blocks of BLOCK consecutive indices (about
   one Parquet row group); the blocks are shuffled; the shuffled blocks are taken
   WINDOW_BLOCKS at a time, and the records of those blocks are shuffled together (a
   uniform permutation of the window). A component of at most BLOCK * WINDOW_BLOCKS records
   is one window: a uniform permutation of all of it. What this changes for a larger
   component: its draws are no longer a uniform shuffle of the whole component. Within an
   epoch, the draws at positions [k W, (k+1) W) of the component (W = the window's records)
   all come from the same WINDOW_BLOCKS blocks, so records that sit close together in the
   source (one block) are drawn within W draws of each other. Which blocks share a window,
   and the window order, change every epoch and seed.
   Both levels use permute() (keyed multiply/xor-shift rounds on a power-of-two domain,
   with cycle walking).

3. Ranks and workers: global position k belongs to reader (k mod R) where R =
   world_size * num_workers and reader = rank * num_workers + worker. Readers get
   disjoint slices of the same global stream, whose union is the whole stream.

4. The stream is a pure function of (c, n, seed). It is produced in windows of the key
   space, each a few thousand draws, with vectorized numpy: memory is O(K + window)
   whatever n_i, and seeking to any position needs only integer arithmetic per window.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finalizer on a Python int (keys are derived per window and component,
    thousands of times per stream: plain ints cost far less than numpy scalars here)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _key(*parts: int) -> np.uint64:
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _mix64(h ^ (p & _MASK64))
    return np.uint64(h)


@lru_cache(maxsize=4096)
def _rounds(key: int, bits: int) -> tuple[tuple[np.uint64, np.uint64], ...]:
    """permute()'s round keys and odd multipliers on a 2^bits domain (cached: one key is
    used for every window of a component's epoch)."""
    mask = (1 << bits) - 1
    return tuple(
        (np.uint64(int(_key(key, r)) & mask), np.uint64((int(_key(key, r, 1)) | 1) & mask)) for r in range(3)
    )


def permute(idx: np.ndarray, n: int, key: int) -> np.ndarray:
    """A seeded bijection of [0, n), applied to idx (vectorized, with cycle walking).

    On the smallest power-of-two domain 2^b >= n, each round is bijective: xor with a
    round key, multiply by an odd constant mod 2^b, xor-shift right. Values that land
    outside [0, n) are mapped again until they fall inside (cycle walking), which keeps
    it a bijection of [0, n). Since 2^b < 2n, more than half land inside each time.
    """
    if n <= 1:
        return np.zeros_like(np.asarray(idx, dtype=np.int64))
    bits = int(n - 1).bit_length()
    mask = np.uint64((1 << bits) - 1)
    shift = np.uint64(max(1, bits // 2))
    rounds = _rounds(int(key), bits)
    bound = np.uint64(n)

    def walk(v: np.ndarray) -> np.ndarray:  # one pass of the rounds, in place
        for rk, mult in rounds:
            np.bitwise_xor(v, rk, out=v)
            np.multiply(v, mult, out=v)
            np.bitwise_and(v, mask, out=v)
            np.bitwise_xor(v, v >> shift, out=v)
        return v

    with np.errstate(over="ignore"):
        # the first pass covers every value; only those outside [0, n) walk again
        x = walk(np.array(idx, dtype=np.uint64))
        todo = np.flatnonzero(x >= bound)
        while len(todo):
            v = walk(x[todo])
            x[todo] = v
            todo = todo[v >= bound]
    return x.view(np.int64)  # values < n < 2^63: the same numbers, no copy


def largest_remainder(total: int, rates: np.ndarray) -> np.ndarray:
    """Integer counts summing to total, each within 1 of total * rate."""
    rates = np.asarray(rates, dtype=np.float64)
    rates = rates / rates.sum()
    exact = total * rates
    counts = np.floor(exact).astype(np.int64)
    short = total - counts.sum()
    if short > 0:
        order = np.lexsort((np.arange(len(rates)), -(exact - counts)))
        counts[order[:short]] += 1
    return counts


BLOCK = 8192  # records per block: a row group of a built source
WINDOW_BLOCKS = 8  # blocks shuffled together; the reader holds about this many row groups per component


@dataclass
class Block:
    positions: np.ndarray  # global stream positions
    components: np.ndarray  # leaf component index per position
    records: np.ndarray  # record index within the component


class Schedule:
    """The global stream for counts c_i over components of sizes n_i."""

    def __init__(
        self,
        counts: list[int],
        sizes: list[int],
        seed: int,
        window: int = 65536,
        block: int = BLOCK,
        window_blocks: int = WINDOW_BLOCKS,
    ):
        self.block = block
        self.window_blocks = window_blocks
        self.counts = np.asarray(counts, dtype=np.int64)
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if (self.counts > 0).any() and (self.sizes[self.counts > 0] <= 0).any():
            raise ValueError("a component with draws has no records")
        self.seed = int(seed)
        self.total = int(self.counts.sum())
        self.windows = max(1, -(-self.total // window))
        k = len(self.counts)
        self.offsets = np.array([(int(_key(self.seed, 1, i)) >> 11) / float(1 << 53) for i in range(k)])
        self._window_sizes: np.ndarray | None = None
        self._window_starts: np.ndarray | None = None
        self._level1_cache: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}

    def _bounds(self, w: int) -> np.ndarray:
        """First draw index of window w, per component (same formula for every boundary)."""
        if w >= self.windows:
            return self.counts.copy()
        lo = np.ceil(w * self.counts / self.windows - self.offsets).astype(np.int64)
        return np.clip(lo, 0, self.counts)

    def window_sizes(self) -> np.ndarray:
        if self._window_sizes is None:
            sizes = np.empty(self.windows, dtype=np.int64)
            prev = self._bounds(0)
            for w in range(self.windows):
                nxt = self._bounds(w + 1)
                sizes[w] = int((nxt - prev).sum())
                prev = nxt
            self._window_sizes = sizes
        return self._window_sizes

    def window(self, w: int) -> Block:
        lo, hi = self._bounds(w), self._bounds(w + 1)
        k = len(self.counts)
        comp = np.repeat(np.arange(k), hi - lo)
        keys = np.empty(len(comp), dtype=np.float64)
        records = np.empty(len(comp), dtype=np.int64)
        at = 0
        for i in range(k):  # per component, on contiguous slices: no masks, no unique()
            m = int(hi[i] - lo[i])
            if m:
                # key of draw j: (j + u_i) / c_i, the same float operations as on the whole window
                keys[at : at + m] = (np.arange(lo[i], hi[i]) + self.offsets[i]) / max(int(self.counts[i]), 1)
                records[at : at + m] = self.records(i, int(lo[i]), int(hi[i]))
                at += m
        # stable sort on the key keeps component order among equal keys (ties -> lower component)
        order = np.argsort(keys, kind="stable")
        start = int(self._starts()[w])
        return Block(np.arange(start, start + len(comp)), comp[order], records[order])

    def _starts(self) -> np.ndarray:
        """The global position of each window's first draw."""
        if self._window_starts is None:
            self._window_starts = np.concatenate([[0], np.cumsum(self.window_sizes())])
        return self._window_starts

    def records(self, i: int, lo: int, hi: int) -> np.ndarray:
        """Record indices for draws lo..hi-1 of component i (epoch by epoch)."""
        n = int(self.sizes[i])
        out = np.empty(hi - lo, dtype=np.int64)
        d = lo
        while d < hi:
            epoch, pos = divmod(d, n)
            end = min(hi, (epoch + 1) * n)
            out[d - lo : end - lo] = self._permutation(
                i, epoch, np.arange(pos, pos + end - d), ascending=True
            )
            d = end
        return out

    def permutation(self, i: int, epoch: int, pos: np.ndarray) -> np.ndarray:
        """perm_{i,epoch}(pos): the record at positions `pos` of component i's epoch order."""
        pos = np.asarray(pos, dtype=np.int64)
        return self._permutation(i, epoch, pos, len(pos) < 2 or bool((np.diff(pos) > 0).all()))

    def _permutation(self, i: int, epoch: int, pos: np.ndarray, ascending: bool) -> np.ndarray:
        n = int(self.sizes[i])
        key = int(_key(self.seed, 2, i, epoch))
        span = self.block * self.window_blocks
        if n <= span:  # one window: a uniform permutation of the whole component
            return permute(pos, n, key)
        order, win_ends = self._level1(i, epoch, n, key)
        out = np.empty(len(pos), dtype=np.int64)
        if ascending and len(pos):
            # ascending positions (every caller in forge): each window is one slice of pos,
            # found with two binary searches instead of a pass over every position
            first = int(np.searchsorted(win_ends, pos[0], side="right"))
            last = int(np.searchsorted(win_ends, pos[-1], side="right"))
            cuts = np.searchsorted(pos, win_ends[first:last], side="left")
            bounds = [0, *cuts.tolist(), len(pos)]
            parts = [(w, slice(bounds[w - first], bounds[w - first + 1])) for w in range(first, last + 1)]
        else:
            win_of = np.searchsorted(win_ends, pos, side="right")
            parts = [(w, np.flatnonzero(win_of == w)) for w in np.unique(win_of).tolist()]
        for w, sel in parts:
            start = int(win_ends[w - 1]) if w else 0
            size = int(win_ends[w]) - start
            # level 2: a uniform permutation inside the window, over its blocks in source
            # order, so one window reads its row groups front to back
            blocks = np.sort(order[w * self.window_blocks : (w + 1) * self.window_blocks])
            t = permute(pos[sel] - start, size, int(_key(key, 2, w)))
            # every block is full but the component's last one, which sorts last in its
            # window: so t // block is t's block, and t % block its offset in it
            out[sel] = blocks[t // self.block] * self.block + t % self.block
        return out

    def _level1(self, i: int, epoch: int, n: int, key: int) -> tuple[np.ndarray, np.ndarray]:
        """The block order of component i's epoch and the end of each window in it
        (kept for the component's latest epoch: every window of the stream asks again)."""
        cached = self._level1_cache.get(i)
        if cached is not None and cached[0] == epoch:
            return cached[1], cached[2]
        # level 1: the order of the blocks; the last block may be short
        n_blocks = -(-n // self.block)
        order = permute(np.arange(n_blocks), n_blocks, int(_key(key, 1)))
        sizes = np.minimum(self.block, n - order * self.block)
        ends = np.cumsum(sizes)  # window k holds ordered blocks [k*WB, (k+1)*WB)
        win_ends = ends[
            np.minimum(np.arange(1, -(-n_blocks // self.window_blocks) + 1) * self.window_blocks, n_blocks)
            - 1
        ]
        self._level1_cache[i] = (epoch, order, win_ends)
        return order, win_ends

    def iter_blocks(self, start: int = 0, rank: int = 0, world: int = 1):
        """Blocks of the stream from global position `start`, keeping positions k with k % world == rank."""
        sizes = self.window_sizes()
        ends = np.cumsum(sizes)
        w = int(np.searchsorted(ends, start, side="right"))
        for wi in range(w, self.windows):
            block = self.window(wi)
            if world == 1 and (not len(block.positions) or block.positions[0] >= start):
                if len(block.positions):  # every position kept: no masks to build
                    yield block
                continue
            keep = (block.positions >= start) & (block.positions % world == rank)
            if keep.any():
                yield Block(block.positions[keep], block.components[keep], block.records[keep])

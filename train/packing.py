"""Packing: many short tokenized examples into few cutoff_len-long rows, exactly.

Best-fit-decreasing over a rolling buffer: examples are collected until the buffer holds
`buffer_size` of them; they are sorted by length (longest first, ties in stream order) and
each goes into the open bin with the least room left that still fits it, or a new bin. Rows
that are at least `min_fill` full are emitted; the least-filled others (at most
buffer_size/100 of them, each for one buffer only) stay open, so the next buffer's examples
can fill their gaps. At the
end of the stream everything is emitted. Memory is O(buffer_size); the output is a pure
function of the input order.

Composition: best-fit-decreasing creates rows longest-first, so emitting them in that order
would train a run's first steps on the mixture's longest component. Rows are emitted in
stream order instead (by the earliest stream position they hold), so every prefix of the
trained rows follows the mixture's interleaving: over any window of steps each component's
share of trained tokens tracks its share of the sampled stream (tests/test_composition.py
measures it within 3 points over 50 steps).

A packed row keeps its sequences apart: `position_ids` restart at 0 for every sequence and
`seq_lens` records the boundaries. On CPU (and SDPA) the collator turns them into a
block-diagonal causal mask; with flash-attention the position_ids alone mark the boundaries.
The first token of every sequence is a BOS whose label is -100, so no sequence is trained to
predict the next one's first token.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class PackStats:
    rows: int = 0
    tokens: int = 0
    slots: int = 0

    @property
    def efficiency(self) -> float:
        return self.tokens / self.slots if self.slots else 0.0


def pack(
    examples: Iterator[dict],
    cutoff_len: int,
    buffer_size: int = 1000,
    min_fill: float = 0.99,
    stats: PackStats | None = None,
) -> Iterator[dict]:
    """Yield packed rows {input_ids, labels, position_ids, seq_lens, ids}."""
    stats = stats if stats is not None else PackStats()
    buffer: list[dict] = []
    open_bins: list[list] = []  # [room, [examples]]: rows not yet full enough, kept to fill their gaps
    for seq, ex in enumerate(examples):
        ex["seq"] = seq  # arrival order: rows are emitted by the earliest one they hold
        buffer.append(ex)
        if len(buffer) >= buffer_size:
            rows, open_bins = _fill(
                buffer, open_bins, cutoff_len, min_fill, max_open=max(1, buffer_size // 100)
            )
            buffer = []
            yield from _emit(rows, cutoff_len, stats)
    rows, _ = _fill(buffer, open_bins, cutoff_len, 0.0, max_open=0)
    yield from _emit(rows, cutoff_len, stats)


def _fill(buffer: list[dict], open_bins: list[list], cutoff: int, min_fill: float, max_open: int):
    """Best-fit-decreasing of `buffer` into the open bins (then new ones). Returns the rows to
    emit and the bins kept open: the least-filled ones below min_fill, at most max_open."""
    bins = [[room, list(items)] for room, items in open_bins]
    lengths = [len(e["input_ids"]) for e in buffer]
    by_room = sorted((room, b) for b, (room, _) in enumerate(bins))  # best fit = smallest room >= n
    for i in sorted(range(len(buffer)), key=lambda k: (-lengths[k], k)):
        n = lengths[i]
        at = bisect.bisect_left(by_room, (n, -1))
        if at == len(by_room):
            bins.append([cutoff - n, [buffer[i]]])
            bisect.insort(by_room, (cutoff - n, len(bins) - 1))
        else:
            room, b = by_room.pop(at)
            bins[b][0] = room - n
            bins[b][1].append(buffer[i])
            bisect.insort(by_room, (room - n, b))
    bins = _repair(bins, cutoff, min_fill)
    # a bin is held open for one window at most: holding its records longer would delay one
    # component's (short) records behind the others and bend the mixture's composition
    under = sorted(
        (
            k
            for k, (room, items) in enumerate(bins)
            if cutoff - room < min_fill * cutoff and not any(e.get("held") for e in items)
        ),
        key=lambda k: (-bins[k][0], k),
    )[:max_open]
    keep = set(under)
    for k in keep:
        for e in bins[k][1]:
            e["held"] = True
    return [items for k, (_, items) in enumerate(bins) if k not in keep], [bins[k] for k in sorted(keep)]


def _repair(bins: list[list], cutoff: int, min_fill: float) -> list[list]:
    """BFD leaves gaps that no remaining example fits. Re-pack the examples of the bins below
    min_fill exactly: each new row takes the longest example left, then the subset of the
    others that fills the rest of the row best (bounded subset-sum over example lengths,
    with Python ints as bitsets)."""
    poor = [k for k, (room, _) in enumerate(bins) if cutoff - room < min_fill * cutoff]
    if len(poor) < 2:
        return bins
    pool = sorted((e for k in poor for e in bins[k][1]), key=lambda e: -len(e["input_ids"]))
    good = [b for k, b in enumerate(bins) if k not in set(poor)]
    by_len: dict[int, list[dict]] = {}
    for e in pool:
        by_len.setdefault(len(e["input_ids"]), []).append(e)
    while by_len:
        first_len = max(by_len)
        row = [by_len[first_len].pop(0)]
        if not by_len[first_len]:
            del by_len[first_len]
        cap = cutoff - first_len
        kinds = sorted(by_len)
        mask = (1 << (cap + 1)) - 1
        reach = [1]  # reach[i]: sums reachable with the first i lengths
        for n in kinds:
            r = reach[-1]
            for _ in range(min(len(by_len[n]), cap // n)):
                r |= (r << n) & mask
            reach.append(r)
        target = reach[-1].bit_length() - 1
        for i in range(len(kinds) - 1, -1, -1):  # walk back: how many of each length
            n = kinds[i]
            use = 0
            while not (reach[i] >> (target - use * n)) & 1:
                use += 1
            for _ in range(use):
                row.append(by_len[n].pop(0))
            if not by_len[n]:
                del by_len[n]
            target -= use * n
        good.append([cutoff - sum(len(e["input_ids"]) for e in row), row])
    return good


def _emit(rows: list[list[dict]], cutoff: int, stats: PackStats) -> Iterator[dict]:
    # in stream order: by the mean arrival position of the records a row holds (ties: first
    # record), so any run of consecutive rows covers about one stretch of the stream
    for row in sorted(rows, key=lambda r: (sum(e["seq"] for e in r) / len(r), r[0]["seq"])):
        lens = [len(e["input_ids"]) for e in row]
        count = np.arange(max(lens))
        ids = np.concatenate([e["input_ids"] for e in row])
        stats.rows += 1
        stats.tokens += len(ids)
        stats.slots += cutoff
        yield {
            "input_ids": ids,
            "labels": np.concatenate([e["labels"] for e in row]),
            "position_ids": np.concatenate([count[:n] for n in lens]),  # restart at 0 for every sequence
            "seq_lens": lens,
            "ids": [e["id"] for e in row],
            "components": [e.get("component") for e in row],
        }


def mask_style(attn_implementation: str | None) -> str | None:
    """How a model's attention takes the block-diagonal mask: sdpa takes a boolean one, eager
    (and the other kernels) add it to the scores, so it must be 0 / -inf; flash-attention takes
    none and reads the sequence boundaries from position_ids."""
    impl = attn_implementation or "sdpa"
    if impl.startswith("flash"):
        return None
    return "bool" if impl == "sdpa" else "additive"


def collate_packed(
    rows: list[dict], pad_id: int, width: int | None = None, mask: str | None = "bool"
) -> dict:
    """Pad packed rows to `width` (default: the longest row) and build the attention input:
    a 4-D block-diagonal causal mask, boolean (True = may attend) or additive (0 / dtype min,
    float32), or with mask=None position_ids only (see mask_style)."""
    import torch

    from forge.train.data import IGNORE

    width = width or max(len(r["input_ids"]) for r in rows)
    b = len(rows)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    labels = np.full((b, width), IGNORE, dtype=np.int64)
    pos = np.zeros((b, width), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], pos[i, :n] = r["input_ids"], r["labels"], r["position_ids"]
    batch = {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(pos),
    }
    if mask is not None:
        seg = np.full((b, width), -1, dtype=np.int64)  # sequence number of each slot; -1 = padding
        for i, r in enumerate(rows):
            at = 0
            for k, n in enumerate(r["seq_lens"]):
                seg[i, at : at + n] = k
                at += n
        seg_t = torch.from_numpy(seg)
        same = (seg_t[:, :, None] == seg_t[:, None, :]) & (seg_t[:, :, None] >= 0)
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        allowed = same & causal
        allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves (no NaN)
        if mask == "additive":
            blocked = torch.zeros(allowed.shape, dtype=torch.float32)
            blocked.masked_fill_(~allowed, torch.finfo(torch.float32).min)
            batch["attention_mask"] = blocked[:, None, :, :]
        else:
            batch["attention_mask"] = allowed[:, None, :, :]
    return batch

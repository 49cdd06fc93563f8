"""Streaming tokenizer: mixture stream -> prompts -> batched fast tokenization -> labels.

Nothing is pre-tokenized to disk and nothing is re-run on restart: the mixture stream
(forge.mixture.MixtureStream) is read in Arrow blocks, every block is tokenized with one
batched call, and examples are yielded as they are ready. The stream is rank- and
worker-aware: each (rank, worker) reads its own slice of the same global stream.

Over-long records (cutoff_len), policy `overlong`:
  truncate (default)  cut the tail of the sequence (the end of the last response) at
                      cutoff_len; a record whose prompt alone fills cutoff_len has nothing
                      left to learn and is dropped and counted
  drop                drop every record longer than cutoff_len, and count it
Both apply to multi-turn records: the whole conversation is one sequence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from train.prompts import alpaca_segments, chat_segments

IGNORE = -100
TOKENIZE_BATCH = 1024


@dataclass
class TokenizeConfig:
    cutoff_len: int = 512
    train_on_inputs: bool = False
    mask_history: bool = False
    overlong: str = "truncate"  # truncate | drop
    add_eos: bool = True
    template: str = "alpaca"  # alpaca | chat (the tokenizer's chat template; it ends turns itself)


@dataclass
class StreamStats:
    records: int = 0
    dropped_overlong: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    ids: list[str] = field(default_factory=list)


def tokenize_records(records: list[dict], tokenizer, cfg: TokenizeConfig, stats: StreamStats) -> list[dict]:
    """Tokenize a batch of unified records with one batched tokenizer call."""
    if cfg.template == "chat":
        all_segments = [chat_segments(r, tokenizer, mask_history=cfg.mask_history) for r in records]
    else:
        all_segments = [alpaca_segments(r, mask_history=cfg.mask_history) for r in records]
    add_eos = cfg.add_eos and cfg.template != "chat"
    flat = [text for segs in all_segments for text, _ in segs]
    encoded = encode(tokenizer, flat)
    out, k = [], 0
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    for record, segs in zip(records, all_segments, strict=True):
        ids, labels = list(bos), [IGNORE] * len(bos)
        for _text, is_response in segs:
            piece = encoded[k]
            k += 1
            ids.extend(piece)
            trained = is_response or cfg.train_on_inputs
            labels.extend(piece if trained else [IGNORE] * len(piece))
            if is_response and add_eos and tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
                labels.append(tokenizer.eos_token_id if trained else IGNORE)
        stats.records += 1
        if len(ids) > cfg.cutoff_len:
            if cfg.overlong == "drop":
                stats.dropped_overlong += 1
                continue
            ids, labels = ids[: cfg.cutoff_len], labels[: cfg.cutoff_len]
            stats.truncated += 1
        n_trained = sum(1 for x in labels if x != IGNORE)
        if n_trained == 0:
            stats.dropped_overlong += 1
            continue
        stats.tokens += len(ids)
        stats.trained_tokens += n_trained
        out.append({"input_ids": ids, "labels": labels, "id": record["id"]})
    return out


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids for many texts in one call. Fast tokenizers go straight to the Rust
    encode_batch (parallel, and without building attention masks we do not use)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def stream_examples(
    mixture_stream, tokenizer, cfg: TokenizeConfig, stats: StreamStats | None = None
) -> Iterator[dict]:
    stats = stats if stats is not None else StreamStats()
    columns = ["id", "instruction", "input", "output", "history"]
    for table in mixture_stream:
        # tokenize in slices: a stream block can hold 65k records, and their token lists would not
        # need to be in memory at once
        for start in range(0, table.num_rows, TOKENIZE_BATCH):
            records = table.slice(start, TOKENIZE_BATCH).select(columns).to_pylist()
            yield from tokenize_records(records, tokenizer, cfg, stats)


def pad_batch(examples: list[dict], pad_id: int) -> dict:
    """Dynamic padding: to the longest sequence in this batch, not to cutoff_len."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
    mask = np.zeros((len(examples), width), dtype=np.int64)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = e["input_ids"]
        labels[i, :n] = e["labels"]
        mask[i, :n] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
    }

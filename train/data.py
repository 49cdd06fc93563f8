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

Records whose output is empty or whitespace (prompt-only corpora) are dropped and counted:
training on them teaches the model to answer with nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from forge.train.prompts import alpaca_segments, chat_segments

IGNORE = -100
TOKENIZE_BATCH = 1024
PREFETCH = 2  # slices encoded ahead of the one being assembled


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
    tokens_cut: int = 0  # tokens removed from the truncated records
    empty_outputs: int = 0  # records dropped because their output is empty
    tokens: int = 0
    trained_tokens: int = 0
    component_tokens: dict = field(default_factory=dict)  # mixture component -> tokens kept
    not_pairs: int = 0  # preference runs: records of pair sources that are not pairs, skipped


def tokenize_records(records: list[dict], tokenizer, cfg: TokenizeConfig, stats: StreamStats) -> list[dict]:
    """Tokenize a batch of unified records with one batched tokenizer call."""
    segments = render(records, tokenizer, cfg)
    return assemble(records, segments, encode(tokenizer, _texts(segments)), tokenizer, cfg, stats)


def render(records: list[dict], tokenizer, cfg: TokenizeConfig) -> list[list[tuple[str, bool]]]:
    """Each record's prompt as [(text, is_response)] segments."""
    if cfg.template == "chat":
        return [chat_segments(r, tokenizer, mask_history=cfg.mask_history) for r in records]
    return [alpaca_segments(r, mask_history=cfg.mask_history) for r in records]


def _texts(segments: list[list[tuple[str, bool]]]) -> list[str]:
    return [text for segs in segments for text, _ in segs]


def assemble(
    records: list[dict],
    all_segments: list[list[tuple[str, bool]]],
    encoded: list[list[int]],
    tokenizer,
    cfg: TokenizeConfig,
    stats: StreamStats,
) -> list[dict]:
    """Token ids of every segment -> one example per record: BOS, labels masked outside the
    responses (unless train_on_inputs), EOS after each response, the cutoff_len policy.

    Examples hold int64 numpy arrays. The whole batch is laid out with array arithmetic:
    per-record Python list work cost as much CPU as the tokenizer itself."""
    add_eos = cfg.add_eos and cfg.template != "chat" and tokenizer.eos_token_id is not None
    n_bos = bos_count(tokenizer, cfg.template, all_segments[0][0][0] if all_segments else "")
    n_records = len(records)
    # per piece (segment): its record, whether it is a response, its length in and out
    per_record = np.fromiter(map(len, all_segments), np.int64, n_records)
    record_of = np.repeat(np.arange(n_records), per_record)
    response = np.fromiter((r for segs in all_segments for _, r in segs), bool, len(record_of))
    length = np.fromiter(map(len, encoded), np.int64, len(record_of))
    out_length = length + (response if add_eos else 0)
    trained = response | cfg.train_on_inputs
    # where every piece starts in the batch's output array: after the pieces before it, and
    # after one BOS per record up to and including its own
    start = np.cumsum(out_length) - out_length + n_bos * (record_of + 1)
    total = int(out_length.sum()) + n_bos * n_records
    ids = np.empty(total, np.int64)
    is_trained = np.zeros(total, bool)
    tokens = np.fromiter(chain.from_iterable(encoded), np.int64, int(length.sum()))
    piece_of_token = np.repeat(np.arange(len(length)), length)
    at = start[piece_of_token] + np.arange(len(tokens)) - np.repeat(np.cumsum(length) - length, length)
    ids[at] = tokens
    is_trained[at] = trained[piece_of_token]
    if add_eos:
        eos_at = (start + length)[response]
        ids[eos_at] = tokenizer.eos_token_id
        is_trained[eos_at] = trained[response]
    record_length = np.bincount(record_of, weights=out_length, minlength=n_records).astype(np.int64) + n_bos
    record_start = np.cumsum(record_length) - record_length
    if n_bos:
        ids[record_start] = tokenizer.bos_token_id
    # a sequence's first token is never a target: in a packed row that would train the end of
    # one record to predict the start of the next (it matters without BOS and train_on_inputs)
    is_trained[record_start] = False
    labels = np.where(is_trained, ids, IGNORE)

    over = record_length > cfg.cutoff_len
    keep_length = np.minimum(record_length, cfg.cutoff_len)
    trained_before = np.concatenate([[0], np.cumsum(is_trained)])
    n_trained = trained_before[record_start + keep_length] - trained_before[record_start]
    keep = n_trained > 0  # a record whose prompt alone fills cutoff_len has nothing to learn
    if cfg.overlong == "drop":
        keep &= ~over
    empty = np.fromiter((not (r.get("output") or "").strip() for r in records), bool, n_records)
    stats.records += n_records
    stats.empty_outputs += int(empty.sum())
    stats.truncated += int((over & keep & ~empty).sum())
    stats.tokens_cut += int((record_length - keep_length)[over & keep & ~empty].sum())
    stats.dropped_overlong += int((~keep & ~empty).sum())
    keep &= ~empty
    stats.tokens += int(keep_length[keep].sum())
    stats.trained_tokens += int(n_trained[keep].sum())
    components = [r.get("_component") for r in records]
    for k in np.flatnonzero(keep).tolist():
        stats.component_tokens[components[k]] = stats.component_tokens.get(components[k], 0) + int(
            keep_length[k]
        )
    return [
        # copies, not views: a view would pin the whole batch's arrays for as long as the
        # packer holds any one of its examples
        {
            "input_ids": ids[b : b + n].copy(),
            "labels": labels[b : b + n].copy(),
            "id": records[k]["id"],
            "component": components[k],
        }
        for k, b, n in zip(
            np.flatnonzero(keep).tolist(),
            record_start[keep].tolist(),
            keep_length[keep].tolist(),
            strict=True,
        )
    ]


def bos_count(tokenizer, template: str, first_text: str) -> int:
    """1 when a sequence gets a BOS token in front, else 0: not without a BOS token, and not
    when a chat template writes the BOS itself ({{ bos_token }}...), which must not get two."""
    bos_in_text = (
        template == "chat" and bool(tokenizer.bos_token) and first_text.startswith(tokenizer.bos_token)
    )
    return 1 if tokenizer.bos_token_id is not None and not bos_in_text else 0


def prompt_ids(record: dict, tokenizer, template: str) -> list[int]:
    """The token ids a trained model sees before its response to `record`: rendered and
    encoded exactly as in training (segment by segment, same BOS rule), minus the response.
    Inference builds every prompt with this, so it is byte- and token-identical to training."""
    record = {**record, "output": ""}
    cfg = TokenizeConfig(template=template)
    segments = render([record], tokenizer, cfg)[0][:-1]  # the last segment is the response
    ids = [tokenizer.bos_token_id] * bos_count(tokenizer, template, segments[0][0] if segments else "")
    for piece in encode(tokenizer, [text for text, _ in segments]):
        ids.extend(piece)
    return ids


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids for many texts in one call. Fast tokenizers go straight to the Rust
    encode_batch_fast: parallel, and it skips the character offsets and attention masks we
    do not use (1.6x less CPU than encode_batch, same ids; bench/pack_bench.py)."""
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        batch = getattr(backend, "encode_batch_fast", backend.encode_batch)  # _fast: tokenizers >= 0.21
        return [e.ids for e in batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def stream_examples(
    mixture_stream, tokenizer, cfg: TokenizeConfig, stats: StreamStats | None = None
) -> Iterator[dict]:
    """Examples in stream order. The stream is read and rendered here; the Rust tokenizer
    encodes the next slices on a helper thread meanwhile (it releases the GIL), so the
    Python assembly of one slice overlaps the encoding of the next."""
    stats = stats if stats is not None else StreamStats()
    columns = ["id", "instruction", "input", "output", "history"]
    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-encode") as pool:
        for table in mixture_stream:
            if "_component" in table.column_names and "_component" not in columns:
                columns.append("_component")
            # slices bound memory: a stream block can hold 65k records
            for start in range(0, table.num_rows, TOKENIZE_BATCH):
                records = table.slice(start, TOKENIZE_BATCH).select(columns).to_pylist()
                segments = render(records, tokenizer, cfg)
                pending.append((records, segments, pool.submit(encode, tokenizer, _texts(segments))))
                if len(pending) > PREFETCH:
                    records, segments, done = pending.popleft()
                    yield from assemble(records, segments, done.result(), tokenizer, cfg, stats)
        while pending:
            records, segments, done = pending.popleft()
            yield from assemble(records, segments, done.result(), tokenizer, cfg, stats)


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

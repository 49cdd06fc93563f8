"""What `forge eval` asks of a model: log-likelihoods of continuations, and greedy generations.

These are the two requests lm-evaluation-harness makes of a causal model (loglikelihood and
generate_until), computed the way its HF model computes them so that the two agree item by item
(tests/test_eval_protocol.py), and forge's own generation through the model's chat template.
A log-likelihood takes the tokens of context + continuation and splits them where the context's
own tokens end (trailing spaces of the context move into the continuation); a subject's shared
k-shot block runs once and its key/value cache is reused by every batch.

They are apart from train/evaluate.py, which builds the requests from a suite's items and scores
what comes back, because this is the part that runs the model: torch, the cache, batching and
padding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Progress = Callable[[int, int], None]  # (items done, items in all)


# ---- log-likelihoods (lm-eval's loglikelihood request) ------------------------------------------


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return ctx, whole[len(ctx) :]


def loglikelihoods(
    model,
    tokenizer,
    requests: list[tuple[str, str]],
    batch_size: int = 8,
    share_prefix: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Sum of log-probabilities of each continuation after its context.

    Requests with the same context and a one-token continuation share one row (one forward
    pass scores them all); the rest get a row each. Rows are left-padded with explicit
    position ids, so a token sees the same positions as unpadded, and only the last few
    positions' logits are computed (the vocabulary is the big axis). When all rows start with
    the same tokens (a k-shot block), those are run once and their key/value cache is reused
    by every batch. `on_progress(n)` is told after each batch how many requests are scored."""
    rows: dict[tuple, list[tuple[int, list[int]]]] = {}
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = _encode_pair(tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"the continuation {continuation!r} adds no token after its context")
        key = (tuple(ctx),) if len(cont) == 1 else (tuple(ctx), tuple(cont), i)
        rows.setdefault(key, []).append((i, cont))
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    work = []  # (input ids, [(request, continuation)])
    for key, wanted in rows.items():
        ids = list(key[0]) + (list(key[1][:-1]) if len(key) == 3 else [])
        work.append((ids[-limit:], wanted))  # left-truncate an over-long context, as lm-eval does
    work.sort(key=lambda w: -len(w[0]))
    shared = _shared_prefix([list(k[0])[-limit:] for k in rows]) if share_prefix and len(work) > 1 else []
    out = [0.0] * len(requests)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    prefix_cache = _prefix_cache(model, shared, device) if len(shared) >= 16 else None
    skip = len(shared) if prefix_cache is not None else 0
    scored = 0
    for start in range(0, len(work), batch_size):
        batch = work[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch) - skip
        keep = max(len(cont) for _, wanted in batch for _, cont in wanted)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), skip + width), dtype=torch.long)
        mask[:, :skip] = 1
        for r, (row, _) in enumerate(batch):
            tail = row[skip:]
            ids[r, width - len(tail) :] = torch.tensor(tail)
            mask[r, skip + width - len(tail) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
        extra = {}
        if prefix_cache is not None:
            extra[_cache_argument(model)] = _repeat_cache(prefix_cache, len(batch))
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
                **extra,
            ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, (_, wanted) in enumerate(batch):
            for i, cont in wanted:
                # the continuation's tokens are predicted by the last len(cont) positions
                steps = logprobs[r, keep - len(cont) :, :]
                out[i] = float(steps.gather(1, torch.tensor(cont).unsqueeze(1)).sum())
        scored += sum(len(wanted) for _, wanted in batch)
        if on_progress is not None:
            on_progress(scored)
    return out


def _shared_prefix(contexts: list[list[int]]) -> list[int]:
    """The tokens every context starts with, leaving each at least one token of its own (the
    position that predicts the continuation must be in the batch)."""
    first = contexts[0]
    n = min(len(c) for c in contexts) - 1
    for c in contexts[1:]:
        k = 0
        while k < n and c[k] == first[k]:
            k += 1
        n = k
    return first[: max(0, n)]


def _cache_argument(model) -> str:
    """What the model's forward calls its key/value cache: `cache` in newer transformers,
    `past_key_values` before (a PEFT wrapper is looked through)."""
    import inspect

    inner = model
    while hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _prefix_cache(model, prefix: list[int], device):
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    except (TypeError, ValueError, RuntimeError):
        return None  # a model without a reusable cache: every row runs in full
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def _repeat_cache(cache, n: int):
    """A copy of the prefix cache for a batch of n rows (the forward pass appends to it)."""
    import copy

    fresh = copy.deepcopy(cache)
    if hasattr(fresh, "batch_repeat_interleave"):
        fresh.batch_repeat_interleave(n)
    else:
        for layer in fresh.layers:
            layer.batch_repeat_interleave(n)
    return fresh


# ---- generation ---------------------------------------------------------------------------------


def _generate_all(loaded, prompts: list[str], max_new_tokens: int, batch_size: int, seed: int,
                  progress: Progress | None = None) -> list[str]:  # fmt: skip
    """forge's way: each prompt as the user turn of the model's own template."""
    from forge.train.infer import build_prompt, generate

    ids = [
        build_prompt(loaded, {"instruction": p, "input": "", "history": [], "output": ""}) for p in prompts
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    texts = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, g in zip(
            chunk,
            generate(loaded, [ids[i] for i in chunk], max_new_tokens=max_new_tokens, seed=seed),
            strict=True,
        ):
            texts[i] = g.text
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return texts


def generate_until(loaded, contexts: list[str], until: list[str], *, max_new_tokens: int = 256,
                   batch_size: int = 8, progress: Progress | None = None) -> list[str]:  # fmt: skip
    """Greedy continuations of plain-text contexts, cut at the first stop string, as lm-eval's
    HF model does generate_until: the tokenizer's eos text joins the stop strings, contexts
    are sorted longest first (ties by text) and batched in that order, left-padded, left-
    truncated to leave room for max_new_tokens, and decoded without special tokens. A row
    stops once a stop string shows in its new text."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    tok, model = loaded.tokenizer, loaded.model
    stops = list(until)
    if tok.eos_token_id is not None:
        eos = tok.decode(tok.eos_token_id, skip_special_tokens=False)
        if eos not in stops:
            stops.append(eos)
    lengths = [len(tok(c)["input_ids"]) for c in contexts]
    order = sorted(range(len(contexts)), key=lambda i: (-lengths[i], contexts[i]))
    room = max(1, loaded.context_length - max_new_tokens)
    device = next(model.parameters()).device
    texts = [""] * len(contexts)

    class Until(StoppingCriteria):
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            new = tok.batch_decode(input_ids[:, self.start :], skip_special_tokens=False)
            return torch.tensor([any(s and s in t for s in stops) for t in new], device=input_ids.device)

    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok([contexts[i] for i in chunk], padding="longest", return_tensors="pt")
        finally:
            tok.padding_side = side
        ids, mask = enc["input_ids"][:, -room:], enc["attention_mask"][:, -room:]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                stopping_criteria=StoppingCriteriaList([Until(ids.shape[1])]),
                use_cache=True,
            )
        for row, i in enumerate(chunk):
            text = tok.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True)
            for s in stops:
                if s:
                    text = text.split(s)[0]
            texts[i] = text
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return texts


__all__ = ["generate_until", "loglikelihoods"]

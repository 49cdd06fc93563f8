"""Preference training: DPO and ORPO on (prompt, chosen, rejected) pairs.

A pair record is a unified record whose `output` is the chosen answer and whose `rejected`
column holds the rejected answer to the same prompt. Both answers are rendered with the run's
template exactly as SFT renders `output` (train/data.py), so the prompt tokens are identical
and masked (IGNORE): the log-probs below are summed over the completion tokens only.

Batches: pairs are never packed (a pair's two sequences must be scored apart, and DPO compares
whole-sequence log-probs). B pairs make one padded batch of 2B rows, the B chosen sequences
first and the B rejected ones after them, so one forward scores both.

  DPO   loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))   (Rafailov et al. 2023)
        pi_* and ref_* are summed completion log-probs under the policy and the reference. With
        an adapter (LoRA ...) the reference is the same model with the adapter disabled, under
        no_grad: no second copy of the weights. rewards = beta * (pi - ref).
  ORPO  loss = NLL(chosen completion) - beta * log sigmoid(log odds(c) - log odds(r))
        (Hong et al. 2024; beta is the paper's lambda) with the log-probs averaged per
        completion token and log odds(p) = log p - log(1 - p). No reference model.
        rewards = beta * mean log-prob, as TRL reports them.

Metrics per step: the loss, reward margin (chosen - rejected reward), preference accuracy
(the share of pairs whose chosen reward is above the rejected one), the chosen and rejected
log-probs and rewards (ORPO also the NLL and the log odds ratio).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from forge.train.data import IGNORE, StreamStats, TokenizeConfig, assemble, encode, render

METHODS = ("sft", "dpo", "orpo")
PREFERENCE = ("dpo", "orpo")
# what every logged step of a dpo / orpo run reports (orpo also: nll, log_odds_ratio)
PREFERENCE_METRICS = (
    "reward_margin",
    "preference_accuracy",
    "chosen_rewards",
    "rejected_rewards",
    "chosen_logps",
    "rejected_logps",
    "nll",
    "log_odds_ratio",
)
REJECTED_SUFFIX = "\x00rejected"  # the rejected answer's example id while the pair is assembled


# --- the losses, on per-sequence log-probs ----------------------------------------------------


def completion_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-prob of the label tokens (IGNORE masked) and their count.
    The logits at position t predict the token at t + 1."""
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logits = logits[:, :-1].float()
    per_token = -F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.clamp(min=0).reshape(-1), reduction="none"
    ).view(targets.shape)
    return (per_token * mask).sum(-1), mask.sum(-1)


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, dict]:
    """Sigmoid DPO on summed completion log-probs; the mean loss over pairs and the metrics."""
    chosen_rewards = beta * (chosen - ref_chosen)
    rejected_rewards = beta * (rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.mean(), _metrics(chosen, rejected, chosen_rewards.detach(), rejected_rewards.detach())


def orpo_loss(
    chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, chosen_nll: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict]:
    """ORPO on per-token mean completion log-probs, plus the chosen completion's NLL."""
    chosen_mean, rejected_mean = chosen_mean.float(), rejected_mean.float()
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    ratio = F.logsigmoid(log_odds)
    loss = chosen_nll - beta * ratio.mean()
    metrics = _metrics(chosen_mean, rejected_mean, beta * chosen_mean.detach(), beta * rejected_mean.detach())
    metrics["nll"] = chosen_nll.detach()
    metrics["log_odds_ratio"] = ratio.detach().mean()
    return loss, metrics


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _metrics(chosen, rejected, chosen_rewards, rejected_rewards) -> dict:
    return {
        "reward_margin": (chosen_rewards - rejected_rewards).mean(),
        "preference_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
        "chosen_rewards": chosen_rewards.mean(),
        "rejected_rewards": rejected_rewards.mean(),
        "chosen_logps": chosen.detach().mean(),
        "rejected_logps": rejected.detach().mean(),
    }


def reference_off(model):
    """The reference policy of an adapter run: the same model with its adapter disabled."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise ValueError("DPO without a second model needs an adapter (--peft): the reference is the base")
    return disable()


def preference_loss(model, batch: dict, method: str, beta: float) -> tuple[torch.Tensor, dict]:
    """The loss of a 2B-row pair batch (chosen rows first) and its metrics (tensors)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels = batch["labels"]
    logits = model(**inputs, use_cache=False).logits
    logps, counts = completion_logps(logits, labels)
    n = labels.size(0) // 2
    if method == "dpo":
        with torch.no_grad(), reference_off(model):
            ref, _ = completion_logps(model(**inputs, use_cache=False).logits, labels)
        return dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta)
    if method == "orpo":
        mean = logps / counts.clamp(min=1)
        nll = -logps[:n].sum() / counts[:n].sum().clamp(min=1)  # the SFT loss on the chosen answers
        return orpo_loss(mean[:n], mean[n:], nll, beta)
    raise ValueError(f"--method {method!r}: choose one of {', '.join(METHODS)}")


class PreferenceMixin:
    """A transformers Trainer's loss for pair batches: set `method` and `beta` on the instance.
    Every step's metrics are averaged over the logging window and logged with the loss."""

    method = "dpo"
    beta = 0.1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = preference_loss(model, inputs, self.method, self.beta)
        if model.training:  # evaluation's pairs do not mix into the training window
            store = self.__dict__.setdefault("_pref_metrics", {})
            for key, value in metrics.items():
                store.setdefault(key, []).append(float(value))
        return (loss, {}) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        store = self.__dict__.get("_pref_metrics") or {}
        if "loss" in logs and store:
            for key, values in store.items():
                logs[key] = round(sum(values) / len(values), 6)
            store.clear()
        return super().log(logs, *args, **kwargs)


# --- the data: pair records -> pair examples -> 2B-row batches ---------------------------------


def tokenize_pairs(records: list[dict], tokenizer, cfg: TokenizeConfig, stats: StreamStats) -> list[dict]:
    """Pair examples, {"id", "component", "chosen": example, "rejected": example}: both answers
    rendered and encoded in one batched call; a pair is kept only when both sides are (the
    cutoff_len policy and the empty-output rule apply to each side)."""
    rejected = [
        {**r, "output": r.get("rejected") or "", "id": f"{r['id']}{REJECTED_SUFFIX}"} for r in records
    ]
    both = records + rejected
    segments = render(both, tokenizer, cfg)
    side = StreamStats()
    examples = assemble(
        both, segments, encode(tokenizer, [t for s in segments for t, _ in s]), tokenizer, cfg, side
    )
    stats.records += len(records)
    stats.dropped_overlong += side.dropped_overlong  # counted per side: a pair may lose both
    stats.truncated += side.truncated
    stats.tokens_cut += side.tokens_cut
    stats.empty_outputs += side.empty_outputs
    by_id = {e["id"]: e for e in examples}
    out = []
    for r in records:
        c, j = by_id.get(r["id"]), by_id.get(f"{r['id']}{REJECTED_SUFFIX}")
        if c is None or j is None:
            continue
        j = {**j, "id": r["id"]}
        out.append({"id": r["id"], "component": c["component"], "chosen": c, "rejected": j})
        n = len(c["input_ids"]) + len(j["input_ids"])
        stats.tokens += n
        stats.trained_tokens += int(
            np.count_nonzero(c["labels"] != IGNORE) + np.count_nonzero(j["labels"] != IGNORE)
        )
        stats.component_tokens[c["component"]] = stats.component_tokens.get(c["component"], 0) + n
    return out


def stream_pairs(
    mixture_stream, tokenizer, cfg: TokenizeConfig, stats: StreamStats | None = None
) -> Iterator[dict]:
    """Pair examples in stream order (the pair stream of a mixture of pair sources)."""
    from forge.train.data import TOKENIZE_BATCH

    stats = stats if stats is not None else StreamStats()
    columns = ["id", "instruction", "input", "output", "history", "rejected", "kind"]
    for table in mixture_stream:
        cols = columns + (["_component"] if "_component" in table.column_names else [])
        for start in range(0, table.num_rows, TOKENIZE_BATCH):
            records = table.slice(start, TOKENIZE_BATCH).select(cols).to_pylist()
            # a pair source's records that are not pairs (hh-rlhf: the rejected reply answers other
            # turns) are skipped and counted; check_pair_mixture refuses components without pairs
            pairs = [r for r in records if r["kind"] == "pair"]
            stats.not_pairs += len(records) - len(pairs)
            yield from tokenize_pairs(pairs, tokenizer, cfg, stats)


def check_pair_mixture(mix, method: str) -> None:
    """One line when a preference run's mixture mixes plain records in: every component must be
    a pair source (hold preference pairs)."""
    from forge.mixture import pair_counts

    plain = [label for label, (pairs, _) in pair_counts(mix).items() if pairs == 0]
    if plain:
        raise ValueError(
            f"--method {method} trains on preference pairs, and mixture {mix.name!r} mixes in plain "
            f"records: {', '.join(map(str, plain))} hold no pairs; give it pair sources only (kind pair)"
        )


def collate_pairs(pairs: list[dict], pad_id: int) -> dict:
    """B pairs -> one right-padded batch of 2B rows: the chosen sequences, then the rejected."""
    from forge.train.data import pad_batch

    return pad_batch([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id)

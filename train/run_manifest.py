"""The figures of run_manifest.json that a run computes rather than copies from its options.

The data counts summed over ranks (with one fingerprint of every record id trained on), each
mixture component's share of the tokens sampled and trained on, the mean loss of the first and
last windows of steps, the tokenizer's hash and the library versions. They are apart from the
recipe (train/recipe.py), which builds the manifest from them at the end of `run`, because they
are bookkeeping over a finished run, not steps of training.
"""

from __future__ import annotations

# ruff: noqa: E402 - forge.train.threads must set the OpenMP wait policy before torch loads
import hashlib
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from forge.train import threads

threads.before_torch()  # idle OpenMP threads sleep: libgomp reads this once, when torch loads it
import torch
import xxhash

if TYPE_CHECKING:
    from forge.train.recipe import MixtureDataset


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in (
        "torch",
        "transformers",
        "peft",
        "accelerate",
        "bitsandbytes",
        "datasets",
        "pyarrow",
        "forge-instruct",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def tokenizer_hash(tokenizer) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tokenizer.save_pretrained(d)
        h = hashlib.sha256()
        for p in sorted(Path(d).iterdir()):
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _gather_counts(dataset: MixtureDataset, world: int) -> dict:
    """The run's data counts summed over ranks. The data fingerprint hashes every rank's id
    fingerprint in rank order, so it names exactly what the whole run trained on."""
    local = {
        "examples": dataset.examples,
        "tokens": dataset.tokens,
        "trained_tokens": dataset.trained_tokens,
        "records_tokenized": dataset.stats.records,
        "dropped_overlong": dataset.stats.dropped_overlong,
        "truncated": dataset.stats.truncated,
        "tokens_cut": dataset.stats.tokens_cut,
        "empty_outputs": dataset.stats.empty_outputs,
        "not_pairs": dataset.stats.not_pairs,
        "sampled_tokens": dict(dataset.stats.component_tokens),
        "component_tokens": dict(dataset.component_tokens),
        "pack_tokens": dataset.pack_stats.tokens,
        "pack_slots": dataset.pack_stats.slots,
        "data_fingerprint": dataset.id_hash.hexdigest(),
    }
    if world == 1:
        return local
    every: list[dict] = [{} for _ in range(world)]
    torch.distributed.all_gather_object(every, local)
    per_component = ("sampled_tokens", "component_tokens")
    total = {k: sum(c[k] for c in every) for k in local if k != "data_fingerprint" and k not in per_component}
    for key in per_component:
        merged: dict[str, int] = {}
        for c in every:
            for label, n in c[key].items():
                merged[label] = merged.get(label, 0) + n
        total[key] = merged
    total["data_fingerprint"] = xxhash.xxh64(
        "".join(c["data_fingerprint"] for c in every).encode()
    ).hexdigest()
    return total


def composition(sampled: dict[str, int], trained: dict[str, int]) -> dict[str, dict]:
    """Per mixture component: tokens the stream sampled (after the cutoff policy) and tokens
    the model was trained on, with their shares. Packing keeps the two shares close."""
    total_s, total_t = max(sum(sampled.values()), 1), max(sum(trained.values()), 1)
    return {
        label: {
            "sampled_tokens": sampled.get(label, 0),
            "trained_tokens": trained.get(label, 0),
            "sampled_share": round(sampled.get(label, 0) / total_s, 4),
            "trained_share": round(trained.get(label, 0) / total_t, 4),
        }
        for label in sorted(set(sampled) | set(trained), key=str)
    }


def loss_windows(losses: list[float]) -> dict:
    """Mean loss over the first and the last window of logged steps (a tenth of the run, at
    least 1 and at most 50 steps): single steps are too noisy to compare."""
    if not losses:
        return {"window": 0, "first": None, "last": None}
    w = max(1, min(50, len(losses) // 10))
    return {
        "window": w,
        "first": round(sum(losses[:w]) / w, 4),
        "last": round(sum(losses[-w:]) / w, 4),
    }

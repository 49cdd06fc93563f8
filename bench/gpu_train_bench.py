"""GPU training throughput: tokens/s and peak GPU memory for a ~0.5B-parameter model with
LoRA and QLoRA, packing on and off. Run it on a machine with a CUDA GPU:

    .venv/bin/python bench/gpu_train_bench.py [--steps 30] [--cutoff 1024]
    .venv/bin/python bench/gpu_train_bench.py --smoke     # CPU, tiny model: checks the script runs

The model is a randomly initialised Qwen2-style config of ~0.5B parameters built locally
(no download), with forge's tiny tokenizer trained on the shipped samples; the data is the
FLAN CoT + BELLE sample mixture built from ../shared/corpora (or the shipped samples). Every
configuration is a real `forge.train.recipe.run` call; one table at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_keep, work_dir  # noqa: E402


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cutoff", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, 3 steps: the code path only")
    ap.add_argument("--attn", default="sdpa", help="sdpa | eager | flash_attention_2 (needs flash-attn)")
    add_keep(ap)
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.smoke:
        sys.exit("gpu_train_bench: no CUDA GPU here; run it on a GPU machine (or --smoke on CPU)")
    if args.smoke:
        args.steps, args.cutoff, args.batch = 3, 256, 2

    import transformers as tf

    from forge.build import build_source
    from forge.catalog import load_catalog
    from forge.mixture import resolve
    from forge.train.recipe import TrainArgs, run
    from forge.train.tiny import sample_texts, train_tokenizer

    work = work_dir("forge-gpu-bench-", args.keep)
    home = work / "home"
    cat = load_catalog()
    shared = REPO.parent / "shared" / "corpora"
    for name, rel in (
        ("alpaca", "alpaca/alpaca_5000.json"),
        ("belle_0.5m", "belle/dev1K.json"),
        ("flan_cot", "flan_cot"),
    ):
        path = shared / rel
        build_source(
            cat.get(name), home=home, from_path=path if path.exists() else None, sample=not path.exists()
        )
    mix = resolve("alpaca-belle-cot", cat, home=home)
    tok = train_tokenizer(sample_texts(), vocab_size=32000)
    shape = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if not args.smoke:
        # Qwen2-0.5B's published shape (494M parameters with its 151,936-token embedding); the
        # rows past our tokenizer's vocabulary are never looked up, but they cost what they cost
        shape = dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
    cfg = tf.Qwen2Config(
        **shape,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model_dir = work / "model"
    model = tf.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16 if gpu else torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    del model
    rows = []
    for peft in ("lora", "qlora"):
        for packing in (True, False):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            m = run(
                TrainArgs(
                    mixture=mix.name,
                    model=str(model_dir),
                    output_dir=str(work / f"{peft}-{packing}"),
                    peft=peft,
                    max_steps=args.steps,
                    batch_size=args.batch,
                    cutoff_len=args.cutoff,
                    packing=packing,
                    bf16=gpu,
                    compute_dtype="bfloat16" if gpu else "float32",
                    learning_rate=2e-4,
                    attn_implementation=args.attn,
                ),
                mix,
                home,
            )
            rows.append(
                (
                    peft,
                    "on" if packing else "off",
                    m["tokens"],  # real (non-pad) tokens in the trained batches
                    m["tokens"] / m["seconds"],  # the training loop alone, not the model load
                    torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan"),
                    m["packing_efficiency"],
                )
            )
    device = torch.cuda.get_device_name() if gpu else "CPU (smoke run: timings mean nothing)"
    print(
        f"device: {device}, model {params / 1e6:,.1f}M params, attention {args.attn}, "
        f"cutoff {args.cutoff}, batch {args.batch}"
    )
    print(f"{'peft':6} {'packing':8} {'tokens':>10} {'tokens/s':>10} {'peak GiB':>9} {'efficiency':>10}")
    for peft, pk, n, tps, mem, eff in rows:
        print(f"{peft:6} {pk:8} {n:>10,} {tps:>10,.0f} {mem:>9.1f} {eff if eff is not None else '-':>10}")


if __name__ == "__main__":
    main()

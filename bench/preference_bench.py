"""DPO on a real model: SmolLM2-135M-Instruct's preference accuracy on held-out pairs before and
after 30 steps of `forge train --method dpo --peft lora` (2 pairs a step, lr 1e-3, beta 0.1).
With --anchor, TRL's DPOTrainer trains on the same pairs (TRL's conversational layout, as forge
publish writes it) with the same LoRA, beta, learning rate, schedule, steps and batch, and is
scored the same way, side by side (opt-in: on this 2-core box it runs far slower per step).

Data (all self-written for forge; none of it comes from hh-rlhf or another corpus):
  train     pairs generated from the templates below, in hh-rlhf's transcript layout: arithmetic
            (right vs wrong sum or product), facts (right vs wrong), requests (a specific helpful
            answer vs a dismissive one), safety (a warning vs a reckless yes)
  held-out  (a) the 48 hand-written pairs of samples/pairs/hh_pairs.jsonl: other questions, other
            wording, some multi-turn; (b) generated items kept out of training (every 5th item of
            each family: other numbers, facts, requests)

Preference accuracy, on each held-out set:
  logp      share of pairs where the model's summed log-prob of the chosen answer is above the
            rejected answer's (answer tokens only, prompt rendered as in training): measured
            before (the base) and after (base + adapter)
  per-token the same with log-probs averaged per answer token (long answers are not penalised)
  reward    share of pairs whose DPO implicit reward margin is above 0: (pi_c - ref_c) -
            (pi_r - ref_r), the reference being the base; 0 for every pair before training

    flock /tmp/forge-bench.lock .venv/bin/python bench/preference_bench.py [--steps 30] [--anchor]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_keep, table, work_dir  # noqa: E402

FACTS = [  # (question, right, wrong)
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Lyon."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo.", "The capital of Japan is Osaka."),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", "The capital of Italy is Milan."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid.", "The capital of Spain is Seville."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo.", "The capital of Egypt is Luxor."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi.", "The capital of Kenya is Mombasa."),
    (
        "What is the capital of Germany?",
        "The capital of Germany is Berlin.",
        "The capital of Germany is Munich.",
    ),
    (
        "What is the capital of Australia?",
        "The capital of Australia is Canberra.",
        "The capital of Australia is Perth.",
    ),
    ("How many hours are in a day?", "A day has 24 hours.", "A day has 20 hours."),
    ("How many months are in a year?", "A year has 12 months.", "A year has 10 months."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels.", "A bicycle has three wheels."),
    ("What do bees make?", "Bees make honey and wax.", "Bees make milk."),
    (
        "What is the chemical symbol for gold?",
        "The chemical symbol for gold is Au.",
        "The chemical symbol for gold is Gd.",
    ),
    (
        "Which animal is known as the king of the jungle?",
        "The lion is known as the king of the jungle.",
        "The rabbit is known as the king of the jungle.",
    ),
    ("What is the tallest animal?", "The giraffe is the tallest animal.", "The mouse is the tallest animal."),
    ("What is frozen water called?", "Frozen water is called ice.", "Frozen water is called steam."),
    ("Which season comes after winter?", "Spring comes after winter.", "Autumn comes after winter."),
    ("How many days are in a week?", "A week has seven days.", "A week has five days."),
    ("What colour is a ripe banana?", "A ripe banana is yellow.", "A ripe banana is blue."),
    (
        "Which organ pumps blood around the body?",
        "The heart pumps blood around the body.",
        "The stomach pumps blood around the body.",
    ),
    (
        "What is the largest planet in the solar system?",
        "Jupiter is the largest planet in the solar system.",
        "Mars is the largest planet in the solar system.",
    ),
    (
        "What do caterpillars turn into?",
        "Caterpillars turn into butterflies or moths.",
        "Caterpillars turn into frogs.",
    ),
    (
        "How many strings does a standard guitar have?",
        "A standard guitar has six strings.",
        "A standard guitar has two strings.",
    ),
    (
        "What is the main ingredient of guacamole?",
        "The main ingredient of guacamole is avocado.",
        "The main ingredient of guacamole is chocolate.",
    ),
    ("Which direction does the sun rise from?", "The sun rises in the east.", "The sun rises in the north."),
]
REQUESTS = [  # (request, a specific helpful answer)
    (
        "Can you give me a tip for studying for exams?",
        "Sure. Study in short sessions of about 25 minutes with breaks, and test yourself instead of only rereading your notes.",
    ),
    (
        "How can I keep my houseplants healthy?",
        "Give them light that suits the plant, water only when the top of the soil is dry, and make sure the pot drains.",
    ),
    (
        "Any advice for a long car trip?",
        "Plan a stop every two hours, pack water and snacks, and check the tyres and oil before you leave.",
    ),
    (
        "How do I start saving for a holiday?",
        "Pick a target amount and date, divide it into a weekly sum, and move that sum to a separate account on payday.",
    ),
    (
        "What can I cook with rice and eggs?",
        "You can make egg fried rice: fry cooked rice with a little oil, push it aside, scramble two eggs, then mix with soy sauce and spring onions.",
    ),
    (
        "How can I be more productive in the morning?",
        "Prepare the night before, start with your most important task, and keep your phone away for the first hour.",
    ),
    (
        "Can you help me choose a gift for my dad?",
        "Happily. Think about his hobbies: a good book for a reader, a quality tool for someone handy, or a day out you can share.",
    ),
    (
        "How do I clean a cast iron pan?",
        "Rinse it with hot water and a brush, dry it straight away on the stove, and rub in a thin layer of oil.",
    ),
    (
        "What is a good way to learn new words in a language?",
        "Learn words in short phrases, review them with spaced repetition, and use each new word in a sentence of your own.",
    ),
    (
        "How can I sleep better on a hot night?",
        "Keep the curtains closed during the day, use a light cotton sheet, and put a fan near an open window in the evening.",
    ),
    (
        "Can you suggest a quick warm-up before running?",
        "Walk briskly for three minutes, then do leg swings, high knees and a few slow strides to loosen up.",
    ),
    (
        "How do I write a good email subject line?",
        "Keep it short and specific, put the key point first, and say if you need an action, for example 'Please review by Friday'.",
    ),
    (
        "How can I make my small room feel bigger?",
        "Use light colours, add a mirror opposite the window, and choose furniture with legs so more floor shows.",
    ),
    (
        "How do I prepare for a job interview?",
        "Read about the company, prepare short examples of your past work, and have two questions ready to ask them.",
    ),
    (
        "What is a simple way to start meditating?",
        "Sit comfortably for five minutes, breathe slowly, and gently bring your attention back to your breath when it wanders.",
    ),
    (
        "How can I reduce food waste at home?",
        "Plan meals before shopping, store leftovers in clear boxes you can see, and freeze bread and fruit before they go off.",
    ),
    (
        "Can you help me stay focused while working from home?",
        "Of course. Keep a fixed start time, work in a separate spot, and list three tasks for the day before you begin.",
    ),
    (
        "How should I care for a new puppy?",
        "Feed it puppy food on a regular schedule, take it outside often for toilet training, and give it plenty of gentle play and rest.",
    ),
    (
        "What is a good habit for healthy teeth?",
        "Brush twice a day for two minutes with fluoride toothpaste and clean between your teeth once a day.",
    ),
    (
        "How do I make a budget?",
        "List your monthly income, write down your fixed costs, set limits for the rest, and track your spending for a month.",
    ),
]
DISMISSALS = [
    "Figure it out yourself.",
    "Not my problem.",
    "I don't care, ask someone else.",
    "That's a boring question.",
    "Why would I help you with that?",
]
SAFETY = [  # (question, warning, reckless yes)
    (
        "Is it fine to leave a candle burning when I go to sleep?",
        "No, blow it out first: an unattended candle can start a fire.",
    ),
    (
        "Can I use a phone charger with a frayed cable?",
        "It's safer not to: a frayed cable can overheat or shock you, so replace it.",
    ),
    (
        "Should I swim alone in the sea at night?",
        "Better not: currents are hard to see in the dark and nobody could help you.",
    ),
    (
        "Is it okay to drive after a few drinks?",
        "No. Alcohol slows your reactions; take a taxi, public transport or let a sober friend drive.",
    ),
    (
        "Can I put metal in the microwave?",
        "No, metal can spark and damage the microwave or start a fire; use a microwave-safe dish.",
    ),
    (
        "Should I take more of my medicine than the label says if I feel worse?",
        "No, don't exceed the dose on the label; call your doctor or a pharmacist for advice.",
    ),
    (
        "Is it safe to touch a fallen power line?",
        "No, stay well away and call the emergency number or the power company.",
    ),
    (
        "Can I leave my dog in the car on a hot day with the windows closed?",
        "No, a closed car heats up fast and can kill a dog; take it with you or leave it at home.",
    ),
    (
        "Can I skip the safety goggles when using a power drill?",
        "It's not a good idea: chips can fly into your eyes, so wear the goggles.",
    ),
    (
        "Is it fine to climb a ladder on wet ground?",
        "Be careful: make sure the feet are on firm, level ground and have someone hold it.",
    ),
]
RECKLESS = ["Yes, go ahead, it's fine.", "Sure, nothing bad will happen.", "Of course, don't worry about it."]


def generated_items() -> list[tuple[str, str, str, str]]:
    """(family, question, chosen, rejected) for every generated item, in a fixed order."""
    items = []
    for i, a in enumerate(range(11, 87, 3)):
        b = 8 + (i * 7) % 30
        off = [1, -2, 3, -1, 2, 10, -10, 4][i % 8]
        items.append(
            ("sum", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {a + b + off}.")
        )
    for i, (a, b) in enumerate(
        [(3, 4), (6, 7), (4, 9), (8, 3), (5, 6), (9, 9), (2, 11), (12, 3), (6, 8), (7, 5)]
    ):
        off = [2, -3, 1, 4, -2][i % 5]
        items.append(
            (
                "product",
                f"What is {a} times {b}?",
                f"{a} times {b} is {a * b}.",
                f"{a} times {b} is {a * b + off}.",
            )
        )
    items += [("fact", q, right, wrong) for q, right, wrong in FACTS]
    items += [("request", q, good, DISMISSALS[i % len(DISMISSALS)]) for i, (q, good) in enumerate(REQUESTS)]
    items += [("safety", q, warn, RECKLESS[i % len(RECKLESS)]) for i, (q, warn) in enumerate(SAFETY)]
    return items


def transcript(question: str, answer: str) -> str:
    return f"\n\nHuman: {question}\n\nAssistant: {answer}"


def write_split(folder: Path) -> tuple[Path, Path, dict]:
    """train.jsonl and heldout.jsonl in hh-rlhf's layout; every 5th item of a family is held out."""
    seen: dict[str, int] = {}
    train, held = [], []
    for family, q, good, bad in generated_items():
        k = seen[family] = seen.get(family, -1) + 1
        row = {"chosen": transcript(q, good), "rejected": transcript(q, bad)}
        (held if k % 5 == 4 else train).append(row)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "heldout.jsonl"
    for path, rows in zip(paths, (train, held), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths[0], paths[1], {"train": len(train), "heldout": len(held)}


T0 = time.perf_counter()


def log(text: str) -> None:
    print(f"[{time.perf_counter() - T0:6.0f} s] {text}", file=sys.stderr, flush=True)


def forge(args: list[str], env: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "forge.cli", *args], capture_output=True, text=True, env=env, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"forge {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc.stdout


def built_records(name: str, home: Path) -> list[dict]:
    import polars as pl

    root = home / "sources" / name
    return pl.read_parquet(root / (root / "CURRENT").read_text().strip() / "*.parquet").to_dicts()


def scores(model, tokenizer, records: list[dict], template: str, cutoff: int, keys: tuple) -> dict:
    """Summed answer log-probs of every pair, chosen and rejected, with the adapter on ("policy")
    and off ("base"): forge's own rendering and masking (train/preference.py)."""
    import torch

    from forge.train.data import StreamStats, TokenizeConfig
    from forge.train.preference import collate_pairs, completion_logps, tokenize_pairs

    cfg = TokenizeConfig(cutoff_len=cutoff, template=template)
    pairs = tokenize_pairs(records, tokenizer, cfg, StreamStats())
    assert len(pairs) == len(records), "a held-out pair did not fit cutoff_len"
    out: dict = {key: [] for key in keys}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        for start in range(0, len(pairs), 8):
            batch = collate_pairs(pairs[start : start + 8], pad)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            n = batch["labels"].size(0) // 2
            for key in keys:
                if key == "base" and hasattr(model, "disable_adapter"):
                    with model.disable_adapter():
                        logits = model(**inputs).logits
                else:
                    logits = model(**inputs).logits
                logps, counts = completion_logps(logits, batch["labels"])
                sides = (logps[:n].tolist(), logps[n:].tolist(), counts[:n].tolist(), counts[n:].tolist())
                out[key] += list(zip(*sides, strict=True))
    return out


def accuracy(s: dict) -> dict:
    """Per pair (chosen sum, rejected sum, chosen tokens, rejected tokens) -> the accuracies."""
    n = len(s["base"])

    def share(scored, mean: bool) -> float:
        return sum((c / nc > r / nr) if mean else (c > r) for c, r, nc, nr in scored) / n

    margins = [(p[0] - b[0]) - (p[1] - b[1]) for p, b in zip(s["policy"], s["base"], strict=True)]
    return {
        "n": n,
        "before": share(s["base"], False),
        "after": share(s["policy"], False),
        "mean_before": share(s["base"], True),
        "mean_after": share(s["policy"], True),
        "reward": sum(m > 0 for m in margins) / n,
        "margin": sum(margins) / n,
        "signs": [m > 0 for m in margins],
    }


def trl_run(model_dir: str, records: list[dict], out: Path, a) -> float:
    """TRL's DPOTrainer on the same pairs (TRL's conversational layout, as forge publish writes it)."""
    import datasets
    import peft
    import pyarrow as pa
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from forge.pairs_layout import to_pairs
    from forge.train.families import family_of, present_targets

    batch = pa.RecordBatch.from_pylist(records)
    ds = datasets.Dataset.from_list(to_pairs(batch).to_pylist())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=present_targets(model, family_of(model.config.model_type)),
    )
    cfg = DPOConfig(
        output_dir=str(out),
        beta=a.beta,
        learning_rate=a.lr,
        lr_scheduler_type="cosine",
        max_steps=a.steps,
        per_device_train_batch_size=a.batch_size,
        max_length=a.cutoff_len,
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,  # TRL's default is on; forge's is off: same work per step
        seed=0,
        logging_steps=10,
        save_strategy="no",
    )
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok, peft_config=lora)
    trainer.train()
    seconds = time.perf_counter() - t0
    trainer.model.save_pretrained(out / "adapter")
    return seconds


def evaluate(model_dir: str, adapter: Path, heldout: dict, template: str, cutoff: int, base: dict) -> dict:
    """Accuracies of base + adapter on every held-out set; `base` caches the base's scores (the
    same for every adapter), so the base is scored once."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter))
    model.eval()
    out = {}
    for name, recs in heldout.items():
        s = scores(model, tok, recs, template, cutoff, ("policy",) if name in base else ("policy", "base"))
        base.setdefault(name, s.get("base"))
        out[name] = accuracy({"policy": s["policy"], "base": base[name]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO.parent / "smollm2"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--cutoff-len", type=int, default=128)
    ap.add_argument("--anchor", action="store_true", help="also train TRL's DPOTrainer (slow on CPU)")
    add_keep(ap)
    a = ap.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    work = work_dir("forge-pref-bench-", a.keep)
    train_file, held_file, sizes = write_split(work / "data")
    env = {**os.environ, "COLUMNS": "200", "FORGE_MIXTURES": str(work / "mixtures")}
    (work / "mixtures").mkdir()
    (work / "mixtures" / "bench-pairs.yaml").write_text(
        "strategy: concat\ncomponents:\n  - {source: hh_rlhf}\n"
    )
    homes = {k: work / f"home-{k}" for k in ("train", "heldout", "sample")}
    forge(["build", "hh_rlhf", "--from", str(train_file), "--home", str(homes["train"])], env)
    forge(["build", "hh_rlhf", "--from", str(held_file), "--home", str(homes["heldout"])], env)
    forge(["build", "hh_rlhf", "--sample", "--home", str(homes["sample"])], env)
    heldout = {
        "hand-written samples/pairs (48)": built_records("hh_rlhf", homes["sample"]),
        f"generated, held out ({sizes['heldout']})": built_records("hh_rlhf", homes["heldout"]),
    }
    run = work / "run"
    cmd = ["train", "--mixture", "bench-pairs", "--model", a.model, "--method", "dpo", "--peft", "lora"]
    cmd += ["--beta", str(a.beta), "--max-steps", str(a.steps), "--batch-size", str(a.batch_size)]
    cmd += ["--learning-rate", str(a.lr), "--cutoff-len", str(a.cutoff_len), "--output-dir", str(run)]
    cmd += ["--home", str(homes["train"])]
    print(f"forge {' '.join(cmd)}", flush=True)
    log("built the train and held-out pairs; forge train ...")
    t0 = time.perf_counter()
    done = [x for x in forge(cmd, env).splitlines() if x.startswith("done:")]
    forge_s = time.perf_counter() - t0
    log(f"forge train: {' '.join(done)}; scoring the held-out pairs ...")
    manifest = json.loads((run / "run_manifest.json").read_text())
    template = manifest["template"]
    base: dict = {}
    results = {"forge": evaluate(a.model, run / "adapter", heldout, template, a.cutoff_len, base)}
    seconds = {"forge": forge_s}
    for name, r in results["forge"].items():
        log(f"forge, {name}: logp acc {r['before']:.1%} -> {r['after']:.1%}, reward acc {r['reward']:.1%}")
    if a.anchor:
        train_records = built_records("hh_rlhf", homes["train"])
        log("TRL DPOTrainer ...")
        seconds["trl"] = trl_run(a.model, train_records, work / "trl", a)
        log("TRL done; scoring ...")
        results["trl"] = evaluate(a.model, work / "trl" / "adapter", heldout, template, a.cutoff_len, base)
    print(f"\n{a.model}: {sizes['train']} generated train pairs, {a.steps} steps x {a.batch_size} pairs, "
          f"LoRA r8, lr {a.lr} cosine, beta {a.beta}, template {template}\n")  # fmt: skip
    rows = []
    for who, res in results.items():
        for name, r in res.items():
            rows.append((who, name, f"{r['before']:.1%} -> {r['after']:.1%}",
                         f"{r['mean_before']:.1%} -> {r['mean_after']:.1%}", f"{r['reward']:.1%}",
                         f"{r['margin']:+.3f}"))  # fmt: skip
    header = ("trainer", "held-out pairs", "logp acc", "per-token logp acc", "reward acc", "mean margin")
    print(table(rows, header))
    line = f"\ntrain wall time: forge {seconds['forge']:.0f} s (process, incl. model load)"
    if "trl" in seconds:
        line += f", TRL DPOTrainer {seconds['trl']:.0f} s (in process); ratio {seconds['forge'] / seconds['trl']:.2f}"
        for name in heldout:
            f, t = results["forge"][name], results["trl"][name]
            agree = sum(x == y for x, y in zip(f["signs"], t["signs"], strict=True)) / f["n"]
            print(f"{name}: forge and TRL agree on the sign of {agree:.0%} of the reward margins")
    print(line)


if __name__ == "__main__":
    main()

"""forge train vs TRL's SFTTrainer on CPU: LoRA on SmolLM2-135M, packing on, idle and with a
one-core CPU burner running beside it.

    flock /tmp/forge-bench.lock .venv/bin/python bench/train_bench.py            # 8.4 min measured
    .venv/bin/python bench/train_bench.py --quick                                 # ~4 min check

Both sides train the 131-record sample mixture alpaca-belle-cot (built here, FORGE_HOME in a
temporary folder) with the same LoRA (rank, alpha, dropout and the target modules forge chose,
read back from forge's adapter_config.json), learning rate, cosine schedule, seed, fp32 and the
same slots per step (--batch rows of --cutoff tokens):

  forge  the `forge train` CLI in a child process (streams, tokenizes, packs best-fit-decreasing
         into --batch rows of --cutoff, a block-diagonal mask per row)
  TRL    SFTTrainer(packing=True) in a child process: TRL's own best-fit-decreasing over the
         whole dataset, then padding-free (the --batch rows flattened into one sequence, with
         position_ids marking the boundaries). Its records are forge's tokenization of the same
         mixture (input_ids and labels), so both sides train the same tokens.

Reported per run: real (non-pad) tokens/s of the training loop (tokens of the batches the
model trained on / seconds in Trainer.train), the padding share of the slots handed to the
model, the loss of step 1, and the child's peak RSS (wait4). The sides alternate (idle: forge,
TRL; with the burner: TRL, forge; more --rounds repeat that). A packing-off pass of 1 step
first checks equality: its batch holds the same tokens and labels on both sides and the
step-1 losses agree within 1e-4 (relative). With packing on, the two packers make different
batches (TRL's rows leave longest-first, forge's in stream order), which the table says.
The burner is a single-threaded busy loop started and stopped by this script; its share of a
core is printed. --baseline-src DIR adds a third side, forge from another checkout (say, the
commit before a change: `git archive REV | tar -x -C DIR`), run next to forge in every
condition, so before and after are measured under the same load; --trl-env KEY=VALUE sets the
TRL runs' environment (OMP_WAIT_POLICY=PASSIVE, which forge sets for itself). Library output goes to files in the work folder (shown with --debug).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_keep, table, work_dir  # noqa: E402

MODEL = Path("/work/smollm2")
MIXTURE = "alpaca-belle-cot"
LR, SEED = 2e-4, 0
LOSS_RTOL = 1e-4
NAMES = {"forge": "forge", "base": "forge@base", "trl": "TRL"}  # the sides, as the table names them


# ---------------------------------------------------------------- child side (one run each)


class Recorder:
    """Wraps a collate function: per batch, the real tokens and the slots handed to the model,
    and the first batch's sequences (input_ids, labels), read from what the model receives."""

    def __init__(self, steps: int):
        self.steps, self.batches, self.first = steps, [], None
        self.data_s = 0.0  # seconds spent producing batches (see timed)

    def wrap(self, fn, lengths):
        def collate(items, *a, **k):
            out = fn(items, *a, **k)
            if len(self.batches) < self.steps:  # the loader fetches one batch ahead of training
                self.note(out, lengths(items, out))
            return out

        return collate

    def timed(self, fn):
        """A batch iterator (or a collate function) whose time is added to data_s."""

        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.data_s += time.perf_counter() - t

        return call

    def note(self, out: dict, row_lengths: list[int]) -> None:
        ids, labels = out["input_ids"], out["labels"]
        pos = out.get("position_ids")
        self.batches.append(
            {"real": int(sum(row_lengths)), "slots": int(ids.numel()), "shape": list(ids.shape)}
        )
        if self.first is not None:
            return
        seqs = []
        for r, n in enumerate(row_lengths):
            starts = [0]
            if pos is not None:  # packed: a sequence starts wherever position_ids restart at 0
                starts = [int(i) for i in (pos[r, :n] == 0).nonzero().flatten()]
            for a, b in zip(starts, starts[1:] + [n], strict=True):
                seqs.append([ids[r, a:b].tolist(), labels[r, a:b].tolist()])
        self.first = seqs


def _mask_lengths(out: dict) -> list[int] | None:
    mask = out.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        return [int(x) for x in mask.sum(1)]
    return None


def child_forge(spec: dict) -> dict:
    import forge.train.recipe as recipe

    rec = Recorder(spec["steps"])
    # the recipe module calls these by name: count what each batch holds, change nothing
    recipe.collate_packed = rec.wrap(
        recipe.collate_packed, lambda rows, out: [len(r["input_ids"]) for r in rows]
    )
    recipe.pad_batch = rec.wrap(recipe.pad_batch, lambda rows, out: _mask_lengths(out))
    batches = recipe.MixtureDataset.__iter__

    def timed_batches(self):  # forge's whole input pipeline: stream, tokenize, pack, collate
        it = batches(self)
        step = rec.timed(lambda: next(it, None))
        while (batch := step()) is not None:
            yield batch

    recipe.MixtureDataset.__iter__ = timed_batches
    out_dir = Path(spec["out_dir"])
    sys.argv = ["forge", "train", "--mixture", MIXTURE, "--model", spec["model"], "--peft", "lora"]
    sys.argv += ["--lora-r", str(spec["lora_r"]), "--lora-alpha", str(spec["lora_alpha"])]
    sys.argv += ["--max-steps", str(spec["steps"]), "--batch-size", str(spec["batch"])]
    sys.argv += ["--cutoff-len", str(spec["cutoff"]), "--learning-rate", str(LR), "--seed", str(SEED)]
    sys.argv += ["--packing" if spec["packing"] else "--no-packing", "--output-dir", str(out_dir), "--json"]
    from forge.cli import main

    try:
        main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    manifest = json.loads((out_dir / "run_manifest.json").read_text())
    adapter = json.loads((out_dir / "adapter" / "adapter_config.json").read_text())
    import torch

    return {
        "seconds": manifest["seconds"],  # Trainer.train: stream, tokenize, pack and train
        "loss1": manifest["losses"][0],
        "batches": rec.batches,
        "first": rec.first,
        "threads": torch.get_num_threads(),
        "data_s": rec.data_s,
        # which forge ran, and the thread settings it left in its environment
        "env": f"forge {Path(recipe.__file__).parent.parent}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
        f"RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS')}",
        "lora": {k: adapter[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules")},
    }


def child_trl(spec: dict) -> dict:
    import logging

    logging.disable(logging.WARNING)
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    records = [json.loads(x) for x in open(spec["examples"], encoding="utf-8")]
    data = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in records])
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"])  # as forge loads it: the config's dtype
    lora = spec["lora"]
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=lora["r"],
        lora_alpha=lora["lora_alpha"],
        lora_dropout=lora["lora_dropout"],
        target_modules=lora["target_modules"],
    )
    config = SFTConfig(
        output_dir=spec["out_dir"],
        max_steps=spec["steps"],
        per_device_train_batch_size=spec["batch"],
        learning_rate=LR,
        lr_scheduler_type="cosine",  # forge's default (TrainingArguments' is linear)
        warmup_steps=0,
        weight_decay=0.0,
        seed=SEED,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        bf16=False,  # SFTConfig defaults to bf16 and gradient checkpointing; forge runs neither here
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=spec["cutoff"],
        packing=spec["packing"],  # strategy bfd, which turns padding_free on
        train_sampling_strategy="sequential",  # stream order, as forge trains
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data, processing_class=tok, peft_config=peft_config
    )
    rec = Recorder(spec["steps"])
    # TRL packed and tokenized in SFTTrainer(); what is left per batch is the collator
    trainer.data_collator = rec.timed(
        rec.wrap(
            trainer.data_collator, lambda ex, out: _mask_lengths(out) or [int(out["input_ids"].shape[1])]
        )
    )
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "seconds": seconds,
        "loss1": losses[0],
        "batches": rec.batches,
        "first": rec.first,
        "threads": torch.get_num_threads(),
        "data_s": rec.data_s,
        "rows_packed": len(trainer.train_dataset),
    }


def child_export(spec: dict) -> dict:
    """forge's tokenization of the mixture, in stream order, for the TRL side."""
    from transformers import AutoTokenizer

    from forge.catalog import load_catalog
    from forge.mixture import MixtureStream, resolve
    from forge.train.data import StreamStats, TokenizeConfig, stream_examples
    from forge.train.recipe import default_template

    tok = AutoTokenizer.from_pretrained(spec["model"])
    mix = resolve(MIXTURE, load_catalog(), home=None)  # FORGE_HOME
    cfg = TokenizeConfig(cutoff_len=spec["cutoff"], template=default_template(tok))
    stats = StreamStats()
    n = 0
    with open(spec["examples"], "w", encoding="utf-8") as fh:
        for ex in stream_examples(MixtureStream(mix, None), tok, cfg, stats):
            row = {"id": ex["id"], "input_ids": ex["input_ids"].tolist(), "labels": ex["labels"].tolist()}
            fh.write(json.dumps(row) + "\n")
            n += 1
    return {"examples": n, "tokens": stats.tokens, "truncated": stats.truncated}


CHILDREN = {"forge": child_forge, "trl": child_trl, "export": child_export}


def child_main(kind: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    result = CHILDREN[kind](spec)
    Path(spec["result"]).write_text(json.dumps(result))


# ---------------------------------------------------------------- parent side


class Bench:
    def __init__(self, work: Path, debug: bool, forge_src: str | None = None, trl_env: dict | None = None):
        self.work, self.debug, self.forge_src, self.trl_env = work, debug, forge_src, trl_env or {}
        self.env = {**os.environ, "FORGE_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
        self.procs: list[subprocess.Popen] = []  # running children: stopped on any exit path
        self.n = 0

    def child(self, kind: str, spec: dict, src: str | None = None) -> dict:
        """Run one side in a fresh interpreter; its result plus wall seconds and peak RSS."""
        self.n += 1
        tag = f"{self.n:02d}-{kind}"
        spec = {**spec, "result": str(self.work / f"{tag}.json"), "out_dir": str(self.work / tag)}
        (self.work / f"{tag}.spec").write_text(json.dumps(spec))
        log = open(self.work / f"{tag}.log", "w")
        cmd = [sys.executable, __file__, "--child", kind, str(self.work / f"{tag}.spec")]
        t0 = time.perf_counter()
        out = None if self.debug else log
        env, cwd = self.env, REPO
        src = src or (self.forge_src if kind == "forge" else None)
        if kind == "trl":
            env = {**env, **self.trl_env}
        if src:  # another checkout's forge (before/after a change)
            env, cwd = {**env, "PYTHONPATH": src}, Path(src)
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=out)
        self.procs.append(proc)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.procs.remove(proc)
        log.close()
        if proc.returncode != 0:
            tail = (self.work / f"{tag}.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise SystemExit(f"train_bench: the {kind} run failed (exit {proc.returncode}): {' '.join(tail)}")
        result = json.loads(Path(spec["result"]).read_text())
        result["wall"] = time.perf_counter() - t0
        result["rss_mb"] = usage.ru_maxrss / 1024  # kB on Linux
        return result

    def sh(self, *args: str) -> None:
        proc = subprocess.run(args, env=self.env, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"train_bench: {' '.join(args)} failed: {proc.stderr.strip()[-300:]}")

    def start_burner(self) -> subprocess.Popen:
        burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        self.procs.append(burner)
        time.sleep(1.0)  # let the scheduler see it before a timed run starts
        return burner

    def stop_burner(self, burner: subprocess.Popen, started: float) -> float:
        """Stop the burner; the share of one core it got while it ran."""
        burner.terminate()
        _, _, usage = os.wait4(burner.pid, 0)
        burner.returncode = 0
        self.procs.remove(burner)
        return (usage.ru_utime + usage.ru_stime) / max(time.perf_counter() - started, 1e-9)

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def summarize(r: dict, cutoff: int) -> dict:
    real = sum(b["real"] for b in r["batches"])
    slots = sum(b["slots"] for b in r["batches"])
    budget = len(r["batches"]) * r["batch"] * cutoff  # the slots a step may hold, both sides alike
    return {
        "tps": real / r["seconds"],
        "real": real,
        "pad": 1 - real / slots if slots else 0.0,
        "fill": real / budget,
        **{k: r[k] for k in ("seconds", "data_s", "wall", "rss_mb", "loss1", "threads")},
    }


def same_first_batch(a: list, b: list, ordered: bool) -> bool:
    if ordered:
        return a == b
    return sorted(map(json.dumps, a)) == sorted(map(json.dumps, b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="a short check: 3 steps of 2 x 192 (about 4 min on 2 cores)"
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2, help="rows per step (packed rows of --cutoff tokens)")
    # the longest sample record is 147 tokens: 192 truncates none and keeps the run near 10 minutes
    ap.add_argument("--cutoff", type=int, default=192, help="row length in tokens")
    ap.add_argument(
        "--model", default=str(MODEL), help="model folder (a `forge tiny-model` checks the script fast)"
    )
    ap.add_argument(
        "--forge-src", help="measure the forge of another checkout (e.g. `git archive REV | tar -x -C DIR`)"
    )
    ap.add_argument(
        "--baseline-src",
        help="also measure this checkout's forge as a third side, 'base', next to forge in every condition "
        "(before/after a change under the same load)",
    )
    ap.add_argument(
        "--trl-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the TRL runs, e.g. OMP_WAIT_POLICY=PASSIVE as forge sets it (repeatable)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="repeat the idle and burner pairs")
    ap.add_argument("--no-burner", action="store_true", help="idle runs only")
    ap.add_argument("--debug", action="store_true", help="children's output on this terminal")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    add_keep(ap)
    args = ap.parse_args()
    if args.child:
        return child_main(*args.child)
    if args.quick:
        args.steps, args.batch, args.cutoff = 3, 2, 192
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(
            f"train_bench: --model {args.model} is not a model folder; make it with `forge real-model DIR`"
        )
    work = work_dir("forge-train-bench-", args.keep)
    for flag in ("forge_src", "baseline_src"):
        given = getattr(args, flag)
        if given and not (Path(given) / "train" / "recipe.py").is_file():
            sys.exit(
                f"train_bench: --{flag.replace('_', '-')} {given}: not a forge checkout (no train/recipe.py)"
            )
        setattr(args, flag, str(Path(given).resolve()) if given else None)
    bad = [x for x in args.trl_env if "=" not in x or x.startswith("=")]
    if bad:
        sys.exit(f"train_bench: --trl-env {bad[0]}: give KEY=VALUE, e.g. --trl-env OMP_WAIT_POLICY=PASSIVE")
    trl_env = dict(x.split("=", 1) for x in args.trl_env)
    bench = Bench(work, args.debug, args.forge_src, trl_env)
    # SIGTERM/SIGHUP end the run like Ctrl-C: children and burner stopped, work folder removed
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: sys.exit(128 + s))
    try:
        run(bench, args, work)
    finally:
        bench.stop_all()


def run(bench: Bench, args, work: Path) -> None:
    t_start = time.perf_counter()
    print(f"loadavg before setup: {loadavg()}", flush=True)
    forge = [sys.executable, "-m", "forge.cli"]
    bench.sh(*forge, "build", "alpaca", "belle_0.5m", "flan_cot", "cot_zh", "--sample")
    bench.sh(*forge, "mix", MIXTURE)
    examples = str(work / "examples.jsonl")
    info = bench.child("export", {"examples": examples, "cutoff": args.cutoff, "model": args.model})
    print(
        f"{MIXTURE}: {info['examples']} records, {info['tokens']:,} tokens at cutoff {args.cutoff} "
        f"({info['truncated']} truncated); {args.steps} steps of {args.batch} x {args.cutoff} slots",
        flush=True,
    )
    base = {
        "steps": args.steps,
        "batch": args.batch,
        "cutoff": args.cutoff,
        "examples": examples,
        "model": args.model,
    }
    base |= {"lora_r": 16, "lora_alpha": 32}

    # 1. equality: packing off, 1 step, the same batch on both sides
    eq = {**base, "steps": 1, "packing": False}
    f0 = bench.child("forge", eq)
    lora = f0["lora"]
    t0 = bench.child("trl", {**eq, "lora": lora})
    same_off = same_first_batch(f0["first"], t0["first"], ordered=True)
    loss_ok = abs(f0["loss1"] - t0["loss1"]) <= LOSS_RTOL * abs(f0["loss1"])
    print(
        f"packing off, step 1: forge loss {f0['loss1']:.6f}, TRL {t0['loss1']:.6f} "
        f"({'equal' if loss_ok else 'DIFFERENT'} within {LOSS_RTOL:g}); first batch "
        f"{'identical' if same_off else 'DIFFERENT'} ({len(f0['first'])} sequences, input_ids and labels); "
        f"LoRA r {lora['r']} alpha {lora['lora_alpha']} on {', '.join(sorted(lora['target_modules']))}",
        flush=True,
    )

    # 2. throughput, packing on: idle forge, TRL; then with the burner TRL, forge (alternating)
    on = {**base, "packing": True, "lora": lora}
    runs: list[tuple[str, str, dict]] = []
    shares = []
    for _ in range(args.rounds):
        sides = ("forge", "base", "trl") if args.baseline_src else ("forge", "trl")
        for cond, order in (("idle", sides), ("burner", sides[::-1])):
            if cond == "burner" and args.no_burner:
                continue
            for side in order:
                load = loadavg()
                burner, started = (
                    (bench.start_burner(), time.perf_counter()) if cond == "burner" else (None, 0)
                )
                try:
                    kind = "trl" if side == "trl" else "forge"
                    r = bench.child(kind, on, args.baseline_src if side == "base" else None)
                finally:
                    if burner is not None:
                        shares.append(bench.stop_burner(burner, started))
                r["batch"], r["load"] = args.batch, load
                runs.append((cond, side, r))
                s = summarize(r, args.cutoff)
                print(
                    f"  {cond:6} {NAMES[side]:10} {s['tps']:7.1f} tokens/s  loss1 {s['loss1']:.4f}  "
                    f"rss {s['rss_mb']:,.0f} MB  (loadavg before: {load})"
                    + (f"  [{r['env']}]" if "env" in r else ""),
                    flush=True,
                )
    report(runs, f0, t0, args, shares, same_off, loss_ok)
    print(f"total {time.perf_counter() - t_start:.0f} s", flush=True)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def report(runs, f0, t0, args, shares, same_off, loss_ok) -> None:
    rows, agg = [], {}
    for cond, side, r in runs:
        s = summarize(r, args.cutoff)
        agg.setdefault((cond, side), []).append(s)
        rows.append(
            (
                cond,
                NAMES[side],
                f"{s['tps']:.1f}",
                f"{s['real']:,}",
                f"{s['fill']:.1%}",
                f"{s['pad']:.1%}",
                f"{s['loss1']:.6f}",
                f"{s['seconds']:.1f}",
                f"{s['data_s']:.1f}",
                f"{s['wall']:.1f}",
                f"{s['rss_mb'] / 1024:.2f}",
                s["threads"],
            )
        )
    print()
    print(
        f"forge train vs TRL SFTTrainer, {Path(args.model).name}, LoRA r16, packing on, {args.steps} steps of "
        f"{args.batch} x {args.cutoff} slots, fp32, {time.strftime('%Y-%m-%d %H:%M')} UTC"
    )
    header = ("box", "side", "tokens/s", "real tokens", "of slots", "padding", "loss step 1")
    header += ("train s", "data s", "wall s", "peak RSS GB", "threads")
    print(table(rows, header))
    first = {side: r["first"] for cond, side, r in runs if cond == "idle"}
    if "forge" in first and "trl" in first:
        same = same_first_batch(first["forge"], first["trl"], ordered=False)
        print(
            f"first packed batch: {'the same sequences' if same else 'different sequences'} on both sides "
            f"(forge emits rows in stream order, TRL longest-first), so step-1 losses differ with packing on; "
            f"the packing-off pass checks equality: loss {f0['loss1']:.6f} vs {t0['loss1']:.6f} "
            f"({'equal' if loss_ok else 'NOT equal'} within {LOSS_RTOL:g}), first batch "
            f"{'identical' if same_off else 'different'}"
        )
    print()
    tps = {k: _mean([s["tps"] for s in v]) for k, v in agg.items()}
    rss = {k: max(s["rss_mb"] for s in v) for k, v in agg.items()}
    for cond in ("idle", "burner"):
        for a, b in (("forge", "trl"), ("base", "trl"), ("forge", "base")):
            if (cond, a) in tps and (cond, b) in tps:
                print(
                    f"{cond:6}: {NAMES[a]} / {NAMES[b]} tokens/s {tps[cond, a] / tps[cond, b]:.2f}x; "
                    f"peak RSS {rss[cond, a] / 1024:.2f} vs {rss[cond, b] / 1024:.2f} GB"
                )
    for side in NAMES:
        if ("burner", side) in tps and ("idle", side) in tps:
            print(
                f"{NAMES[side]} slowdown with the burner: {tps['idle', side] / tps['burner', side]:.2f}x "
                f"(idle {tps['idle', side]:.1f} -> {tps['burner', side]:.1f} tokens/s)"
            )
    if shares:
        print(f"burner got {_mean(shares):.0%} of a core on average while it ran")


if __name__ == "__main__":
    main()

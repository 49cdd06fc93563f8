"""Scaling: time and peak memory of forge's stages at three input sizes, each 4x the one before,
plotted on log-log axes with each line's fitted slope (1.0 = linear time; 0 = flat memory).

  build    the build benchmark's input (7 real FLAN CoT TSVs + BELLE dev1K, repeated: 2, 8 and
           32 copies = 68.9k, 276k and 1.10M records) -> tagged zstd Parquet
  dedup    exact + MinHash near-dup over a synthetic corpus of the same sizes (scale_bench's:
           93% unique records, 5% near copies, 2% exact copies); the real input repeated would
           be 50% duplicates at 2 copies and 97% at 32, so its drop rate would move with size
  mix      forge mix: the two built sources concatenated, materialized as Parquet shards with
           the lineage file (ids.parquet)
  trainer input  the mixture streamed -> tokenized (SmolLM2's tokenizer, Alpaca prompt) ->
           packed to 1024 tokens (train/data.py, train/packing.py; as bench/pack_bench.py)

Every measurement runs in its own child process; memory is the largest sum of RSS over the
child and its worker processes at one moment (sampled every 50 ms; pages shared after a fork
count once per process), or the child's own peak if larger. Executors are forge's defaults.

    .venv/bin/python bench/scaling_bench.py [--copies 2,8,32] [--out docs/bench/scaling.png]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
from pathlib import Path

from _common import (
    BENCH_CATALOG,
    REPO,
    SHARED,
    add_keep,
    now,
    repeat_files,
    run_child,
    run_child_tree,
    stop_children,
    table,
    work_dir,
)
from scale_bench import synthetic_corpus

FLAN = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]
STAGES = ["build", "dedup", "mix", "trainer input"]

BUILD = """
from pathlib import Path
from forge.catalog import load_catalog
from forge.build import build_source
from forge.executor import choose
cat = load_catalog(Path({catalog!r}))
_ROWS = sum(build_source(cat.get(n), home=Path({home!r}), force=True, executor=choose(None, None, None)).rows
            for n in {names!r})
"""

DEDUP = """
from pathlib import Path
from forge.dedup import run
from forge.executor import choose
m = run(["synthetic"], Path({out!r}), home=Path({home!r}), executor=choose(None, None, None), overwrite=True)
_ROWS = m["input_rows"]
Path({extra!r}).write_text(__import__("json").dumps({{"dropped": m["dropped"]}}))
"""

MIX = """
from pathlib import Path
from forge.catalog import load_catalog
from forge.executor import choose
from forge.materialize import materialize
from forge.mixture import resolve
root = Path({root!r})
mix = resolve("bench", load_catalog(Path({catalog!r})), home=Path({home!r}), user_dir=root / "mixtures")
_ROWS = materialize(mix, Path({home!r}), executor=choose(None, None, None))["rows"]
"""

TRAINER_INPUT = """
from pathlib import Path
from transformers import AutoTokenizer
from forge.catalog import load_catalog
from forge.mixture import MixtureStream, resolve
from forge.train.data import StreamStats, TokenizeConfig, stream_examples
from forge.train.packing import PackStats, pack
root, home = Path({root!r}), Path({home!r})
tok = AutoTokenizer.from_pretrained({tokenizer!r})
mix = resolve("bench", load_catalog(Path({catalog!r})), home=home, user_dir=root / "mixtures")
stats, tokens = PackStats(), 0
examples = stream_examples(MixtureStream(mix, home), tok, TokenizeConfig(cutoff_len=1024), StreamStats())
for row in pack(examples, 1024, 1000, stats=stats):
    tokens += len(row["input_ids"])
_ROWS = mix.total
Path({extra!r}).write_text(__import__("json").dumps({{"tokens": tokens, "efficiency": stats.efficiency}}))
"""

SYNTH_CATALOG = """
sources:
  synthetic:
    {{description: bench, connector: json, connector_options: {{format: jsonl}}, formatter: columns, local: {path}, lang: EN, task: MT, gen: SI}}
"""


def tokenizer_dir(work: Path) -> str:
    """SmolLM2's tokenizer (a real 49k vocabulary) when the model folder is there, else the
    tiny test model's."""
    real = Path("/work/smollm2")
    if (real / "tokenizer.json").exists():
        return str(real)
    from forge.train.tiny import make_tiny_model

    return str(make_tiny_model(work / "tiny"))


def timed(code: str, extra: Path | None = None) -> dict:
    """One measurement in a child process: seconds, records, memory (MB) and what the child
    left in `extra` (a JSON file)."""
    r = run_child_tree(code)
    r["memory_mb"] = max(r["tree_mb"], r["peak_rss_mb"])
    if extra is not None:
        r.update(json.loads(extra.read_text()))
        extra.unlink()
    return r


def measure(work: Path, copies: int, tokenizer: str) -> tuple[int, dict[str, dict]]:
    """The four stages at one size; returns (records, {stage: child result})."""
    size_dir = work / f"x{copies}"
    flan = repeat_files([SHARED / "flan_cot" / f"{n}_train.tsv" for n in FLAN], copies, size_dir / "flan")
    [belle] = repeat_files([SHARED / "belle" / "dev1K.json"], copies, size_dir / "belle")
    catalog = size_dir / "catalog.yaml"
    catalog.write_text(BENCH_CATALOG.format(flan=flan[0].parent, belle=belle))
    (size_dir / "mixtures").mkdir(exist_ok=True)
    (size_dir / "mixtures" / "bench.yaml").write_text(
        "strategy: concat\nseed: 0\ncomponents:\n  - {source: bench_flan}\n  - {source: bench_belle}\n"
    )
    home = size_dir / "home"
    out: dict[str, dict] = {}
    common = {"catalog": str(catalog), "home": str(home)}
    extra = work / "extra.json"
    out["build"] = timed(BUILD.format(names=("bench_flan", "bench_belle"), **common))
    n = out["build"]["rows"]
    out["mix"] = timed(MIX.format(root=str(size_dir), **common))
    code = TRAINER_INPUT.format(root=str(size_dir), tokenizer=tokenizer, extra=str(extra), **common)
    out["trainer input"] = timed(code, extra)
    shutil.rmtree(size_dir)  # the next size's input; the disk is shared

    # dedup: a synthetic corpus of the same number of records, built untimed
    synth = work / f"synth-{n}"
    synth.mkdir()
    synthetic_corpus(synth / "data.jsonl", n)
    (synth / "catalog.yaml").write_text(SYNTH_CATALOG.format(path=synth / "data.jsonl"))
    run_child(
        BUILD.format(names=("synthetic",), catalog=str(synth / "catalog.yaml"), home=str(synth / "home"))
    )
    (synth / "data.jsonl").unlink()
    out["dedup"] = timed(
        DEDUP.format(out=str(synth / "dd"), home=str(synth / "home"), extra=str(extra)), extra
    )
    shutil.rmtree(synth)
    return n, out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(sizes: list[int], results: list[dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4.2))
    for stage, marker in zip(STAGES, "osD^", strict=True):
        secs = [r[stage]["seconds"] for r in results]
        mem = [r[stage]["memory_mb"] for r in results]
        ax_t.plot(sizes, secs, marker=marker, label=f"{stage} (slope {slope(sizes, secs):.2f})")
        ax_m.plot(sizes, mem, marker=marker, label=f"{stage} (slope {slope(sizes, mem):.2f})")
    for ax, title, unit in ((ax_t, "time", "seconds"), (ax_m, "peak memory (RSS, workers included)", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{s / 1000:,.0f}k" for s in sizes])
        lo, hi = ax.get_ylim()
        ticks = [m * 10**e for e in range(-1, 6) for m in (1, 2, 3, 5, 7) if lo <= m * 10**e <= hi]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks])  # labels inside a single decade too
        ax.minorticks_off()
        ax.set_xlabel("input records")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("forge stages vs input size (2-core CPU box; slope 1 = linear, 0 = flat)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", default="2,8,32", help="input copies per size (34,443 records each)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "scaling.png")
    add_keep(ap)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = work_dir("forge-bench-scaling-", args.keep)
    atexit.register(stop_children)  # an interrupted run leaves no child or worker behind
    tokenizer = tokenizer_dir(work)
    sizes, results = [], []
    for copies in [int(c) for c in args.copies.split(",")]:
        n, r = measure(work, copies, tokenizer)
        sizes.append(n)
        results.append(r)
        print(f"{n:,} records: " + ", ".join(f"{s} {r[s]['seconds']:.1f} s" for s in STAGES), flush=True)
    rows = [
        (f"{n:,}", s, f"{r[s]['seconds']:.1f}", f"{n / r[s]['seconds']:,.0f}", f"{r[s]['memory_mb']:,.0f}")
        for n, r in zip(sizes, results, strict=True)
        for s in STAGES
    ]
    print(f"scaling benchmark, {now()}")
    print(table(rows, ("records", "stage", "seconds", "records/s", "memory MB")))
    for s in STAGES:
        secs = [r[s]["seconds"] for r in results]
        mem = [r[s]["memory_mb"] for r in results]
        print(f"{s}: time slope {slope(sizes, secs):.2f}, memory slope {slope(sizes, mem):.2f}")
    extra = {n: {s: {k: r[s].get(k) for k in ("dropped", "tokens", "efficiency") if k in r[s]} for s in STAGES}
             for n, r in zip(sizes, results, strict=True)}  # fmt: skip
    print("extra:", json.dumps(extra))
    plot(sizes, results, args.out)
    print(f"figure: {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()

"""Build throughput: forge build vs the anchors' way, side by side in one run.

Input: the seven real FLAN CoT TSVs + BELLE dev1K from ../shared/corpora, each repeated
--copies times (30 copies = 1.03M raw records).

  forge   forge build (connector -> Jinja CoT formatter -> lang tag -> zstd Parquet)
  anchor  datasets.load_dataset(csv/json) -> .map(format, batched=False) -> .map(tag,
          batched=True, same detector) -> .to_parquet
  anchor, num_proc  the same with .map(num_proc=<cores>): the functions live at module level
          here (datasets pickles them into its worker processes; closures in a `python -c`
          script do not pickle), and every map gets a new_fingerprint, so no run reads another
          run's cache files

Both render one zero-shot record per raw row with the same templates and tag with the same
detector. Each runs in its own process, so peak RSS is its own. Usage:

    .venv/bin/python bench/build_bench.py [--copies 30]
"""

from __future__ import annotations

import argparse
import os
from functools import cache
from pathlib import Path

from _common import SHARED, add_keep, now, repeat_files, run_child, table, work_dir

FLAN = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]

CATALOG = """
sources:
  bench_flan:
    description: bench
    connector: tsv
    formatter: cot
    options: {{lang: en, modes: [zero_shot], seed: 0}}
    local: {flan}
    lang: EN
    task: MT
    gen: COL
  bench_belle:
    description: bench
    connector: json
    connector_options: {{format: jsonl}}
    formatter: columns
    local: {belle}
    lang: CN
    task: MT
    gen: SI
"""

FORGE = """
from pathlib import Path
from forge.catalog import load_catalog
from forge.build import build_source
cat = load_catalog(Path({catalog!r}))
_ROWS = 0
for name in ("bench_flan", "bench_belle"):
    r = build_source(cat.get(name), home=Path({home!r}), force=True)
    _ROWS += r.rows
"""

ANCHOR = """
import csv
from pathlib import Path
import datasets, pyarrow as pa
from forge.formatters.cot import load_set, set_name_from_file, default_templates_dir
from forge.lang import detect_fast
datasets.disable_progress_bars()
tsvs = {tsvs!r}
parts = []
for path in tsvs:
    tset = load_set(default_templates_dir(), "en", set_name_from_file(Path(path).name))
    ds = datasets.load_dataset("csv", data_files=path, delimiter="\\t", column_names=["question", "answer", "rationale"],
                               quoting=csv.QUOTE_NONE, split="train", cache_dir={cache!r}, keep_default_na=False,
                               features=datasets.Features({{c: datasets.Value("string") for c in ("question", "answer", "rationale")}}))
    def fmt(row, idx, tset=tset):
        ctx = {{"question": row["question"].replace("\\\\n", "\\n"), "answer": row["answer"].replace("\\\\n", "\\n"),
               "chain_of_thought": row["rationale"].replace("\\\\n", "\\n")}}
        instr_t, out_t = tset.zero_shot[idx % len(tset.zero_shot)]
        return {{"instruction": instr_t.render(ctx), "input": "", "output": out_t.render(ctx)}}
    parts.append(ds.map(fmt, with_indices=True, remove_columns=ds.column_names, batched=False))
belle = datasets.load_dataset("json", data_files={belle!r}, split="train", cache_dir={cache!r})
parts.append(belle.map(lambda r: {{"instruction": r["instruction"], "input": r["input"], "output": r["output"]}}, batched=False))
ds = datasets.concatenate_datasets(parts)
def tag(batch):
    text = pa.array([a + "\\n" + b + "\\n" + c for a, b, c in zip(batch["instruction"], batch["input"], batch["output"])])
    codes, scores = detect_fast(text)
    return {{"lang": codes, "lang_score": scores.tolist()}}
ds = ds.map(tag, batched=True, batch_size=1000)
ds.to_parquet({out!r})
_ROWS = ds.num_rows
"""


ANCHOR_PARALLEL = """
import csv, os, sys, time
sys.path.insert(0, {bench!r})
import datasets
from build_bench import anchor_format, anchor_columns, anchor_tag
from forge.formatters.cot import set_name_from_file
from pathlib import Path
datasets.disable_progress_bars()
procs, run = {procs}, time.time_ns()  # run: part of every fingerprint
parts = []
for i, path in enumerate({tsvs!r}):
    ds = datasets.load_dataset("csv", data_files=path, delimiter="\\t", column_names=["question", "answer", "rationale"],
                               quoting=csv.QUOTE_NONE, split="train", cache_dir={cache!r}, keep_default_na=False,
                               features=datasets.Features({{c: datasets.Value("string") for c in ("question", "answer", "rationale")}}))
    parts.append(ds.map(anchor_format, with_indices=True, remove_columns=ds.column_names, num_proc=procs,
                        fn_kwargs={{"set_name": set_name_from_file(Path(path).name)}}, new_fingerprint=f"fmt-{{i}}-{{run}}"))
belle = datasets.load_dataset("json", data_files={belle!r}, split="train", cache_dir={cache!r})
parts.append(belle.map(anchor_columns, remove_columns=belle.column_names, num_proc=procs, new_fingerprint=f"belle-{{run}}"))
ds = datasets.concatenate_datasets(parts)
ds = ds.map(anchor_tag, batched=True, batch_size=1000, num_proc=procs, new_fingerprint=f"tag-{{run}}")
ds.to_parquet({out!r})
_ROWS = ds.num_rows
"""


@cache
def _template_set(name: str):
    from forge.formatters.cot import default_templates_dir, load_set

    return load_set(default_templates_dir(), "en", name)


def anchor_format(row: dict, idx: int, set_name: str) -> dict:
    """The anchor's format step for one FLAN CoT row (module level, so num_proc workers can
    unpickle it; the template set is loaded once per worker)."""
    unescape = lambda x: x.replace("\\n", "\n")  # noqa: E731
    ctx = {
        "question": unescape(row["question"]),
        "answer": unescape(row["answer"]),
        "chain_of_thought": unescape(row["rationale"]),
    }
    tset = _template_set(set_name)
    instr_t, out_t = tset.zero_shot[idx % len(tset.zero_shot)]
    return {"instruction": instr_t.render(ctx), "input": "", "output": out_t.render(ctx)}


def anchor_columns(row: dict) -> dict:
    return {"instruction": row["instruction"], "input": row["input"], "output": row["output"]}


def anchor_tag(batch: dict) -> dict:
    import pyarrow as pa

    from forge.lang import detect_fast

    text = pa.array(
        [
            a + "\n" + b + "\n" + c
            for a, b, c in zip(batch["instruction"], batch["input"], batch["output"], strict=True)
        ]
    )
    codes, scores = detect_fast(text)
    return {"lang": codes, "lang_score": scores.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--small-copies", type=int, default=8, help="second forge run, to show memory is flat")
    ap.add_argument(
        "--num-proc", type=int, default=os.cpu_count() or 1, help="the parallel anchor's num_proc"
    )
    add_keep(ap)
    args = ap.parse_args()
    work = work_dir("forge-bench-build-", args.keep)
    results = []
    for copies in sorted({args.small_copies, args.copies}):
        inp = work / f"in-{copies}"
        tsvs = repeat_files([SHARED / "flan_cot" / f"{s}_train.tsv" for s in FLAN], copies, inp / "flan")
        [belle] = repeat_files([SHARED / "belle" / "dev1K.json"], copies, inp / "belle")
        catalog = work / f"catalog-{copies}.yaml"
        catalog.write_text(CATALOG.format(flan=str(inp / "flan"), belle=str(belle)))
        ours = run_child(FORGE.format(catalog=str(catalog), home=str(work / f"home-{copies}")))
        results.append(("forge build", copies, ours))
        if copies == args.copies:
            anchor = run_child(
                ANCHOR.format(
                    tsvs=[str(t) for t in tsvs],
                    belle=str(belle),
                    cache=str(work / "hf-cache"),
                    out=str(work / "anchor.parquet"),
                )
            )
            results.append(("datasets map+map+to_parquet", copies, anchor))
            parallel = run_child(
                ANCHOR_PARALLEL.format(
                    bench=str(Path(__file__).resolve().parent),
                    procs=args.num_proc,
                    tsvs=[str(t) for t in tsvs],
                    belle=str(belle),
                    cache=str(work / "hf-cache-parallel"),
                    out=str(work / "anchor-parallel.parquet"),
                )
            )
            results.append((f"same, map(num_proc={args.num_proc})", copies, parallel))
    rows = [
        (
            name,
            f"{r['rows']:,}",
            f"{r['seconds']:.1f}",
            f"{r['rows'] / r['seconds']:,.0f}",
            f"{r['peak_rss_mb']:,.0f}",
        )
        for name, _c, r in results
    ]
    print(f"build benchmark, {now()}, input: 7 FLAN CoT TSVs + BELLE dev1K x copies")
    print(table(rows, ("pipeline", "rows", "seconds", "rows/s", "peak RSS MB (largest process)")))
    ours = [r for n, c, r in results if n == "forge build" and c == args.copies][0]
    rate = lambda r: r["rows"] / r["seconds"]  # noqa: E731
    anchor, parallel = [r for n, c, r in results if n != "forge build"]
    print(f"\nspeed ratio forge / anchor: {rate(ours) / rate(anchor):.1f}x")
    print(f"speed ratio forge / anchor with num_proc={args.num_proc}: {rate(ours) / rate(parallel):.1f}x")
    print("(peak RSS of a num_proc run is its largest process; its workers run beside it)")
    same = _same_rows(work / "anchor.parquet", work / "anchor-parallel.parquet")
    print(f"num_proc anchor's rows equal the single-process anchor's, in order: {same}")


def _same_rows(a: Path, b: Path) -> bool:
    """Both Parquet files hold the same rows in the same order (one column in memory at a time)."""
    import pyarrow.parquet as pq

    return all(
        pq.read_table(a, columns=[c]).column(0).equals(pq.read_table(b, columns=[c]).column(0))
        for c in ("instruction", "input", "output", "lang", "lang_score")
    )


if __name__ == "__main__":
    main()

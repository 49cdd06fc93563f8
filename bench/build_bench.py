"""Build throughput: forge build vs the anchors' way, side by side in one run.

Input: the seven real FLAN CoT TSVs + BELLE dev1K from ../shared/corpora, each repeated
--copies times (30 copies = 1.03M raw records).

  forge   forge build (connector -> Jinja CoT formatter -> lang tag -> zstd Parquet)
  anchor  datasets.load_dataset(csv/json) -> .map(format, batched=False) -> .map(tag,
          batched=True, same detector) -> .to_parquet

Both render one zero-shot record per raw row with the same templates and tag with the same
detector. Each runs in its own process, so peak RSS is its own. Usage:

    .venv/bin/python bench/build_bench.py [--copies 30]
"""

from __future__ import annotations

import argparse

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--small-copies", type=int, default=8, help="second forge run, to show memory is flat")
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
    anchor = [r for n, c, r in results if n != "forge build"][0]
    print(
        f"\nspeed ratio forge / anchor: {(ours['rows'] / ours['seconds']) / (anchor['rows'] / anchor['seconds']):.1f}x"
    )
    small = [r for n, c, r in results if n == "forge build" and c == args.small_copies]
    if small and args.small_copies != args.copies:
        print(
            f"forge peak RSS at {args.small_copies} vs {args.copies} copies: "
            f"{small[0]['peak_rss_mb']:.0f} MB vs {ours['peak_rss_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()

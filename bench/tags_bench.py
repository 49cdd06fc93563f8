"""Tags, filters and dedup, side by side in one run.

1. language ID: forge's default detector vs langdetect alone, on the mixed gold set
   (tests/data/lang_gold.jsonl: 14 languages written for forge, plus the real en/zh samples
   in ../shared/corpora): texts/s and agreement with the gold labels. Then agreement on the
   real mixed gold set (tests/data/lang_gold_real.jsonl: GAOKAO LaTeX math, code answers,
   short chat turns, Chinese prompts over English content, translated answers), per kind:
   forge's tags as a build writes them vs langdetect on the whole record text (lang), and
   forge's lang_output vs langdetect on the answer (lang_output). Then the answer pass alone
   (forge.lang.detect_output, what a build adds for lang_output) on the real alpaca and BELLE
   answers: answers/s.
2. dedup: exact + MinHash near-dup over >= 1M built records (FLAN CoT + BELLE dev1K,
   repeated): records/s and peak RSS.
3. tag filter: forge.select(query) (pushed-down polars scan) vs datasets.load_dataset
   ("parquet") + .filter on the same built shards: rows/s.

    .venv/bin/python bench/tags_bench.py [--copies 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import BENCH_CATALOG as CATALOG
from _common import REPO, SHARED, add_keep, now, repeat_files, run_child, table, work_dir

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the gold sets live beside the tests that use them

BUILD = """
from pathlib import Path
from forge.catalog import load_catalog
from forge.build import build_source
cat = load_catalog(Path({catalog!r}))
_ROWS = 0
for name in ("bench_flan", "bench_belle"):
    _ROWS += build_source(cat.get(name), home=Path({home!r})).rows
"""

DEDUP = """
from pathlib import Path
from forge.dedup import run
m = run(["bench_flan", "bench_belle"], Path({out!r}), home=Path({home!r}))
_ROWS = m["input_rows"]
print("dropped", m["dropped_reasons"])
"""

SELECT = """
from pathlib import Path
import forge
df = forge.select({query!r}, ["bench_flan", "bench_belle"], home=Path({home!r})).collect()
_ROWS = df.height
"""

ANCHOR_FILTER = """
import glob, datasets
datasets.disable_progress_bars()
files = sorted(glob.glob({pattern!r}))
ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir={cache!r})
out = ds.filter(lambda r: r["lang"] == "en" and r["category"] == "cot" and len(r["output"]) > 200)
_ROWS = out.num_rows
"""


def lang_bench() -> list[tuple]:
    import pyarrow as pa

    from forge.lang import detect_langdetect
    from tests.test_tags import detect_gold, gold_set

    rows = gold_set()
    texts = pa.array([r["text"] for r in rows])
    gold = [r["lang"] for r in rows]
    t = time.perf_counter()
    reps = 10
    for _ in range(reps):
        fast, _s = detect_gold(rows)
    fast_s = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    slow, _s = detect_langdetect(texts)
    slow_s = time.perf_counter() - t
    agree = lambda codes: sum(c == g for c, g in zip(codes, gold, strict=True)) / len(gold)  # noqa: E731
    other = [i for i, g in enumerate(gold) if g not in ("en", "zh")]
    agree_other = lambda codes: sum(codes[i] == gold[i] for i in other) / len(other)  # noqa: E731
    n = len(rows)
    return [
        ("forge fast (script + function words + cld2)", n, fast_s, agree(fast), agree_other(fast)),
        ("langdetect (seeded)", n, slow_s, agree(slow), agree_other(slow)),
    ]


def output_speed() -> tuple[int, float, float]:
    """(answers, forge seconds, langdetect seconds) for the answer pass on real answers."""
    import pyarrow as pa

    from forge.lang import detect_langdetect, detect_output

    answers = [r["output"] for r in json.loads((SHARED / "alpaca" / "alpaca_5000.json").read_text())]
    lines = (SHARED / "belle" / "dev1K.json").read_text().splitlines()
    answers += [json.loads(x)["output"] for x in lines if x.strip()]
    arr = pa.array(answers)
    prompts = ["en"] * len(answers)
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        detect_output(arr, prompts)
    fast_s = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    detect_langdetect(arr)
    return len(answers), fast_s, time.perf_counter() - t


def real_output_bench(work) -> list[tuple]:
    """lang_output agreement on the real gold set's answer labels, per kind."""
    from collections import defaultdict

    import pyarrow as pa

    from forge.lang import detect_langdetect
    from tests.test_fidelity import real_output_gold

    rows = real_output_gold(work / "gold-output-home")
    slow, _s = detect_langdetect(pa.array([r["output"] for r in rows]))
    by_kind = defaultdict(lambda: [0, 0, 0])
    for r, other in zip(rows, slow, strict=True):
        for kind in (r["kind"], "all"):
            by_kind[kind][0] += 1
            by_kind[kind][1] += r["lang_output"] == r["gold"]
            # langdetect has no "no answer": an empty answer counts as und for it too
            by_kind[kind][2] += (other if r["output"].strip() else "und") == r["gold"]
    return [(kind, n, ours / n, theirs / n) for kind, (n, ours, theirs) in by_kind.items()]


def real_mixed_bench(work) -> list[tuple]:
    from collections import defaultdict

    import pyarrow as pa

    from forge.lang import detect_langdetect
    from tests.real_corpora import real_mixed_gold

    rows = real_mixed_gold(work / "gold-home")
    slow, _s = detect_langdetect(pa.array([r["text"] for r in rows]))
    by_kind = defaultdict(lambda: [0, 0, 0])
    for r, other in zip(rows, slow, strict=True):
        for kind in (r["kind"], "all"):
            by_kind[kind][0] += 1
            by_kind[kind][1] += r["lang"] == r["gold"]
            by_kind[kind][2] += other == r["gold"]
    return [(kind, n, ours / n, theirs / n) for kind, (n, ours, theirs) in by_kind.items()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=30)
    add_keep(ap)
    args = ap.parse_args()
    print(f"tags benchmark, {now()}")
    lang = lang_bench()
    print(
        table(
            [(name, f"{n:,}", f"{n / s:,.0f}", f"{a:.2%}", f"{o:.2%}") for name, n, s, a, o in lang],
            ("detector", "texts", "texts/s", "agreement (all)", "agreement (14 other langs)"),
        )
    )
    print(f"speed ratio forge / langdetect: {lang[1][2] / lang[0][2]:.0f}x\n")

    work = work_dir("forge-bench-tags-", args.keep)
    print("real mixed gold set (records that fooled language ID before; hand-labelled)")
    print(
        table(
            [
                (kind, f"{n:,}", f"{ours:.2%}", f"{theirs:.2%}")
                for kind, n, ours, theirs in real_mixed_bench(work)
            ],
            ("kind", "records", "forge (build tags)", "langdetect (whole record)"),
        )
    )
    print()
    print("real mixed gold set, answer labels (lang_output)")
    print(
        table(
            [
                (kind, f"{n:,}", f"{ours:.2%}", f"{theirs:.2%}")
                for kind, n, ours, theirs in real_output_bench(work)
            ],
            ("kind", "records", "forge (build lang_output)", "langdetect (answer)"),
        )
    )
    n, fast_s, slow_s = output_speed()
    print(
        f"answer pass (detect_output) on {n:,} real alpaca + BELLE answers: forge {n / fast_s:,.0f}/s, "
        f"langdetect {n / slow_s:,.0f}/s\n"
    )
    repeat_files(
        [
            SHARED / "flan_cot" / f"{s}_train.tsv"
            for s in ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")
        ],
        args.copies,
        work / "flan",
    )
    [belle] = repeat_files([SHARED / "belle" / "dev1K.json"], args.copies, work / "belle")
    (work / "catalog.yaml").write_text(CATALOG.format(flan=str(work / "flan"), belle=str(belle)))
    home = work / "home"
    run_child(BUILD.format(catalog=str(work / "catalog.yaml"), home=str(home)))
    dd = run_child(DEDUP.format(out=str(work / "dedup"), home=str(home)))
    query = "lang == en and category == cot and output_chars > 200"
    ours = run_child(SELECT.format(query=query, home=str(home)))
    anchor = run_child(
        ANCHOR_FILTER.format(pattern=str(home / "sources" / "*" / "v*" / "*.parquet"), cache=str(work / "hf"))
    )
    total = dd["rows"]
    rows = [
        (
            "dedup exact + MinHash (forge dedup)",
            f"{total:,}",
            f"{dd['seconds']:.1f}",
            f"{total / dd['seconds']:,.0f}",
            f"{dd['peak_rss_mb']:,.0f}",
        ),
        (
            "tag filter: forge.select (pushed-down scan)",
            f"{total:,} scanned, {ours['rows']:,} kept",
            f"{ours['seconds']:.2f}",
            f"{total / ours['seconds']:,.0f}",
            f"{ours['peak_rss_mb']:,.0f}",
        ),
        (
            "tag filter: datasets load_dataset + .filter",
            f"{total:,} scanned, {anchor['rows']:,} kept",
            f"{anchor['seconds']:.2f}",
            f"{total / anchor['seconds']:,.0f}",
            f"{anchor['peak_rss_mb']:,.0f}",
        ),
    ]
    print(table(rows, ("job", "records", "seconds", "records/s", "peak RSS MB")))
    print(f"tag filter ratio forge / datasets: {anchor['seconds'] / ours['seconds']:.0f}x")
    assert ours["rows"] == anchor["rows"], "both filters must keep the same rows"
    json.dumps(lang)


if __name__ == "__main__":
    main()

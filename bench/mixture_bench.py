"""Mixture sampling: forge's sampler vs datasets.interleave_datasets, side by side in one run.

1. id stream: forge's Schedule producing 10M (component, record) ids over 5 components,
   vs interleave_datasets(probabilities=...) on map-style datasets of the same proportions
   (the anchor loops in Python, so it runs on --anchor-ids ids and is compared by rate).
2. records into Arrow batches: forge's MixtureStream over built Parquet sources vs
   interleave_datasets over streaming (iterable) Parquet datasets, same sizes and rates.
Each measurement runs in its own process, so peak RSS is its own.

    .venv/bin/python bench/mixture_bench.py [--ids 10000000] [--anchor-ids 1000000] [--hash]

--hash also prints a SHA-256 of the --ids stream (positions, components, records as int64,
window by window; untimed): a change to forge/sampling.py that keeps it keeps every id.
"""

from __future__ import annotations

import argparse

from _common import add_keep, now, run_child, table, work_dir

SHARES = [0.4, 0.3, 0.2, 0.06, 0.04]

OURS_IDS = """
from forge.sampling import Schedule, largest_remainder
import numpy as np
total = {total}
counts = largest_remainder(total, np.array({shares}))
s = Schedule(counts.tolist(), counts.tolist(), seed=0)
_T0 = __import__("time").perf_counter()  # time the sampling, not the imports (as for the anchor)
_ROWS = 0
for b in s.iter_blocks():
    _ROWS += len(b.records)
"""

ANCHOR_IDS = """
import numpy as np, datasets
datasets.disable_progress_bars()
total = {total}
sizes = [int(total * p) for p in {shares}]
parts = [datasets.Dataset.from_dict({{"c": np.full(n, i, dtype=np.int64), "r": np.arange(n)}}) for i, n in enumerate(sizes)]
_T0 = __import__("time").perf_counter()  # time the interleave, not the toy datasets' creation
mixed = datasets.interleave_datasets(parts, probabilities={shares}, seed=0, stopping_strategy="first_exhausted")
_ROWS = 0
for batch in mixed.iter(batch_size=10000):
    _ROWS += len(batch["c"])
"""

STREAM_HASH = """
import hashlib
import numpy as np
from forge.sampling import Schedule, largest_remainder
counts = largest_remainder({total}, np.array({shares}))
h = hashlib.sha256()
_ROWS = 0
for b in Schedule(counts.tolist(), counts.tolist(), seed=0).iter_blocks():
    for a in (b.positions, b.components, b.records):
        h.update(a.astype(np.int64).tobytes())
    _ROWS += len(b.records)
print("sha256", h.hexdigest()[:16])
"""

MAKE_SOURCES = """
import json, random
from pathlib import Path
from forge.catalog import load_catalog
from forge.build import build_source
root = Path({root!r})
rng = random.Random(0)
words = "the model reads data and learns to answer questions with care".split()
lines = []
cat = ["sources:"]
for i, share in enumerate({shares}):
    n = int({records} * share)
    path = root / f"src{{i}}.jsonl"
    with open(path, "w") as fh:
        for j in range(n):
            fh.write(json.dumps({{"instruction": " ".join(rng.choices(words, k=12)), "input": "",
                                 "output": " ".join(rng.choices(words, k=40))}}) + "\\n")
    cat += [f"  src{{i}}:", "    description: bench", "    connector: json", "    formatter: columns",
            f"    local: {{path}}", "    lang: EN", "    task: MT", "    gen: SI"]
(root / "catalog.yaml").write_text("\\n".join(cat) + "\\n")
(root / "mixtures").mkdir(exist_ok=True)
comps = "\\n".join(f"  - {{{{source: src{{i}}, weight: {{w}}}}}}" for i, w in enumerate({shares}))
(root / "mixtures" / "bench.yaml").write_text("strategy: rates\\nstop: first_exhausted\\ncomponents:\\n" + comps + "\\n")
c = load_catalog(root / "catalog.yaml")
for i in range(len({shares})):
    build_source(c.get(f"src{{i}}"), home=root / "home")
_ROWS = 0
"""

OURS_STREAM = """
from pathlib import Path
from forge.catalog import load_catalog
from forge.mixture import resolve, MixtureStream
root = Path({root!r})
m = resolve("bench", load_catalog(root / "catalog.yaml"), home=root / "home", user_dir=root / "mixtures")
_ROWS = 0
for t in MixtureStream(m, root / "home"):
    _ROWS += t.num_rows
"""

ANCHOR_STREAM = """
from pathlib import Path
import datasets
datasets.disable_progress_bars()
root = Path({root!r})
parts = [datasets.load_dataset("parquet", data_files=str(root / "home" / "sources" / f"src{{i}}" / "v*" / "*.parquet"),
                               split="train", streaming=True) for i in range(len({shares}))]
mixed = datasets.interleave_datasets(parts, probabilities={shares}, seed=0, stopping_strategy="first_exhausted")
_ROWS = 0
for batch in mixed.iter(batch_size=1000):
    _ROWS += len(batch["id"])
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ids", type=int, default=10_000_000)
    ap.add_argument("--anchor-ids", type=int, default=1_000_000)
    ap.add_argument("--records", type=int, default=200_000, help="records over the 5 built sources (part 2)")
    ap.add_argument("--hash", action="store_true", help="print a hash of the id stream (untimed)")
    add_keep(ap)
    args = ap.parse_args()
    if args.hash:
        print(
            f"id stream sha256 (first 16 hex), {args.ids:,} ids:",
            run_child(STREAM_HASH.format(total=args.ids, shares=SHARES))["sha256"],
        )
    results = []
    ours = run_child(OURS_IDS.format(total=args.ids, shares=SHARES))
    anchor = run_child(ANCHOR_IDS.format(total=args.anchor_ids, shares=SHARES))
    results += [
        ("id stream", "forge Schedule", ours),
        ("id stream", "interleave_datasets (map-style)", anchor),
    ]
    root = work_dir("forge-bench-mix-", args.keep)
    run_child(MAKE_SOURCES.format(root=str(root), shares=SHARES, records=args.records))
    ours_s = run_child(OURS_STREAM.format(root=str(root)))
    anchor_s = run_child(ANCHOR_STREAM.format(root=str(root), shares=SHARES))
    results += [
        ("records -> Arrow", "forge MixtureStream", ours_s),
        ("records -> Arrow", "interleave_datasets (streaming)", anchor_s),
    ]
    rows = [
        (
            what,
            who,
            f"{r['rows']:,}",
            f"{r['seconds']:.2f}",
            f"{r['rows'] / r['seconds']:,.0f}",
            f"{r['peak_rss_mb']:,.0f}",
        )
        for what, who, r in results
    ]
    print(f"mixture benchmark, {now()}, 5 components with shares {SHARES}")
    print(table(rows, ("stage", "pipeline", "rows", "seconds", "rows/s", "peak RSS MB")))
    rate = lambda r: r["rows"] / r["seconds"]  # noqa: E731
    print(f"\nid stream ratio forge / anchor: {rate(ours) / rate(anchor):.0f}x")
    print(f"records ratio forge / anchor:   {rate(ours_s) / rate(anchor_s):.1f}x")


if __name__ == "__main__":
    main()

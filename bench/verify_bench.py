"""What read-time integrity costs: every reader (mix, train, stats, filter, dedup, publish) checks
each shard's size and xxh3 against the manifest, and the manifest's seal, before it reads.

Side by side, in one run, on one built source of synthetic records:
1. verify only: forge's `open_built` (seal + every shard's xxh3), cold process;
2. a full read with the check: `open_built`, then polars reads every shard;
3. the same full read without the check: polars reads the shard files directly, as a careful
   user scripting it would;
4. the check by another tool: `sha256sum` over the same shards (what a manual check would use).
Each runs in its own process, after one warm-up read, so the page cache is hot for all of them.

    .venv/bin/python bench/verify_bench.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import subprocess
import time

from _common import add_keep, now, run_child, table, work_dir

MAKE = """
import json, random
from pathlib import Path
from forge.catalog import load_catalog
from forge.build import build_source
root = Path({root!r})
rng = random.Random(0)
words = "the model reads data and learns to answer questions with care".split()
with open(root / "src.jsonl", "w") as fh:
    for j in range({records}):
        fh.write(json.dumps({{"instruction": " ".join(rng.choices(words, k=12)), "input": "",
                             "output": " ".join(rng.choices(words, k=60))}}) + "\\n")
(root / "catalog.yaml").write_text("sources:\\n  src:\\n    description: bench\\n    connector: json\\n"
    "    formatter: columns\\n    local: " + str(root / "src.jsonl") + "\\n    lang: EN\\n    task: MT\\n    gen: SI\\n")
build_source(load_catalog(root / "catalog.yaml").get("src"), home=root / "home")
_ROWS = 0
"""

VERIFY_ONLY = """
from forge.built import open_built
_T0 = __import__("time").perf_counter()  # time the check, not the imports
built = open_built("src", __import__("pathlib").Path({home!r}))
_ROWS = built.manifest["rows"]
"""

READ_CHECKED = """
import polars as pl
from forge.built import open_built
_T0 = __import__("time").perf_counter()
built = open_built("src", __import__("pathlib").Path({home!r}))
_ROWS = sum(pl.read_parquet(f).height for f in built.files())
"""

READ_UNCHECKED = """
import glob
import polars as pl
from forge.built import open_built  # the same imports as the checked read
_T0 = __import__("time").perf_counter()
_ROWS = sum(pl.read_parquet(f).height for f in sorted(glob.glob({pattern!r})))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    add_keep(ap)
    args = ap.parse_args()
    root = work_dir("forge-bench-verify-", args.keep)
    run_child(MAKE.format(root=str(root), records=args.records))
    home = str(root / "home")
    pattern = str(root / "home" / "sources" / "src" / "v*" / "part-*.parquet")
    run_child(READ_UNCHECKED.format(pattern=pattern))  # warm the page cache
    verify = run_child(VERIFY_ONLY.format(home=home))
    checked = run_child(READ_CHECKED.format(home=home))
    unchecked = run_child(READ_UNCHECKED.format(pattern=pattern))
    t0 = time.perf_counter()
    subprocess.run(f"sha256sum {pattern} > /dev/null", shell=True, check=True)
    sha = time.perf_counter() - t0
    shard_mb = (
        sum(p.stat().st_size for p in (root / "home" / "sources" / "src").glob("v*/part-*.parquet")) / 1e6
    )
    rows = [
        (
            "verify only (seal + xxh3 of every shard)",
            f"{verify['seconds']:.3f}",
            f"{shard_mb / verify['seconds']:,.0f}",
        ),
        ("sha256sum of the same shards", f"{sha:.3f}", f"{shard_mb / sha:,.0f}"),
        ("full read, forge-checked (open_built + polars)", f"{checked['seconds']:.3f}", ""),
        ("full read, unchecked (polars on the files)", f"{unchecked['seconds']:.3f}", ""),
    ]
    print(f"# verify_bench {now()}: {args.records:,} records, {shard_mb:.1f} MB of shards")
    print(table(rows, ("what", "seconds", "MB/s")))
    print(f"check cost on a full read: {checked['seconds'] / unchecked['seconds']:.2f}x the unchecked read "
          f"(+{checked['seconds'] - unchecked['seconds']:.3f} s); xxh3 vs sha256sum: {sha / verify['seconds']:.1f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()

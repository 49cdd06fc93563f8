"""Connector throughput and memory: records/s and MB/s on the largest real samples in
../shared/corpora, scaled up by repetition to >= 1M records, each at a small and a large
size to show memory stays flat. Connectors only (raw bytes -> raw records), each run in its
own process; peak RSS from getrusage.

The anchor for JSONL is datasets.load_dataset("json") on the same file (its Arrow cache
build), run in the same session.

    .venv/bin/python bench/connector_bench.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import SHARED, add_keep, now, repeat_files, run_child, table, work_dir

CHILD = """
from pathlib import Path
from forge.connectors import CONNECTORS, SourceFile
p = Path({path!r})
_ROWS = 0
rejected = []
for batch in CONNECTORS[{connector!r}].read([SourceFile(p, p.name)], {options!r}, lambda *a: rejected.append(a)):
    _ROWS += len(batch)
assert not rejected, rejected[:1]
"""

ANCHOR = """
import datasets
datasets.disable_progress_bars()
ds = datasets.load_dataset("json", data_files={path!r}, split="train", cache_dir={cache!r})
_ROWS = ds.num_rows
"""


def json_array(src: Path, copies: int, out: Path) -> Path:
    """A JSON array holding the source array's elements `copies` times (streamed write)."""
    items = json.loads(src.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("[\n")
        first = True
        for _ in range(copies):
            for item in items:
                fh.write(("" if first else ",\n") + "    " + json.dumps(item, ensure_ascii=False))
                first = False
        fh.write("\n]\n")
    return out


def csv_repeat(src: Path, copies: int, out: Path) -> Path:
    data = src.read_bytes()
    header, body = data.split(b"\n", 1)
    with open(out, "wb") as fh:
        fh.write(header + b"\n")
        for _ in range(copies):
            fh.write(body if body.endswith(b"\n") else body + b"\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    add_keep(ap)
    args = ap.parse_args()
    work = work_dir("forge-bench-conn-", args.keep)
    cases = [  # name, connector, options, sample, records per copy, builder
        ("JSONL (BELLE dev1K)", "json", {"format": "jsonl"}, SHARED / "belle" / "dev1K.json", 1000, "lines"),
        (
            "JSON array (code_alpaca)",
            "json",
            {"format": "array"},
            SHARED / "code_alpaca" / "code_alpaca_2k.json",
            2017,
            "array",
        ),
        ("TSV (FLAN gsm8k)", "tsv", {}, SHARED / "flan_cot" / "gsm8k_train.tsv", 7473, "lines"),
        (
            "CSV GB18030 (Chinese-medical)",
            "csv",
            {"encoding": "gb18030"},
            SHARED / "chinese_medical" / "sample_IM_neike_5000-6000.csv",
            500,
            "csv",
        ),
    ]
    rows = []
    for name, connector, options, sample, per_copy, kind in cases:
        for target in (args.records // 8, args.records):
            copies = max(1, -(-target // per_copy))
            out = work / f"{copies}" / sample.name
            out.parent.mkdir(parents=True, exist_ok=True)
            if kind == "lines":
                [out] = repeat_files([sample], copies, out.parent)
            elif kind == "array":
                json_array(sample, copies, out)
            else:
                csv_repeat(sample, copies, out)
            mb = out.stat().st_size / 1e6
            r = run_child(CHILD.format(path=str(out), connector=connector, options=options))
            rows.append(
                (
                    name,
                    f"{r['rows']:,}",
                    f"{mb:,.0f}",
                    f"{r['rows'] / r['seconds']:,.0f}",
                    f"{mb / r['seconds']:,.1f}",
                    f"{r['peak_rss_mb']:,.0f}",
                )
            )
            if connector == "json" and options["format"] == "jsonl" and target == args.records:
                a = run_child(ANCHOR.format(path=str(out), cache=str(work / "hf")))
                rows.append(
                    (
                        "  anchor: load_dataset('json')",
                        f"{a['rows']:,}",
                        f"{mb:,.0f}",
                        f"{a['rows'] / a['seconds']:,.0f}",
                        f"{mb / a['seconds']:,.1f}",
                        f"{a['peak_rss_mb']:,.0f}",
                    )
                )
    print(f"connector benchmark, {now()} (raw records only; no formatting or tagging)")
    print(table(rows, ("format", "records", "MB", "records/s", "MB/s", "peak RSS MB")))


if __name__ == "__main__":
    main()

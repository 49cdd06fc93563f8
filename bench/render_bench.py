"""Template render throughput: forge's compiled Jinja (column-wise where the template
allows) vs plain str.format on the same records and template wording, side by side.

Records: the 7 real FLAN CoT TSVs from ../shared/corpora, repeated to --records.
  forge        forge.formatters.cot zero-shot: sandboxed Jinja compiled once, simple templates
               rendered for a whole Arrow column with an element-wise join
  jinja/row    the same compiled templates rendered one record at a time
  str.format   the same wording as Python format strings, one record at a time

    .venv/bin/python bench/render_bench.py [--records 300000]
"""

from __future__ import annotations

import argparse
import re
import time

from _common import SHARED, now, table

from forge.connectors.base import RawBatch
from forge.formatters import cot
from forge.paths import templates_dir

FLAN = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]


def load_rows(records: int) -> dict[str, list[tuple[str, str, str]]]:
    per_set = {}
    for name in FLAN:
        lines = [x for x in (SHARED / "flan_cot" / f"{name}_train.tsv").read_text().split("\n") if x]
        per_set[name] = [tuple(x.split("\t")) for x in lines]
    total = sum(len(v) for v in per_set.values())
    reps = max(1, -(-records // total))
    return {k: v * reps for k, v in per_set.items()}


def to_format_string(jinja_source: str) -> str:
    escaped = jinja_source.replace("{", "{{").replace("}", "}}")
    return re.sub(r"\{\{\{\{ (\w+) \}\}\}\}", r"{\1}", escaped)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    args = ap.parse_args()
    data = load_rows(args.records)
    n = sum(len(v) for v in data.values())
    tdir = templates_dir()
    fmt = cot.make({"modes": ["zero_shot"], "templates_dir": str(tdir)}, "bench")

    t0 = time.perf_counter()
    for name, rows in data.items():
        for start in range(0, len(rows), 8192):
            chunk = rows[start : start + 8192]
            b = RawBatch(
                f"{name}_train.tsv",
                columns={
                    "question": [r[0] for r in chunk],
                    "answer": [r[1] for r in chunk],
                    "rationale": [r[2] for r in chunk],
                },
            )
            b.rows = list(range(start, start + len(chunk)))
            b.lines = [r + 1 for r in b.rows]
            fmt(b, lambda *a: None)
    ours = time.perf_counter() - t0

    def per_record(render) -> float:
        t = time.perf_counter()
        for name, rows in data.items():
            ts = cot.load_set(tdir, "en", name)
            pairs = ts.zero_shot
            k = len(pairs)
            for i, (q, a, r) in enumerate(rows):
                ctx = {
                    "question": q.replace("\\n", "\n"),
                    "answer": a.replace("\\n", "\n"),
                    "chain_of_thought": r.replace("\\n", "\n"),
                }
                render(pairs[i % k], ctx)
        return time.perf_counter() - t

    jinja_row = per_record(lambda pair, ctx: (pair[0].render(ctx), pair[1].render(ctx)))
    formats = {}

    def with_format(pair, ctx):
        key = pair[0].id
        if key not in formats:
            formats[key] = (to_format_string(pair[0].source), to_format_string(pair[1].source))
        f_in, f_out = formats[key]
        return f_in.format(**ctx), f_out.format(**ctx)

    fmt_time = per_record(with_format)
    rows = [
        ("forge (compiled Jinja, column-wise)", f"{n:,}", f"{ours:.2f}", f"{n / ours:,.0f}"),
        ("Jinja, one record at a time", f"{n:,}", f"{jinja_row:.2f}", f"{n / jinja_row:,.0f}"),
        ("str.format, one record at a time", f"{n:,}", f"{fmt_time:.2f}", f"{n / fmt_time:,.0f}"),
    ]
    print(f"render benchmark, {now()}, zero-shot FLAN CoT records (instruction + output per record)")
    print(table(rows, ("renderer", "records", "seconds", "records/s")))
    print(f"\nforge / str.format speed: {fmt_time / ours:.2f}x (target >= 0.5x)")


if __name__ == "__main__":
    main()

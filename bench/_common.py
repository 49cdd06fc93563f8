"""Helpers shared by the benchmarks: input scaling, child-process timing, peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "corpora"


def repeat_files(files: list[Path], copies: int, out_dir: Path) -> list[Path]:
    """Concatenate each file `copies` times (line-based formats only)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        target = out_dir / f.name
        if not target.exists() or target.stat().st_size != f.stat().st_size * copies:
            data = f.read_bytes()
            if not data.endswith(b"\n"):
                data += b"\n"
            with open(target, "wb") as fh:
                for _ in range(copies):
                    fh.write(data)
        out.append(target)
    return out


CHILD_FOOTER = """
import json as _json, resource as _resource, time as _time
print("__RESULT__" + _json.dumps({"seconds": _time.perf_counter() - _T0, "rows": _ROWS,
      "peak_rss_mb": max(_resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss,
                         _resource.getrusage(_resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}))
"""


def run_child(code: str, env: dict | None = None) -> dict:
    """Run a snippet in a fresh interpreter; it must set _T0 and _ROWS. Returns its timing."""
    full = "import time as _t\n_T0 = _t.perf_counter()\n" + code + CHILD_FOOTER
    proc = subprocess.run(
        [sys.executable, "-c", full],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = [x for x in proc.stdout.splitlines() if x.startswith("__RESULT__")][-1]
    result = json.loads(line.removeprefix("__RESULT__"))
    for x in proc.stdout.splitlines():  # extra "name value" lines a child prints
        parts = x.split()
        if len(parts) == 2 and not x.startswith("__"):
            try:
                result[parts[0]] = f"{float(parts[1]):.2%}" if parts[0] == "efficiency" else parts[1]
            except ValueError:
                pass
    return result


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), "-+-".join("-" * w for w in widths)]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M")


# FLAN CoT TSVs (zero-shot only) + BELLE JSONL, for benchmarks that need built sources
BENCH_CATALOG = """
sources:
  bench_flan:
    {{description: bench, connector: tsv, formatter: cot, options: {{lang: en, modes: [zero_shot], seed: 0}}, local: {flan}, lang: EN, task: MT, gen: COL}}
  bench_belle:
    {{description: bench, connector: json, connector_options: {{format: jsonl}}, formatter: columns, local: {belle}, lang: CN, task: MT, gen: SI}}
"""


def work_dir(prefix: str, keep: bool) -> Path:
    """A fresh temporary work folder, removed when the benchmark exits (also on an error or
    Ctrl-C) unless --keep was given."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    if keep:
        atexit.register(lambda: print(f"work folder kept: {path}"))
    else:
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def add_keep(ap) -> None:
    ap.add_argument("--keep", action="store_true", help="keep the work folder (default: removed at exit)")

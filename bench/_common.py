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


_TREE_CHILDREN: list = []


def stop_children() -> None:
    """Kill every run_child_tree child still running, with all its workers (its process
    group); register with atexit so that an interrupted benchmark leaves nothing behind."""
    import signal

    for proc in _TREE_CHILDREN:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


class TreeMemory:
    """Memory of the process tree under `pid`, sampled every 50 ms: peak_mb, the largest VmHWM
    of any one process (exact for each process seen); tree_mb, the largest sum of VmRSS over
    all of them at one moment (spikes shorter than a sample can be missed); tree_pss_mb, the
    same with each process's PSS, read every 4th sample (smaps_rollup walks the page tables).
    RSS counts a shared page (a library, a forked parent's memory) once in every process that
    maps it, so a tree of workers that share much looks larger than it is; PSS splits each
    shared page among its sharers, so the sum is what the tree takes from the machine. Worker
    processes of any kind count: spawned, forked, or a forkserver's children."""

    def __init__(self, pid: int):
        import threading

        self.pid, self.peak_mb, self.tree_mb, self.tree_pss_mb = pid, 0.0, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree(self) -> list[int]:
        parent = {}
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:  # field 4 of stat, after the parenthesized command name
                    parent[int(p)] = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    pass
        tree, todo = [], [self.pid]
        while todo:
            p = todo.pop()
            tree.append(p)
            todo += [c for c, pp in parent.items() if pp == p]
        return tree

    def _run(self) -> None:
        sample = 0
        while not self._stop.is_set():
            total, pss, with_pss = 0.0, 0.0, sample % 4 == 0
            for p in self._tree():
                try:
                    status = Path(f"/proc/{p}/status").read_text().splitlines()
                    rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines() if with_pss else []
                except OSError:
                    continue
                for line in status:
                    if line.startswith("VmHWM:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                    elif line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
                pss += sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024
            self.tree_mb = max(self.tree_mb, total)
            self.tree_pss_mb = max(self.tree_pss_mb, pss)
            sample += 1
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_child_tree(code: str, env: dict | None = None) -> dict:
    """run_child, with the memory of the child's whole process tree (TreeMemory): peak_mb,
    tree_mb and tree_pss_mb are added. The child runs in its own session (see stop_children)."""
    full = "import time as _t\n_T0 = _t.perf_counter()\n" + code + CHILD_FOOTER
    proc = subprocess.Popen([sys.executable, "-c", full], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
    _TREE_CHILDREN.append(proc)
    with TreeMemory(proc.pid) as mem:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(err[-3000:])
    line = [x for x in out.splitlines() if x.startswith("__RESULT__")][-1]
    result = json.loads(line.removeprefix("__RESULT__"))
    result["peak_mb"] = max(mem.peak_mb, result["peak_rss_mb"])
    result["tree_mb"] = mem.tree_mb
    result["tree_pss_mb"] = mem.tree_pss_mb
    return result

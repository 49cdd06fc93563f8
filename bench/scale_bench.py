"""Scale-out: forge build and dedup with the local executor and with Ray, side by side in one run.

  build   the build benchmark's input (7 real FLAN CoT TSVs + BELLE dev1K, repeated --copies
          times: 30 copies = 1.03M raw records), built by
            local     forge's default executor (spawned processes), --workers 1 and 2
            ray       a private Ray instance on this machine, 1 and 2 CPUs
          rows/s, the Ray overhead against local at equal cores, peak RSS of the driver and
          of the largest worker process
  dedup   a synthetic corpus of unique records (sentences drawn from a 100k pool: realistic
          shingle overlap) with 5% planted near copies and 2% exact copies, at --dedup-sizes
          records; seconds and peak RSS, local and Ray (2 CPUs)
  mixture trainer input: the first 100k examples of a mixture over one synthetic component
          of --mixture-sizes records, read and tokenized as forge train does
          (MixtureStream -> stream_examples, tiny model's tokenizer); forge's two-level
          permutation against the uniform whole-component permutation it replaced

Every run is a child process, so its peak RSS is its own; worker processes (local pool or
Ray workers) are sampled from /proc every 50 ms. The work folder is removed at exit.

    .venv/bin/python bench/scale_bench.py [--copies 30] [--dedup-sizes 250000,1000000,4000000]
                                          [--mixture-sizes 100000,2000000] [--only build|dedup|mixture]
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from _common import BENCH_CATALOG, SHARED, add_keep, now, repeat_files, run_child, table, work_dir

FLAN = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]

BUILD = """
import os
from pathlib import Path
from forge.catalog import load_catalog
from forge.build import build_source
from forge.executor import Executor
cat = load_catalog(Path({catalog!r}))
ex = Executor({executor!r}, {workers}, {address!r})
_ROWS = 0
for name in ("bench_flan", "bench_belle"):
    _ROWS += build_source(cat.get(name), home=Path({home!r}), force=True, executor=ex, workers={workers}).rows
"""

DEDUP = """
from pathlib import Path
from forge.dedup import run
from forge.executor import Executor
m = run(["synthetic"], Path({out!r}), home=Path({home!r}), executor=Executor({executor!r}, {workers}), overwrite=True)
_ROWS = m["input_rows"]
print("dropped", m["dropped"])
"""

SYNTH_CATALOG = """
sources:
  synthetic:
    {{description: bench, connector: json, connector_options: {{format: jsonl}}, formatter: columns, local: {path}, lang: EN, task: MT, gen: SI}}
"""


MIXTURE = """
from pathlib import Path
from forge.catalog import load_catalog
from forge.mixture import MixtureStream, resolve
from forge.sampling import Schedule
from forge.train.data import StreamStats, TokenizeConfig, stream_examples
from transformers import AutoTokenizer
if {uniform}:  # the permutation forge used before: uniform over the whole component
    import forge.mixture as fm
    fm.Mixture.schedule = lambda self: Schedule([l.count for l in self.leaves], [l.size for l in self.leaves],
                                                self.seed, window_blocks=1 << 40)
mix = resolve("synth", load_catalog(Path({catalog!r})), home=Path({home!r}))
tok = AutoTokenizer.from_pretrained({tokenizer!r})
_ROWS = 0
for ex in stream_examples(MixtureStream(mix, Path({home!r})), tok, TokenizeConfig(cutoff_len=256)):
    _ROWS += 1
    if _ROWS >= {take}:
        break
"""


class WorkerPeak:
    """Largest RSS seen in any process that is not this benchmark or its direct child: the
    local pool's spawned workers and Ray's workers (ray::...)."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if not (cmd.startswith(b"ray::") or b"multiprocessing.spawn" in cmd):
                        continue
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)
                except OSError:
                    continue
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(code: str, env: dict) -> dict:
    with WorkerPeak() as w:
        r = run_child(code, env)
    r["worker_mb"] = w.peak_mb
    return r


def synthetic_corpus(path: Path, n: int, seed: int = 0) -> None:
    """n JSONL records: 93% unique (8 sentences each from a pool of 100k), 5% near copies
    (one sentence replaced), 2% exact copies."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array([f"w{i:05d}" for i in range(20_000)])
    pool = [" ".join(words[rng.integers(0, len(words), 10)]) for _ in range(100_000)]
    with open(path, "w") as fh:
        for start in range(0, n, 100_000):
            m = min(100_000, n - start)
            picks = rng.integers(0, len(pool), (m, 8))
            kind = rng.random(m)
            for i in range(m):
                p = picks[i]
                if kind[i] < 0.07 and i > 0:
                    p = picks[rng.integers(0, i)].copy()  # a copy of an earlier record
                    if kind[i] < 0.05:
                        p[rng.integers(0, 8)] = rng.integers(0, len(pool))  # near: one sentence differs
                s = [pool[j] for j in p]
                fh.write(json.dumps({"instruction": " ".join(s[:2]), "input": "", "output": " ".join(s[2:])}))
                fh.write("\n")


class RayCluster:
    """`ray start --head` with `cpus` CPUs in its own process group and temp dir, the way a
    user runs a cluster once and then submits many jobs; stopped (its group killed) after."""

    def __init__(self, work: Path, cpus: int):
        import socket
        import sys

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--port", str(self.port),
                    "--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus), "--include-dashboard=false",
                    "--object-store-memory", str(128 << 20), "--temp-dir", str(work / f"ray-{cpus}"),
                    "--disable-usage-stats"]  # fmt: skip

    def __enter__(self):
        import subprocess

        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        proc = subprocess.run(self.cmd, env=env, capture_output=True, text=True, start_new_session=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        self.group = proc_group("raylet", self.cmd[self.cmd.index("--temp-dir") + 1])
        return self

    def __exit__(self, *exc):
        import signal

        os.killpg(self.group, signal.SIGKILL)


def proc_group(name: str, marker: str) -> int:
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if name in cmd and marker in cmd:
            return os.getpgid(int(pid))
    raise RuntimeError(f"no {name} for {marker}")


def bench_build(work: Path, copies: int) -> list[tuple]:
    files = repeat_files([SHARED / "flan_cot" / f"{n}_train.tsv" for n in FLAN], copies, work / "flan")
    belle = repeat_files([SHARED / "belle" / "dev1K.json"], copies, work / "belle")[0]
    cat = work / "catalog.yaml"
    cat.write_text(BENCH_CATALOG.format(flan=files[0].parent, belle=belle))
    rows, rates = [], {}
    env = {"RAY_AUTH_MODE": "disabled"}
    for workers in (1, 2):
        runs = [("local", "local", None), ("ray (private instance, start included)", "ray", None)]
        with RayCluster(work, workers) as cluster:
            runs.append(("ray (running cluster)", "ray", cluster.address))
            for label, executor, address in runs:
                home = work / f"home-{executor}-{workers}-{address is not None}"
                code = BUILD.format(catalog=str(cat), home=str(home), executor=executor, workers=workers,
                                    address=address)  # fmt: skip
                r = timed(code, env)
                rates[(label, workers)] = r["rows"] / r["seconds"]
                rows.append((f"build {label}", workers, f"{r['rows']:,}", f"{r['seconds']:.1f}",
                             f"{r['rows'] / r['seconds']:,.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['worker_mb']:.0f}"))  # fmt: skip
    for w in (1, 2):
        for label in ("ray (private instance, start included)", "ray (running cluster)"):
            overhead = rates[("local", w)] / rates[(label, w)] - 1
            print(f"Ray overhead at {w} core(s), {label}: {overhead:+.1%}")
    return rows


def bench_dedup(work: Path, sizes: list[int]) -> list[tuple]:
    rows = []
    for n in sizes:
        home, _ = build_synthetic(work, n)
        for executor in ("local", "ray"):
            r = timed(DEDUP.format(out=str(work / "dd"), home=str(home), executor=executor, workers=2), {})
            rows.append((f"dedup {executor}", f"{n:,}", r.get("dropped", "?"), f"{r['seconds']:.1f}",
                         f"{r['peak_rss_mb']:.0f}", f"{r['worker_mb']:.0f}"))  # fmt: skip
        import shutil

        shutil.rmtree(home)
    return rows


def build_synthetic(work: Path, n: int) -> tuple[Path, Path]:
    """A data home with source `synthetic` of n records built, and its catalog."""
    data = work / f"synthetic-{n}.jsonl"
    synthetic_corpus(data, n)
    cat = work / f"catalog-{n}.yaml"
    cat.write_text(SYNTH_CATALOG.format(path=data))
    home = work / f"home-synth-{n}"
    code = BUILD.replace('("bench_flan", "bench_belle")', '("synthetic",)')
    run_child(code.format(catalog=str(cat), home=str(home), executor="local", workers=2, address=None), {})
    data.unlink()
    return home, cat


def bench_mixture(work: Path, sizes: list[int], take: int = 100_000) -> list[tuple]:
    import shutil

    from forge.train.tiny import make_tiny_model

    tokenizer = make_tiny_model(work / "tiny")
    mixes = work / "mixtures"
    mixes.mkdir(exist_ok=True)
    (mixes / "synth.yaml").write_text(
        "name: synth\ndescription: bench\nstrategy: concat\nseed: 0\ncomponents:\n  - source: synthetic\n"
    )
    env = {"FORGE_MIXTURES": str(mixes)}
    rows = []
    for n in sizes:
        home, cat = build_synthetic(work, n)
        for label, uniform in (("two-level (forge)", False), ("uniform (before)", True)):
            code = MIXTURE.format(catalog=str(cat), home=str(home), tokenizer=str(tokenizer), take=take,
                                  uniform=uniform)  # fmt: skip
            r = run_child(code, env)
            rows.append((label, f"{n:,}", f"{r['rows']:,}", f"{r['seconds']:.1f}",
                         f"{r['rows'] / r['seconds']:,.0f}", f"{r['peak_rss_mb']:.0f}"))  # fmt: skip
        shutil.rmtree(home)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=30)
    ap.add_argument("--dedup-sizes", default="250000,1000000,4000000")
    ap.add_argument("--mixture-sizes", default="100000,2000000")
    ap.add_argument("--only", choices=["build", "dedup", "mixture"])
    add_keep(ap)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    work = work_dir("forge-bench-scale-", args.keep)
    print(f"scale bench {now()}, {os.cpu_count()} cores")
    if args.only in (None, "build"):
        rows = bench_build(work, args.copies)
        print(
            table(
                rows, ("run", "cores", "rows", "seconds", "rows/s", "driver peak RSS MB", "largest worker MB")
            )
        )
    if args.only in (None, "dedup"):
        rows = bench_dedup(work, [int(x) for x in args.dedup_sizes.split(",")])
        print(
            table(rows, ("run", "records", "dropped", "seconds", "driver peak RSS MB", "largest worker MB"))
        )
    if args.only in (None, "mixture"):
        rows = bench_mixture(work, [int(x) for x in args.mixture_sizes.split(",")])
        print(table(rows, ("permutation", "component records", "examples read", "seconds", "examples/s",
                           "peak RSS MB")))  # fmt: skip


if __name__ == "__main__":
    main()

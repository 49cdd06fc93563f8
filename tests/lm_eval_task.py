"""An lm-evaluation-harness task over the same local CMMLU CSVs and the same prompt that
forge eval builds (train/evaluate.py), for the agreement test and bench/eval_bench.py."""

from __future__ import annotations

import json
from pathlib import Path

from forge.train.evaluate import CUE, mc_header


def write_cmmlu_task(folder: Path, subject: str, test_csv: Path, dev_csv: Path | None) -> str:
    """Write <folder>/<task>.yaml; return the task name. The prompt pieces come from forge's
    own functions, so a change there changes both sides."""
    name = f"forge_cmmlu_{subject}"
    files = {"test": str(test_csv)} | ({"dev": str(dev_csv)} if dev_csv else {})
    lines = [
        f"task: {name}",
        "dataset_path: csv",
        f"dataset_kwargs: {{data_files: {json.dumps(files)}}}",
        "test_split: test",
        *(["fewshot_split: dev", "fewshot_config: {sampler: first_n}"] if dev_csv else []),
        "output_type: multiple_choice",
        f"description: {json.dumps(mc_header(subject, 'zh'), ensure_ascii=False)}",
        'doc_to_text: "{{Question.strip()}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n' + CUE["zh"] + '"',
        'doc_to_choice: ["A", "B", "C", "D"]',
        "doc_to_target: \"{{['A', 'B', 'C', 'D'].index(Answer)}}\"",
        'target_delimiter: " "',
        'fewshot_delimiter: "\\n\\n"',
        "metric_list: [{metric: acc}]",
    ]
    (folder / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def run_lm_eval(model_dir: Path, tasks_dir: Path, tasks: list[str], shots: int, batch_size: int = 1) -> dict:
    """lm_eval.simple_evaluate on a local model folder: {task: (accuracy, [(context, [ll per option])])}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=tasks,
        num_fewshot=shots,
        batch_size=batch_size,
        device="cpu",
        task_manager=TaskManager(include_path=str(tasks_dir)),
        log_samples=True,
    )
    found = {}
    for task in tasks:
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        per_item = [(s["arguments"][0][0], [float(r[0][0]) for r in s["resps"]]) for s in samples]
        found[task] = (out["results"][task]["acc,none"], per_item)
    return found

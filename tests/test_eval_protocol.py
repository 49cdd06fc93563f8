"""forge eval's default protocol is lm-evaluation-harness's built-in tasks (issue #32).

- the prompt pieces forge holds (subject names, doc_to_text, delimiters, stop strings, filters,
  gsm8k_cot's examples) equal the installed lm_eval's task YAMLs, field by field;
- lm-eval itself, running its own built-in task definitions (a local YAML that `include:`s the
  installed one and only points it at local files), gives the same contexts, accuracy and
  acc_norm, every option's log-likelihood within 1e-4 (CMMLU on real data at 0 and 5 shots,
  --limit per subject; MMLU and C-Eval on the layout fixtures at 0 and 2 shots), and for GSM8K
  (real items, 5-shot gsm8k from a train pool, 8-shot gsm8k_cot) the same generations and the
  same strict-match / flexible-extract answers;
- --limit counts per subject, progress is reported, the result records its protocol.
"""

import csv
import re
import shutil

import pytest

from tests.conftest import REPO, SHARED, need

EVALS = SHARED.parent / "evals"
FIXTURES = REPO / "samples" / "evals"


def _yaml(rel: str) -> dict:
    import yaml

    from tests.lm_eval_task import builtin_tasks

    return yaml.load(
        (builtin_tasks() / rel).read_text(encoding="utf-8"),
        Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader),
    )


def test_prompt_pieces_are_lm_evals_own():
    pytest.importorskip("lm_eval")
    from forge.train import eval_protocols as ev
    from forge.train.evalsets import CEVAL_SUBJECTS_ZH, CMMLU_SUBJECTS_ZH
    from tests.lm_eval_task import builtin_tasks

    root = builtin_tasks()
    for suite, folder, prefix, names in (("cmmlu", "cmmlu", "cmmlu_", CMMLU_SUBJECTS_ZH),
                                         ("ceval", "ceval", "ceval-valid_", CEVAL_SUBJECTS_ZH),
                                         ("mmlu", "mmlu/default", "mmlu_", None)):  # fmt: skip
        files = sorted((root / folder).glob(f"{prefix}*.yaml"))
        files = [f for f in files if not f.name.startswith(f"{prefix}_")]
        subjects = [_yaml(str(f.relative_to(root)))["dataset_name"] for f in files]
        if names is not None:
            assert sorted(names) == sorted(subjects)
        for f, subject in zip(files, subjects, strict=True):
            assert ev.lm_eval_description(suite, subject) == _yaml(str(f.relative_to(root)))["description"], f
    for suite, base in (("cmmlu", "cmmlu/_default_template_yaml"), ("ceval", "ceval/_default_ceval_yaml"),
                        ("mmlu", "mmlu/default/_default_template_yaml")):  # fmt: skip
        cfg = _yaml(base)
        assert ev._MC_TASK[suite]["doc_to_text"] == cfg["doc_to_text"]
        assert cfg["doc_to_choice"] == list("ABCD") and cfg["fewshot_config"] == {"sampler": "first_n"}
        assert cfg["fewshot_split"] == "dev" and "num_fewshot" not in cfg  # lm-eval's default: 0 shots
        assert "target_delimiter" not in cfg and "fewshot_delimiter" not in cfg  # " " and "\n\n"
        assert [m["metric"] for m in cfg["metric_list"]] == ev._MC_TASK[suite]["metrics"]
    gsm, cot = _yaml("gsm8k/gsm8k.yaml"), _yaml("gsm8k/gsm8k-cot.yaml")
    for name, cfg in (("lm-eval", gsm), ("lm-eval-cot", cot)):
        spec = ev._GEN_TASK[name]
        assert (spec["task"], spec["doc_to_text"], spec["doc_to_target"]) == (cfg["task"], cfg["doc_to_text"],
                                                                            cfg["doc_to_target"])  # fmt: skip
        assert (
            spec["until"] == cfg["generation_kwargs"]["until"] and spec["default_shots"] == cfg["num_fewshot"]
        )
        filters = {f["name"]: f["filter"][0] for f in cfg["filter_list"]}
        assert filters["strict-match"]["regex_pattern"] == spec["strict"]
        assert filters["flexible-extract"] == {
            "function": "regex",
            "group_select": -1,
            "regex_pattern": ev._FLEXIBLE,
        }
        [metric] = cfg["metric_list"]
        assert metric["regexes_to_ignore"] == ev._GSM_IGNORE and metric["ignore_case"] is True
    assert gsm["fewshot_split"] == "train" and "fewshot_config" not in gsm  # the random sampler
    samples = cot["fewshot_config"]["samples"]
    assert [(s["question"], s["target"]) for s in samples] == ev.GSM8K_COT_EXAMPLES


def _cmmlu_slice(dst, subjects, rows):
    (dst / "test").mkdir(parents=True)
    (dst / "dev").mkdir()
    for s in subjects:
        with open(EVALS / "cmmlu" / "test" / f"{s}.csv", newline="", encoding="utf-8") as fh:
            kept = list(csv.reader(fh))[: rows + 1]
        with open(dst / "test" / f"{s}.csv", "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(kept)
        shutil.copy(EVALS / "cmmlu" / "dev" / f"{s}.csv", dst / "dev" / f"{s}.csv")
    return dst


def _renamed(src, dst, names: dict[str, str], pattern: str):
    """A fixture folder copied with its subjects renamed to real ones (lm-eval has a task per
    real subject; the description names it)."""
    for f in src.rglob("*.csv"):
        subject = re.sub(r"_(test|val|dev)$", "", f.stem)
        out = dst / f.parent.name / pattern.format(subject=names[subject], split=f.stem.rsplit("_", 1)[1])
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out)
    return dst


def test_lm_eval_builtin_tasks_agree_with_forge(tmp_path, tiny_model):
    """One lm-eval run (its own task definitions, local files, --limit 8) against forge's
    defaults on the same files, item by item. About 5 s on an idle 2-core box (lm-eval's import
    and its tiny-model run included), so it is not marked slow."""
    pytest.importorskip("lm_eval")
    from forge.train.evalsets import read
    from forge.train.evaluate import evaluate
    from forge.train.infer import load
    from tests.lm_eval_task import (
        ceval_jsonl,
        cmmlu_jsonl,
        gen_items,
        local_task,
        mc_items,
        mmlu_jsonl,
        run_lm_eval,
    )

    need(EVALS / "cmmlu")
    gsm_all = need(EVALS / "gsm8k" / "test_head200.jsonl").read_text(encoding="utf-8").splitlines()
    cmmlu = _cmmlu_slice(tmp_path / "cmmlu", ["computer_science", "agronomy"], 12)
    mmlu = _renamed(FIXTURES / "mmlu", tmp_path / "mmlu", {"colours": "miscellaneous", "units": "conceptual_physics"},
                    "{subject}_{split}.csv")  # fmt: skip
    ceval = _renamed(FIXTURES / "ceval", tmp_path / "ceval",
                     {"basic_arithmetic": "middle_school_mathematics", "geography": "high_school_geography"},
                     "{subject}_{split}.csv")  # fmt: skip
    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    (gsm / "test.jsonl").write_text("\n".join(gsm_all[:3]) + "\n", encoding="utf-8")
    (gsm / "train.jsonl").write_text("\n".join(gsm_all[150:]) + "\n", encoding="utf-8")  # a 50-row pool

    tasks, j, want = tmp_path / "tasks", tmp_path / "jsonl", {}  # want: task -> (suite, subject, shots)
    for suite, subject, builtin, to_jsonl, splits, shot_counts in (
        ("cmmlu", "computer_science", "cmmlu/cmmlu_{s}.yaml", cmmlu_jsonl, {"test": "test/{s}.csv", "dev": "dev/{s}.csv"}, (0, 5)),
        ("cmmlu", "agronomy", "cmmlu/cmmlu_{s}.yaml", cmmlu_jsonl, {"test": "test/{s}.csv", "dev": "dev/{s}.csv"}, (0, 5)),
        ("mmlu", "miscellaneous", "mmlu/default/mmlu_{s}.yaml", mmlu_jsonl, {"test": "test/{s}_test.csv", "dev": "dev/{s}_dev.csv"}, (0, 2)),
        ("mmlu", "conceptual_physics", "mmlu/default/mmlu_{s}.yaml", mmlu_jsonl, {"test": "test/{s}_test.csv", "dev": "dev/{s}_dev.csv"}, (0, 2)),
        ("ceval", "middle_school_mathematics", "ceval/ceval-valid_{s}.yaml", ceval_jsonl, {"val": "val/{s}_val.csv", "dev": "dev/{s}_dev.csv"}, (0, 2)),
        ("ceval", "high_school_geography", "ceval/ceval-valid_{s}.yaml", ceval_jsonl, {"val": "val/{s}_val.csv", "dev": "dev/{s}_dev.csv"}, (0, 2)),
    ):  # fmt: skip
        folder = {"cmmlu": cmmlu, "mmlu": mmlu, "ceval": ceval}[suite]
        files = {}
        for split, rel in splits.items():
            extra = (subject,) if suite == "mmlu" else ()
            files[split] = to_jsonl(
                folder / rel.format(s=subject), j / f"{suite}_{subject}_{split}.jsonl", *extra
            )
        for k in shot_counts:
            task = local_task(
                tasks, f"l_{suite}_{subject}_{k}", builtin.format(s=subject), files, num_fewshot=k
            )
            want[task] = (suite, subject, k)
    gsm_task = local_task(
        tasks, "l_gsm8k", "gsm8k/gsm8k.yaml", {"test": gsm / "test.jsonl", "train": gsm / "train.jsonl"}
    )
    cot_task = local_task(tasks, "l_gsm8k_cot", "gsm8k/gsm8k-cot.yaml", {"test": gsm / "test.jsonl"})
    theirs = run_lm_eval(tiny_model, tasks, [*want, gsm_task, cot_task], limit=8, max_gen_toks=24)

    loaded = load(str(tiny_model))
    worst = 0.0
    for suite, folder, shots in (("cmmlu", cmmlu, 0), ("cmmlu", cmmlu, 5), ("mmlu", mmlu, 0), ("mmlu", mmlu, 2),
                                 ("ceval", ceval, 0), ("ceval", ceval, 2)):  # fmt: skip
        data, calls = read(suite, folder), []
        ours = evaluate(
            loaded, data, shots=shots, limit=8, progress=lambda d, t, seen=calls: seen.append((d, t))
        )
        assert ours["protocol"]["name"] == "lm-eval" and ours["shots"] == shots
        assert (
            calls[0] == (0, ours["items"])
            and calls[-1] == (ours["items"], ours["items"])
            and calls == sorted(calls)
        )
        sizes = {s: sum(it.subject == s for it in data.items) for s in {it.subject for it in data.items}}
        assert ours["items"] == sum(min(8, n) for n in sizes.values())  # --limit 8 counts per subject
        for task, (s2, subject, k) in want.items():
            if (s2, k) != (suite, shots):
                continue
            recs = [r for r in ours["records"] if r["subject"] == subject]
            items = mc_items(theirs[task])
            assert len(recs) == len(items) == min(8, sizes[subject])
            for (context, lls), rec in zip(items, recs, strict=True):
                assert context == rec["prompt"], task
                assert list(rec["choices"].values()) == pytest.approx(lls, abs=1e-4), task
                worst = max(worst, *(abs(a - b) for a, b in zip(rec["choices"].values(), lls, strict=True)))
            res = theirs[task]["results"]
            assert ours["per_subject"][subject]["accuracy"] == pytest.approx(res["acc,none"], abs=1e-12), task
            if "acc_norm,none" in res:
                assert ours["per_subject"][subject]["acc_norm"] == pytest.approx(
                    res["acc_norm,none"], abs=1e-12
                )
            else:
                assert "acc_norm" not in ours["per_subject"][subject]  # lm-eval's MMLU reports acc only
    print(f"largest per-option log-likelihood difference: {worst:.2e}")

    for protocol, task, shots in (("lm-eval", gsm_task, 5), ("lm-eval-cot", cot_task, 8)):
        ours = evaluate(
            loaded, read("gsm8k", gsm), protocol=protocol, limit=8, batch_size=1, max_new_tokens=24
        )
        assert ours["shots"] == shots
        assert ours["protocol"]["task"] == {"lm-eval": "gsm8k", "lm-eval-cot": "gsm8k_cot"}[protocol]
        items = gen_items(theirs[task])
        assert len(items) == len(ours["records"]) == 3
        for got, rec in zip(items, ours["records"], strict=True):
            assert got["context"] == rec["prompt"] and got["generation"] == rec["generation"]
            assert got["filtered"] == {
                "strict-match": rec["extracted"],
                "flexible-extract": rec["extracted_flexible"],
            }
        res = theirs[task]["results"]
        assert ours["score"] == pytest.approx(float(res["exact_match,strict-match"]), abs=1e-12)
        assert ours["flexible_extract"] == pytest.approx(
            float(res["exact_match,flexible-extract"]), abs=1e-12
        )
        if protocol == "lm-eval":  # five examples drawn from the train pool, different for each item
            drawn = [re.findall(r"Question: (.+)", r["prompt"])[:5] for r in ours["records"]]
            assert len({tuple(d) for d in drawn}) == 3 and all(len(d) == 5 for d in drawn)


GENERATIONS = [
    " She has 16 - 3 - 4 = <<16-3-4=9>>9 eggs left.\n#### 18",
    " The answer is 1,234.\n\nQuestion: next",
    " so 5 apples and $72.",
    " #### -3.5 then more text 7",
    " no digits here",
    " It costs $1,000.00. The answer is $1000.",
    "9",
]


def test_answer_extraction_is_lm_evals_filters_and_exact_match():
    """forge's copies of lm-eval's regex filters and exact_match give lm-eval's answers."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters.extraction import RegexFilter

    from forge.train import eval_protocols as protocols
    from forge.train import evaluate as ev

    references = [
        "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 18",
        "#### 1234",
        "72",
        "#### -3.5",
        "0",
        "1000",
        "9",
    ]
    strict = protocols._GEN_TASK["lm-eval"]["strict"], protocols._GEN_TASK["lm-eval-cot"]["strict"]
    for pattern, select in ((strict[0], 0), (strict[1], 0), (protocols._FLEXIBLE, -1)):
        theirs = RegexFilter(pattern, group_select=select).apply([[g] for g in GENERATIONS], None)
        ours = [ev.lm_eval_regex(g, pattern, select) for g in GENERATIONS]
        assert ours == [t[0] for t in theirs], pattern
        for pred, ref in zip(ours, references, strict=True):
            want = exact_match_hf_evaluate(
                [pred], [ref], regexes_to_ignore=protocols._GSM_IGNORE, ignore_case=True
            )
            assert ev.lm_eval_exact_match(pred, ref) == bool(want["exact_match"]), (pred, ref)


def test_limit_per_subject_progress_protocols_and_the_train_split(tiny_model, tmp_path):
    from forge.train.evalsets import read
    from forge.train.evaluate import evaluate, progress_text, summary_line
    from forge.train.infer import load

    loaded = load(str(tiny_model))
    cmmlu = read("cmmlu", need(EVALS / "cmmlu"))
    calls = []
    res = evaluate(loaded, cmmlu, limit=2, progress=lambda d, t: calls.append((d, t)))
    subjects = sorted({it.subject for it in cmmlu.items})
    assert res["items"] == 2 * len(subjects) and sorted(res["per_subject"]) == subjects
    assert [r["id"] for r in res["records"][:3]] == ["agronomy/0", "agronomy/1", "chinese_history/0"]
    assert (
        calls[0] == (0, res["items"]) and calls[-1] == (res["items"], res["items"]) and calls == sorted(calls)
    )
    assert len(calls) > 2  # told along the way, not only at the ends
    assert res["shots"] == 0 and res["protocol"]["shots"] == 0  # lm-eval's CMMLU default
    assert "protocol lm-eval" in summary_line(res) and "acc_norm" in summary_line(res)
    assert "subjects_not_in_lm_eval" not in res["protocol"]
    # subjects lm-eval has no task for keep their own names, and the result says so
    ceval = evaluate(loaded, read("ceval", FIXTURES / "ceval"), limit=1)
    assert ceval["protocol"]["subjects_not_in_lm_eval"] == ["basic_arithmetic", "geography"]
    assert ceval["records"][0]["prompt"].startswith(
        "以下是中国关于basic arithmetic的单项选择题，请选出其中的正确答案。\n\n"
    )
    # GSM8K: lm-eval's gsm8k is 5-shot from the train split; without train.jsonl beside the test
    # file it says what to do instead
    gsm_file = need(EVALS / "gsm8k" / "test_head200.jsonl")
    with pytest.raises(ValueError, match="its examples come from the train split.*pass --shots 0"):
        evaluate(loaded, read("gsm8k", gsm_file), limit=2, max_new_tokens=2)
    cot = evaluate(loaded, read("gsm8k", gsm_file), protocol="lm-eval-cot", limit=2, max_new_tokens=2)
    assert cot["items"] == 2 and cot["shots"] == 8 and cot["limit"] == {"n": 2, "per": "suite"}
    prompt = cot["records"][0]["prompt"]
    assert (
        prompt.startswith("Q: There are 15 trees")
        and prompt.count("\n\nQ: ") == 8
        and prompt.endswith("\nA:")
    )
    # a train.jsonl beside the test file is the pool; its hash joins the result's data hashes
    lines = gsm_file.read_text(encoding="utf-8").splitlines()
    (tmp_path / "test.jsonl").write_text("\n".join(lines[:2]) + "\n", encoding="utf-8")
    (tmp_path / "train.jsonl").write_text("\n".join(lines[100:120]) + "\n", encoding="utf-8")
    five = evaluate(loaded, read("gsm8k", tmp_path), max_new_tokens=2)
    assert five["shots"] == 5 and set(five["data"]) == {
        str(tmp_path / "test.jsonl"),
        str(tmp_path / "train.jsonl"),
    }
    assert five["records"][0]["prompt"].count("Question: ") == 6
    # the forge protocol: chat template and cue, as before #32
    old = evaluate(loaded, read("gsm8k", gsm_file), protocol="forge", limit=1, max_new_tokens=2)
    assert old["protocol"]["name"] == "forge" and "step by step" in old["records"][0]["prompt"]
    with pytest.raises(ValueError, match="not offered for mmcu"):
        evaluate(
            loaded, read("mmcu", need(SHARED / "alpaca_cot" / "eval_raw_mmcu_test.json")), protocol="lm-eval"
        )
    assert progress_text(340, 1071, 117.0) == "340/1071 items, 2.91 items/s, ETA 4m12s"
    assert progress_text(0, 10, 1.0) == "0/10 items, 0.00 items/s, ETA -"

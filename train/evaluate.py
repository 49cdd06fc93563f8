"""forge eval: score a model, an adapter or a run folder on published eval sets.

How a suite is prompted and scored is its protocol; the result JSON records it (name, the
lm-eval task it follows, shots, the prompt pieces and a template id over them):

  lm-eval      (default for CMMLU, C-Eval, MMLU, GSM8K) lm-evaluation-harness's built-in task,
               as lm_eval 0.4.13 defines it: cmmlu_<subject>, ceval-valid_<subject>,
               mmlu_<subject>, gsm8k. Its description, doc_to_text, target and few-shot
               delimiters, few-shot split and sampler, plain text (no chat template).
               Multiple choice: the log-likelihood of " A" .. " D" after the context; acc, and
               acc_norm where lm-eval reports it (CMMLU, C-Eval). GSM8K: 5 examples drawn from
               the train split (Random(1234), as lm-eval), greedy generation until "Question:",
               scored by lm-eval's strict-match and flexible-extract filters.
  lm-eval-cot  (GSM8K) lm-eval's gsm8k_cot: 8 fixed worked examples, "Q: … A:", strict match
               on "The answer is N.".
  forge        forge's own prompts (before issue #32): a multiple-choice header in forge's
               wording; chain of thought through the model's chat template with a step-by-step
               cue. The only protocol for MMCU, FLAN CoT and Belle-eval (lm-eval has no task).

  multiple choice   one forward pass scores all options of an item when every option is one
                    token after the context (the usual case); a subject's shared k-shot block
                    runs once and its key/value cache is reused. Accuracy per subject, macro
                    (mean of subjects) and micro (all items; lm-eval's group score).
  judged            (Belle-eval) the model answers; a judge model at any OpenAI-compatible
                    endpoint scores each answer (0-1) with its category's prompt. Replies without
                    a score are counted as unparsable, never guessed; an endpoint that stays down
                    leaves items unjudged and the run still finishes.

`limit` counts per subject for the multiple-choice suites, as lm-eval's --limit counts per task;
GSM8K, FLAN CoT and Belle-eval take their first N items. `progress(done, total)` is called as
items finish.

A log-likelihood is computed as lm-evaluation-harness does for a causal model (tokens of
context + continuation, split where the context's own tokens end; trailing spaces of the
context move into the continuation), so the two agree item by item
(tests/test_eval_protocol.py runs lm-eval's own task definitions on the same files).

Results: one JSON per suite with per-item records, the data files' sha256, the protocol, shots
and seed; for a run folder also in `<run>/eval/<suite>.json`. With a run folder, the eval items
are checked against the records the run trained on (its batches.jsonl lineage): near-duplicates
are reported as contamination, and FLAN CoT items are checked for being held out.

The prompts and protocol tables are in train/eval_protocols.py, and the model calls
(log-likelihoods, generation) in train/eval_requests.py; this module scores and reports.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from forge.train.eval_protocols import (
    _FLEXIBLE,
    _GEN_TASK,
    _GSM_IGNORE,
    _MC_TASK,
    JUDGE_TEMPLATE_ID,
    cot_cue,
    default_shots,
    gsm8k_examples,
    gsm8k_reference,
    limit_items,
    lm_eval_gsm8k_context,
    lm_eval_mc_context,
    mc_context,
    protocol_record,
    resolve_protocol,
    suite_lang,
)
from forge.train.eval_requests import Progress, _generate_all, generate_until, loglikelihoods
from forge.train.evalsets import COT_SUITES, MC_SUITES, EvalData, GenItem, MCItem, category_key, number

# ---- multiple choice: scored by the log-likelihood of each option -------------------------------


def score_mc(loaded, data: EvalData, shots: int = 0, batch_size: int = 8, *, protocol: str = "lm-eval",
             items: list[MCItem] | None = None, progress: Progress | None = None) -> dict:  # fmt: skip
    """Each option scored by the log-likelihood of " <letter>" after the item's context; the
    prediction is the highest (acc), and where lm-eval reports it, the highest per character
    of the choice (acc_norm: lm-eval divides by len(choice), the letter, so it equals acc here
    unless a model's letters tie)."""
    items = data.items if items is None else items
    missing = sorted({it.subject for it in items if len(data.shots.get(it.subject, [])) < shots})
    if shots and missing:
        raise ValueError(
            f"--shots {shots}: no dev split with {shots} rows for {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} (put dev/<subject>.csv beside the test files)"
        )
    if protocol == "lm-eval":
        contexts = [
            lm_eval_mc_context(it, data.shots.get(it.subject, [])[:shots], data.suite) for it in items
        ]
        with_norm = "acc_norm" in _MC_TASK[data.suite]["metrics"]
    else:
        lang = suite_lang(data.suite)
        contexts = [mc_context(it, data.shots.get(it.subject, [])[:shots], lang) for it in items]
        with_norm = False
    by_subject: dict[str, list[int]] = defaultdict(list)
    for n, it in enumerate(items):
        by_subject[it.subject].append(n)
    found: dict[int, list[float]] = {}
    done = 0

    def told(base: int, count: int, total_requests: int):
        return lambda scored: progress(base + count * scored // total_requests, len(items))

    for positions in by_subject.values():  # one call per subject: its items share the k-shot block
        requests = [(contexts[n], f" {letter}") for n in positions for letter in items[n].options]
        tell = told(done, len(positions), len(requests)) if progress is not None else None
        lls = iter(loglikelihoods(loaded.model, loaded.tokenizer, requests, batch_size, on_progress=tell))
        for n in positions:
            found[n] = [next(lls) for _ in items[n].options]
        done += len(positions)
    records, per_subject = [], defaultdict(lambda: [0, 0, 0])
    for n, (it, context) in enumerate(zip(items, contexts, strict=True)):
        choices = dict(zip(it.options, found[n], strict=True))
        pred = max(choices, key=choices.__getitem__)  # the first of equals, as numpy's argmax
        pred_norm = max(choices, key=lambda c: choices[c] / len(c))
        correct = pred == it.answer
        per_subject[it.subject][0] += correct
        per_subject[it.subject][1] += pred_norm == it.answer
        per_subject[it.subject][2] += 1
        rec = {"id": it.id, "subject": it.subject, "file": it.file, "line": it.line, "prompt": context,
               "choices": {k: round(v, 6) for k, v in choices.items()}, "pred": pred,
               "gold": it.answer, "correct": correct}  # fmt: skip
        if with_norm:
            rec |= {"pred_norm": pred_norm, "correct_norm": pred_norm == it.answer}
        records.append(rec)
    subjects = {}
    for s, (c, cn, k) in sorted(per_subject.items()):
        subjects[s] = {"correct": c, "items": k, "accuracy": c / k} | (
            {"acc_norm": cn / k} if with_norm else {}
        )
    micro = sum(c for c, _, _ in per_subject.values()) / max(1, len(items))
    macro = sum(v["accuracy"] for v in subjects.values()) / max(1, len(subjects))
    out = {"metric": "accuracy", "score": micro, "micro": micro, "macro": macro}
    if with_norm:
        out["acc_norm"] = sum(cn for _, cn, _ in per_subject.values()) / max(1, len(items))
        out["acc_norm_macro"] = sum(v["acc_norm"] for v in subjects.values()) / max(1, len(subjects))
    return {**out, "per_subject": subjects, "records": records}


# ---- chain of thought: forge's protocol ---------------------------------------------------------

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"


def option_letters(question: str) -> str | None:
    """The option letters a multiple-choice question offers ("(A) ... (B) ..."), if any."""
    found = sorted(set(re.findall(r"\(([A-Z])\)", question)))
    return "".join(found) if len(found) >= 2 else None


def extract_answer(text: str, kind: str, choices: str | None = None) -> str | None:
    """The final answer a generation gives: after '####', else after 'answer is', else (for
    numbers, letters and yes/no) the last one in the text. A letter must be one of `choices`
    when they are known; "(C)" counts before a bare "C", and a capital that starts a word of
    prose ("A box ...", "I think ...") is not taken for an option."""
    marked = re.findall(r"####\s*(.+)", text) or re.findall(r"answer is:?\s*(.+)", text, flags=re.IGNORECASE)
    tail = marked[-1].strip() if marked else None
    if kind == "number":
        found = re.findall(_NUM, tail if tail else text)
        return number(found[0] if tail else found[-1]) if found else None
    if kind == "letter":
        where, allowed = tail if tail else text, set(choices or "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
        found = [c for c in re.findall(r"\(([A-Z])\)", where) if c in allowed] or [
            c for c in re.findall(r"\b([A-Z])\b(?!'| +[a-z])", where) if c in allowed
        ]
        return (found[0] if tail else found[-1]) if found else None
    if kind == "yesno":
        found = re.findall(r"\b(yes|no)\b", (tail if tail else text).lower())
        return (found[0] if tail else found[-1]) if found else None
    answer = tail if tail else (text.strip().splitlines() or [""])[-1]
    return _norm_text(answer) or None


def _norm_text(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def score_cot(loaded, data: EvalData, *, max_new_tokens: int = 256, batch_size: int = 8, seed: int = 0,
              items: list[GenItem] | None = None, progress: Progress | None = None) -> dict:  # fmt: skip
    """The forge protocol: the question and a step-by-step cue through the chat template."""
    items = data.items if items is None else items
    prompts = [it.question.strip() + cot_cue(it.question) for it in items]
    texts = _generate_all(loaded, prompts, max_new_tokens, batch_size, seed, progress)
    records, correct = [], 0
    for it, prompt, text in zip(items, prompts, texts, strict=True):
        got = extract_answer(text, it.kind, option_letters(it.question) if it.kind == "letter" else None)
        gold = _norm_text(it.gold) if it.kind == "text" else it.gold
        ok = got is not None and got == gold
        correct += ok
        records.append({"id": it.id, "file": it.file, "line": it.line, "prompt": prompt, "generation": text,
                        "kind": it.kind, "extracted": got, "gold": gold, "correct": ok})  # fmt: skip
    score = correct / max(1, len(items))
    return {
        "metric": "exact match",
        "score": score,
        "correct": correct,
        "items": len(items),
        "records": records,
    }


# ---- GSM8K as lm-eval scores it --------------------------------------------------------------------


def lm_eval_regex(text: str, pattern: str, select: int = 0) -> str:
    """lm-eval's regex filter: the match `select` picks (0 first, -1 last), the first non-empty
    group of it, stripped; "[invalid]" when there is none."""
    found = re.findall(pattern, text)
    if not found:
        return "[invalid]"
    match = found[select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), "[invalid]")
    return match.strip()


def lm_eval_exact_match(prediction: str, reference: str) -> bool:
    """exact_match as gsm8k configures it: regexes_to_ignore removed from both, case ignored."""
    for pattern in _GSM_IGNORE:
        prediction, reference = re.sub(pattern, "", prediction), re.sub(pattern, "", reference)
    return prediction.lower() == reference.lower()


def score_gsm8k_lm_eval(loaded, data: EvalData, items: list[GenItem], *, protocol: str, shots: int,
                        max_new_tokens: int = 256, batch_size: int = 8, progress: Progress | None = None,
                        ) -> dict:  # fmt: skip
    """lm-eval's gsm8k (or gsm8k_cot): k-shot plain-text contexts, greedy generation, then both
    of its filters: strict-match (the score) and flexible-extract."""
    spec = _GEN_TASK[protocol]
    examples = gsm8k_examples(data, len(items), protocol, shots)
    contexts = [
        lm_eval_gsm8k_context(it.question, ex, protocol) for it, ex in zip(items, examples, strict=True)
    ]
    texts = generate_until(loaded, contexts, spec["until"], max_new_tokens=max_new_tokens,
                           batch_size=batch_size, progress=progress)  # fmt: skip
    records, strict_right, flexible_right = [], 0, 0
    for it, context, text in zip(items, contexts, texts, strict=True):
        reference = gsm8k_reference(it, protocol)
        strict = lm_eval_regex(text, spec["strict"])
        flexible = lm_eval_regex(text, _FLEXIBLE, -1)
        ok, ok_flexible = lm_eval_exact_match(strict, reference), lm_eval_exact_match(flexible, reference)
        strict_right += ok
        flexible_right += ok_flexible
        records.append({"id": it.id, "file": it.file, "line": it.line, "prompt": context, "generation": text,
                        "kind": it.kind, "extracted": strict, "extracted_flexible": flexible, "gold": it.gold,
                        "correct": ok, "correct_flexible": ok_flexible})  # fmt: skip
    n = max(1, len(items))
    return {
        "metric": "exact match (strict-match)",
        "score": strict_right / n,
        "correct": strict_right,
        "items": len(items),
        "flexible_extract": flexible_right / n,
        "correct_flexible": flexible_right,
        "records": records,
    }


# ---- Belle-eval: answers scored by a judge model ------------------------------------------------

_SCORE = re.compile(r"(?:得分|分数|score)\s*[:：]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_judge_score(reply: str) -> float | None:
    """The score a judge reply states ('得分: 0.8'), if it is one number in [0, 1]."""
    found = _SCORE.findall(reply)
    if not found:
        return None
    value = float(found[-1])
    return value if 0.0 <= value <= 1.0 else None


def judge_prompt(instructions: str, item: GenItem, answer: str) -> str:
    return (
        f"{instructions}\n\n问题：\n{item.question}\n\n标准答案：\n{item.reference}\n\n"
        f"模型回答：\n{answer}\n\n请先给出简短理由，最后一行写“得分: <0到1之间的数>”。"
    )


def score_belle(loaded, data: EvalData, judge, *, home: Path | None = None, max_new_tokens: int = 256,
                batch_size: int = 8, seed: int = 0, items: list[GenItem] | None = None,
                progress: Progress | None = None) -> dict:  # fmt: skip
    """progress counts the answers generated; the judging that follows is not counted."""
    from concurrent.futures import ThreadPoolExecutor

    from forge.model_client import EndpointError, ModelClient, reply_cache
    from forge.paths import data_home

    items = data.items if items is None else items
    answers = _generate_all(loaded, [it.question for it in items], max_new_tokens, batch_size, seed, progress)
    cache = reply_cache(home or data_home())
    client = ModelClient(judge, cache)

    def ask(args: tuple[GenItem, str]) -> tuple[str | None, str | None]:
        item, answer = args
        try:
            return client.complete(
                judge_prompt(data.judge_prompts[item.category], item, answer), JUDGE_TEMPLATE_ID
            ), None
        except EndpointError as e:
            return None, str(e)

    try:
        with ThreadPoolExecutor(max(1, judge.concurrency)) as pool:
            replies = list(pool.map(ask, zip(items, answers, strict=True)))
    finally:
        cache.close()
    records, per_cat = [], defaultdict(list)
    counts = {"judged": 0, "unparsable": 0, "unjudged": 0}
    for it, answer, (reply, error) in zip(items, answers, replies, strict=True):
        score = parse_judge_score(reply) if reply is not None else None
        status = "unjudged" if reply is None else ("judged" if score is not None else "unparsable")
        counts[status] += 1
        if score is not None:
            per_cat[it.category].append(score)
        records.append({"id": it.id, "category": it.category, "file": it.file, "line": it.line,
                        "question": it.question, "generation": answer, "judge_reply": reply,
                        "judge_error": error, "score": score, "status": status})  # fmt: skip
    judged = [s for scores in per_cat.values() for s in scores]
    return {
        "metric": "mean judge score (0-1) over judged items",
        "score": sum(judged) / len(judged) if judged else None,
        **counts,
        "judge": {
            "url": judge.url,
            "model": judge.model,
            "template": JUDGE_TEMPLATE_ID,
            **client.stats.__dict__,
        },
        "per_category": {c: {"items": len(v), "mean": sum(v) / len(v)} for c, v in sorted(per_cat.items())},
        "records": records,
    }


# ---- what the run trained on: contamination and held-out checks ---------------------------------


def trained_records(run: Path, home: Path | None = None):
    """The records a run trained on, from its lineage (batches*.jsonl ids) and the source
    versions its manifest pins: a pyarrow table (id, source, instruction, input, output,
    raw_file, raw_row)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from forge.paths import source_store

    manifest = json.loads((run / "run_manifest.json").read_text())
    ids: set[str] = set()
    for f in sorted(run.glob("batches*.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                ids.update(json.loads(line)["ids"])
    wanted = pa.array(sorted(ids), pa.string())
    parts = []
    cols = ["id", "instruction", "input", "output", "raw_file", "raw_row"]
    for name, vid in sorted((manifest.get("source_versions") or {}).items()):
        folder = source_store(name, home).path / vid
        for shard in sorted(folder.glob("*.parquet")):
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=65_536, columns=cols):
                t = pa.Table.from_batches([batch])
                t = t.filter(pc.is_in(t["id"], value_set=wanted))  # keep only what was trained on
                if t.num_rows:
                    parts.append(t.append_column("source", pa.array([name] * t.num_rows, pa.string())))
    if not parts:
        return pa.table(
            {c: pa.array([], pa.int64() if c == "raw_row" else pa.string()) for c in [*cols, "source"]}
        )
    return pa.concat_tables(parts)


def overlap_report(run: Path, data: EvalData, home: Path | None = None) -> dict:
    import pyarrow as pa

    from forge import dedup

    items = data.items
    trained = trained_records(run, home)
    report = {"checked_against": f"{trained.num_rows} records the run trained on (its batches lineage)"}
    if trained.num_rows and items:
        prompts = dedup.prompt_texts(trained)
        questions = dedup.normalize(pa.array([it.question for it in items], pa.string()))
        hits = dedup.contaminated(dedup.signatures(prompts), dedup.signatures(questions))
        near = sorted({items[j].id for _, j, _ in hits})
    else:
        near = []
    report["contaminated_items"] = len(near)
    report["contaminated_ids"] = near[:100]
    if data.suite == "flan-cot":
        seen = set(zip(trained["raw_file"].to_pylist(), trained["raw_row"].to_pylist(), strict=True))
        in_training = [it.id for it in items if (Path(it.file).name, it.line - 1) in seen]
        report["held_out"] = not in_training
        report["trained_on_items"] = len(in_training)
    return report


# ---- the whole thing ------------------------------------------------------------------------------


def evaluate(loaded, data: EvalData, *, protocol: str | None = None, shots: int | None = None,
             batch_size: int = 8, seed: int = 0, limit: int | None = None, max_new_tokens: int = 256,
             judge=None, run: Path | None = None, home: Path | None = None,
             progress: Progress | None = None) -> dict:  # fmt: skip
    """Score `data` under `protocol` (default: lm-eval's task where lm-eval has one, else
    forge's). `shots` None takes the protocol's default (lm-eval's num_fewshot: 0 for CMMLU,
    C-Eval and MMLU, 5 for gsm8k, 8 for gsm8k_cot); suites scored by forge's chain-of-thought
    or judged prompts are zero-shot and ignore it. `limit` keeps the first N items of each
    subject (multiple choice) or of the suite. `progress(done, total)` is called as items
    finish, from this thread."""
    import dataclasses

    name = resolve_protocol(data.suite, protocol)
    takes_shots = data.suite in MC_SUITES or (data.suite == "gsm8k" and name in _GEN_TASK)
    shots = (default_shots(data.suite, name) if shots is None else shots) if takes_shots else 0
    data = dataclasses.replace(data, items=limit_items(data, limit))  # every step below sees the same items
    items, total = data.items, len(data.items)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if progress is not None:
        progress(0, total)
    if data.suite in MC_SUITES:
        result = score_mc(loaded, data, shots, batch_size, protocol=name, items=items, progress=progress)
    elif data.suite == "gsm8k" and name in _GEN_TASK:
        result = score_gsm8k_lm_eval(loaded, data, items, protocol=name, shots=shots,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)  # fmt: skip
    elif data.suite in COT_SUITES:
        result = score_cot(loaded, data, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                           items=items, progress=progress)  # fmt: skip
    else:
        if judge is None:
            raise ValueError("belle needs a judge: --judge-endpoint URL --judge-model NAME")
        result = score_belle(loaded, data, judge, home=home, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed, items=items, progress=progress)  # fmt: skip
    if progress is not None:
        progress(total, total)
    subjects = sorted({it.subject for it in items}) if data.suite in MC_SUITES else []
    head = {
        "suite": data.suite,
        "protocol": protocol_record(data.suite, name, shots, loaded, subjects),
        "model": {
            "name": loaded.name,
            "base": loaded.base,
            "adapter": loaded.adapter,
            "template": loaded.template,
        },
        "run": str(run) if run else None,
        "data": data.sha256(shots),
        "items": total,
        "shots": shots,
        "limit": {"n": limit, "per": "subject" if data.suite in MC_SUITES else "suite"} if limit else None,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
        "overlap": overlap_report(run, data, home) if run else "not checked (no run folder: no lineage)",
    }
    return {**head, **result}


def progress_text(done: int, total: int, seconds: float) -> str:
    """'340/1071 items, 2.91 items/s, ETA 4m11s': for a CLI's progress line."""
    rate = done / seconds if seconds > 0 and done else 0.0
    if done >= total:
        eta = "done"
    elif rate:
        left = round((total - done) / rate)
        eta = "ETA " + (
            f"{left // 3600}h{left % 3600 // 60:02d}m" if left >= 3600 else f"{left // 60}m{left % 60:02d}s"
        )
    else:
        eta = "ETA -"
    return f"{done}/{total} items, {rate:.2f} items/s, {eta}"


def write_result(result: dict, paths: list[Path]) -> None:
    from forge.store import write_atomic

    blob = json.dumps(result, ensure_ascii=False, indent=1).encode()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, blob)


def summary_line(result: dict) -> str:
    protocol = result.get("protocol") or {}
    how = f"{result['shots']}-shot, protocol {protocol.get('name', 'forge')}"
    if result["suite"] in MC_SUITES:
        norm = f"; acc_norm {result['acc_norm']:.4f}" if "acc_norm" in result else ""
        return (f"{result['suite']}: accuracy {result['micro']:.4f} (macro {result['macro']:.4f}{norm}) on "
                f"{result['items']} items, {len(result['per_subject'])} subjects, {how}")  # fmt: skip
    if result["suite"] in COT_SUITES:
        line = f"{result['suite']}: exact match {result['score']:.4f} ({result['correct']}/{result['items']})"
        if "flexible_extract" in result:
            line += (f" strict-match, {result['flexible_extract']:.4f} ({result['correct_flexible']}/"
                     f"{result['items']}) flexible-extract, {how}")  # fmt: skip
        return line
    score = "n/a" if result["score"] is None else f"{result['score']:.4f}"
    return (f"belle: mean judge score {score} over {result['judged']} judged items; "
            f"{result['unparsable']} unparsable, {result['unjudged']} unjudged, of {result['items']}")  # fmt: skip


__all__ = [
    "category_key",
    "evaluate",
    "extract_answer",
    "option_letters",
    "parse_judge_score",
    "progress_text",
    "summary_line",
    "write_result",
]

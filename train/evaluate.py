"""forge eval: score a model, an adapter or a run folder on published eval sets.

  multiple choice   (CMMLU, C-Eval, MMLU, MMCU) the log-likelihood of each option letter after
                    the prompt, zero- or k-shot from the dev split; accuracy per subject, macro
                    (mean of subjects) and micro (all items). Where every option letter is one
                    token after the prompt (the usual case), one forward pass scores all options
                    of an item; otherwise each option is scored on its own.
  chain of thought  (GSM8K, FLAN CoT) greedy generation with a step-by-step cue through the
                    model's own prompt template, the final answer extracted (a number, an option
                    letter, yes/no, or text) and compared exactly after normalisation.
  judged            (Belle-eval) the model answers; a judge model at any OpenAI-compatible
                    endpoint scores each answer (0-1) with its category's prompt. Replies without
                    a score are counted as unparsable, never guessed; an endpoint that stays down
                    leaves items unjudged and the run still finishes.

A log-likelihood is computed as lm-evaluation-harness does for a causal model (tokens of
context + continuation, split where the context's own tokens end; trailing spaces of the
context move into the continuation), so the two agree item by item (tests/test_eval.py).

Results: one JSON per suite with per-item records, the data files' sha256, shots and seed;
for a run folder also in `<run>/eval/<suite>.json`. With a run folder, the eval items are
checked against the records the run trained on (its batches.jsonl lineage): near-duplicates
are reported as contamination, and FLAN CoT items are checked for being held out.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from forge.train.evalsets import COT_SUITES, MC_SUITES, EvalData, GenItem, MCItem, category_key, number

CUE = {"zh": "答案：", "en": "Answer:"}
COT_CUE = "\nThink it through step by step, then give the final answer on its own line as '#### <answer>'."
COT_CUE_ZH = (
    "\n请一步一步推理，最后单独一行写出最终答案，格式为“#### 答案”。"  # the same ask, for Chinese questions
)
JUDGE_TEMPLATE_ID = "belle-judge-v1"


def suite_lang(suite: str) -> str:
    return "en" if suite == "mmlu" else "zh"


# ---- multiple choice: prompts and log-likelihoods ----------------------------------------------


def mc_header(subject: str, lang: str) -> str:
    name = subject.replace("_", " ")
    if lang == "zh":
        return f"以下单项选择题的主题是{name}，回答时只写出正确选项的字母。\n\n"
    return f"Questions on {name}, each with one correct option; reply with its letter.\n\n"


def mc_question(item: MCItem, lang: str) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return f"{item.question.strip()}\n{options}\n{CUE[lang]}"


def mc_context(item: MCItem, shots: list[MCItem], lang: str) -> str:
    """Header, then each shot with its answer, then the question; blank lines between."""
    solved = "".join(f"{mc_question(s, lang)} {s.answer}\n\n" for s in shots)
    return mc_header(item.subject, lang) + solved + mc_question(item, lang)


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return ctx, whole[len(ctx) :]


def loglikelihoods(
    model, tokenizer, requests: list[tuple[str, str]], batch_size: int = 8, share_prefix: bool = True
) -> list[float]:
    """Sum of log-probabilities of each continuation after its context.

    Requests with the same context and a one-token continuation share one row (one forward
    pass scores them all); the rest get a row each. Rows are left-padded with explicit
    position ids, so a token sees the same positions as unpadded, and only the last few
    positions' logits are computed (the vocabulary is the big axis). When all rows start with
    the same tokens (a k-shot block), those are run once and their key/value cache is reused
    by every batch."""
    rows: dict[tuple, list[tuple[int, list[int]]]] = {}
    for i, (context, continuation) in enumerate(requests):
        ctx, cont = _encode_pair(tokenizer, context, continuation)
        if not cont:
            raise ValueError(f"the continuation {continuation!r} adds no token after its context")
        key = (tuple(ctx),) if len(cont) == 1 else (tuple(ctx), tuple(cont), i)
        rows.setdefault(key, []).append((i, cont))
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    work = []  # (input ids, [(request, continuation)])
    for key, wanted in rows.items():
        ids = list(key[0]) + (list(key[1][:-1]) if len(key) == 3 else [])
        work.append((ids[-limit:], wanted))  # left-truncate an over-long context, as lm-eval does
    work.sort(key=lambda w: -len(w[0]))
    shared = _shared_prefix([list(k[0])[-limit:] for k in rows]) if share_prefix and len(work) > 1 else []
    out = [0.0] * len(requests)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    prefix_cache = _prefix_cache(model, shared, device) if len(shared) >= 16 else None
    skip = len(shared) if prefix_cache is not None else 0
    for start in range(0, len(work), batch_size):
        batch = work[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch) - skip
        keep = max(len(cont) for _, wanted in batch for _, cont in wanted)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), skip + width), dtype=torch.long)
        mask[:, :skip] = 1
        for r, (row, _) in enumerate(batch):
            tail = row[skip:]
            ids[r, width - len(tail) :] = torch.tensor(tail)
            mask[r, skip + width - len(tail) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, skip:]
        extra = {}
        if prefix_cache is not None:
            extra[_cache_argument(model)] = _repeat_cache(prefix_cache, len(batch))
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                logits_to_keep=keep,
                **extra,
            ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for r, (_, wanted) in enumerate(batch):
            for i, cont in wanted:
                # the continuation's tokens are predicted by the last len(cont) positions
                steps = logprobs[r, keep - len(cont) :, :]
                out[i] = float(steps.gather(1, torch.tensor(cont).unsqueeze(1)).sum())
    return out


def _shared_prefix(contexts: list[list[int]]) -> list[int]:
    """The tokens every context starts with, leaving each at least one token of its own (the
    position that predicts the continuation must be in the batch)."""
    first = contexts[0]
    n = min(len(c) for c in contexts) - 1
    for c in contexts[1:]:
        k = 0
        while k < n and c[k] == first[k]:
            k += 1
        n = k
    return first[: max(0, n)]


def _cache_argument(model) -> str:
    """What the model's forward calls its key/value cache: `cache` in newer transformers,
    `past_key_values` before (a PEFT wrapper is looked through)."""
    import inspect

    inner = model
    while hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _prefix_cache(model, prefix: list[int], device):
    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    except (TypeError, ValueError, RuntimeError):
        return None  # a model without a reusable cache: every row runs in full
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def _repeat_cache(cache, n: int):
    """A copy of the prefix cache for a batch of n rows (the forward pass appends to it)."""
    import copy

    fresh = copy.deepcopy(cache)
    if hasattr(fresh, "batch_repeat_interleave"):
        fresh.batch_repeat_interleave(n)
    else:
        for layer in fresh.layers:
            layer.batch_repeat_interleave(n)
    return fresh


def score_mc(loaded, data: EvalData, shots: int = 0, batch_size: int = 8) -> dict:
    lang = suite_lang(data.suite)
    items: list[MCItem] = data.items
    missing = sorted({it.subject for it in items if len(data.shots.get(it.subject, [])) < shots})
    if shots and missing:
        raise ValueError(
            f"--shots {shots}: no dev split with {shots} rows for {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} (put dev/<subject>.csv beside the test files)"
        )
    contexts = [mc_context(it, data.shots.get(it.subject, [])[:shots], lang) for it in items]
    by_subject: dict[str, list[int]] = defaultdict(list)
    for n, it in enumerate(items):
        by_subject[it.subject].append(n)
    found: dict[int, list[float]] = {}
    for positions in by_subject.values():  # one call per subject: its items share the k-shot block
        requests = [(contexts[n], f" {letter}") for n in positions for letter in items[n].options]
        lls = iter(loglikelihoods(loaded.model, loaded.tokenizer, requests, batch_size))
        for n in positions:
            found[n] = [next(lls) for _ in items[n].options]
    scores = iter(ll for n in range(len(items)) for ll in found[n])
    records, per_subject = [], defaultdict(lambda: [0, 0])
    for it, context in zip(items, contexts, strict=True):
        choices = {letter: next(scores) for letter in it.options}
        pred = max(choices, key=choices.__getitem__)
        correct = pred == it.answer
        per_subject[it.subject][0] += correct
        per_subject[it.subject][1] += 1
        records.append({"id": it.id, "subject": it.subject, "file": it.file, "line": it.line, "prompt": context,
                        "choices": {k: round(v, 6) for k, v in choices.items()}, "pred": pred,
                        "gold": it.answer, "correct": correct})  # fmt: skip
    subjects = {s: {"correct": c, "items": n, "accuracy": c / n} for s, (c, n) in sorted(per_subject.items())}
    micro = sum(c for c, _ in per_subject.values()) / max(1, len(items))
    macro = sum(v["accuracy"] for v in subjects.values()) / max(1, len(subjects))
    return {"metric": "accuracy", "score": micro, "micro": micro, "macro": macro,
            "per_subject": subjects, "records": records}  # fmt: skip


# ---- chain of thought ---------------------------------------------------------------------------

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"


def cot_cue(question: str) -> str:
    """The step-by-step ask in the question's language, as forge's detector (the one that tags
    records) judges it: Chinese for a zh question, else English."""
    import pyarrow as pa

    from forge.lang import detect

    return COT_CUE_ZH if detect(pa.array([question]))[0][0] == "zh" else COT_CUE


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


def _generate_all(loaded, prompts: list[str], max_new_tokens: int, batch_size: int, seed: int) -> list[str]:
    from forge.train.infer import build_prompt, generate

    ids = [
        build_prompt(loaded, {"instruction": p, "input": "", "history": [], "output": ""}) for p in prompts
    ]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths together: less padding
    texts = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        for i, g in zip(
            chunk,
            generate(loaded, [ids[i] for i in chunk], max_new_tokens=max_new_tokens, seed=seed),
            strict=True,
        ):
            texts[i] = g.text
    return texts


def score_cot(loaded, data: EvalData, *, max_new_tokens: int = 256, batch_size: int = 8, seed: int = 0,
              ) -> dict:  # fmt: skip
    items: list[GenItem] = data.items
    prompts = [it.question.strip() + cot_cue(it.question) for it in items]
    texts = _generate_all(loaded, prompts, max_new_tokens, batch_size, seed)
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
                batch_size: int = 8, seed: int = 0) -> dict:  # fmt: skip
    from concurrent.futures import ThreadPoolExecutor

    from forge.paths import data_home
    from forge.stages import EndpointError, ModelClient, reply_cache

    items: list[GenItem] = data.items
    answers = _generate_all(loaded, [it.question for it in items], max_new_tokens, batch_size, seed)
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


def evaluate(loaded, data: EvalData, *, shots: int = 0, batch_size: int = 8, seed: int = 0,
             limit: int | None = None, max_new_tokens: int = 256, judge=None, run: Path | None = None,
             home: Path | None = None) -> dict:  # fmt: skip
    import dataclasses

    if limit:
        data = dataclasses.replace(data, items=data.items[:limit])  # every step below sees the same items
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if data.suite in MC_SUITES:
        result = score_mc(loaded, data, shots, batch_size)
    elif data.suite in COT_SUITES:
        result = score_cot(loaded, data, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    else:
        if judge is None:
            raise ValueError("belle needs a judge: --judge-endpoint URL --judge-model NAME")
        result = score_belle(loaded, data, judge, home=home, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed)  # fmt: skip
    head = {
        "suite": data.suite,
        "model": {
            "name": loaded.name,
            "base": loaded.base,
            "adapter": loaded.adapter,
            "template": loaded.template,
        },
        "run": str(run) if run else None,
        "data": data.sha256(shots if data.suite in MC_SUITES else 0),
        "items": len(data.items),
        "shots": shots if data.suite in MC_SUITES else 0,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
        "overlap": overlap_report(run, data, home) if run else "not checked (no run folder: no lineage)",
    }
    return {**head, **result}


def write_result(result: dict, paths: list[Path]) -> None:
    from forge.store import write_atomic

    blob = json.dumps(result, ensure_ascii=False, indent=1).encode()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(p, blob)


def summary_line(result: dict) -> str:
    if result["suite"] in MC_SUITES:
        return (f"{result['suite']}: accuracy {result['micro']:.4f} (macro {result['macro']:.4f}) on "
                f"{result['items']} items, {len(result['per_subject'])} subjects, {result['shots']}-shot")  # fmt: skip
    if result["suite"] in COT_SUITES:
        return f"{result['suite']}: exact match {result['score']:.4f} ({result['correct']}/{result['items']})"
    score = "n/a" if result["score"] is None else f"{result['score']:.4f}"
    return (f"belle: mean judge score {score} over {result['judged']} judged items; "
            f"{result['unparsable']} unparsable, {result['unjudged']} unjudged, of {result['items']}")  # fmt: skip


__all__ = [
    "category_key",
    "evaluate",
    "extract_answer",
    "option_letters",
    "loglikelihoods",
    "parse_judge_score",
    "write_result",
]

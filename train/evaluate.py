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
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from forge.train.evalsets import (
    CEVAL_SUBJECTS_ZH,
    CMMLU_SUBJECTS_ZH,
    COT_SUITES,
    MC_SUITES,
    EvalData,
    GenItem,
    MCItem,
    category_key,
    number,
)

Progress = Callable[[int, int], None]  # (items done, items in all)

CUE = {"zh": "答案：", "en": "Answer:"}
COT_CUE = "\nThink it through step by step, then give the final answer on its own line as '#### <answer>'."
COT_CUE_ZH = (
    "\n请一步一步推理，最后单独一行写出最终答案，格式为“#### 答案”。"  # the same ask, for Chinese questions
)
JUDGE_TEMPLATE_ID = "belle-judge-v1"


def suite_lang(suite: str) -> str:
    return "en" if suite == "mmlu" else "zh"


# ---- protocols ------------------------------------------------------------------------------------

LM_EVAL_VERSION = "0.4.13"  # the lm-evaluation-harness release whose built-in task definitions these are
FEWSHOT_SEED = 1234  # lm-eval's fewshot_random_seed (simple_evaluate's default)
PROTOCOLS = ("lm-eval", "lm-eval-cot", "forge")
_OFFERED = {"cmmlu": ("lm-eval", "forge"), "ceval": ("lm-eval", "forge"), "mmlu": ("lm-eval", "forge"),
            "gsm8k": ("lm-eval", "lm-eval-cot", "forge")}  # fmt: skip

# lm-eval's task YAMLs (tasks/cmmlu/_default_template_yaml and cmmlu_<subject>.yaml,
# tasks/ceval/_default_ceval_yaml, tasks/mmlu/default/_default_template_yaml, tasks/gsm8k/gsm8k.yaml
# and gsm8k-cot.yaml), field by field
_MC_TASK = {
    "cmmlu": {"task": "cmmlu_{subject}", "split": "test", "fewshot_split": "dev",
              "description": "以下是关于{subject_zh}的单项选择题，请直接给出正确答案的选项。\n\n",
              "doc_to_text": "{{Question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：",
              "metrics": ["acc", "acc_norm"]},
    "ceval": {"task": "ceval-valid_{subject}", "split": "val", "fewshot_split": "dev",
              "description": "以下是中国关于{subject_zh}的单项选择题，请选出其中的正确答案。\n\n",
              "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：",
              "metrics": ["acc", "acc_norm"]},
    "mmlu": {"task": "mmlu_{subject}", "split": "test", "fewshot_split": "dev",
             "description": "The following are multiple choice questions (with answers) about {subject words}.\n\n",
             "doc_to_text": "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
                            "D. {{choices[3]}}\nAnswer:",
             "metrics": ["acc"]},
}  # fmt: skip
_MC_CUE = {"cmmlu": "答案：", "ceval": "答案：", "mmlu": "Answer:"}
_SUBJECT_ZH = {"cmmlu": CMMLU_SUBJECTS_ZH, "ceval": CEVAL_SUBJECTS_ZH}

_GSM_IGNORE = [",", r"\$", "(?s).*#### ", r"\.$"]  # regexes_to_ignore, both sides, then lower-cased
_FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # flexible-extract: the last match
_GEN_TASK = {
    "lm-eval": {"task": "gsm8k", "split": "test", "fewshot_split": "train", "sampler": "default",
                "fewshot_seed": FEWSHOT_SEED, "description": "",
                "doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{answer}}",
                "until": ["Question:", "</s>", "<|im_end|>"], "default_shots": 5,
                "strict": r"#### (\-?[0-9\.\,]+)"},
    "lm-eval-cot": {"task": "gsm8k_cot", "split": "test", "fewshot_split": None, "sampler": "first_n",
                    "fewshot_seed": None, "description": "", "doc_to_text": "Q: {{question}}\nA:",
                    "doc_to_target": "{{answer.split('####')[-1].strip() if answer is defined else target}}",
                    "until": ["Q:", "</s>", "<|im_end|>"], "default_shots": 8,
                    "strict": r"The answer is (\-?[0-9\.\,]+)."},
}  # fmt: skip

# gsm8k-cot.yaml's fewshot_config.samples: (question, target)
GSM8K_COT_EXAMPLES = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8."),
]  # fmt: skip


def protocols_for(suite: str) -> tuple[str, ...]:
    """The protocols a suite can be scored under; the first is its default."""
    return _OFFERED.get(suite, ("forge",))


def default_shots(suite: str, protocol: str) -> int:
    """Shots when the caller gives none: lm-eval's for its tasks (num_fewshot: 5 for gsm8k,
    8 for gsm8k_cot; none, so 0, for CMMLU, C-Eval and MMLU), else 0."""
    if suite == "gsm8k" and protocol in _GEN_TASK:
        return _GEN_TASK[protocol]["default_shots"]
    return 0


def resolve_protocol(suite: str, protocol: str | None) -> str:
    name = protocol or protocols_for(suite)[0]
    if name not in protocols_for(suite):
        raise ValueError(
            f"protocol {name!r} is not offered for {suite}; one of: {', '.join(protocols_for(suite))}"
        )
    return name


def protocol_record(suite: str, protocol: str, shots: int, loaded=None, subjects=()) -> dict:
    """What the result JSON says about how items were prompted and scored. `template_id` is a
    hash over the prompt and scoring pieces (not the shots): two results with the same id and
    shots were prompted the same way."""
    if protocol == "lm-eval" and suite in _MC_TASK:
        spec = {**_MC_TASK[suite], "sampler": "first_n", "doc_to_choice": list("ABCD"),
                "target_delimiter": " ", "fewshot_delimiter": "\n\n", "chat_template": None}  # fmt: skip
    elif protocol in _GEN_TASK and suite == "gsm8k":
        spec = {k: v for k, v in _GEN_TASK[protocol].items() if k not in ("default_shots", "strict")}
        spec |= {"target_delimiter": " ", "fewshot_delimiter": "\n\n", "chat_template": None,
                 "filters": {"strict-match": _GEN_TASK[protocol]["strict"], "flexible-extract": _FLEXIBLE},
                 "exact_match": {"regexes_to_ignore": _GSM_IGNORE, "ignore_case": True}}  # fmt: skip
    elif suite in MC_SUITES:
        spec = {
            "header": mc_header("{subject}", suite_lang(suite)),
            "question": "{question}\n{letter}. {option} (one line each)\n" + CUE[suite_lang(suite)],
            "target_delimiter": " ",
            "fewshot_delimiter": "\n\n",
            "chat_template": None,
        }
    elif suite in COT_SUITES:
        spec = {
            "cue": [COT_CUE, COT_CUE_ZH],
            "chat_template": getattr(loaded, "template", None),
            "extraction": "after '####', else after 'answer is', else the last number / letter / yes-no",
        }
    else:
        spec = {"chat_template": getattr(loaded, "template", None), "judge_template": JUDGE_TEMPLATE_ID}
    blob = json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()
    spec["template_id"] = hashlib.sha256(blob).hexdigest()[:16]
    names = _SUBJECT_ZH.get(suite) if protocol == "lm-eval" else None
    unknown = sorted(s for s in subjects if names is not None and s not in names)
    if unknown:  # subjects lm-eval has no task for: their own names stand in the description
        spec["subjects_not_in_lm_eval"] = unknown
    head = {"name": protocol, "shots": shots}
    if protocol.startswith("lm-eval"):
        head["lm_eval_version"] = LM_EVAL_VERSION
    return {**head, **spec}


def limit_items(data: EvalData, limit: int | None) -> list:
    """The items `limit` keeps: the first N of each subject for multiple choice (lm-eval's
    --limit counts per task, and each subject is a task), else the first N."""
    if not limit:
        return list(data.items)
    if data.suite not in MC_SUITES:
        return data.items[:limit]
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for it in data.items:
        if seen[it.subject] < limit:
            kept.append(it)
            seen[it.subject] += 1
    return kept


# ---- multiple choice: prompts and log-likelihoods ----------------------------------------------


def lm_eval_description(suite: str, subject: str) -> str:
    """The `description` of lm-eval's task for this subject (CMMLU and C-Eval name the subject
    in Chinese, as their authors do; a subject lm-eval has no task for keeps its own name)."""
    if suite == "mmlu":
        return _MC_TASK["mmlu"]["description"].replace("{subject words}", " ".join(subject.split("_")))
    name = _SUBJECT_ZH[suite].get(subject, subject.replace("_", " "))
    return _MC_TASK[suite]["description"].replace("{subject_zh}", name)


def lm_eval_mc_text(item: MCItem, suite: str) -> str:
    """doc_to_text: the question (stripped), the four options, the answer cue."""
    options = "".join(f"{letter}. {item.options[letter]}\n" for letter in "ABCD")
    return f"{item.question.strip()}\n{options}{_MC_CUE[suite]}"


def lm_eval_mc_context(item: MCItem, shots: list[MCItem], suite: str) -> str:
    """lm-eval's fewshot_context for a multiple-choice task: the description, then each
    example's text, target delimiter, answer letter and few-shot delimiter, then the question."""
    solved = "".join(f"{lm_eval_mc_text(s, suite)} {s.answer}\n\n" for s in shots)
    return lm_eval_description(suite, item.subject) + solved + lm_eval_mc_text(item, suite)


def mc_header(subject: str, lang: str) -> str:
    name = subject.replace("_", " ")
    if lang == "zh":
        return f"以下单项选择题的主题是{name}，回答时只写出正确选项的字母。\n\n"
    return f"Questions on {name}, each with one correct option; reply with its letter.\n\n"


def mc_question(item: MCItem, lang: str) -> str:
    options = "\n".join(f"{letter}. {text}" for letter, text in item.options.items())
    return f"{item.question.strip()}\n{options}\n{CUE[lang]}"


def mc_context(item: MCItem, shots: list[MCItem], lang: str) -> str:
    """forge's own multiple-choice prompt: header, each shot with its answer, the question."""
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
    model,
    tokenizer,
    requests: list[tuple[str, str]],
    batch_size: int = 8,
    share_prefix: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Sum of log-probabilities of each continuation after its context.

    Requests with the same context and a one-token continuation share one row (one forward
    pass scores them all); the rest get a row each. Rows are left-padded with explicit
    position ids, so a token sees the same positions as unpadded, and only the last few
    positions' logits are computed (the vocabulary is the big axis). When all rows start with
    the same tokens (a k-shot block), those are run once and their key/value cache is reused
    by every batch. `on_progress(n)` is told after each batch how many requests are scored."""
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
    scored = 0
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
        scored += sum(len(wanted) for _, wanted in batch)
        if on_progress is not None:
            on_progress(scored)
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


# ---- chain of thought: forge's prompts ----------------------------------------------------------

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


def _generate_all(loaded, prompts: list[str], max_new_tokens: int, batch_size: int, seed: int,
                  progress: Progress | None = None) -> list[str]:  # fmt: skip
    """forge's way: each prompt as the user turn of the model's own template."""
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
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return texts


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


def gsm8k_examples(data: EvalData, n_items: int, protocol: str, shots: int) -> list[list[tuple[str, str]]]:
    """Each item's (question, target) examples. gsm8k: drawn from the train split by one
    Random(1234) that runs on from item to item (lm-eval's default sampler, which makes item i's
    examples depend on the items before it; --limit keeps the first ones, so it agrees);
    gsm8k_cot: the first k of its 8 fixed examples."""
    if protocol == "lm-eval-cot":
        if shots > len(GSM8K_COT_EXAMPLES):
            raise ValueError(f"--shots {shots}: lm-eval's gsm8k_cot has {len(GSM8K_COT_EXAMPLES)} examples")
        return [GSM8K_COT_EXAMPLES[:shots]] * n_items
    if shots and len(data.pool) < shots:
        where = f"{len(data.pool)} train rows" if data.pool else "no train split"
        raise ValueError(
            f"{shots}-shot gsm8k (lm-eval's default is 5): its examples come from the train split, and there "
            f"is {where}; put openai/grade-school-math's train.jsonl beside the test file, or pass --shots 0 "
            f"or --protocol lm-eval-cot (8 fixed examples)"
        )
    if not shots:
        return [[] for _ in range(n_items)]
    rnd = random.Random(FEWSHOT_SEED)
    return [[(p.question, p.target) for p in rnd.sample(data.pool, shots)] for _ in range(n_items)]


def lm_eval_gsm8k_context(question: str, examples: list[tuple[str, str]], protocol: str) -> str:
    text = "Question: {}\nAnswer:" if protocol == "lm-eval" else "Q: {}\nA:"
    return "".join(f"{text.format(q)} {target}\n\n" for q, target in examples) + text.format(question)


def gsm8k_reference(item: GenItem, protocol: str) -> str:
    """doc_to_target of the test item: the whole solution (gsm8k) or what follows '####' (gsm8k_cot)."""
    return item.target if protocol == "lm-eval" else item.target.split("####")[-1].strip()


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


def generate_until(loaded, contexts: list[str], until: list[str], *, max_new_tokens: int = 256,
                   batch_size: int = 8, progress: Progress | None = None) -> list[str]:  # fmt: skip
    """Greedy continuations of plain-text contexts, cut at the first stop string, as lm-eval's
    HF model does generate_until: the tokenizer's eos text joins the stop strings, contexts
    are sorted longest first (ties by text) and batched in that order, left-padded, left-
    truncated to leave room for max_new_tokens, and decoded without special tokens. A row
    stops once a stop string shows in its new text."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    tok, model = loaded.tokenizer, loaded.model
    stops = list(until)
    if tok.eos_token_id is not None:
        eos = tok.decode(tok.eos_token_id, skip_special_tokens=False)
        if eos not in stops:
            stops.append(eos)
    lengths = [len(tok(c)["input_ids"]) for c in contexts]
    order = sorted(range(len(contexts)), key=lambda i: (-lengths[i], contexts[i]))
    room = max(1, loaded.context_length - max_new_tokens)
    device = next(model.parameters()).device
    texts = [""] * len(contexts)

    class Until(StoppingCriteria):
        def __init__(self, start: int):
            self.start = start

        def __call__(self, input_ids, scores, **kwargs):
            new = tok.batch_decode(input_ids[:, self.start :], skip_special_tokens=False)
            return torch.tensor([any(s and s in t for s in stops) for t in new], device=input_ids.device)

    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok([contexts[i] for i in chunk], padding="longest", return_tensors="pt")
        finally:
            tok.padding_side = side
        ids, mask = enc["input_ids"][:, -room:], enc["attention_mask"][:, -room:]
        with torch.no_grad():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                stopping_criteria=StoppingCriteriaList([Until(ids.shape[1])]),
                use_cache=True,
            )
        for row, i in enumerate(chunk):
            text = tok.decode(out[row, ids.shape[1] :].tolist(), skip_special_tokens=True)
            for s in stops:
                if s:
                    text = text.split(s)[0]
            texts[i] = text
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return texts


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

    from forge.paths import data_home
    from forge.stages import EndpointError, ModelClient, reply_cache

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
    "PROTOCOLS",
    "category_key",
    "evaluate",
    "extract_answer",
    "generate_until",
    "limit_items",
    "loglikelihoods",
    "option_letters",
    "parse_judge_score",
    "progress_text",
    "protocol_record",
    "protocols_for",
    "summary_line",
    "write_result",
]

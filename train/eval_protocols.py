"""The eval protocols: how `forge eval` prompts each suite, and what its result records of that.

A protocol (lm-eval, lm-eval-cot, forge; train/evaluate.py's docstring says what each one is)
fixes a suite's prompt pieces, shots, few-shot sampling and scoring rules. This module holds
the parts of it that are text and tables: lm-eval 0.4.13's task definitions field by field
(tests/test_eval_protocol.py checks them against the installed lm_eval's own YAMLs), the choice
of protocol and shots, the protocol block of a result JSON (with its template id), which items
`limit` keeps, and the contexts each protocol builds: multiple-choice prompts, GSM8K's few-shot
contexts and targets, forge's chain-of-thought cue.

It is apart from train/evaluate.py, which runs the model and scores the answers, so that what
is asked can be read and checked against lm-eval on its own; it imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict

from forge.train.evalsets import (
    CEVAL_SUBJECTS_ZH,
    CMMLU_SUBJECTS_ZH,
    COT_SUITES,
    MC_SUITES,
    EvalData,
    GenItem,
    MCItem,
)

CUE = {"zh": "答案：", "en": "Answer:"}
COT_CUE = "\nThink it through step by step, then give the final answer on its own line as '#### <answer>'."
COT_CUE_ZH = (
    "\n请一步一步推理，最后单独一行写出最终答案，格式为“#### 答案”。"  # the same ask, for Chinese questions
)
JUDGE_TEMPLATE_ID = "belle-judge-v1"


def suite_lang(suite: str) -> str:
    return "en" if suite == "mmlu" else "zh"


# ---- protocols ----------------------------------------------------------------------------------

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


# ---- multiple choice: prompts -------------------------------------------------------------------


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


# ---- chain of thought: forge's cue --------------------------------------------------------------


def cot_cue(question: str) -> str:
    """The step-by-step ask in the question's language, as forge's detector (the one that tags
    records) judges it: Chinese for a zh question, else English."""
    import pyarrow as pa

    from forge.lang import detect

    return COT_CUE_ZH if detect(pa.array([question]))[0][0] == "zh" else COT_CUE


# ---- GSM8K: lm-eval's few-shot contexts and targets ---------------------------------------------


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


__all__ = [
    "PROTOCOLS",
    "limit_items",
    "protocol_record",
    "protocols_for",
]

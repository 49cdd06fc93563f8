"""Task-specific formatters: sources whose raw records need more than a column mapping.

Options: task (one of TASKS), seed (template rotation), templates_dir.

  natural_instructions  a SNI v2 task file (one raw record) -> one record per instance;
                        instruction from the task Definition (plus worked examples in some
                        templates), input = instance input, output = first reference output
  gaokao                GAOKAO-Bench {question, answer: list, analysis} -> exam question with
                        the official analysis and answer; a question whose answers are all
                        option letters is "choice", any other "open" (fill-in, dictation), and
                        each template says which kind it fits (meta.question_type). The
                        subjective files name the answer `standard_answer`. An answer that is
                        only a header, a placeholder or punctuation ("【答案】") is quarantined;
                        a leading header is dropped ("【答案】B" -> "B"). `concluded` tells a
                        template that the analysis already states the answer ("故选：B。"), so
                        the template adds no second conclusion
  duie                  DuIE 2.0 {text, spo_list} -> relation-extraction instruction; objects
                        are {"@value": ...} dicts
  hc3                   HC3 {question, human_answers[], chatgpt_answers[]} -> one record per
                        answer, the answer's origin in meta (gen MIX)
  webgpt                WebGPT comparisons -> preference pairs: the higher-scored answer is
                        the output (chosen), the other the `rejected` answer (kind pair), so one
                        entry serves SFT (output) and DPO/ORPO (the pair); both scores and which
                        answer won stay in meta. Ties are quarantined (no preferred answer); a
                        pair whose rejected answer is empty is an sft record (meta.rejected_empty)

The template tasks render with the shared sandboxed renderer (formatters/templates.py) from
cot_templates/tasks/<task>.yaml; template choice rotates as (row + seed) % n.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from forge.formatters.fields import FieldError, empty_answer, first_key, strip_answer_header, text_field
from forge.formatters.templates import compile_template, load_yaml

# 4: webgpt emits pairs (the rejected answer in `rejected`, not in meta)
VERSION = "4"
TEMPLATE_KINDS = ("any", "choice", "open")
_OPTION_LETTERS = re.compile(r"[A-G]{1,7}")
TASKS = ("natural_instructions", "gaokao", "duie", "hc3", "webgpt")
SAMPLES = {
    "natural_instructions": {
        "definition": "d",
        "examples": [{"input": "i", "output": "o", "explanation": "e"}],
        "input": "x",
        "output": "y",
    },
    "gaokao": {
        "question": "q",
        "answer": "A",
        "analysis": "a",
        "category": "c",
        "year": "2020",
        "question_type": "choice",
        "concluded": False,
    },
    "duie": {
        "text": "t",
        "triples": [
            {"subject": "s", "predicate": "p", "object": "o", "subject_type": "st", "object_type": "ot"}
        ],
        "relations": "p",
    },
}


def _templates(tdir: Path, task: str) -> list[tuple]:
    """(kind, instruction, input, output) per template; kind is choice|open|any (gaokao)."""
    path = tdir / "tasks" / f"{task}.yaml"
    data = load_yaml(path)
    out = []
    for spec in data.get("templates", []):
        tid = spec["id"]
        kind = spec.get("kind", "any")
        if kind not in TEMPLATE_KINDS:
            raise ValueError(
                f"{path}: template {tid}: kind {kind!r} is not one of {', '.join(TEMPLATE_KINDS)}"
            )
        out.append(
            (kind,)
            + tuple(
                compile_template(spec.get(k, ""), tid, str(path), SAMPLES[task])
                for k in ("instruction", "input", "output")
            )
        )
    if not out:
        raise ValueError(f"{path}: no templates")
    return out


def fitting(templates: list[tuple], kind: str) -> list[tuple]:
    """The templates whose kind fits a question of this kind."""
    return [t for t in templates if t[0] in ("any", kind)]


def _ni(record: dict) -> list[tuple[str, dict, dict]]:
    definition = record.get("Definition")
    if isinstance(definition, list):
        definition = "\n".join(x for x in definition if isinstance(x, str))
    if not isinstance(definition, str) or not definition.strip():
        raise FieldError("field 'Definition' is missing or empty")
    instances = record.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise FieldError("field 'Instances' is missing or empty")
    examples = [
        {"input": e.get("input", ""), "output": e.get("output", ""), "explanation": e.get("explanation", "")}
        for e in record.get("Positive Examples", [])[:2]
        if isinstance(e, dict)
    ]
    out = []
    for inst in instances:
        outputs = inst.get("output")
        first = outputs[0] if isinstance(outputs, list) and outputs else outputs
        if not isinstance(first, str) or not isinstance(inst.get("input"), str):
            raise FieldError(f"instance {inst.get('id')!r}: input/output must be strings")
        meta = {"instance_id": inst.get("id"), "all_outputs": outputs, "task_source": record.get("Source")}
        out.append(
            (
                str(inst.get("id")),
                {"definition": definition, "examples": examples, "input": inst["input"], "output": first},
                meta,
            )
        )
    return out


ANSWER_KEYS = ["answer", "standard_answer"]  # objective files / subjective files (GAOKAO-Bench)
# "故选：B。", "应选 D.", "故选 $\\mathrm{C}$.", "故答案为：B、D": a choice conclusion and its letters
_CHOICE_CONCLUSION = re.compile(
    r"(?:选|答案(?:为|是)?)\s*[:：]?\s*\$?\s*(?:\\(?:mathrm|text|textbf)\s*\{\s*)?"
    r"([A-G](?:\s*[、,，]?\s*[A-G])*)(?![A-Za-z])"
)
# "故答案为: $2 \\sqrt{7}$." / "故填 than": the rest of that line is an open question's conclusion
_OPEN_CONCLUSION = re.compile(r"(?:答案(?:为|是)|故填|应填)\s*[:：]?([^\n]*)")


def _bare(text: str) -> str:
    """An answer as compared with a conclusion: no spaces, dollar signs or closing stop."""
    return re.sub(r"[\s$]+", "", text).rstrip("。．.，,;；")


def concluded(analysis: str, items: list[str], kind: str) -> bool:
    """Whether the analysis already states every answer (in order, for a multi-part question),
    so a template's own conclusion ("故选 B。") would say it a second time."""
    if not analysis:
        return False
    if kind == "choice":
        said = [re.sub(r"[^A-G]", "", m) for m in _CHOICE_CONCLUSION.findall(analysis)]
        return len(said) >= len(items) and said[len(said) - len(items) :] == items
    said = {_bare(m) for m in _OPEN_CONCLUSION.findall(analysis)}
    return all(_bare(item) in said for item in items)


def _gaokao(record: dict):
    """One question; its type decides the template: option letters as the answer -> choice."""
    question = text_field(record, "question", required=True, allow_empty=False).strip()
    key = first_key(record, ANSWER_KEYS)
    answer = record.get(key)
    items = answer if isinstance(answer, list) else [answer]
    if not items or not all(isinstance(a, str) and a.strip() for a in items):
        raise FieldError(f"field {key!r} is missing, empty or not text")
    for a in items:
        if empty_answer(a):
            raise FieldError(
                f"field {key!r} is empty: only a header, a placeholder or punctuation ({a.strip()!r})"
            )
    items = [strip_answer_header(a).strip() for a in items]
    kind = "choice" if all(_OPTION_LETTERS.fullmatch(a) for a in items) else "open"
    analysis = text_field(record, "analysis", required=False).strip()
    ctx = {
        "question": question,
        "answer": "、".join(items) if kind == "choice" else "\n".join(items),
        "analysis": analysis,
        "category": str(record.get("category", "")).strip(),
        "year": str(record.get("year", "")).strip(),
        "question_type": kind,
        "concluded": concluded(analysis, items, kind),
    }
    meta = {"index": record.get("index"), "score": record.get("score"), "question_type": kind}
    return [("", ctx, meta)]


def _content(task: str, ctx: dict) -> str:
    """The raw text a templated record's language is read from (not the template's wording)."""
    if task == "gaokao":
        return ctx["question"]
    if task == "duie":
        return ctx["text"]
    return ctx["definition"] + "\n" + ctx["input"]


def _output_content(task: str, ctx: dict, output: str) -> str:
    """The raw text an answer's language is read from (not the template's wording)."""
    if task == "gaokao":
        return ctx["analysis"] + "\n" + ctx["answer"]
    if task == "natural_instructions":
        return ctx["output"]
    return output


def _value(x):
    return x.get("@value") if isinstance(x, dict) else x


def _duie(record: dict):
    text = text_field(record, "text", required=True, allow_empty=False)
    spo = record.get("spo_list")
    if not isinstance(spo, list) or not spo:
        raise FieldError("field 'spo_list' is missing or empty")
    triples = []
    for i, t in enumerate(spo):
        obj = _value(t.get("object"))
        if not isinstance(obj, str) or not isinstance(t.get("subject"), str):
            raise FieldError(f"spo_list[{i}]: subject and object must be strings")
        triples.append(
            {
                "subject": t["subject"],
                "predicate": t.get("predicate", ""),
                "object": obj,
                "subject_type": _value(t.get("subject_type")) or "",
                "object_type": _value(t.get("object_type")) or "",
            }
        )
    relations = "、".join(dict.fromkeys(t["predicate"] for t in triples))
    return [("", {"text": text, "triples": triples, "relations": relations}, {"spo_list": spo})]


def make(options: dict, source: str):
    task = options.get("task")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {', '.join(TASKS)}")
    seed = int(options.get("seed", 0))
    tdir = Path(options.get("templates_dir") or Path(__file__).resolve().parent.parent / "cot_templates")
    templates = _templates(tdir, task) if task in SAMPLES else None
    category = options.get(
        "category",
        {
            "natural_instructions": "general",
            "gaokao": "exam",
            "duie": "extraction",
            "hc3": "qa",
            "webgpt": "qa",
        }[task],
    )

    def expand(record: dict) -> list[tuple[str, str, str, str, str | None, dict]]:
        """(variant, instruction, input, output, template id, meta) for one raw record."""
        if task == "hc3":
            q = text_field(record, "question", required=True, allow_empty=False)
            out = []
            for kind in ("chatgpt_answers", "human_answers"):
                answers = record.get(kind) or []
                if not isinstance(answers, list):
                    raise FieldError(f"field {kind!r} is {type(answers).__name__}, expected a list")
                for i, a in enumerate(answers):
                    if isinstance(a, str) and a.strip() and not empty_answer(a, frozenset()):
                        out.append(
                            (f"{kind}:{i}", q, "", a, None, {"answer_source": kind.split("_")[0], "index": i})
                        )
            if not out:
                raise FieldError("no non-empty answer in human_answers or chatgpt_answers")
            return out
        if task == "webgpt":
            q = record.get("question")
            q = q.get("full_text") if isinstance(q, dict) else q
            if not isinstance(q, str) or not q.strip():
                raise FieldError("field 'question.full_text' is missing or empty")
            s0, s1 = record.get("score_0"), record.get("score_1")
            if not all(
                isinstance(s, int | float) and not (isinstance(s, float) and math.isnan(s)) for s in (s0, s1)
            ):
                raise FieldError("score_0 and score_1 must be numbers")
            if s0 == s1:
                raise FieldError("tie: score_0 == score_1, no preferred answer")
            best = 0 if s0 > s1 else 1
            answer = record.get(f"answer_{best}")
            if not isinstance(answer, str) or not answer.strip():
                raise FieldError(f"field 'answer_{best}' is missing or empty")
            if empty_answer(answer, frozenset()):
                raise FieldError(
                    f"field 'answer_{best}' is empty: only a header or punctuation ({answer.strip()[:40]!r})"
                )
            meta = {"preferred": best, "score_0": s0, "score_1": s1}
            other = record.get(f"answer_{1 - best}")
            if not isinstance(other, str) or not other.strip() or empty_answer(other, frozenset()):
                # the chosen answer still teaches (sft); with no rejected answer there is no pair
                meta["rejected_empty"] = True
                other = ""
            return [("", q, "", answer, None, meta, other)]
        contexts = {"natural_instructions": _ni, "gaokao": _gaokao, "duie": _duie}[task](record)
        return [(variant, ctx, meta) for variant, ctx, meta in contexts]

    def format_batch(batch, reject) -> dict[str, list]:
        cols = {
            k: []
            for k in (
                "instruction",
                "input",
                "output",
                "category",
                "raw_row",
                "raw_line",
                "meta",
                "template",
                "variant",
                "lang_text",
                "lang_output_text",
                "rejected",
            )
        }
        for record, row, line in zip(batch.as_records(), batch.rows, batch.lines, strict=True):
            try:
                items = expand(record)
                rendered = []
                for j, item in enumerate(items):
                    if templates is None:
                        rendered.append(item)
                        continue
                    variant, ctx, meta = item
                    fit = fitting(templates, ctx.get("question_type", "any"))
                    if not fit:
                        raise FieldError(f"no {task} template fits a {ctx['question_type']} question")
                    _kind, inst_t, inp_t, out_t = fit[(row + j + seed) % len(fit)]
                    output = out_t.render(ctx)
                    if not output.strip():
                        raise FieldError("rendered output is empty")
                    rendered.append(
                        (
                            variant,
                            inst_t.render(ctx),
                            inp_t.render(ctx),
                            output,
                            inst_t.id,
                            meta,
                            _content(task, ctx),
                            _output_content(task, ctx, output),
                        )
                    )
            except FieldError as e:
                reject(
                    json.dumps(record, ensure_ascii=False, default=str)[:4000], batch.file, row, line, str(e)
                )
                continue
            for variant, instruction, inp, output, tid, meta, *content in rendered:
                # webgpt's items carry the rejected answer as a 7th value; no template renders it
                cols["rejected"].append(content.pop() if task == "webgpt" else "")
                cols["lang_text"].append(content[0] if content else instruction + "\n" + inp)
                cols["lang_output_text"].append(content[1] if content else output)
                cols["instruction"].append(instruction)
                cols["input"].append(inp)
                cols["output"].append(output)
                cols["category"].append(category)
                cols["raw_row"].append(row)
                cols["raw_line"].append(line)
                cols["meta"].append(json.dumps(meta, ensure_ascii=False, default=str))
                cols["template"].append(tid)
                cols["variant"].append(variant or (tid or ""))
        n = len(cols["instruction"])
        cols["raw_file"] = [batch.file] * n
        cols["history"] = None
        if task != "webgpt":
            del cols["rejected"]  # only webgpt's records are pairs
        return cols

    return format_batch

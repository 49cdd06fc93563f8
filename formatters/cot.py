"""FLAN-style chain-of-thought formatter: (question, answer, rationale) rows -> instructions.

Templates come from ``cot_templates/<lang>/<set>.yaml`` (falling back to
``generic.yaml`` of that language). Modes, chosen with the ``modes`` option, each turn a
raw row into one record:

  zero_shot  instruction from the question; output = rationale + answer
  inversion  given rationale and answer, recover the question
  few_shot   k exemplars from the same file before the question (never the row itself),
             added while the instruction stays under ``few_shot_budget`` characters

Template assignment (documented, deterministic, no global random): within a file and
mode, row r gets template number ``(r + seed) % n_templates``. Usage is therefore
balanced within +-1 per set, and a different seed gives each row a different template.

Few-shot exemplars for row r are rows of the same batch (up to 8192 consecutive rows of
the file) at offsets drawn from xxh64(seed, r): deterministic and never r itself.

Options: template_set (default: from the file name "<set>_train.tsv"), lang (en|zh),
modes (default [zero_shot]), seed (0), k (3), few_shot_budget (2000), trigger (a phrase
appended to the instruction, the "think step by step" ablation), templates_dir.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from forge.formatters.templates import Template, compile_template, load_yaml

VERSION = "3"
MODES = ("zero_shot", "inversion", "few_shot")
VARIABLES = ("question", "chain_of_thought", "answer")
_CATEGORY = {"zero_shot": "cot", "few_shot": "cot", "inversion": "cot_inversion"}


def default_templates_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "cot_templates"


class TemplateSet:
    """The templates of one (lang, set) file, compiled once."""

    def __init__(self, path: Path):
        data = load_yaml(path)
        self.path = path
        self.name = data.get("set", path.stem)
        self.lang = data.get("lang", path.parent.name)
        self.zero_shot = [self._pair(t) for t in data.get("zero_shot", [])]
        self.inversion = [self._pair(t) for t in data.get("inversion", [])]
        self.few_shot = [self._few(t) for t in data.get("few_shot", [])]

    def _pair(self, spec: dict) -> tuple[Template, Template]:
        tid = spec["id"]
        return (
            compile_template(spec["instruction"], tid, str(self.path), VARIABLES),
            compile_template(spec["output"], tid, str(self.path), VARIABLES),
        )

    def _few(self, spec: dict) -> dict:
        tid = spec["id"]
        return {
            "id": tid,
            "prefix": spec.get("prefix", ""),
            "example_separator": spec.get("example_separator", "\n\n"),
            "io_separator": spec.get("io_separator", "\n"),
            "input": compile_template(spec["input"], tid, str(self.path), VARIABLES),
            "target": compile_template(spec["target"], tid, str(self.path), VARIABLES),
        }

    def templates(self, mode: str) -> list:
        return {"zero_shot": self.zero_shot, "inversion": self.inversion, "few_shot": self.few_shot}[mode]


_CACHE: dict[Path, TemplateSet] = {}


def load_set(templates_dir: Path, lang: str, name: str) -> TemplateSet:
    path = templates_dir / lang / f"{name}.yaml"
    if not path.exists():
        path = templates_dir / lang / "generic.yaml"
    path = path.resolve()
    if path not in _CACHE:
        _CACHE[path] = TemplateSet(path)
    return _CACHE[path]


SAMPLE = {
    "en": {
        "question": "A shop sells pens in packs of 4. Mia buys 3 packs and gives away 5 pens. How many pens does she have left?",
        "chain_of_thought": "3 packs hold 3 * 4 = 12 pens.\nAfter giving away 5, she has 12 - 5 = 7 pens.",
        "answer": "7",
    },
    "zh": {
        "question": "商店的笔每包 4 支。小米买了 3 包，送出 5 支。她还剩几支？",
        "chain_of_thought": "3 包共有 3 * 4 = 12 支。\n送出 5 支后剩 12 - 5 = 7 支。",
        "answer": "7",
    },
}


def list_sets(templates_dir: Path) -> list[TemplateSet]:
    return [
        load_set(templates_dir, p.parent.name, p.stem)
        for p in sorted(templates_dir.glob("*/*.yaml"))
        if p.parent.name != "tasks"
    ]


def render_sample(templates_dir: Path, template_id: str, record: dict) -> tuple[str, str]:
    """Render one template (any mode) on a sample record; missing fields use SAMPLE."""
    lang = template_id.split(".")[0]
    ctx = {k: (v if v is not None else SAMPLE.get(lang, SAMPLE["en"])[k]) for k, v in record.items()}
    for ts in list_sets(templates_dir):
        for mode in MODES:
            for t in ts.templates(mode):
                if mode == "few_shot" and t["id"] == template_id:
                    query = t["input"].render(ctx)
                    shot = t["input"].render(ctx) + t["io_separator"] + t["target"].render(ctx)
                    return t["prefix"] + shot + t["example_separator"] + query, t["target"].render(ctx)
                if mode != "few_shot" and t[0].id == template_id:
                    return t[0].render(ctx), t[1].render(ctx)
    raise ValueError(f"unknown template id {template_id!r}")


def set_name_from_file(file: str) -> str:
    stem = Path(file).name.split(".")[0]
    return stem.removesuffix("_train").removesuffix("_dev").removesuffix("_test")


def unescape(arr: pa.Array) -> pa.Array:
    # FLAN TSVs write newlines inside fields as the two characters backslash-n
    return pc.replace_substring(arr, "\\n", "\n")


def make(options: dict, source: str):
    lang = options.get("lang", "en")
    modes = list(options.get("modes", ["zero_shot"]))
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown cot mode {mode!r}; choose from {', '.join(MODES)}")
    seed = int(options.get("seed", 0))
    k = int(options.get("k", 3))
    budget = int(options.get("few_shot_budget", 2000))
    trigger = options.get("trigger")
    fixed_set = options.get("template_set")
    tdir = Path(options.get("templates_dir") or default_templates_dir())

    def format_batch(batch, reject) -> dict[str, list | pa.Array]:
        tset = load_set(tdir, lang, fixed_set or set_name_from_file(batch.file))
        n = len(batch)
        # raw fields are trimmed before they meet a template: FLAN's rationales end in stray
        # spaces, which would otherwise sit inside the rendered text ("... 42 .")
        cols = {
            name: pc.utf8_trim_whitespace(unescape(pa.array(batch.column(raw), pa.string())))
            for name, raw in (
                ("question", "question"),
                ("chain_of_thought", "rationale"),
                ("answer", "answer"),
            )
        }
        rows = np.asarray(batch.rows, dtype=np.int64)
        pieces = []
        for mode in modes:
            templates = tset.templates(mode)
            if not templates:
                raise ValueError(f"{tset.path}: no {mode} templates")
            choice = (rows + seed) % len(templates)
            if mode == "few_shot":
                instr, outp = _render_few_shot(templates, choice, cols, rows, seed, k, budget)
                metas = instr[1]
                instr = instr[0]
            else:
                instr, outp = _render_grouped(templates, choice, cols, n)
                metas = [json.dumps({"set": tset.name, "mode": mode})] * n
            if trigger:
                instr = pc.binary_join_element_wise(instr, pa.scalar(trigger), " ")
            names = np.array([t["id"] if mode == "few_shot" else t[0].id for t in templates], dtype=object)
            tids = names[choice].tolist()
            pieces.append((mode, instr, outp, tids, metas))

        out = {"instruction": [], "output": [], "template": [], "meta": [], "category": []}
        for mode, instr, outp, tids, metas in pieces:
            out["instruction"].append(instr)
            out["output"].append(outp)
            out["template"].extend(tids)
            out["meta"].extend(metas)
            out["category"].extend([_CATEGORY[mode]] * n)
        m = len(pieces)
        out["instruction"] = pa.concat_arrays(
            [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in out["instruction"]]
        )
        out["output"] = pa.concat_arrays(
            [a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for a in out["output"]]
        )
        out["input"] = [""] * (n * m)
        out["history"] = None  # no earlier turns
        out["raw_file"] = [batch.file] * (n * m)
        out["raw_row"] = list(batch.rows) * m
        out["raw_line"] = list(batch.lines) * m
        out["variant"] = out["template"]
        # the language is read from the question, not from the template's wording around it,
        # and the answer's from what the output carries: rationale and answer (the question,
        # for an inversion)
        out["lang_text"] = pa.concat_arrays([cols["question"]] * m)
        answer = pc.binary_join_element_wise(cols["chain_of_thought"], cols["answer"], "\n")
        out["lang_output_text"] = pa.concat_arrays(
            [cols["question"] if mode == "inversion" else answer for mode, *_ in pieces]
        )
        return out

    return format_batch


def _render_grouped(templates: list[tuple[Template, Template]], choice: np.ndarray, cols: dict, n: int):
    """Render each template on the rows assigned to it, column-wise, then restore row order."""
    order = np.argsort(choice, kind="stable")
    instr_parts, out_parts = [], []
    for t in range(len(templates)):
        idx = order[choice[order] == t]
        if len(idx) == 0:
            continue
        sub = {name: col.take(pa.array(idx)) for name, col in cols.items()}
        instr_parts.append(templates[t][0].render_columns(sub, len(idx)))
        out_parts.append(templates[t][1].render_columns(sub, len(idx)))
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.concatenate([order[choice[order] == t] for t in range(len(templates))])] = np.arange(n)
    instr = pa.chunked_array(instr_parts, pa.string()).combine_chunks().take(pa.array(inverse))
    outp = pa.chunked_array(out_parts, pa.string()).combine_chunks().take(pa.array(inverse))
    return instr, outp


def _render_few_shot(patterns: list[dict], choice, cols, rows, seed, k, budget):
    q = cols["question"].to_pylist()
    c = cols["chain_of_thought"].to_pylist()
    a = cols["answer"].to_pylist()
    n = len(q)
    instructions, outputs, metas = [], [], []
    for i in range(n):
        pat = patterns[choice[i]]
        ctx = {"question": q[i], "chain_of_thought": c[i], "answer": a[i]}
        query = pat["input"].render(ctx)
        text = pat["prefix"]
        used = []
        if n > 1:
            h = xxhash.xxh64_intdigest(f"{seed}:{rows[i]}".encode())
            for j in range(k):
                e = (h + j * 2654435761) % (n - 1)
                e = e + 1 if e >= i else e  # skip the row itself
                if e in used:
                    continue
                ectx = {"question": q[e], "chain_of_thought": c[e], "answer": a[e]}
                shot = pat["input"].render(ectx) + pat["io_separator"] + pat["target"].render(ectx)
                candidate = text + shot + pat["example_separator"]
                if len(candidate) + len(query) > budget:
                    break
                text = candidate
                used.append(e)
        instructions.append(text + query)
        outputs.append(pat["target"].render(ctx))
        metas.append(json.dumps({"mode": "few_shot", "exemplar_rows": [int(rows[e]) for e in used]}))
    return (pa.array(instructions, pa.string()), metas), pa.array(outputs, pa.string())

"""Evaluation data in its published layouts -> plain items, with one-line errors that name the
file, the line and the field.

  multiple choice   CMMLU  folder of `<subject>.csv`, header `,Question,A,B,C,D,Answer`
                    C-Eval folder of `<subject>_val.csv` (`dev/<subject>_dev.csv` for shots),
                           header `id,question,A,B,C,D,answer[,explanation]`
                    MMLU   folder of headerless `<subject>_test.csv`: question,A,B,C,D,answer
                    MMCU   Alpaca-CoT's JSON array of {类别, 题目, 选项: "A:..\\nB:..", 答案}
  chain of thought  GSM8K JSONL {question, answer ending in `#### N`}
                    FLAN CoT TSV: question <TAB> answer [<TAB> rationale]
  judged            Belle-eval: eval_set.json (JSONL {question, std_answer, class}) beside
                    eval_prompt.json (JSONL {class, prompt}: the judge's instructions)

A multiple-choice folder may hold the split folders (`test/` or `val/`, and `dev/`) or the
CSV files themselves; shots come from the dev split, first k rows, as the published papers do.
GSM8K's few-shot examples come from its train split: `train.jsonl` beside the test file (the
layout of openai/grade-school-math's data/ folder), read when it is there.

The subject names below are those of lm-evaluation-harness's built-in CMMLU and C-Eval tasks
(their per-subject `description`s, lm_eval 0.4.13), which are the CMMLU and C-Eval authors' own;
tests/test_eval_protocol.py checks them against the installed lm_eval.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MC_SUITES = ("cmmlu", "ceval", "mmlu", "mmcu")
COT_SUITES = ("gsm8k", "flan-cot")
SUITES = (*MC_SUITES, *COT_SUITES, "belle")
LETTERS = "ABCD"

CMMLU_SUBJECTS_ZH = {
    "agronomy": "农学", "anatomy": "解剖学", "ancient_chinese": "古汉语", "arts": "艺术学", "astronomy": "天文学",
    "business_ethics": "商业伦理", "chinese_civil_service_exam": "中国公务员考试", "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化", "chinese_foreign_policy": "中国外交政策", "chinese_history": "中国历史",
    "chinese_literature": "中国文学", "chinese_teacher_qualification": "中国教师资格", "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学", "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学", "college_law": "大学法律", "college_mathematics": "大学数学",
    "college_medical_statistics": "大学医学统计", "college_medicine": "大学医学", "computer_science": "计算机科学",
    "computer_security": "计算机安全", "conceptual_physics": "概念物理学", "construction_project_management": "建设工程管理",
    "economics": "经济学", "education": "教育学", "electrical_engineering": "电气工程", "elementary_chinese": "小学语文",
    "elementary_commonsense": "小学常识", "elementary_information_and_technology": "小学信息技术",
    "elementary_mathematics": "初等数学", "ethnology": "民族学", "food_science": "食品科学", "genetics": "遗传学",
    "global_facts": "全球事实", "high_school_biology": "高中生物", "high_school_chemistry": "高中化学",
    "high_school_geography": "高中地理", "high_school_mathematics": "高中数学", "high_school_physics": "高中物理学",
    "high_school_politics": "高中政治", "human_sexuality": "人类性行为", "international_law": "国际法学",
    "journalism": "新闻学", "jurisprudence": "法理学", "legal_and_moral_basis": "法律与道德基础", "logical": "逻辑学",
    "machine_learning": "机器学习", "management": "管理学", "marketing": "市场营销", "marxist_theory": "马克思主义理论",
    "modern_chinese": "现代汉语", "nutrition": "营养学", "philosophy": "哲学", "professional_accounting": "专业会计",
    "professional_law": "专业法学", "professional_medicine": "专业医学", "professional_psychology": "专业心理学",
    "public_relations": "公共关系", "security_study": "安全研究", "sociology": "社会学", "sports_science": "体育学",
    "traditional_chinese_medicine": "中医中药", "virology": "病毒学", "world_history": "世界历史",
    "world_religions": "世界宗教",
}  # fmt: skip

CEVAL_SUBJECTS_ZH = {
    "accountant": "注册会计师", "advanced_mathematics": "高等数学", "art_studies": "艺术学", "basic_medicine": "基础医学",
    "business_administration": "工商管理", "chinese_language_and_literature": "中国语言文学", "civil_servant": "公务员",
    "clinical_medicine": "临床医学", "college_chemistry": "大学化学", "college_economics": "大学经济学",
    "college_physics": "大学物理", "college_programming": "大学编程", "computer_architecture": "计算机组成",
    "computer_network": "计算机网络", "discrete_mathematics": "离散数学", "education_science": "教育学",
    "electrical_engineer": "注册电气工程师", "environmental_impact_assessment_engineer": "环境影响评价工程师",
    "fire_engineer": "注册消防工程师", "high_school_biology": "高中生物", "high_school_chemistry": "高中化学",
    "high_school_chinese": "高中语文", "high_school_geography": "高中地理", "high_school_history": "高中历史",
    "high_school_mathematics": "高中数学", "high_school_physics": "高中物理", "high_school_politics": "高中政治",
    "ideological_and_moral_cultivation": "思想道德修养与法律基础", "law": "法学", "legal_professional": "法律职业资格",
    "logic": "逻辑学", "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论", "marxism": "马克思主义基本原理",
    "metrology_engineer": "注册计量师", "middle_school_biology": "初中生物", "middle_school_chemistry": "初中化学",
    "middle_school_geography": "初中地理", "middle_school_history": "初中历史", "middle_school_mathematics": "初中数学",
    "middle_school_physics": "初中物理", "middle_school_politics": "初中政治", "modern_chinese_history": "近代史纲要",
    "operating_system": "操作系统", "physician": "医师资格", "plant_protection": "植物保护",
    "probability_and_statistics": "概率统计", "professional_tour_guide": "导游资格", "sports_science": "体育学",
    "tax_accountant": "税务师", "teacher_qualification": "教师资格", "urban_and_rural_planner": "注册城乡规划师",
    "veterinary_medicine": "兽医学",
}  # fmt: skip


class EvalDataError(ValueError):
    """An eval file that is not in the layout its suite names; the message is one line."""


@dataclass
class MCItem:
    id: str
    subject: str
    question: str
    options: dict[str, str]  # letter -> text, in order
    answer: str
    file: str
    line: int


@dataclass
class GenItem:
    id: str
    question: str
    gold: str
    kind: str  # number | letter | yesno | text: how the final answer is extracted and compared
    file: str
    line: int
    category: str = ""
    reference: str = ""  # Belle-eval's std_answer, shown to the judge
    target: str = ""  # the published answer text (GSM8K: the worked solution ending '#### N')


@dataclass
class EvalData:
    suite: str
    items: list
    shots: dict[str, list[MCItem]] = field(default_factory=dict)  # subject -> dev items
    files: list[Path] = field(default_factory=list)
    judge_prompts: dict[str, str] = field(default_factory=dict)
    always: list[Path] = field(default_factory=list)  # files every item needs (Belle's judge prompts)
    pool: list = field(default_factory=list)  # GSM8K's train split, which k-shot examples are drawn from
    pool_files: list[Path] = field(default_factory=list)

    def sha256(self, shots: int = 0) -> dict[str, str]:
        """Hashes of the files the items (and their shots) came from, and of `always`."""
        used = {it.file for it in self.items}
        used |= {s.file for it in self.items for s in self.shots.get(getattr(it, "subject", ""), [])[:shots]}
        files = [p for p in self.files if str(p) in used] + self.always + (self.pool_files if shots else [])
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _fail(path: Path, line: int | None, msg: str) -> EvalDataError:
    return EvalDataError(f"{path}{f':{line}' if line else ''}: {msg}")


# ---- multiple choice ----------------------------------------------------------------------------

_HEADERS = {
    "cmmlu": ["Question", "A", "B", "C", "D", "Answer"],  # after the unnamed index column
    "ceval": ["id", "question", "A", "B", "C", "D", "answer"],
}
_SPLITS = {"cmmlu": ("test", "dev"), "ceval": ("val", "dev"), "mmlu": ("test", "dev")}


def _subject(path: Path) -> str:
    return re.sub(r"_(test|val|dev)$", "", path.stem)


def _csv_rows(path: Path):
    """(first line of the row, row) for each CSV row; fields may hold newlines."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        start = 1
        for row in reader:
            yield start, row
            start = reader.line_num + 1


def _read_mc_csv(suite: str, path: Path, subject: str) -> list[MCItem]:
    items = []
    rows = _csv_rows(path)
    if suite in _HEADERS:
        want = _HEADERS[suite]
        try:
            _, header = next(rows)
        except StopIteration:
            raise _fail(path, None, "empty file") from None
        got = header[1:] if suite == "cmmlu" else header[: len(want)]
        if got != want:
            shown = ",".join(([""] if suite == "cmmlu" else []) + want)
            raise _fail(
                path, 1, f"not a {suite} file: expected the header {shown!r}, got {','.join(header)!r}"
            )
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if suite == "cmmlu":
            cells, names = row[1:], _HEADERS["cmmlu"]
        elif suite == "ceval":
            cells, names = row[1:7], _HEADERS["ceval"][1:]
        else:
            cells, names = row, ["question", "A", "B", "C", "D", "answer"]
            if line == 1 and [c.strip().lower() for c in row[:2]] == ["question", "a"]:
                raise _fail(path, 1, "not an mmlu file: MMLU CSVs have no header row")
        if len(cells) < 6:
            raise _fail(path, line, f"expected 6 fields ({','.join(names)}), got {len(cells)}")
        question, options, answer = cells[0], dict(zip(LETTERS, cells[1:5], strict=True)), cells[5].strip()
        if answer not in options:
            raise _fail(path, line, f"field {names[5]!r}: answer {answer!r} is not one of the options A-D")
        rid = row[0] if suite == "ceval" else str(len(items))
        items.append(MCItem(f"{subject}/{rid}", subject, question, options, answer, str(path), line))
    return items


_OPTION = re.compile(r"^\s*([A-Z])\s*[:：.．、)）]\s*(.*)$")


def _read_mmcu(path: Path) -> list[MCItem]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise _fail(
            path, getattr(e, "lineno", None), f"not JSON ({e.msg if hasattr(e, 'msg') else e})"
        ) from None
    if not isinstance(doc, list):
        raise _fail(path, 1, "not an MMCU file: expected a JSON array of {类别, 题目, 选项, 答案}")
    items = []
    for i, rec in enumerate(doc):
        where = f"record {i}"
        for key in ("类别", "题目", "选项", "答案"):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise _fail(path, None, f"{where}: field {key!r} missing or not a string (MMCU layout)")
        options = {}
        for part in rec["选项"].splitlines():
            m = _OPTION.match(part)
            if m:
                options[m.group(1)] = m.group(2).strip()
            elif part.strip() and options:  # an option text that runs over two lines
                last = next(reversed(options))
                options[last] += "\n" + part.strip()
        if len(options) < 2:
            raise _fail(path, None, f"{where}: field '选项': no 'A:...' options in {rec['选项'][:60]!r}")
        answer = rec["答案"].strip()
        if answer not in options:
            raise _fail(
                path, None, f"{where}: field '答案': answer {answer!r} is not one of {''.join(options)}"
            )
        subject = rec["类别"].strip() or "mmcu"
        items.append(MCItem(f"{subject}/{i}", subject, rec["题目"], options, answer, str(path), i + 1))
    return items


def read_mc(suite: str, path: Path) -> EvalData:
    path = Path(path)
    if suite == "mmcu":
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise _fail(path, None, "no MMCU .json file here")
        items = [it for f in files for it in _read_mmcu(f)]
        return EvalData(suite, items, {}, files)
    test_split, dev_split = _SPLITS[suite]
    if path.is_file():
        tests, devs = [path], []
    elif path.is_dir():
        root = path / test_split if (path / test_split).is_dir() else path
        tests = sorted(root.glob("*.csv"))
        devs = sorted((path / dev_split).glob("*.csv")) if (path / dev_split).is_dir() else []
    else:
        raise _fail(path, None, "no such file or folder")
    if not tests:
        raise _fail(
            path, None, f"no {suite} CSV files (expected {test_split}/<subject>.csv or <subject>.csv)"
        )
    items = [it for f in tests for it in _read_mc_csv(suite, f, _subject(f))]
    subjects = {it.subject for it in items}
    shots = {}
    for f in devs:
        if _subject(f) in subjects:
            shots[_subject(f)] = _read_mc_csv(suite, f, _subject(f))
    used = tests + [f for f in devs if _subject(f) in subjects]
    return EvalData(suite, items, shots, used)


# ---- chain of thought -----------------------------------------------------------------------------

_GSM_GOLD = re.compile(r"####\s*(.+?)\s*$")


def number(text: str) -> str | None:
    """A number in canonical form: no thousands commas, no trailing .0, no sign noise."""
    t = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(t)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def read_gsm8k(path: Path) -> EvalData:
    """A GSM8K JSONL file (or a folder holding test.jsonl), and the train split beside it
    (train.jsonl), if there, as the pool few-shot examples are drawn from."""
    path = Path(path)
    if path.is_dir():
        path = path / "test.jsonl"
    if not path.is_file():
        raise _fail(path, None, "no such file (GSM8K is JSONL {question, answer}; a folder holds test.jsonl)")
    items = _read_gsm8k_file(path, "gsm8k")
    train = path.with_name("train.jsonl")
    if train.is_file() and train.resolve() != path.resolve():
        return EvalData(
            "gsm8k", items, {}, [path], pool=_read_gsm8k_file(train, "gsm8k-train"), pool_files=[train]
        )
    return EvalData("gsm8k", items, {}, [path])


def _read_gsm8k_file(path: Path, prefix: str) -> list[GenItem]:
    items = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise _fail(path, line_no, "not a JSON object (GSM8K is JSONL {question, answer})") from None
            for key in ("question", "answer"):
                if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                    raise _fail(path, line_no, f"field {key!r} missing or not a string (GSM8K layout)")
            m = _GSM_GOLD.search(rec["answer"].strip())
            gold = number(m.group(1)) if m else None
            if gold is None:
                raise _fail(path, line_no, "field 'answer': no '#### <number>' at its end")
            items.append(GenItem(f"{prefix}/{len(items)}", rec["question"], gold, "number", str(path), line_no,
                                 target=rec["answer"]))  # fmt: skip
    return items


def _flan_kind(gold: str) -> tuple[str, str]:
    g = gold.strip()
    m = re.fullmatch(r"\(?([A-Z])\)?", g)
    if m:
        return "letter", m.group(1)
    if g.lower() in ("yes", "no"):
        return "yesno", g.lower()
    n = number(g)
    if n is not None:
        return "number", n
    return "text", g


def read_flan_cot(path: Path, rows: slice | None = None) -> EvalData:
    """FLAN CoT TSVs (one file or a folder of them); `rows` picks a slice of each file, for a
    held-out part that training did not use."""
    path = Path(path)
    files = sorted(path.glob("*.tsv")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise _fail(path, None, "no FLAN CoT .tsv file here")
    items = []
    for f in files:
        lines = f.read_text(encoding="utf-8").splitlines()
        chosen = range(len(lines))[rows] if rows else range(len(lines))
        for row in chosen:
            cells = lines[row].split("\t")
            if not lines[row].strip():
                continue
            if len(cells) < 2 or not cells[1].strip():
                raise _fail(f, row + 1, "expected question<TAB>answer[<TAB>rationale], the answer is missing")
            kind, gold = _flan_kind(cells[1])
            question = cells[0].replace("\\n", "\n")
            items.append(GenItem(f"{f.stem}/{row}", question, gold, kind, str(f), row + 1))
    return EvalData("flan-cot", items, {}, files)


# ---- Belle-eval ---------------------------------------------------------------------------------


def category_key(name: str) -> str:
    """Belle's class names differ in case and spacing between its two files ('open qa' and
    'open QA', 'closed\\xa0qa'): compare them folded."""
    return " ".join(name.replace("\xa0", " ").split()).casefold()


def _jsonl_or_array(path: Path, layout: str) -> list[tuple[int, dict]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(enumerate(json.loads(text), 1))
        except ValueError as e:
            raise _fail(path, None, f"not JSON ({e})") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except ValueError:
                raise _fail(path, n, f"not a JSON object ({layout})") from None
    return out


def read_belle(path: Path, prompts: Path | None = None) -> EvalData:
    """eval_set.json, and the judge prompts from eval_prompt.json beside it (or `prompts`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "eval_set.json"
    prompts = Path(prompts) if prompts else path.with_name("eval_prompt.json")
    for p in (path, prompts):
        if not p.is_file():
            raise _fail(p, None, "no such file (Belle-eval needs eval_set.json and eval_prompt.json)")
    judge = {}
    for n, rec in _jsonl_or_array(prompts, "eval_prompt.json is JSONL {class, prompt}"):
        if not isinstance(rec, dict) or not all(isinstance(rec.get(k), str) for k in ("class", "prompt")):
            raise _fail(prompts, n, "fields 'class' and 'prompt' must be strings (eval_prompt.json layout)")
        judge[category_key(rec["class"])] = rec["prompt"]
    items = []
    for n, rec in _jsonl_or_array(path, "eval_set.json is JSONL {question, std_answer, class}"):
        for key in ("question", "std_answer", "class"):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
                raise _fail(path, n, f"field {key!r} missing or not a string (eval_set.json layout)")
        cat = category_key(rec["class"])
        if cat not in judge:
            raise _fail(path, n, f"field 'class': {rec['class']!r} has no judge prompt in {prompts.name}")
        items.append(
            GenItem(
                f"belle/{len(items)}", rec["question"], "", "judged", str(path), n, cat, rec["std_answer"]
            )
        )
    return EvalData("belle", items, {}, [path], judge, always=[prompts])


def read(suite: str, path: Path, rows: slice | None = None) -> EvalData:
    if suite in MC_SUITES:
        return read_mc(suite, path)
    if suite == "gsm8k":
        return read_gsm8k(path)
    if suite == "flan-cot":
        return read_flan_cot(path, rows)
    if suite == "belle":
        return read_belle(path)
    raise EvalDataError(f"unknown suite {suite!r}; one of: {', '.join(SUITES)}")

"""Issue #31, the formatting and language half: one case per finding, on records in each
corpus's own raw layout, plus real-corpus checks over ../shared/corpora.

1. a target with no answer (GAOKAO "【答案】" and nothing after it) is quarantined with a reason
2. a template never repeats a conclusion the analysis already states ("故选：B。\\n故选 B。")
3. a speaker tag in the middle of an hh-rlhf turn splits the turn; a rejected transcript with
   other earlier turns is flagged (meta.rejected_prompt_differs)
4. mixed-language records: lang (the prompt) and lang_output (the answer), one query each
"""

import gzip
import json
import re

import polars as pl
import pytest
from conftest import shared

from forge.build import build_source
from forge.connectors.base import RawBatch
from forge.formatters import tasks
from forge.schema import SCHEMA_VERSION


def records(r) -> pl.DataFrame:
    return pl.read_parquet([str(r.out_dir / s["file"]) for s in r.shards]).sort("raw_row")


def quarantine(r) -> list[dict]:
    return [json.loads(x) for x in r.quarantine_file.read_text().splitlines()] if r.quarantine_file else []


# --- 1. a target with no answer ------------------------------------------------------------

# GAOKAO-Bench 2012-2022_English_Language_Error_Correction.json (commit c214b47, the catalog's):
# subjective files name the answer `standard_answer`; rows 19 and 21 hold only "【答案】\n".
# The question and analysis are cut short here; the keys, their order and the answers are real.
ERROR_CORRECTION = {
    "keywords": "2012-2022_English_Language_Error_Correction",
    "example": [
        {
            "year": "2019",
            "category": "（新课标Ⅲ）",
            "question": "短文改错(共10小题；每小题1分，满分10分)\n71.假定英语课上老师要求同桌之间交换修改作文，"
            "请你修改你同桌写的以下作文。\nI've had many dreams since I was a child. Now my dream is to "
            "opens a cafe.\n",
            "analysis": "【解析】\n【详解】1. 本句考查不定式的用法。不定式做表语，to后用动词原形。故把 opens改为 open。\n",
            "index": 18,
            "score": 10,
            "standard_answer": "【答案】opens→open\nrequired→requires\nordinarily→ordinary\ncafe后面加上to\n"
            "去掉like\nyourselves→themselves\nwhat→that/which\nmanage→managing\ncity→cities\nan→a\n",
        },
        {
            "year": "2020",
            "category": "（新课标Ⅰ）",
            "question": "短文改错(共10小题；每小题1分，满分10分)\n71.假定英语课上老师要求同桌之间交换修改作文，"
            "请你修改你同桌写的以下作文。\nToday I tried cooking a simply dish myself.\n",
            "analysis": "【解析】\n【分析】\n这是一篇记叙文。文章主要讲述了作者做西红柿炒鸡蛋的过程。\n【详解】1.考查形容词。"
            "故将simply改为simple。\n",
            "index": 19,
            "score": 10,
            "standard_answer": "【答案】\n",
        },
    ],
}


def test_gaokao_answer_that_is_only_a_header_is_quarantined(home, catalog, tmp_path):
    raw = tmp_path / "2012-2022_English_Language_Error_Correction.json"
    raw.write_text(json.dumps(ERROR_CORRECTION, ensure_ascii=False, indent=4), encoding="utf-8")
    r = build_source(catalog.get("gaokao"), home=home, from_path=raw, max_quarantine=1.0)
    assert (r.rows, r.quarantined) == (1, 1)
    [q] = quarantine(r)
    assert (q["row"], q["stage"]) == (1, "formatter")
    assert (
        q["reason"]
        == "field 'standard_answer' is empty: only a header, a placeholder or punctuation ('【答案】')"
    )
    row = records(r).row(0, named=True)
    # row 0 of an open question -> tasks.gaokao.01; the leading "【答案】" header is dropped, the
    # template's own label stands in its place
    assert row["template"] == "tasks.gaokao.01"
    assert row["output"] == (
        "【解析】\n【详解】1. 本句考查不定式的用法。不定式做表语，to后用动词原形。故把 opens改为 open。\n"
        "答案：opens→open\nrequired→requires\nordinarily→ordinary\ncafe后面加上to\n去掉like\n"
        "yourselves→themselves\nwhat→that/which\nmanage→managing\ncity→cities\nan→a"
    )


@pytest.mark.parametrize(
    "answer, empty",
    [
        ("【答案】\n", True),
        ("答案：", True),
        ("【解析】\n【分析】", True),
        ("见解析", True),
        ("略。", True),
        ("……", True),
        ("【答案】B", False),
        ("0", False),
        ("无理数", False),
    ],
)
def test_empty_answer_rule(answer, empty):
    from forge.formatters.fields import empty_answer

    assert empty_answer(answer) is empty


def test_reply_of_only_punctuation_is_quarantined_in_every_formatter(home, catalog, tmp_path):
    raw = tmp_path / "belle.json"
    raw.write_text(
        '{"instruction": "这句话对吗？", "input": "", "output": "……"}\n'
        '{"instruction": "1+1=?", "input": "", "output": "2"}\n',
        encoding="utf-8",
    )
    r = build_source(catalog.get("belle_0.5m"), home=home, from_path=raw, max_quarantine=1.0)
    assert [q["reason"] for q in quarantine(r)] == [
        "field 'output' is empty: only a header or punctuation ('……')"
    ]
    hh = tmp_path / "hh.jsonl.gz"
    hh.write_bytes(
        gzip.compress(
            b'{"chosen": "\\n\\nHuman: Are you there?\\n\\nAssistant: ...", '
            b'"rejected": "\\n\\nHuman: Are you there?\\n\\nAssistant: No."}\n'
        )
    )
    r = build_source(catalog.get("hh_rlhf"), home=home, from_path=hh, max_quarantine=1.0)
    assert [q["reason"] for q in quarantine(r)] == [
        "the last assistant turn is empty: only a header or punctuation ('...')"
    ]


# --- 2. no conclusion said twice -----------------------------------------------------------

CHOICE = {
    "year": "2020",
    "category": "（新课标Ⅰ）",
    "question": "1．已知集合 $A=\\{x \\mid x^{2}-3 x-4<0\\}$, 则 $A \\cap B=$（ ）\nA. $\\{-4,1\\}$\nB. $\\{1,5\\}$\n",
    "answer": ["B"],
    "analysis": "解：由题意可得 $A=\\{x \\mid -1<x<4\\}$。\n故选：B。\n",
    "index": 0,
    "score": 5,
}


def render(record: dict, seed: int) -> dict:
    """One GAOKAO record through the formatter, template chosen by `seed` (row 0)."""
    fmt = tasks.make({"task": "gaokao", "seed": seed}, "gaokao")
    rejected = []
    cols = fmt(RawBatch("x.json", records=[record], rows=[0], lines=[1]), lambda *a: rejected.append(a))
    assert not rejected, rejected
    return {"template": cols["template"][0], "output": cols["output"][0]}


def test_gaokao_template_never_repeats_the_analysis_conclusion():
    # a choice question fits templates 01, 02, 03 (seed s -> template s + 1)
    outs = {render(CHOICE, seed)["template"]: render(CHOICE, seed)["output"] for seed in range(3)}
    analysis = "解：由题意可得 $A=\\{x \\mid -1<x<4\\}$。\n故选：B。"
    assert outs == {
        "tasks.gaokao.01": analysis + "\n答案：B",  # an answer label is the record's answer slot
        "tasks.gaokao.02": "分析：" + analysis,  # no "所以答案是：B" after "故选：B。"
        "tasks.gaokao.03": analysis,  # no "故选 B。" after "故选：B。"
    }
    # an analysis that does not state the answer still gets the template's conclusion
    open_end = {**CHOICE, "analysis": "解：由题意可得 $A=\\{x \\mid -1<x<4\\}$。\n"}
    assert render(open_end, 2)["output"] == "解：由题意可得 $A=\\{x \\mid -1<x<4\\}$。\n故选 B。"
    # a conclusion in LaTeX, and a multi-part question whose analysis concludes every part
    assert tasks.concluded("对应点位于第三象限. 故选 $\\mathrm{C}$.", ["C"], "choice")
    assert tasks.concluded("…故选：B。\n解：…故选：A。\n解：…故选：D。", ["B", "A", "D"], "choice")
    assert not tasks.concluded("…故选：B。\n解：…C 正确。", ["B", "C"], "choice")
    assert not tasks.concluded("…故选：C。", ["B"], "choice")  # a different answer is not a repeat
    assert tasks.concluded("解得 $n=8$.\n\n故答案为: 8 .", ["8"], "open")


# the check below, written apart from the formatter: an output ends in two conclusions that
# name the same option letters ("故选：B。\n故选 B。", "故选 $\\mathrm{C}$.\n故选 C。")
DOUBLED = re.compile(r"选[^\n]{0,20}?([A-G]+)[^\n]*\n故选 \1。$")
# an output whose final answer slot holds nothing ("所以答案是：【答案】", "答案：")
PLACEHOLDER_ONLY = re.compile(r"(?:答案：|所以答案是：|故选 |参考答案：\n)\s*(?:【[^】]*】)?\s*。?$")


def test_real_gaokao_no_doubled_conclusion_and_no_empty_answer(home, catalog, tmp_path):
    r = build_source(catalog.get("gaokao"), home=home, from_path=shared("gaokao"))
    df = records(r)
    assert (r.rows, r.quarantined) == (276, 0)
    assert [o for o in df["output"] if DOUBLED.search(o)] == []
    assert [o for o in df["output"] if PLACEHOLDER_ONLY.search(o)] == []
    t03 = df.filter(pl.col("template") == "tasks.gaokao.03")
    assert t03.height == 82
    # the check is not vacuous: template 03 as it was ("{{ analysis }}\n故选 {{ answer }}。"),
    # given every choice question, doubles the conclusion in 200 of the 248
    naive = tmp_path / "templates"
    (naive / "tasks").mkdir(parents=True)
    (naive / "tasks" / "gaokao.yaml").write_text(
        "set: gaokao\ntemplates:\n  - id: tasks.gaokao.03\n    kind: choice\n"
        '    instruction: "{{ question }}"\n'
        '    output: "{% if analysis %}{{ analysis }}\\n{% endif %}故选 {{ answer }}。"\n'
        "  - id: tasks.gaokao.04\n    kind: open\n"
        '    instruction: "{{ question }}"\n    output: "{{ answer }}"\n',
        encoding="utf-8",
    )
    import dataclasses

    src = catalog.get("gaokao")
    src = dataclasses.replace(src, options={**src.options, "templates_dir": str(naive)})
    naive_df = records(build_source(src, home=tmp_path / "naive-home", from_path=shared("gaokao")))
    choice = naive_df.filter(pl.col("template") == "tasks.gaokao.03")
    assert (choice.height, sum(bool(DOUBLED.search(o)) for o in choice["output"])) == (248, 200)


# --- 3. a user's words inside the trained reply ----------------------------------------------

# hh-rlhf's own layout: one JSON object per line, {"chosen", "rejected"}, each transcript a string
# of "\n\nHuman: " / "\n\nAssistant: " turns
DRAG = (
    "\n\nHuman: What are drag kings?\n\nAssistant: Drag kings are mostly women who dress in masculine "
    "drag and perform as men, the counterpart of drag queens.  Human: Then how do they come to be "
    "called drag kings, if they are women?"
)
PAIRS = [
    {  # a speaker tag mid-line: the user's question must not stay in the assistant's turn
        "chosen": DRAG
        + "\n\nAssistant: King is the male counterpart of queen, so a woman who performs as a man is a king.",
        "rejected": DRAG + "\n\nAssistant: I don't know.",
    },
    {  # the rejected transcript's earlier turns differ: meta.rejected answers another prompt
        "chosen": "\n\nHuman: Can you recommend a book?\n\nAssistant: Sure, which genres do you like?"
        "\n\nHuman: Mystery.\n\nAssistant: Try The Hound of the Baskervilles.",
        "rejected": "\n\nHuman: Can you recommend a book?\n\nAssistant: No.\n\nHuman: Mystery."
        "\n\nAssistant: I don't know any.",
    },
    {  # "a Human:" with no sentence end before it is the assistant's own words, not a turn
        "chosen": "\n\nHuman: Are you a person?\n\nAssistant: I am not a Human: I am an AI assistant.",
        "rejected": "\n\nHuman: Are you a person?\n\nAssistant: Yes.",
    },
]


def test_hh_rlhf_mid_line_speaker_tag_splits_the_turn_and_pair_prompts_are_compared(home, catalog, tmp_path):
    raw = tmp_path / "train.jsonl.gz"
    raw.write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in PAIRS).encode()))
    r = build_source(catalog.get("hh_rlhf"), home=home, from_path=raw)
    df = records(r)
    assert (r.rows, r.quarantined) == (3, 0)
    drag, book, person = df.iter_rows(named=True)
    # pairs (#34): a record is a pair only where both replies answer the same prompt
    assert [(x["kind"], x["rejected"]) for x in (drag, book, person)] == [
        ("pair", "I don't know."),
        ("sft", ""),
        ("pair", "Yes."),
    ]
    assert drag["history"] == [
        {
            "user": "What are drag kings?",
            "assistant": "Drag kings are mostly women who dress in masculine drag and perform as men, the "
            "counterpart of drag queens.",
        }
    ]
    assert drag["instruction"] == "Then how do they come to be called drag kings, if they are women?"
    assert (
        drag["output"] == "King is the male counterpart of queen, so a woman who performs as a man is a king."
    )
    meta = json.loads(drag["meta"])
    assert meta["flags"] == ["split_speaker_tag"] and meta["rejected"] == "I don't know."
    assert "rejected_prompt_differs" not in meta  # the same split turns on both sides
    meta = json.loads(book["meta"])
    assert meta["rejected_prompt_differs"] is True and meta["rejected"] == "I don't know any."
    assert "flags" not in meta
    assert person["output"] == "I am not a Human: I am an AI assistant." and person["history"] == []
    assert json.loads(person["meta"]) == {
        "rejected": "Yes.",
        "rejected_transcript": PAIRS[2]["rejected"],
    }
    # no assistant text anywhere holds a speaker tag after the end of a sentence
    replies = [t["assistant"] for h in df["history"] for t in h] + df["output"].to_list()
    assert not any(re.search(r"[.!?]\s+Human:", x) for x in replies)


# --- 4. mixed-language records: lang (the prompt) and lang_output (the answer) --------------


@pytest.mark.parametrize(
    "text, lang",
    [
        # a short span of another script inside a sentence does not flip the tag
        ("What does 你好 mean?", "en"),
        ("Translate 我爱你 into English.", "en"),
        ("Let α and β be the roots of the equation.", "en"),
        # ... nor do names between Latin-script languages (FLAN strategyqa rows 587 and 1752)
        ("Would Recep Tayyip Erdoğan be unfamiliar with börek?\nExplain your answer.", "en"),
        ("Did Tokyo Tower designers appreciate Stephen Sauvestre?", "en"),
        # Latin words that frame no sentence (names, identifiers, code) leave a Chinese prompt zh
        ("谁是Harrison Kinsley？", "zh"),
        ("Rohit Sharma和Virat Kohli谁更好？", "zh"),
        ("用Python写hello world", "zh"),
        # the prompt's own words decide over a passage it hands over (BELLE eval_set row 311)
        (
            "将以下文字从英文翻译成中文：Natural language processing (NLP) is a field of computer science, "
            "artificial intelligence, and computational linguistics concerned with the interactions "
            "between computers and human languages.",
            "zh",
        ),
        ("Translate into English:\n我今天很高兴，因为天气很好，我们一起去公园散步吧。", "en"),
        ("修改这段话:Hey I was searching for a domain name, later on I found a better domain name.", "zh"),
        # a Latin label is no instruction: the question under it decides
        ("Python Pandas DataFrame:\n如何删除重复的行？", "zh"),
    ],
)
def test_mixed_language_prompt_rule(text, lang):
    import pyarrow as pa

    from forge.lang import detect_fast

    assert detect_fast(pa.array([text]))[0] == [lang]


def test_answer_language_is_its_majority_and_code_takes_the_prompts():
    import pyarrow as pa

    from forge.lang import detect_output

    answers = [
        "自然语言处理（NLP）是计算机科学、人工智能和计算语言学领域。",  # the answer to the row above
        "This is one of my favorite movies.",
        "def c_to_f(celsius):\n    fahrenheit = (celsius * 1.8) + 32\n    return fahrenheit",
        "B",
        "",
        "J'ai mangé mon déjeuner à midi.",
    ]
    got = detect_output(pa.array(answers), ["zh", "zh", "en", "zh", "en", "en"]).to_pylist()
    assert got == ["zh", "en", "en", "zh", "und", "fr"]


# GAOKAO-Bench 2010-2013_English_MCQs.json (commit c214b47), rows 0-2 as written: English
# questions, Chinese analyses, the answer in `standard_answer`
ENGLISH_MCQS = {
    "keywords": "2010-2013_English_MCQs",
    "example": [
        {
            "year": "2010",
            "category": "（新课标Ⅰ）",
            "question": "21. --- Have  you finished  reading  Jane  Eyre ? \n--- No, I        my homework  all day "
            "yesterday . \nA. was doing  B. would  do C. had done  D. do\n",
            "standard_answer": ["A"],
            "analysis": "【解答】 答案 A． was/were  doing，表示过去的某个时间点或时间段正在做某事\n，根据句意，"
            "我没有读完简爱，我昨天一天一直在写家庭作业． 故选 A． \n【点评】\n",
            "index": 0,
            "score": 1,
        },
        {
            "year": "2010",
            "category": "（新课标Ⅰ）",
            "question": "22. The workers      the glasses  and marked  on each box “This Side UP”. \nA. carried  "
            "B. delivered  C. pressed  D. packed\n",
            "standard_answer": ["D"],
            "analysis": '【解答】 答案 D． carry"拿，携带 "；deliver"递送，发表，给 …接生 "；press"压"\n；'
            'pack"包装 "．根据常识和句意，先把玻璃杯 "包装起来 "再标上 "此面朝上 "．故\n  选D． \n【点评】\n',
            "index": 1,
            "score": 1,
        },
        {
            "year": "2010",
            "category": "（新课标Ⅰ）",
            "question": "23. I’ll spend  half of my holiday  practicing  English  and      half learning  drawing . "
            "\nA. another  B. the other  C. other ’s D. other\n",
            "standard_answer": ["B"],
            "analysis": "【解答】 答案 B．本题主要考查代词． 选项 A another  3个及 3个以上中的另一\n个；选项 B the "
            "other两个中的另一个 ；选项 C other ’s 一般没有这种说法 ；选项 D \nother其它的．根据句意，应该是两个"
            "中的另一个， 故选 B． \n【点评】\n",
            "index": 2,
            "score": 1,
        },
    ],
}


def test_gaokao_english_exams_prompt_and_answer_languages_are_one_query_each(home, catalog, tmp_path):
    import forge

    raw = tmp_path / "gaokao"
    raw.mkdir()
    (raw / "2010-2013_English_MCQs.json").write_text(json.dumps(ENGLISH_MCQS, ensure_ascii=False, indent=4))
    error_correction = {**ERROR_CORRECTION, "example": ERROR_CORRECTION["example"][:1]}
    (raw / "2012-2022_English_Language_Error_Correction.json").write_text(
        json.dumps(error_correction, ensure_ascii=False, indent=4)
    )
    build_source(catalog.get("gaokao"), home=home, from_path=raw)
    df = forge.select(None, ["gaokao"], home=home).collect().sort("raw_file", "raw_row")
    got = [
        (f.split("/")[-1][:22], row, lang, out)
        for f, row, lang, out in df.select("raw_file", "raw_row", "lang", "lang_output").iter_rows()
    ]
    assert got == [
        ("2010-2013_English_MCQs", 0, "en", "zh"),  # English question, Chinese analysis
        ("2010-2013_English_MCQs", 1, "en", "zh"),
        ("2010-2013_English_MCQs", 2, "en", "zh"),
        # a Chinese instruction over an English passage: the instruction's words decide
        ("2012-2022_English_Lang", 0, "zh", "zh"),
    ]
    assert forge.select("lang == en and lang_output == zh", ["gaokao"], home=home).collect().height == 3
    assert forge.select("lang_output == zh", ["gaokao"], home=home).collect().height == 4


def test_real_belle_eval_answer_languages(home, tmp_path):
    """BELLE eval_set (../shared/corpora/belle/eval_set.json): Chinese prompts, 10 of them asking
    for an English translation. lang_output is counted with polars on the build and checked
    against the answers read apart from forge (more Latin words than Han characters, code aside),
    and each of the 10 was read by hand."""
    import textwrap

    import forge
    from forge.catalog import load_catalog

    path = shared("belle/eval_set.json")
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          belle_eval:
            description: BELLE eval set
            connector: json
            connector_options: {{format: jsonl}}
            formatter: columns
            options: {{instruction: question, input: null, output: std_answer}}
            local: {path}
            lang: CN
            task: MT
            gen: SI
        """)
    )
    r = build_source(load_catalog(tmp_path / "catalog.yaml").get("belle_eval"), home=home, max_quarantine=1.0)
    assert (r.rows, r.quarantined) == (631, 369)  # 369 questions have an empty std_answer
    df = records(r)
    counts = df.group_by("lang", "lang_output").len().sort("len", descending=True)
    assert counts.rows() == [("zh", "zh", 621), ("zh", "en", 10)]
    english = df.filter(pl.col("lang_output") == "en")["raw_row"].to_list()
    assert english == [22, 49, 57, 97, 100, 113, 310, 546, 793, 999]
    raw = [json.loads(x) for x in path.read_text().splitlines()]
    apart = [
        i
        for i, e in enumerate(raw)
        if e["std_answer"].strip()
        and len(re.findall(r"[A-Za-z]{2,}", e["std_answer"]))
        > len(re.findall(r"[\u4e00-\u9fff]", e["std_answer"]))
        and not re.search(r"\bdef\b|```", e["std_answer"])
    ]
    assert apart == english
    # "将以下文字从英文翻译成中文：<English>" is a Chinese prompt with a Chinese answer
    row = df.filter(pl.col("instruction").str.starts_with("将以下文字从英文翻译成中文")).row(0, named=True)
    assert (row["raw_row"], row["lang"], row["lang_output"]) == (311, "zh", "zh")
    # both questions the issue asks for are one query each
    assert forge.select("lang == zh and lang_output == en", ["belle_eval"], home=home).collect().height == 10
    assert forge.select("lang_output == zh", ["belle_eval"], home=home).collect().height == 621


def test_real_flan_names_do_not_flip_the_tag(home, catalog):
    r = build_source(catalog.get("flan_cot"), home=home, from_path=shared("flan_cot/strategyqa_train.tsv"))
    df = records(r)
    assert df["lang"].unique().to_list() == ["en"]
    named = df.filter(pl.col("raw_row").is_in([587, 1752]))
    assert named.height == 4 and named["lang"].to_list() == ["en"] * 4


def test_older_build_fails_with_a_rebuild_message(home, catalog):
    from forge.built import open_built
    from forge.errors import BuildError
    from forge.store import seal_manifest

    r = build_source(catalog.get("alpaca"), home=home, sample=True)
    manifest = json.loads((r.out_dir / "manifest.json").read_text())
    (r.out_dir / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    seal_manifest(r.out_dir)  # as forge wrote it before lang_output existed
    with pytest.raises(BuildError) as e:
        open_built("alpaca", home)
    assert "built with record schema v1; this forge reads v3 (v2 added the lang_output column" in str(e.value)
    assert "`forge build alpaca` repairs it" in str(e.value)
    again = build_source(catalog.get("alpaca"), home=home, sample=True)
    assert again.status == "built" and again.version != r.version
    assert open_built("alpaca", home).manifest["schema_version"] == SCHEMA_VERSION

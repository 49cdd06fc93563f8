"""Data fidelity on real corpora (issue #20, parts 2, 3 and 5): language tags that survive
LaTeX, code and short texts; formatting that fits each source; and content checks over every
real raw sample in ../shared/corpora."""

import csv
import io
import json
from collections import Counter

import polars as pl
import pyarrow as pa
import pytest
from conftest import shared
from real_corpora import FIXTURES, REAL_SAMPLES, real_mixed_gold

from forge import normalize
from forge.build import build_hash, build_source
from forge.lang import detect_fast, markup_free


def records(r) -> pl.DataFrame:
    return pl.read_parquet([str(r.out_dir / s["file"]) for s in r.shards])


# --- language ID -------------------------------------------------------------------------


def test_real_mixed_gold_set_agrees(tmp_path):
    rows = real_mixed_gold(tmp_path / "home")
    kinds = Counter(r["kind"] for r in rows)
    assert set(kinds) == {
        "latex math",
        "code answer",
        "zh prompt, en content",
        "short turn",
        "translation answer",
    }
    wrong = [(r["kind"], r["gold"], r["lang"], r["text"][:80]) for r in rows if r["lang"] != r["gold"]]
    assert wrong == [], wrong[:10]
    assert kinds["latex math"] == 214 and kinds["short turn"] == 18 and kinds["translation answer"] == 2


def real_output_gold(home) -> list[dict]:
    """The real mixed gold set's answer labels (lang_output in tests/data/lang_gold_real.jsonl),
    one row per built record: {kind, gold, lang_output, output}."""
    from real_corpora import GOLD, SHARED

    from forge.catalog import load_catalog
    from tests.conftest import REPO

    catalog = load_catalog(REPO / "catalog.yaml")
    out = []
    for spec in (json.loads(line) for line in GOLD.read_text().splitlines() if line.strip()):
        path = FIXTURES / spec["fixture"] if "fixture" in spec else SHARED / spec["path"]
        r = build_source(catalog.get(spec["source"]), home=home, from_path=path, say=lambda *a: None)
        df = records(r).sort("raw_row")
        rows = spec["rows"]
        if isinstance(rows, list):
            df = df.filter(pl.col("raw_row").is_in(rows))
        elif rows.startswith("first "):
            df = df.head(int(rows.split()[1]))
        out += [
            {"kind": spec["kind"], "gold": spec["lang_output"], "lang_output": lo, "output": o}
            for lo, o in zip(df["lang_output"], df["output"], strict=True)
        ]
    return out


def test_real_mixed_gold_set_answer_languages(tmp_path):
    """lang_output on the same records: code answers take the prompt's language (code names no
    language), prompt-only corpora have none (und), translations are read from the answer."""
    rows = real_output_gold(tmp_path / "home")
    wrong = [
        (r["kind"], r["gold"], r["lang_output"], r["output"][:80])
        for r in rows
        if r["lang_output"] != r["gold"]
    ]
    assert wrong == [], wrong[:10]
    assert Counter(r["gold"] for r in rows) == {"en": 2015 + 500 + 500 + 4, "zh": 214, "und": 14, "fr": 2}


def test_latex_is_removed_before_counting_scripts():
    q = "已知集合 $A=\\{x \\in R \\mid |x| \\leqslant 2\\}$, 则 $A \\cap B=(\\quad)$\nA. $(0,2)$"
    cleaned = markup_free(pa.array([q, "See https://example.org/a?b=c and `x = 1`", "costs $45 and $75"]))
    assert "leqslant" not in cleaned[0].as_py() and "集合" in cleaned[0].as_py()
    assert "example" not in cleaned[1].as_py() and "x = 1" not in cleaned[1].as_py()
    assert cleaned[2].as_py() == "costs $45 and $75"  # money is not math
    codes, scores = detect_fast(pa.array([q]))
    assert codes == ["zh"] and scores[0] > 0.5


@pytest.mark.parametrize(
    "catalog_lang, expected",
    [
        ("EN", ["en", "en", "und", "zh"]),
        ("CN", ["und", "und", "und", "zh"]),
        ("ML", ["und", "und", "und", "zh"]),
    ],
)
def test_short_texts_fall_back_to_the_catalog_language_never_a_rare_one(catalog_lang, expected):
    texts = ["Hahaha", "Heh.", "220+120", "好的"]
    codes, scores = detect_fast(pa.array(texts), catalog_lang)
    assert codes == expected
    # a fallback is not a detection; Han settles a text of any length
    assert scores.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_ngram_runner_up_is_taken_over_a_rare_language():
    # cld2 ranks Scots first on this gsm8k question (57% sco, 42% en)
    text = (
        "Gretchen, Mitzi, and Beth went bowling together. Gretchen bowled a 120. Mitzi bowled "
        "a 113. Beth bowled an 85. What was their average bowling score?"
    )
    codes, scores = detect_fast(pa.array([text]))
    assert codes == ["en"] and 0.3 <= scores[0] < 0.6


def test_question_decides_not_the_code_in_the_answer():
    table_texts = pa.array(["Create a program in Python to convert Celsius to Fahrenheit."])
    whole = pa.array(
        [
            "Create a program in Python to convert Celsius to Fahrenheit.\n"
            "def celsius_to_fahrenheit(celsius): \n  fahrenheit = (celsius * 9/5) + 32\n  return fahrenheit"
        ]
    )
    assert detect_fast(table_texts, "EN", whole=whole)[0] == ["en"]
    # a question too short to read is judged together with its answer
    short = detect_fast(
        pa.array(["Ok"]), "ML", whole=pa.array(["Ok\nGreat, is there anything else I can help with?"])
    )
    assert short[0] == ["en"]


def test_zh_records_have_chinese_questions(home, catalog):
    """No zh record of a real Chinese source has a mostly-Latin question (cot_zh's English
    questions in Chinese prompt wording are en, not zh)."""
    r = build_source(catalog.get("cot_zh"), home=home, from_path=shared("flan_cot/gsm8k_train.tsv"))
    df = records(r)
    assert df.height == 7473 and df["lang"].unique().to_list() == ["en"]
    assert (df["instruction"].str.count_matches(r"\p{Han}") > 0).all()  # the prompt wording is Chinese
    assert json.loads((r.out_dir / "manifest.json").read_text())["tags"]["lang"] == "EN"


# --- formatting fidelity -------------------------------------------------------------------


def test_gaokao_templates_fit_the_question_type(home, catalog):
    r = build_source(catalog.get("gaokao"), home=home, from_path=shared("gaokao"))
    df = records(r).with_columns(
        pl.col("meta")
        .map_elements(lambda m: json.loads(m)["question_type"], return_dtype=pl.String)
        .alias("qtype")
    )
    assert r.rows == 214 + 34 + 28 and r.quarantined == 0
    by_file = {
        f.split("/")[-1]: kinds
        for f, kinds in df.group_by("raw_file").agg(pl.col("qtype").unique()).iter_rows()
    }
    assert by_file["2010-2022_Math_I_MCQs.json"] == ["choice"]
    assert by_file["2010-2022_Chinese_Language_Famous_Passages_and_Sentences_Dictation.json"] == ["open"]
    open_rows = df.filter(pl.col("qtype") == "open")
    assert not open_rows["output"].str.contains("故选").any()
    assert set(open_rows["template"]) == {"tasks.gaokao.01", "tasks.gaokao.02", "tasks.gaokao.04"}
    choice_rows = df.filter(pl.col("qtype") == "choice")
    assert "tasks.gaokao.04" not in set(choice_rows["template"])
    assert "tasks.gaokao.03" in set(choice_rows["template"])
    # raw answers end in "\n"; the answer is trimmed before the template's closing "。"
    assert not df["output"].str.contains("\n。").any()
    # the dictation answer keeps its lines, the blanks' order intact
    dictation = json.loads(
        shared(
            "gaokao/Subjective_Questions/2010-2022_Chinese_Language_Famous_Passages_and_Sentences_Dictation.json"
        ).read_text()
    )["example"][0]
    first = open_rows.filter(pl.col("raw_row") == 0).row(0, named=True)
    assert dictation["answer"][0].strip() in first["output"]


def test_fields_are_trimmed_and_the_rule_is_in_the_build_hash(home, catalog, monkeypatch):
    src = catalog.get("flan_cot")
    r = build_source(src, home=home, from_path=shared("flan_cot/sensemaking_train.tsv"))
    df = records(r)
    raw_ws = 0  # fields that end in whitespace once FLAN's escaped newlines are real ones
    for line in shared("flan_cot/sensemaking_train.tsv").read_text().splitlines():
        fields = [f.replace("\\n", "\n") for f in line.split("\t")]
        raw_ws += any(f != f.strip() for f in fields)
    assert raw_ws == 6070  # the issue counted 6,070 sensemaking inversion outputs
    for col in ("instruction", "input", "output"):
        assert not df[col].str.contains(r"^\s|\s$").any(), col
    raw = [{"name": "x", "sha256": "0"}]
    before = build_hash(src, raw, "fast")
    monkeypatch.setattr(normalize, "NORMALIZATION", "something-else")
    assert build_hash(src, raw, "fast") != before


def _medical_csv(path, rows):
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["department", "title", "ask", "answer"])
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode("gb18030"))


def test_medical_placeholder_ask_takes_the_title(home, catalog, tmp_path):
    f = tmp_path / "med.csv"
    _medical_csv(
        f,
        [
            ["心血管科", "高血压能吃党参吗？", "我有高血压，能吃党参吗？", "可以少量服用。"],
            ["消化科", "胃痛怎么办？", "无", "建议先做胃镜检查。"],
            ["消化科", "", " 无 ", "没有标题也没有问题。"],
        ],
    )
    r = build_source(catalog.get("chinese_medical"), home=home, from_path=f, max_quarantine=1.0)
    df = records(r).sort("raw_row")
    assert df["instruction"].to_list() == ["我有高血压，能吃党参吗？", "胃痛怎么办？"]
    assert "filled_from" not in json.loads(df["meta"][0])
    assert json.loads(df["meta"][1])["filled_from"] == {"ask": "title"}
    q = [json.loads(x) for x in (r.out_dir / "quarantine.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in q] == ["field 'ask' is a placeholder ('无') and 'title' is empty"]


def test_hh_rlhf_rejected_reply_speaker_tags_and_control_chars(home, catalog):
    r = build_source(catalog.get("hh_rlhf"), home=home, from_path=FIXTURES / "hh_rlhf_short_train.jsonl.gz")
    df = records(r).sort("raw_row")
    metas = [json.loads(m) for m in df["meta"]]
    assert [m["rejected"] for m in metas] == ["I don't get it.", "Sure.", "No.", "A sound."]
    assert metas[0]["rejected_transcript"].endswith("Assistant: I don't get it.")
    assert [m.get("flags", []) for m in metas] == [[], [], ["embedded_speaker_tag"], ["control_char"]]
    assert "\nHuman: please call me back" in df["history"][2][0]["assistant"]  # kept as written
    assert df["lang"].to_list() == ["en", "en", "en", "en"]


# --- real-corpus regression: content, not just counts ---------------------------------------


@pytest.fixture(scope="module")
def real_builds(tmp_path_factory):
    from forge.catalog import load_catalog
    from tests.conftest import REPO

    catalog = load_catalog(REPO / "catalog.yaml")
    home = tmp_path_factory.mktemp("real")
    out = {}
    for name, rel in REAL_SAMPLES.items():
        r = build_source(catalog.get(name), home=home, from_path=shared(rel), say=lambda *a: None)
        out[name] = (catalog.get(name), r, records(r))
    return out


@pytest.mark.parametrize("name", list(REAL_SAMPLES))
def test_real_corpus_content(real_builds, name):
    src, r, df = real_builds[name]
    assert r.rows == df.height > 0 and r.rows + r.quarantined >= r.input_records
    for col in ("instruction", "input", "output"):
        assert not df[col].str.contains(r"^\s|\s$").any(), f"{name}: {col} has stray whitespace"
    for turns in df["history"].to_list():
        for t in turns or []:
            assert t["user"] == t["user"].strip() and t["assistant"] == t["assistant"].strip()
    assert (df["instruction"].str.len_chars() > 0).all()
    langs = Counter(df["lang"].to_list())
    expected = {"EN": "en", "CN": "zh"}.get(src.lang)
    if expected:
        share = langs[expected] / df.height
        assert share >= 0.99, (name, langs.most_common(5))
    # no rare-language tags anywhere: every tag is a common language or und
    from forge.lang import COMMON_LANGS

    assert set(langs) <= COMMON_LANGS | {"und"}, langs


def test_real_corpus_hand_checked_slice(real_builds):
    """Rows read by hand: their language and the template type."""
    checks = {
        ("alpaca", 0): "en",
        ("belle_1m", 0): "zh",
        ("chinese_medical", 0): "zh",
        ("duie", 0): "zh",
        ("instinwild_zh", 420): "zh",  # "AI的未来？"
        ("ultrachat_eval", 207): "en",  # "Explain Ohm's Law."
        ("moss_prompts", 72): "zh",
    }
    for (name, row), lang in checks.items():
        df = real_builds[name][2].filter(pl.col("raw_row") == row)
        assert df["lang"].to_list() == [lang] * df.height and df.height >= 1, (name, row)
    flan = real_builds["flan_cot"][2]
    inv = flan.filter(pl.col("category") == "cot_inversion")
    assert inv["template"].str.contains(r"\.inv\d\d$").all()
    assert not flan["output"].str.contains(r"\\n").any()  # FLAN's escaped newlines are real ones


def test_gaokao_location_covers_the_whole_benchmark(catalog):
    """The catalog's 2,811 rows are the 32 question files, not one file of 214."""
    src = catalog.get("gaokao")
    urls = src.url if isinstance(src.url, list) else [src.url]
    names = [u.rsplit("/", 1)[1] for u in urls]
    assert src.rows == 2811 and len(names) == len(set(names)) == 32
    assert not any(n.startswith("gemini-pro") for n in names)  # model outputs, not questions
    for local in shared("gaokao").rglob("*.json"):
        assert local.name in names

import json
import random
import textwrap

import datasets
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from conftest import current

import forge
from forge.build import build_source
from forge.catalog import load_catalog
from forge.errors import QueryError
from forge.lang import dataset_lang, detect_fast
from forge.query import parse
from tests.conftest import REPO, shared


def gold_set():
    """Texts with their gold language and the catalog language of the source they come from
    (ML for the 14-language set written for forge): a build reads a text with its source's
    catalog language as the fallback for text too short to tell."""
    rows = [
        {**json.loads(x), "catalog": "ML"}
        for x in (REPO / "tests" / "data" / "lang_gold.jsonl").read_text().splitlines()
    ]
    alpaca = json.loads(shared("alpaca/alpaca_5000.json").read_text())
    rows += [
        {"lang": "en", "catalog": "EN", "text": "\n".join([r["instruction"], r["input"], r["output"]])}
        for r in alpaca
    ]
    belle = [json.loads(x) for x in shared("belle/dev1K.json").read_text().splitlines()]
    rows += [
        {"lang": "zh", "catalog": "CN", "text": "\n".join([r["instruction"], r["input"], r["output"]])}
        for r in belle
    ]
    for name, lang, cat in (("seed_prompts_en.jsonl", "en", "EN"), ("seed_prompts_ch.jsonl", "zh", "CN")):
        rows += [
            {"lang": lang, "catalog": cat, "text": json.loads(x)["instruction"]}
            for x in shared(f"instinwild/{name}").read_text().splitlines()
            if x.strip()
        ]
    return rows


def detect_gold(rows) -> tuple[list[str], np.ndarray]:
    """forge's tags for the gold set, each text read with its source's catalog language."""
    codes, scores = [""] * len(rows), np.zeros(len(rows), dtype=np.float32)
    for catalog in {r["catalog"] for r in rows}:
        idx = [i for i, r in enumerate(rows) if r["catalog"] == catalog]
        got, sc = detect_fast(pa.array([rows[i]["text"] for i in idx]), catalog)
        for j, i in enumerate(idx):
            codes[i], scores[i] = got[j], sc[j]
    return codes, scores


def test_language_id_agrees_with_gold_labels():
    rows = gold_set()
    codes, scores = detect_gold(rows)
    agree = np.mean([c == r["lang"] for c, r in zip(codes, rows, strict=True)])
    print("lang agreement", agree, len(rows))
    assert len(rows) > 2500 and agree >= 0.99, agree
    langs = {r["lang"] for r in rows}
    assert len(langs - {"en", "zh"}) >= 8
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_mixed_script_rule_and_special_cases():
    texts = [
        "写一个Python函数，返回列表的最大值。\ndef f(xs):\n    return max(xs)",
        "12345 + 678 = ?",
        "",
        "これは日本語の文です。",
        "The cat sat on the mat and looked at the dog.",
        "Привет, как дела? Всё хорошо, спасибо.",
    ]
    codes, _ = detect_fast(pa.array(texts))
    assert codes == ["zh", "und", "und", "ja", "en", "ru"]


# texts that take every path of the fast detector: a settling script, the mixed-script and lead
# rules, English function words, cld2 (with and without the names-aside reading), too short
# (catalog fallback), no letters, markup, code and lists of names as answers, control characters
TAG_PATHS = [
    "写一个Python函数，返回列表的最大值。\ndef f(xs):\n    return max(xs)",
    "将以下文字从英文翻译成中文：The weather is nice today and we are going to the park.",
    "Translate into English:\n我今天很高兴，因为天气很好，我们一起去公园散步吧。",
    "Python Pandas DataFrame:\n如何删除重复的行？",
    "What does 你好 mean in English?",
    "これは日本語の文です。",
    "한국어 문장입니다. 잘 부탁드립니다.",
    "Let α and β be the roots of the equation x^2 - 3x + 1 = 0.",
    "Ο καιρός είναι πολύ ωραίος σήμερα στην Αθήνα.",
    "The cat sat on the mat and looked at the dog for a while.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Would Recep Tayyip Erdoğan be unfamiliar with börek?",
    "Qual é a capital do Brasil? Eu acho que é Brasília.",
    "Le train part à huit heures et arrive à midi à Lyon.",
    "Привет, как дела? Всё хорошо, спасибо.",
    "Heh.",
    "谢谢",
    "12345 + 678 = ?",
    "",
    "   ",
    "Solve $x^2 + \\frac{1}{2} = 0$ and see https://example.org/a?b=1 for `code` hints.",
    "Let $y = \\frac{a}{b}$ hold for all the values, and \\alpha be $45 and $75 of them.",
    "已知 $x^2=4$，求 \\sqrt{x} 的值。",
    "The value of \\alpha is set by \\beta in the book.",
    "Call `print(x)` to show the value of the sum.",
    "If $x^2 = 4$, what is the value of x?",
    "Read https://example.org/a?b=1 first, then answer.",
    "See www.example.org/page for the rest of it.",
    "def c_to_f(celsius):\n    fahrenheit = (celsius * 1.8) + 32\n    return fahrenheit",
    "1. Joe Beef\n2. L'Express\n3. Schwartz's Deli",
    "B",
    "Bill Maher is a political talk show host.\nyes",
    "text with a bell\x07 and an escape \x1b character in it, read all the same",
]


def test_repeated_texts_and_batch_mix_leave_tags_unchanged():
    """detect_fast and detect_output read each distinct text of a batch once and scatter the
    result back, and pure-ASCII texts are counted from their bytes: a text's tag and score must
    not depend on what else is in the batch. Each text alone against the whole set repeated
    and shuffled, settled and unsettled rows mixed."""
    from forge.lang import detect_output

    rng = random.Random(0)
    batch = TAG_PATHS * 3 + [None]
    rng.shuffle(batch)
    wholes = [
        f"{t}\n{rng.choice(TAG_PATHS)}" if t else "The answer is in the whole record text." for t in batch
    ]
    prompts = [rng.choice(["en", "zh", "fr", "und"]) for _ in batch]
    for catalog in ("ML", "EN", "CN"):
        for answer in (False, True):
            codes, scores = detect_fast(pa.array(batch), catalog, answer=answer)
            for i, text in enumerate(batch):
                one_code, one_score = detect_fast(pa.array([text], pa.string()), catalog, answer=answer)
                assert (codes[i], scores[i]) == (one_code[0], one_score[0]), (text, catalog, answer)
        codes, scores = detect_fast(pa.array(batch), catalog, whole=pa.array(wholes))
        for i, text in enumerate(batch):
            alone = detect_fast(pa.array([text], pa.string()), catalog, whole=pa.array([wholes[i]]))
            assert (codes[i], scores[i]) == (alone[0][0], alone[1][0]), (text, catalog)
    got = detect_output(pa.array(batch), prompts).to_pylist()
    alone = [
        detect_output(pa.array([t], pa.string()), [p]).to_pylist()[0]
        for t, p in zip(batch, prompts, strict=True)
    ]
    assert got == alone
    # the tags themselves, for the paths with a known answer
    codes, _ = detect_fast(pa.array(TAG_PATHS[:6] + ["Le train part à huit heures et arrive à midi à Lyon."]))
    assert codes == ["zh", "zh", "en", "zh", "en", "ja", "fr"]


def test_count_and_markup_shortcuts_equal_the_regex():
    """forge.lang_counts counts some patterns in pure-ASCII texts from their bytes instead of
    the regex: every such pattern, in a batch mixing ASCII and other texts, empty and null ones,
    runs that end where a text ends and go on in the next one, and a slice of a larger array."""
    import pyarrow.compute as pc

    from forge.lang import _MARKUP, markup_free
    from forge.lang_counts import ASCII_CLASSES, _regex_counts, counts

    texts = TAG_PATHS + [
        "ab",
        "a",
        "ab\ncd",
        " a ",
        "\t\x0b\x0c\r \x1c\x1d_",
        "x" * 300,
        "aa1bb_cc dd",
        "Ab Cd EF",
        "mixed é and ab",
        "wide\u3000space\u00a0and\u2028line\u0085breaks",
        "e\u0301te\u0301 \U0001f600 ok ªº",
        None,
        "ends with a word",
        "word",
    ]
    arr = pa.array(texts)
    for batch in (arr, arr.slice(3, 20), arr.slice(len(texts) - 3), pa.array(texts, pa.large_string())):
        want = _regex_counts(pc.fill_null(batch, ""), list(ASCII_CLASSES))
        for pattern, got, expected in zip(ASCII_CLASSES, counts(batch, *ASCII_CLASSES), want, strict=True):
            assert got.tolist() == expected.tolist(), pattern
    # markup is only looked for in texts holding one of its signs: the same as blanking every text
    plain = pl.Series(arr).fill_null("").str.slice(0, 4096)
    for pattern in _MARKUP:
        plain = plain.str.replace_all(pattern, " ")
    assert markup_free(arr).to_pylist() == plain.to_list()


def test_dataset_level_tag_follows_records():
    assert dataset_lang({"en": 96, "zh": 4}) == "EN"
    assert dataset_lang({"zh": 95, "en": 5}) == "CN"
    assert dataset_lang({"en": 60, "zh": 40}) == "ML"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("lang ==", "expected a value at end of query"),
        ("lang = zh", "cannot read query at position 4"),
        ("__import__('os').system('x')", "cannot read query"),
        ("lang == zh; drop", "cannot read query"),
        ("(lang == zh", "expected ')' at end of query"),
        ("lang in zh", "expected '['"),
        ("lenght > 3", "unknown field 'lenght'"),
        ("output_chars > many", "expected a number"),
        ("", "empty query"),
    ],
)
def test_query_rejects_malformed_and_injection(bad, message):
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse(bad)


def test_select_stats_and_filter(built_samples, tmp_path):
    lf = forge.select("lang in [zh, en] and category == cot and not gen == SI", home=built_samples)
    assert isinstance(lf, pl.LazyFrame)
    df = lf.collect()
    assert df.height == 36 and set(df["source"]) == {"flan_cot"}
    from forge.selection import filter_to_folder, stats

    s = stats("lang == zh", None, built_samples)
    assert s["rows"] == 27 and s["source"] == {"belle_0.5m": 27} and s["lengths"]["output_chars"]["p100"] > 0
    from forge.quality import parse_step

    out = tmp_path / "f"
    m = filter_to_folder(
        "source == alpaca or source == belle_0.5m",
        ["alpaca", "belle_0.5m"],
        out,
        [parse_step("min_output_chars=5"), parse_step("no_echo")],
        built_samples,
    )
    ds = datasets.load_dataset("parquet", data_files=str(out / "part-*.parquet"), split="train")
    dropped = pl.read_parquet(out / "dropped.parquet")
    assert ds.num_rows == m["rows"] and ds.num_rows + dropped.height == 32 + 27  # nothing silently lost
    assert set(dropped["reason"]) <= {
        "min_output_chars: output shorter than 5 characters",
        "no_echo: output repeats the instruction",
    }
    assert dropped.height == m["dropped"] > 0


def test_quality_steps_each_keep_their_reason():
    from forge.quality import apply, parse_step

    df = pl.DataFrame(
        {
            "instruction": ["Say hi", "Repeat me", "Count", "Ok", "Loop"],
            "input": ["", "", "", "", ""],
            "output": ["Hello there!", "repeat  ME", "1 2 3 4 5", "", "a b c a b c a b c a b c a b c"],
        }
    )
    steps = [
        parse_step("min_output_chars=1"),
        parse_step("no_echo"),
        parse_step("ngram_repeat=0.3"),
        parse_step("max_chars=15"),
    ]
    kept, dropped = apply(df, steps)
    assert kept["output"].to_list() == ["1 2 3 4 5"]
    assert dict(zip(dropped["instruction"], dropped["reason"], strict=True)) == {
        "Say hi": "max_chars: longer than 15 characters",
        "Repeat me": "no_echo: output repeats the instruction",
        "Ok": "min_output_chars: output shorter than 1 characters",
        "Loop": "ngram_repeat: more than 30% repeated word 3-grams in the output",
    }
    with pytest.raises(ValueError, match="unknown quality step 'no_ech' \\(did you mean 'no_echo'\\?\\)"):
        parse_step("no_ech")


def _planted(tmp_path):
    """Originals from real alpaca + BELLE records, plus planted copies: exact, whitespace and
    punctuation changes, a few edited words, and reordered sentences."""
    rng = random.Random(0)
    alpaca = [r for r in json.loads(shared("alpaca/alpaca_5000.json").read_text()) if len(r["output"]) > 120][
        :150
    ]
    belle = [json.loads(x) for x in shared("belle/dev1K.json").read_text().splitlines()]
    belle = [r for r in belle if len(r["output"]) > 120][:150]
    originals = alpaca + belle
    copies = []
    for i, r in enumerate(originals[:200]):
        kind = i % 4
        out = r["output"]
        if kind == 1:
            out = "  " + out.replace(" ", "  ").replace("。", ".") + " "
        elif kind == 2:
            words = out.split(" ")
            if len(words) > 10:
                for _ in range(2):
                    words[rng.randrange(len(words))] = "xyz"
                out = " ".join(words)
            else:  # Chinese: edit two characters
                chars = list(out)
                for _ in range(2):
                    chars[rng.randrange(len(chars))] = "某"
                out = "".join(chars)
        elif kind == 3:
            parts = [p for p in out.replace("。", "。\n").replace(". ", ".\n").split("\n") if p]
            if len(parts) > 1:
                parts = parts[1:] + parts[:1]
            out = "\n".join(parts)
        copies.append({**r, "output": out, "_of": i})
    path = tmp_path / "planted.jsonl"
    with open(path, "w") as fh:
        for r in originals + copies:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "_of"}, ensure_ascii=False) + "\n")
    return path, len(originals), copies


def test_near_dedup_recall_and_precision_on_planted_duplicates(home, catalog, tmp_path):
    from forge.dedup import run

    path, n_orig, copies = _planted(tmp_path)
    build_source(catalog.get("belle_0.5m"), home=home, from_path=path)
    m = run(["belle_0.5m"], tmp_path / "dd", home=home)
    dropped = pl.read_parquet(tmp_path / "dd" / "dropped.parquet")
    planted_rows = {n_orig + j for j in range(len(copies))}
    pair_of = {n_orig + j: c["_of"] for j, c in enumerate(copies)}
    ids = pl.read_parquet(current(home, "sources", "belle_0.5m") / "*.parquet").select("id", "raw_row")
    row_of = dict(zip(ids["id"], ids["raw_row"], strict=True))
    found = set()
    false = 0
    for rid, dup_of in zip(dropped["id"], dropped["dup_of"], strict=True):
        a, b = row_of[rid], row_of[dup_of]
        pair = (max(a, b), min(a, b))
        if pair[0] in planted_rows and pair_of[pair[0]] == pair[1]:
            found.add(pair[0])
        else:
            false += 1
    recall = len(found) / len(planted_rows)
    precision = len(found) / max(len(found) + false, 1)
    print("planted recall", recall, "precision", precision)
    assert recall >= 0.9 and precision >= 0.95, (recall, precision)
    assert m["input_rows"] == m["rows"] + m["dropped"]
    # deterministic: a second run drops exactly the same records
    run(["belle_0.5m"], tmp_path / "dd2", home=home)
    assert pl.read_parquet(tmp_path / "dd2" / "dropped.parquet")["id"].to_list() == dropped["id"].to_list()


def test_cross_source_priority_and_decontamination(home, tmp_path):
    evals = [json.loads(x) for x in shared("belle/eval_set.json").read_text().splitlines()][:30]
    train = [
        {"instruction": e["question"], "input": "", "output": e["std_answer"] or "答"} for e in evals[:10]
    ]
    train += [json.loads(x) for x in shared("belle/dev1K.json").read_text().splitlines()[:50]]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in train))
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          first:
            {{description: x, connector: json, formatter: columns, local: {tmp_path / "t.jsonl"}, lang: CN, task: MT, gen: SI, priority: 10}}
          second:
            {{description: x, connector: json, formatter: columns, local: {tmp_path / "t.jsonl"}, lang: CN, task: MT, gen: SI, priority: 20}}
    """)
    )
    cat = load_catalog(tmp_path / "catalog.yaml")
    for s in ("first", "second"):
        build_source(cat.get(s), home=home)
    from forge.dedup import run

    # both sources render the same raw file: renderings of one raw record are not duplicates
    # of each other unless asked (across_variants)
    same = run(["second", "first"], tmp_path / "variants", home=home, priorities={"first": 10, "second": 20})
    assert same["dropped"] == 0 and same["rows"] == 120
    m = run(
        ["second", "first"],
        tmp_path / "dd",
        home=home,
        priorities={"first": 10, "second": 20},
        against=[shared("belle/eval_set.json")],
        across_variants=True,
    )
    kept = pl.read_parquet(tmp_path / "dd" / "part-*.parquet")
    assert set(kept["source"]) == {"first"} and kept.height == 60
    dropped = pl.read_parquet(tmp_path / "dd" / "dropped.parquet")
    assert (
        dropped.height == 60
        and set(dropped["source"]) == {"second"}
        and set(dropped["reason"]) == {"exact duplicate"}
    )
    contamination = json.loads((tmp_path / "dd" / "contamination.json").read_text())
    rows = {c["eval_row"] for c in contamination if c["source"] == "first"}
    assert set(range(10)) <= rows and m["contaminated"] == len(contamination)

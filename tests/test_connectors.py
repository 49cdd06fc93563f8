"""Every connector/formatter on the real raw samples in ../shared/corpora (exact counts from
SOURCES.md, minus documented quarantine) and on self-written fixtures in the published
format for corpora with no sample there."""

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forge.build import build_source
from tests.conftest import REPO, shared

FIXTURES = REPO / "tests" / "data" / "fixtures"

# source, sample path under ../shared/corpora, raw records, rows, quarantined
REAL = [
    ("alpaca", "alpaca/alpaca_5000.json", 500, 500, 0),
    ("code_alpaca", "code_alpaca/code_alpaca_2k.json", 2017, 2015, 2),  # two empty outputs
    ("belle_0.5m", "belle/dev1K.json", 1000, 1000, 0),
    ("flan_cot", "flan_cot", 33443, 66886, 0),  # zero-shot + inversion per row
    ("cot_zh", "flan_cot", 33443, 33443, 0),
    ("gpteacher_codegen", "gpteacher/codegen-instruct.json", 500, 500, 0),
    ("gpteacher_roleplay", "gpteacher/roleplay-simple-deduped-roleplay-instruct.json", 500, 500, 0),
    ("gpteacher_toolformer", "gpteacher/toolformer-similarity-0.6-dataset.json", 500, 500, 0),
    ("instinwild_en", "instinwild/seed_prompts_en.jsonl", 429, 429, 0),
    ("instinwild_zh", "instinwild/seed_prompts_ch.jsonl", 429, 429, 0),
    ("instinwild_en", "instinwild/data_v2_user_1.jsonl", 429, 429, 0),
    ("firefly_multiturn", "firefly/dummy_data.jsonl", 33, 33, 0),
    ("moss_003_sft", "moss/conversations", 36, 36, 0),
    ("moss_prompts", "moss/user_prompts/harmless_prompts.jsonl", 100, 100, 0),
    ("ultrachat_eval", "ultrachat/ultra_eval.json", 385, 385, 0),
    ("natural_instructions", "natural_instructions/tasks", 1, 119, 0),  # one task file, 119 instances
    ("gaokao", "gaokao", 276, 276, 0),
    ("auto_cot", "auto_cot/demos", 16, 16, 0),
    ("chinese_medical", "chinese_medical/sample_IM_neike_5000-6000.csv", 500, 500, 0),
    ("duie", "duie/train_data_5000.head500.json", 500, 500, 0),
]


@pytest.mark.parametrize("source, rel, raw, rows, quarantined", REAL, ids=[f"{r[0]}:{r[1]}" for r in REAL])
def test_real_sample_counts(home, catalog, source, rel, raw, rows, quarantined):
    r = build_source(catalog.get(source), home=home, from_path=shared(rel), max_quarantine=1.0)
    assert (r.input_records, r.rows, r.quarantined) == (raw, rows, quarantined)


def records(result) -> pl.DataFrame:
    return pl.read_parquet([str(result.out_dir / s["file"]) for s in result.shards])


def test_gpteacher_response_key(home, catalog):
    r = build_source(
        catalog.get("gpteacher_roleplay"),
        home=home,
        from_path=shared("gpteacher/roleplay-simple-deduped-roleplay-instruct.json"),
    )
    raw = json.loads(shared("gpteacher/roleplay-simple-deduped-roleplay-instruct.json").read_text())
    df = records(r)
    assert df["output"][0] == raw[0]["response"] and df["category"][0] == "roleplay"


def test_moss_conversations_keep_every_turn(home, catalog):
    r = build_source(catalog.get("moss_003_sft"), home=home, from_path=shared("moss/conversations"))
    df = records(r)
    path = next(
        p
        for p in sorted(shared("moss/conversations").rglob("*.json"))
        if "search_plugin_conversation_3" in p.name
    )
    raw = json.loads(path.read_text())
    row = df.filter(pl.col("raw_file").str.ends_with("search_plugin_conversation_3.json")).row(0, named=True)
    assert len(row["history"]) == raw["num_turns"] - 1
    assert row["history"][0]["user"] == "什么是美国的政府体制？"
    assert row["history"][0]["assistant"].startswith("美国的政治体制是由联邦政府")
    assert row["output"] == "请问有什么可以帮到您的吗？" and row["category"] == "tool"
    meta = json.loads(row["meta"])
    assert meta["tool_traces"][0]["Commands"].startswith("<|Commands|>: Search(")


def test_firefly_multiturn_and_natural_instructions(home, catalog):
    r = build_source(
        catalog.get("firefly_multiturn"), home=home, from_path=shared("firefly/dummy_data.jsonl")
    )
    first = json.loads(shared("firefly/dummy_data.jsonl").read_text().splitlines()[0])
    row = records(r).row(0, named=True)
    assert (
        row["output"] == first["conversation"][-1]["assistant"]
        and len(row["history"]) == len(first["conversation"]) - 1
    )
    r = build_source(
        catalog.get("natural_instructions"), home=home, from_path=shared("natural_instructions/tasks")
    )
    df = records(r)
    task = json.loads(shared("natural_instructions/tasks/task1149_item_check_edible.json").read_text())
    assert df.height == len(task["Instances"])
    assert df["input"].to_list() == [i["input"].strip() for i in task["Instances"]]  # fields are trimmed
    assert df["output"].to_list() == [i["output"][0] for i in task["Instances"]]
    assert df["instruction"].str.contains("edible").all() and len(set(df["id"])) == df.height


def test_gaokao_duie_medical_content(home, catalog):
    r = build_source(
        catalog.get("gaokao"),
        home=home,
        from_path=shared("gaokao/Objective_Questions/2010-2022_Geography_MCQs.json"),
    )
    df = records(r)
    ex = json.loads(shared("gaokao/Objective_Questions/2010-2022_Geography_MCQs.json").read_text())[
        "example"
    ][0]
    assert ex["question"].strip() in df["instruction"][0] and "、".join(ex["answer"]) in df["output"][0]
    r = build_source(catalog.get("duie"), home=home, from_path=shared("duie/train_data_5000.head500.json"))
    row = records(r).row(0, named=True)
    assert row["output"] == "（邪少兵王，作者，冰火未央）"  # row 0 -> template tasks.duie.01
    assert (
        row["input"] == "《邪少兵王》是冰火未央写的网络小说连载于旗峰天下"
        and row["template"] == "tasks.duie.01"
    )
    r = build_source(
        catalog.get("chinese_medical"),
        home=home,
        from_path=shared("chinese_medical/sample_IM_neike_5000-6000.csv"),
    )
    row = records(r).row(0, named=True)
    assert row["instruction"].startswith("我有高血压") and row["output"].startswith(
        "高血压病人可以口服党参的"
    )
    assert json.loads(row["meta"]) == {"department": "心血管科", "title": "高血压患者能吃党参吗？"}


# source, fixture, raw records, rows, quarantined, (column, row, expected substring)
FIXTURE_CASES = [
    ("xp3", "xp3_en.jsonl", 3, 3, 0, ("output", 0, "J'aime le thé.")),
    ("firefly", "firefly.jsonl", 3, 3, 0, ("output", 1, "下联：秋月扬辉")),
    ("gpt4all", "gpt4all.jsonl", 2, 2, 0, ("output", 0, "sorted(xs)")),
    ("dolly", "dolly.jsonl", 2, 2, 0, ("input", 0, "opened in 1932")),
    ("hc3_en", "hc3.jsonl", 3, 4, 1, ("output", 0, "dissolved salts")),  # 4 answers; one record has none
    ("prosocial_dialog", "prosocial.json", 2, 2, 0, ("output", 0, "worrying you")),
    ("baize", "baize.json", 1, 1, 0, ("output", 0, "four minutes")),
    ("ultrachat", "ultrachat.jsonl", 2, 2, 0, ("output", 0, "gravity")),
    ("camel", "camel_001.json", 1, 1, 0, ("output", 0, "five questions")),
    ("sharegpt", "sharegpt.json", 3, 2, 1, ("output", 1, "6")),  # a3 has no reply
    ("hh_rlhf", "hh_rlhf_train.jsonl.gz", 2, 2, 0, ("output", 1, "three hearts")),
    ("webgpt", "webgpt.jsonl", 2, 1, 1, ("output", 0, "self-soothe")),  # the tie is quarantined
    ("oig", "oig.jsonl", 1, 1, 0, ("output", 0, "2 plus 3 is 5")),
    ("belle_multiturn", "belle_multiturn.json", 1, 1, 0, ("output", 0, "坚韧")),
    ("coig", "coig.jsonl", 1, 1, 0, ("output", 0, "请把门关上")),
    ("flan_muffin", "flan_muffin.jsonl", 1, 1, 0, ("output", 0, "no")),
    ("instruct_swype", "instruct.jsonl", 1, 1, 0, ("output", 0, "Fresh from our oven")),
]


PUBLISHED_AS_PARQUET = {"webgpt.jsonl", "gpt4all.jsonl"}


def as_published(fixture: str, tmp: Path) -> Path:
    """The fixture in the format the catalog reads: WebGPT (the Hub's Parquet conversion) and
    GPT4All (data/*.parquet) are published as Parquet, so their JSONL fixtures are written
    to Parquet first."""
    if fixture not in PUBLISHED_AS_PARQUET:
        return FIXTURES / fixture
    rows = [json.loads(x) for x in (FIXTURES / fixture).read_text().splitlines() if x.strip()]
    out = tmp / fixture.split(".")[0] / "0000.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out


@pytest.mark.parametrize(
    "source, fixture, raw, rows, quarantined, check", FIXTURE_CASES, ids=[c[0] for c in FIXTURE_CASES]
)
def test_published_format_fixtures(home, catalog, source, fixture, raw, rows, quarantined, check, tmp_path):
    path = as_published(fixture, tmp_path)
    r = build_source(catalog.get(source), home=home, from_path=path, max_quarantine=1.0)
    assert (r.input_records, r.rows, r.quarantined) == (raw, rows, quarantined)
    col, i, text = check
    assert text in records(r)[col][i]


def test_dialogue_structure(home, catalog, tmp_path):
    r = build_source(
        catalog.get("sharegpt"), home=home, from_path=FIXTURES / "sharegpt.json", max_quarantine=1.0
    )
    row = records(r).row(1, named=True)
    assert row["instruction"] == "and 3+3?" and row["history"] == [{"user": "2+2?", "assistant": "4"}]
    assert json.loads(row["meta"])["system"] == "Be brief."
    r = build_source(catalog.get("hh_rlhf"), home=home, from_path=FIXTURES / "hh_rlhf_train.jsonl.gz")
    row = records(r).row(1, named=True)
    assert row["history"] == [{"user": "Hi", "assistant": "Hello!"}]
    meta = json.loads(row["meta"])
    assert meta["rejected"] == "No."  # the rejected reply, paired with the chosen output
    assert meta["rejected_transcript"].endswith("Assistant: No.") and "flags" not in meta


def test_webgpt_comparisons_are_pairs(home, catalog, tmp_path):
    """WebGPT: the higher-scored answer is the output (chosen) and the other the rejected answer,
    whichever side won; a tie is quarantined with its reason; a comparison whose other answer is
    empty keeps the winner as an sft record, flagged."""
    rows = [json.loads(x) for x in (FIXTURES / "webgpt.jsonl").read_text().splitlines() if x.strip()]
    rows.append({**rows[0], "score_0": -0.5, "score_1": 0.5, "answer_1": "Because they are happy."})
    rows.append({**rows[0], "answer_1": "  "})
    path = tmp_path / "webgpt" / "0000.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), path)
    r = build_source(catalog.get("webgpt"), home=home, from_path=path, max_quarantine=1.0)
    assert (r.input_records, r.rows, r.quarantined) == (4, 3, 1)
    df = records(r)
    assert df["kind"].to_list() == ["pair", "pair", "sft"]
    assert df["output"].to_list() == [
        "They purr when content and to self-soothe.",
        "Because they are happy.",
        "They purr when content and to self-soothe.",
    ]
    assert df["rejected"].to_list() == ["Nobody knows.", "They purr when content and to self-soothe.", ""]
    assert df["instruction"].to_list() == ["Why do cats purr?"] * 3
    metas = [json.loads(m) for m in df["meta"]]
    assert [m["preferred"] for m in metas] == [0, 1, 0] and metas[1]["score_1"] == 0.5
    assert [m.get("rejected_empty") for m in metas] == [None, None, True]
    assert "answer_0" not in metas[0]  # the answers are the record's columns, not copied to meta
    reasons = [json.loads(x)["reason"] for x in r.quarantine_file.read_text().splitlines()]
    assert reasons == ["tie: score_0 == score_1, no preferred answer"]


def test_catalog_lists_the_collection(catalog):
    assert len(catalog.names()) >= 35
    for name in catalog.names():
        s = catalog.get(name)
        assert s.license and (s.hub or s.url or s.local or s.sample), name


def test_new_json_source_from_a_catalog_entry_alone(home, tmp_path):
    """The example in docs/sources.md: a JSON-family source added with YAML only, no Python."""
    import textwrap

    from forge.catalog import load_catalog

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_qa.jsonl").write_text(
        '{"question": "What is 2+2?", "answer": "4", "topic": "math"}\n{"question": "Capital of Peru?", "answer": "Lima", "topic": "geo"}\n'
    )
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent("""
        sources:
          my_qa:
            description: my team's QA pairs
            connector: json
            formatter: columns
            options: {instruction: question, input: null, output: answer, meta_keys: [topic]}
            local: data/my_qa.jsonl
            lang: EN
            task: TS
            gen: HG
            license: CC-BY-4.0
    """)
    )
    r = build_source(load_catalog(tmp_path / "catalog.yaml").get("my_qa"), home=home)
    df = records(r)
    assert df["instruction"].to_list() == ["What is 2+2?", "Capital of Peru?"] and df["output"].to_list() == [
        "4",
        "Lima",
    ]
    assert [json.loads(m)["topic"] for m in df["meta"]] == ["math", "geo"]

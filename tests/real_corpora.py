"""Which catalog source each real raw sample in ../shared/corpora belongs to (see its SOURCES.md),
and the real mixed language gold set (used by tests/test_fidelity.py and bench/tags_bench.py)."""

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "data" / "fixtures"
SHARED = (REPO.parent / "shared" / "corpora").resolve()

REAL_SAMPLES = {
    "alpaca": "alpaca/alpaca_5000.json",
    "code_alpaca": "code_alpaca/code_alpaca_2k.json",
    "flan_cot": "flan_cot",
    "cot_zh": "flan_cot/gsm8k_train.tsv",
    "belle_1m": "belle/dev1K.json",
    "firefly_multiturn": "firefly/dummy_data.jsonl",
    "gpteacher_codegen": "gpteacher/codegen-instruct.json",
    "gpteacher_roleplay": "gpteacher/roleplay-simple-deduped-roleplay-instruct.json",
    "gpteacher_toolformer": "gpteacher/toolformer-similarity-0.6-dataset.json",
    "instinwild_en": "instinwild/seed_prompts_en.jsonl",
    "instinwild_zh": "instinwild/seed_prompts_ch.jsonl",
    "moss_003_sft": "moss/conversations",
    "moss_prompts": "moss/user_prompts/harmless_prompts.jsonl",
    "natural_instructions": "natural_instructions/tasks",
    "ultrachat_eval": "ultrachat/ultra_eval.json",
    "gaokao": "gaokao",
    "auto_cot": "auto_cot/demos",
    "chinese_medical": "chinese_medical/sample_IM_neike_5000-6000.csv",
    "duie": "duie/train_data_5000.head500.json",
}

GOLD = Path(__file__).parent / "data" / "lang_gold_real.jsonl"


def real_mixed_gold(home: Path) -> list[dict]:
    """The real mixed gold set: records that fooled language ID before (LaTeX math, code
    answers, short chat turns, Chinese prompts over English content), referenced by source,
    file and raw row in ../shared/corpora and hand-labelled in tests/data/lang_gold_real.jsonl.

    Each entry is built through forge (so the tags are what a user gets) and expanded to one
    row per record: {kind, gold, lang, text}.
    """
    import polars as pl

    from forge.build import build_source
    from forge.catalog import load_catalog

    catalog = load_catalog(REPO / "catalog.yaml")
    out = []
    for spec in (json.loads(line) for line in GOLD.read_text().splitlines() if line.strip()):
        path = FIXTURES / spec["fixture"] if "fixture" in spec else SHARED / spec["path"]
        r = build_source(catalog.get(spec["source"]), home=home, from_path=path, say=lambda *a: None)
        df = pl.read_parquet([str(r.out_dir / s["file"]) for s in r.shards]).sort("raw_row")
        rows = spec["rows"]
        if isinstance(rows, list):
            df = df.filter(pl.col("raw_row").is_in(rows))
            assert sorted(set(df["raw_row"])) == sorted(rows), spec
        elif rows.startswith("first "):
            df = df.head(int(rows.split()[1]))
        for rec in df.iter_rows(named=True):
            text = "\n".join(x for x in (rec["instruction"], rec["input"], rec["output"]) if x)
            out.append({"kind": spec["kind"], "gold": spec["lang"], "lang": rec["lang"], "text": text})
    return out

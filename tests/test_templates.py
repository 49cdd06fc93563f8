import json
import textwrap
from collections import Counter
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from forge.build import build_source
from forge.connectors.base import RawBatch
from forge.formatters import cot
from forge.formatters.templates import TemplateFileError, compile_template
from forge.paths import templates_dir
from tests.conftest import shared

SETS = ["aqua", "creak", "ecqa", "esnli", "gsm8k", "qasc", "qed", "sensemaking", "strategyqa"]


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("name", SETS)
def test_every_set_has_its_own_templates(lang, name):
    path = templates_dir() / lang / f"{name}.yaml"
    ts = cot.TemplateSet(path)
    assert (len(ts.zero_shot), len(ts.inversion), len(ts.few_shot)) >= (10, 1, 3)
    assert len(ts.zero_shot) >= 10 and len(ts.few_shot) >= 3 and len(ts.inversion) >= 3
    ids = [t[0].id for t in ts.zero_shot + ts.inversion] + [t["id"] for t in ts.few_shot]
    assert len(ids) == len(set(ids)) and all(i.startswith(f"{lang}.{name}.") for i in ids)
    for inst, out in ts.zero_shot:
        both = inst.source + out.source
        assert all(f"{{{{ {v} }}}}" in both for v in ("question", "chain_of_thought", "answer"))
    if lang == "zh":  # prompt wording is Chinese
        assert all(any("\u4e00" <= ch <= "\u9fff" for ch in inst.source) for inst, _ in ts.zero_shot)


def _raw_rows(path: Path) -> list[tuple[str, str, str]]:
    return [
        tuple(x.replace("\\n", "\n") for x in line.split("\t"))
        for line in path.read_text(encoding="utf-8").split("\n")
        if line
    ]


def test_real_tsvs_one_zero_shot_record_per_row_with_rationale_and_answer(home, catalog):
    r = build_source(catalog.get("flan_cot"), home=home, from_path=shared("flan_cot"))
    df = pl.read_parquet([str(r.out_dir / s["file"]) for s in r.shards])
    zs = df.filter(pl.col("category") == "cot").sort(["raw_file", "raw_row"])
    for name in ("aqua", "creak", "gsm8k"):
        raw = _raw_rows(shared(f"flan_cot/{name}_train.tsv"))
        part = zs.filter(pl.col("raw_file") == f"{name}_train.tsv")
        assert part.height == len(raw)
        for (q, a, rationale), inst, out, tid in zip(
            raw, part["instruction"], part["output"], part["template"], strict=True
        ):
            assert q.strip() in inst and rationale.strip() in out and a.strip() in out  # trimmed fields
            assert tid.startswith(f"en.{name}.zs")
    assert not df["instruction"].str.contains("\\n", literal=True).any()
    assert not df["output"].str.contains("\\n", literal=True).any()
    inv = df.filter(pl.col("category") == "cot_inversion")
    assert inv.height == zs.height and inv["template"].str.contains(r"\.inv\d\d$").all()


def test_round_robin_balance_and_seed(home, catalog, tmp_path):
    src = catalog.get("flan_cot")
    r = build_source(src, home=home, from_path=shared("flan_cot/qasc_train.tsv"))
    df = pl.read_parquet(r.out_dir / r.shards[0]["file"]).filter(pl.col("category") == "cot")
    counts = Counter(df["template"].to_list())
    assert len(counts) == 10 and max(counts.values()) - min(counts.values()) <= 1
    # same seed: byte-identical Parquet in another data home
    again = build_source(src, home=tmp_path / "other", from_path=shared("flan_cot/qasc_train.tsv"))
    assert (r.out_dir / r.shards[0]["file"]).read_bytes() == (
        again.out_dir / again.shards[0]["file"]
    ).read_bytes()
    # another seed: each row gets another template
    src.options = {**src.options, "seed": 3}
    other = build_source(src, home=tmp_path / "seed3", from_path=shared("flan_cot/qasc_train.tsv"))
    df3 = pl.read_parquet(other.out_dir / other.shards[0]["file"]).filter(pl.col("category") == "cot")
    assert (df3["template"] != df["template"]).all()


def test_zh_variant_uses_chinese_prompts(home, catalog):
    r = build_source(catalog.get("cot_zh"), home=home, from_path=shared("flan_cot/strategyqa_train.tsv"))
    df = pl.read_parquet(r.out_dir / r.shards[0]["file"])
    assert df.height == 2061 and df["template"].str.starts_with("zh.strategyqa.").all()
    assert df["instruction"].str.contains(r"[\u4e00-\u9fff]").all()


def test_sandbox_blocks_attribute_escape(tmp_path):
    bad = tmp_path / "zz" / "evil.yaml"
    bad.parent.mkdir()
    bad.write_text(
        textwrap.dedent("""
        set: evil
        zero_shot:
          - id: zz.evil.zs01
            instruction: "{{ question.__class__.__mro__ }}"
            output: "{{ answer }}"
    """)
    )
    with pytest.raises(TemplateFileError, match=r"evil\.yaml: template 'zz.evil.zs01': SecurityError"):
        cot.TemplateSet(bad)


def test_unknown_variable_names_file_and_template(tmp_path):
    with pytest.raises(TemplateFileError, match=r"my.yaml: template 't1': UndefinedError"):
        compile_template("{{ qestion }}", "t1", "my.yaml", ("question",))


def test_columnar_path_equals_jinja_render():
    ts = cot.TemplateSet(templates_dir() / "en" / "gsm8k.yaml")
    cols = {
        "question": pa.array(["Q1\nx", "Q2 {{ not code }}"]),
        "chain_of_thought": pa.array(["r1", "r2"]),
        "answer": pa.array(["1", "2"]),
    }
    for template in [t for pair in ts.zero_shot + ts.inversion for t in pair]:
        assert template.parts is not None  # these are all simple substitutions
        fast = template.render_columns(cols, 2).to_pylist()
        slow = [template.render({k: v[i].as_py() for k, v in cols.items()}) for i in range(2)]
        assert fast == slow


def _batch(n: int) -> RawBatch:
    b = RawBatch(
        "gsm8k_train.tsv",
        columns={
            "question": [f"question {i}" for i in range(n)],
            "answer": [str(i) for i in range(n)],
            "rationale": [f"because {i}" for i in range(n)],
        },
    )
    b.rows, b.lines = list(range(n)), list(range(1, n + 1))
    return b


def test_few_shot_never_includes_itself_and_respects_budget():
    fmt = cot.make(
        {"modes": ["few_shot"], "k": 3, "few_shot_budget": 300, "templates_dir": str(templates_dir())}, "t"
    )
    out = fmt(_batch(50), lambda *a: None)
    for i, (inst, meta) in enumerate(zip(out["instruction"].to_pylist(), out["meta"], strict=True)):
        used = json.loads(meta)["exemplar_rows"]
        assert i not in used and len(used) >= 1
        assert len(inst) <= 300
        assert inst.rstrip().endswith(f"question {i}")
        shots = inst[: inst.rfind(f"question {i}")]
        assert f"question {i}\n" not in shots and f"question {i} " not in shots
        assert all(f"question {e}" in shots for e in used)


def test_trigger_phrase_is_appended():
    fmt = cot.make(
        {
            "modes": ["zero_shot"],
            "trigger": "Let us think step by step.",
            "templates_dir": str(templates_dir()),
        },
        "t",
    )
    out = fmt(_batch(4), lambda *a: None)
    assert all(x.endswith(" Let us think step by step.") for x in out["instruction"].to_pylist())

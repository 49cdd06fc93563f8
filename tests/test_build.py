import json

import polars as pl
import pytest

from forge.build import build_source, read_manifest
from forge.schema import SCHEMA_VERSION
from tests.conftest import shared

FLAN_COUNTS = {
    "aqua": 2728,
    "creak": 6915,
    "ecqa": 7112,
    "gsm8k": 7473,
    "qasc": 1084,
    "sensemaking": 6070,
    "strategyqa": 2061,
}


def test_alpaca_json_array_real_sample(home, catalog):
    r = build_source(catalog.get("alpaca"), home=home, from_path=shared("alpaca/alpaca_5000.json"))
    assert (r.rows, r.quarantined, r.input_records) == (500, 0, 500)
    df = pl.read_parquet(r.out_dir / r.shards[0]["file"])
    raw = json.loads(shared("alpaca/alpaca_5000.json").read_text())
    assert df["instruction"].to_list() == [x["instruction"] for x in raw]
    assert df["output"][3] == raw[3]["output"] and df["input"][0] == raw[0]["input"]


def test_code_alpaca_indented_array(home, catalog):
    r = build_source(catalog.get("alpaca"), home=home, from_path=shared("code_alpaca/code_alpaca_2k.json"))
    # the real file has two records with an empty output (rows 237 and 1859): quarantined, not dropped
    assert (r.rows, r.quarantined, r.input_records) == (2015, 2, 2017)
    q = [json.loads(x) for x in r.quarantine_file.read_text().splitlines()]
    assert [(e["row"], e["line"], e["reason"]) for e in q] == [
        (237, 1187, "field 'output' is empty"),
        (1859, 9297, "field 'output' is empty"),
    ]
    df = pl.read_parquet(r.out_dir / r.shards[0]["file"])
    # records in a 6-space-indented array start on lines 2, 7, 12 ...
    assert df["raw_line"][:3].to_list() == [2, 7, 12]


def test_flan_cot_real_tsvs(home, catalog):
    r = build_source(catalog.get("flan_cot"), home=home, from_path=shared("flan_cot"))
    assert r.input_records == sum(FLAN_COUNTS.values())
    assert r.rows == 2 * r.input_records  # zero_shot + inversion per row
    df = pl.read_parquet([str(r.out_dir / s["file"]) for s in r.shards])
    zs = df.filter(pl.col("category") == "cot")
    counts = zs.group_by("raw_file").len().sort("raw_file")
    assert dict(zip(counts["raw_file"], counts["len"], strict=True)) == {
        f"{k}_train.tsv": v for k, v in FLAN_COUNTS.items()
    }
    assert not zs["output"].str.contains(r"\\n", literal=True).any()
    assert not zs["instruction"].str.contains(r"\\n", literal=True).any()
    # every zero-shot output holds the row's rationale and answer verbatim (after the newline fix)
    lines = shared("flan_cot/creak_train.tsv").read_bytes().split(b"\n")
    q, a, rationale = lines[5].decode().split("\t")
    row = zs.filter((pl.col("raw_file") == "creak_train.tsv") & (pl.col("raw_row") == 5)).row(0, named=True)
    assert rationale.replace("\\n", "\n") in row["output"] and a in row["output"]
    assert q.replace("\\n", "\n") in row["instruction"]
    assert row["template"].startswith("en.")


def test_gsm8k_u2028_does_not_split_records(home, catalog, tmp_path):
    r = build_source(catalog.get("flan_cot"), home=home, from_path=shared("flan_cot/gsm8k_train.tsv"))
    assert r.input_records == 7473 and r.quarantined == 0


def test_rebuild_is_a_noop(home, catalog):
    src = catalog.get("belle_0.5m")
    first = build_source(src, home=home, from_path=shared("belle/dev1K.json"))
    shard = first.out_dir / first.shards[0]["file"]
    before = (shard.stat().st_mtime_ns, shard.stat().st_ino)
    again = build_source(src, home=home, from_path=shared("belle/dev1K.json"))
    assert again.status == "up-to-date" and again.build_hash == first.build_hash
    assert (shard.stat().st_mtime_ns, shard.stat().st_ino) == before


def test_changed_input_rebuilds(home, catalog, tmp_path):
    raw = tmp_path / "b.jsonl"
    raw.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    src = catalog.get("belle_0.5m")
    first = build_source(src, home=home, from_path=raw)
    raw.write_text(raw.read_text() + '{"instruction": "c", "input": "", "output": "d"}\n')
    second = build_source(src, home=home, from_path=raw)
    assert second.status == "built" and second.rows == 2 and second.build_hash != first.build_hash


def test_manifest_contents(home, catalog):
    r = build_source(catalog.get("alpaca"), home=home, sample=True)
    m = read_manifest("alpaca", home)
    assert m["rows"] == r.rows == sum(s["rows"] for s in m["shards"])
    assert m["schema_version"] == SCHEMA_VERSION and len(m["build_hash"]) == 64
    assert m["raw"][0]["name"] == "alpaca_sample.json" and len(m["raw"][0]["sha256"]) == 64
    assert sum(m["tag_counts"]["lang"].values()) == r.rows
    shard = m["shards"][0]
    assert (r.out_dir / shard["file"]).stat().st_size == shard["bytes"]


def test_no_temp_files_left(home, catalog):
    build_source(catalog.get("alpaca"), home=home, sample=True)
    folder = home / "sources" / "alpaca"
    leftovers = [
        p.name
        for p in folder.iterdir()
        if p.name.startswith(".") and p.name not in (".lock", ".parts", ".last-version")
    ]
    assert leftovers == []
    assert sorted(p.name for p in folder.iterdir()) == [
        ".last-version",
        ".lock",
        ".parts",
        "CURRENT",
        "v000001",
    ]
    # the part cache holds the committed version's one part, sharing its bytes (a hard link)
    (entry,) = (folder / ".parts").iterdir()
    shard = folder / "v000001" / "part-000-00000.parquet"
    assert (entry / "part-000-00000.parquet").stat().st_ino == shard.stat().st_ino


def test_missing_input_is_an_error(home, catalog, tmp_path):
    from forge.errors import BuildError

    with pytest.raises(BuildError, match=r"alpaca: no files at .*nope"):
        build_source(catalog.get("alpaca"), home=home, from_path=tmp_path / "nope")

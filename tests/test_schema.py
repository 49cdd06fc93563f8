import json

import datasets
import polars as pl
import pyarrow.parquet as pq

from forge.build import build_source
from forge.schema import COLUMNS, RECORD_SCHEMA, SCHEMA_VERSION
from tests.conftest import shared


def test_schema_columns_and_version():
    assert COLUMNS[:4] == ["id", "instruction", "input", "output"]
    for col in ("source", "lang", "task", "gen", "raw_file", "raw_row", "raw_line", "template", "history"):
        assert col in COLUMNS
    assert RECORD_SCHEMA.metadata[b"forge.schema_version"] == str(SCHEMA_VERSION).encode()


def test_built_shards_load_in_datasets_and_polars(home, catalog):
    r = build_source(catalog.get("belle_0.5m"), home=home, from_path=shared("belle/dev1K.json"))
    files = [str(r.out_dir / s["file"]) for s in r.shards]
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.num_rows == 1000
    assert ds.column_names == COLUMNS
    df = pl.read_parquet(files)
    assert df.columns == COLUMNS and df.height == 1000
    assert pq.read_schema(files[0]).equals(RECORD_SCHEMA, check_metadata=False)
    first = json.loads(shared("belle/dev1K.json").read_text().splitlines()[0])
    row = df.row(0, named=True)
    assert row["instruction"] == first["instruction"] and row["output"] == first["output"]
    assert row["raw_file"] == "dev1K.json" and row["raw_row"] == 0 and row["raw_line"] == 1
    assert row["lang"] == "zh" and row["source"] == "belle_0.5m" and row["gen"] == "SI"


def test_ids_stable_across_rebuilds(home, catalog):
    src = catalog.get("alpaca")
    a = build_source(src, home=home, sample=True)
    ids_a = pl.read_parquet(a.out_dir / a.shards[0]["file"])["id"].to_list()
    b = build_source(src, home=home, sample=True, force=True)
    ids_b = pl.read_parquet(b.out_dir / b.shards[0]["file"])["id"].to_list()
    assert b.status == "built" and ids_a == ids_b and len(set(ids_a)) == len(ids_a)

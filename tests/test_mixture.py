import textwrap

import polars as pl
import pytest

from forge.errors import MixtureError
from forge.mixture import MixtureStream, materialize, resolve


def ids_of(mix, home, **reader):
    return [i for t in MixtureStream(mix, home, **reader) for i in t["id"].to_pylist()]


def test_alpaca_belle_cot_concat_uses_every_record_once(built_samples, catalog):
    m = resolve("alpaca-belle-cot", catalog, home=built_samples)
    assert [(leaf.label, leaf.count) for leaf in m.leaves] == [
        ("alpaca", 32),
        ("belle_0.5m", 27),
        ("flan_cot", 72),
    ]
    ids = ids_of(m, built_samples)
    assert len(ids) == 131 == len(set(ids))


def test_same_seed_same_ids_and_seed_changes_order(built_samples, catalog):
    a = ids_of(resolve("alpaca-belle-cot", catalog, home=built_samples), built_samples)
    b = ids_of(resolve("alpaca-belle-cot", catalog, home=built_samples), built_samples)
    c = ids_of(resolve("alpaca-belle-cot", catalog, home=built_samples, seed=1), built_samples)
    assert a == b
    assert a != c and sorted(a) == sorted(c)


def test_materialize_writes_shards_and_lineage(built_samples, catalog):
    m = resolve("alpaca-belle-cot", catalog, home=built_samples)
    manifest = materialize(m, built_samples)
    folder = built_samples / "mixtures" / "alpaca-belle-cot"
    shards = pl.read_parquet(folder / "part-*.parquet")
    lineage = pl.read_parquet(folder / "ids.parquet")
    assert manifest["rows"] == shards.height == lineage.height == 131
    assert lineage["id"].to_list() == shards["id"].to_list() == ids_of(m, built_samples)
    assert lineage["position"].to_list() == list(range(131))
    assert manifest["tag_counts"]["source"] == {"alpaca": 32, "belle_0.5m": 27, "flan_cot": 72}


def test_resume_mid_stream(built_samples, catalog):
    m = resolve("alpaca-belle-cot", catalog, home=built_samples)
    full = ids_of(m, built_samples)
    s = MixtureStream(m, built_samples)
    s.load_state_dict({"position": 50, "fingerprint": m.fingerprint()})
    assert [i for t in s for i in t["id"].to_pylist()] == full[50:]


def test_ranks_and_workers_split_the_stream(built_samples, catalog):
    m = resolve("alpaca-belle-cot", catalog, home=built_samples)
    full = ids_of(m, built_samples)
    parts = [
        ids_of(m, built_samples, rank=r, world_size=2, worker=w, num_workers=2)
        for r in range(2)
        for w in range(2)
    ]
    assert sorted(i for p in parts for i in p) == sorted(full)
    assert parts[1] == full[1::4]


def write_mix(folder, name, text):
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text))


def test_rates_and_nesting(built_samples, catalog, tmp_path):
    d = tmp_path / "mixtures"
    write_mix(
        d,
        "inner",
        """
        strategy: rates
        size: 40
        components:
          - {source: alpaca, weight: 3}
          - {source: belle_0.5m, weight: 1}
    """,
    )
    write_mix(
        d,
        "outer",
        """
        strategy: rates
        size: 100
        components:
          - {mixture: inner, weight: 1}
          - {where: "category == cot_inversion", weight: 1}
    """,
    )
    inner = resolve("inner", catalog, home=built_samples, user_dir=d)
    assert [leaf.count for leaf in inner.leaves] == [30, 10]
    outer = resolve("outer", catalog, home=built_samples, user_dir=d)
    counts = {leaf.label: leaf.count for leaf in outer.leaves}
    # outer splits 100 as 50/50; the inner half is split 3:1 (37.5/12.5, tie to the first)
    assert counts == {"alpaca": 38, "belle_0.5m": 12, "flan_cot[category == cot_inversion]": 50}
    ids = ids_of(outer, built_samples)
    flan = pl.read_parquet(built_samples / "sources" / "flan_cot" / "*.parquet")
    inv_ids = set(flan.filter(pl.col("category") == "cot_inversion")["id"].to_list())
    assert len([i for i in ids if i in inv_ids]) == 50


@pytest.mark.parametrize(
    "body, key, message",
    [
        ("components:\n  - {source: alpacca}\n", "components[0].source", "did you mean alpaca"),
        ("components:\n  - {source: alpaca, weight: -1}\n", "components[0].weight", "non-negative"),
        ("strategy: random\ncomponents:\n  - {source: alpaca}\n", "strategy", "is not one of"),
        ("components:\n  - {where: 'lang == xx'}\n", "components[0].where", "no records match"),
        ("components:\n  - {where: 'lang = zh'}\n", "components[0].where", "cannot read query"),
        ("components: []\n", "components", "non-empty list"),
        ("components:\n  - {mixture: bad}\n", "components", "cycle in nested mixtures: bad -> bad"),
    ],
)
def test_malformed_mixture_errors_name_file_and_key(built_samples, catalog, tmp_path, body, key, message):
    d = tmp_path / "mixtures"
    write_mix(d, "bad", body)
    with pytest.raises(MixtureError) as e:
        resolve("bad", catalog, home=built_samples, user_dir=d)
    assert str(d / "bad.yaml") in str(e.value) and key in str(e.value) and message in str(e.value)


def test_unbuilt_source_is_a_clear_error(home, catalog):
    with pytest.raises(MixtureError, match=r"source 'alpaca' is not built; run: forge build alpaca"):
        resolve("alpaca-belle-cot", catalog, home=home)

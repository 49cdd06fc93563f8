import textwrap

import polars as pl
import pytest
from conftest import current

from forge.errors import MixtureError
from forge.materialize import materialize
from forge.mixture import MixtureStream, resolve


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
    folder = current(built_samples, "mixtures", "alpaca-belle-cot")
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
    flan = pl.read_parquet(current(built_samples, "sources", "flan_cot") / "*.parquet")
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


def test_proportional_caps_and_temperature(built_samples, catalog, tmp_path):
    d = tmp_path / "mixtures"
    # sizes: alpaca 32, belle 27, flan_cot 72; cap 30 -> effective 30, 27, 30; T=2 -> sqrt
    write_mix(
        d,
        "prop",
        """
        strategy: proportional
        cap: 30
        temperature: 2.0
        size: 1000
        components:
          - {source: alpaca}
          - {source: belle_0.5m}
          - {source: flan_cot}
    """,
    )
    m = resolve("prop", catalog, home=built_samples, user_dir=d)
    import numpy as np

    rates = np.sqrt([30, 27, 30]) / np.sqrt([30, 27, 30]).sum()
    counts = [leaf.count for leaf in m.leaves]
    assert sum(counts) == 1000
    assert np.all(np.abs(np.array(counts) - 1000 * rates) < 1)
    ids = ids_of(m, built_samples)
    # belle (27 records) is drawn ~325 times: every record used before any repeats
    belle_ids = [
        i
        for i in ids
        if i in set(pl.read_parquet(current(built_samples, "sources", "belle_0.5m") / "*.parquet")["id"])
    ]
    assert len(set(belle_ids[:27])) == 27


def test_max_examples_and_epochs_in_concat(built_samples, catalog, tmp_path):
    d = tmp_path / "mixtures"
    write_mix(
        d,
        "cc",
        """
        strategy: concat
        components:
          - {source: alpaca, epochs: 2}
          - {source: flan_cot, max_examples: 10}
    """,
    )
    m = resolve("cc", catalog, home=built_samples, user_dir=d)
    assert [leaf.count for leaf in m.leaves] == [64, 10]
    ids = ids_of(m, built_samples)
    alpaca = [
        i
        for i in ids
        if i in set(pl.read_parquet(current(built_samples, "sources", "alpaca") / "*.parquet")["id"])
    ]
    assert len(alpaca) == 64 and len(set(alpaca)) == 32 and len(set(alpaca[:32])) == 32


def test_first_exhausted_and_all_exhausted(built_samples, catalog, tmp_path):
    d = tmp_path / "mixtures"
    body = "strategy: rates\nstop: {stop}\ncomponents:\n  - {{source: alpaca, weight: 1}}\n  - {{source: flan_cot, weight: 1}}\n"
    write_mix(d, "fe", body.format(stop="first_exhausted"))
    write_mix(d, "ae", body.format(stop="all_exhausted"))
    assert [leaf.count for leaf in resolve("fe", catalog, home=built_samples, user_dir=d).leaves] == [32, 32]
    assert [leaf.count for leaf in resolve("ae", catalog, home=built_samples, user_dir=d).leaves] == [72, 72]


def test_report_is_self_contained_html(built_samples, catalog, tmp_path):
    from forge.report import build_report

    m = resolve("alpaca-belle-cot", catalog, home=built_samples)
    out = build_report(m, built_samples, tmp_path / "r.html")
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 6  # components, lang, task, gen, category, lengths
    for text in ("alpaca-belle-cot", "By lang", "Samples", "belle_0.5m", m.fingerprint()[:16]):
        assert text in page
    assert "http://" not in page and "https://" not in page


def test_record_reader_cache_stays_under_its_byte_budget(built_samples, catalog):
    import numpy as np

    from forge.mixture import RecordReader

    m = resolve("alpaca-belle-cot", catalog, home=built_samples)
    leaves = np.repeat(np.arange(3), [32, 27, 72])
    records = np.concatenate([np.arange(32), np.arange(27), np.arange(72)])
    roomy = RecordReader(m, built_samples)
    tight = RecordReader(m, built_samples, cache_bytes=1)  # keeps only the latest row group
    for _ in range(2):
        assert tight.take(leaves, records).equals(roomy.take(leaves, records))
    groups = sum(len(g) for g, _ in roomy.layout.values())
    assert groups > 1 and len(roomy.cache) == groups and len(tight.cache) == 1
    assert tight.cached_bytes == next(iter(tight.cache.values())).nbytes

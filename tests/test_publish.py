import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import polars as pl
import pytest
from conftest import current
from huggingface_hub import DatasetCard

from forge.build import build_source
from forge.publish import PublishError, collect_targets, stage
from tests.conftest import REPO, shared
from tests.hub_server import LocalHub, validate_card_metadata

FORGE = str(Path(sys.executable).parent / "forge")
TOKEN = "hf_forgeTestToken1234567890"


def cli(args, env, cwd=REPO):
    return subprocess.run([FORGE, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def source_rows(home, name):
    return pl.read_parquet(current(home, "sources", name) / "*.parquet")


@pytest.fixture
def staged(built_samples, catalog, tmp_path):
    configs = collect_targets(["alpaca-belle-cot"], catalog, built_samples)
    return stage(
        configs, "me/abc", tmp_path / "staged", max_shard_bytes=20_000, home=built_samples
    ), built_samples


def test_staged_folder_loads_every_config_offline(staged):
    folder, home = staged
    for name in ("alpaca", "belle_0.5m", "flan_cot"):
        ds = datasets.load_dataset(str(folder), name, split="train")
        expected = source_rows(home, name)
        assert (
            ds.num_rows
            == expected.height
            == (pl.read_parquet(current(home, "sources", name) / "*.parquet").height)
        )
        assert ds.column_names == expected.columns
        assert ds["id"] == expected["id"].to_list() and ds["output"] == expected["output"].to_list()
    mix = datasets.load_dataset(str(folder), "alpaca-belle-cot", split="train")
    lineage = pl.read_parquet(current(home, "mixtures", "alpaca-belle-cot") / "ids.parquet")
    assert mix["id"] == lineage["id"].to_list()
    assert datasets.load_dataset(str(folder), "default", split="train").num_rows == 32 + 27 + 72


def test_dataset_card_parses_and_declares_everything(staged):
    folder, _ = staged
    card = DatasetCard.load(folder / "README.md")
    assert validate_card_metadata((folder / "README.md").read_text()) == []
    data = card.data.to_dict()
    assert [c["config_name"] for c in data["configs"]] == [
        "default",
        "alpaca",
        "belle_0.5m",
        "flan_cot",
        "alpaca-belle-cot",
    ]
    assert data["language"] == ["en", "zh"]
    assert data["license"] == ["apache-2.0", "cc-by-nc-4.0", "gpl-3.0"]
    assert data["task_categories"] == ["text-generation"] and data["size_categories"] == ["n<1K"]
    body = card.text
    assert "## Tag statistics" in body and "| `belle_0.5m` | zh 27 | MT 27 | SI 27 | general 27 |" in body
    assert "mixture fingerprint" in body and "lineage ids sha256" in body
    assert "`belle_sample.json`" in body  # raw checksums per source


def test_shards_respect_max_size(home, catalog, tmp_path):
    build_source(catalog.get("flan_cot"), home=home, from_path=shared("flan_cot/gsm8k_train.tsv"))
    configs = collect_targets(["flan_cot"], catalog, home)
    folder = stage(configs, "me/cot", tmp_path / "s", max_shard_bytes=1_000_000, home=home)
    shards = sorted((folder / "data" / "flan_cot").glob("*.parquet"))
    assert len(shards) >= 3
    assert all(p.stat().st_size <= 1_000_000 for p in shards)
    assert shards[0].name == f"train-00000-of-{len(shards):05d}.parquet"
    assert sum(pl.read_parquet(p).height for p in shards) == 7473 * 2


def test_missing_license_refused_unless_allowed(home, tmp_path, monkeypatch):
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          nolicense:
            description: x
            connector: json
            formatter: columns
            local: {shared("belle/dev1K.json")}
            lang: CN
            task: MT
            gen: SI
    """)
    )
    from forge.catalog import load_catalog

    cat = load_catalog(tmp_path / "catalog.yaml")
    build_source(cat.get("nolicense"), home=home)
    with pytest.raises(
        PublishError, match=r"no license in the catalog for nolicense; .*--allow-missing-license"
    ):
        collect_targets(["nolicense"], cat, home)
    assert collect_targets(["nolicense"], cat, home, allow_missing_license=True)[0].rows == 1000


def hub_env(hub, home, tmp_path):
    return {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": TOKEN,
        "FORGE_HOME": str(home),
        "HF_HOME": str(tmp_path / "hf-home"),
        "COLUMNS": "200",
    }


def test_upload_batches_retry_and_pull_round_trip(built_samples, tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_env(hub, built_samples, tmp_path)
        hub.state.fail_next = {r"/commit/": [429]}  # first commit is rate-limited, then succeeds
        r = cli(
            [
                "publish",
                "alpaca-belle-cot",
                "--repo",
                "me/abc",
                "--max-shard-size",
                "20KB",
                "--files-per-commit",
                "2",
            ],
            env,
        )
        assert r.returncode == 0, r.stderr
        assert hub.state.created[0]["name"] == "abc" and hub.state.created[0]["type"] == "dataset"
        commits = hub.state.commits
        assert len(commits) == 4  # 7 files (6 + the mixture's lineage), 2 per commit; the 429 retried
        uploaded = [path for c in commits for _, path in c["operations"]]
        staged = sorted(
            str(p.relative_to(built_samples / "publish" / "me--abc"))
            for p in (built_samples / "publish" / "me--abc").rglob("*")
            if p.is_file() and p.name != ".forge-output"
        )
        assert sorted(uploaded) == staged and uploaded[-1] == "README.md"
        assert "lineage/alpaca-belle-cot/ids.parquet" in uploaded
        assert all(c["authorization"] == f"Bearer {TOKEN}" for c in commits)
        assert TOKEN not in r.stdout + r.stderr
        repo = tmp_path / "hub" / "datasets" / "me" / "abc"
        assert datasets.load_dataset(str(repo), "belle_0.5m", split="train").num_rows == 27

        # pull it back as a catalog source and build it through the Hub download path
        work = tmp_path / "work"
        work.mkdir()
        p = cli(["pull", "me/abc:belle_0.5m", "--catalog", str(work / "catalog.yaml")], env, cwd=work)
        assert p.returncode == 0, p.stderr
        assert "me__abc__belle_0.5m" in (work / "catalog.yaml").read_text()
        pulled = source_rows(built_samples, "me__abc__belle_0.5m")
        original = source_rows(built_samples, "belle_0.5m")
        assert pulled["instruction"].to_list() == original["instruction"].to_list()
        assert pulled["lang"].to_list() == original["lang"].to_list()


def test_failed_upload_never_shows_the_token(built_samples, tmp_path):
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_env(hub, built_samples, tmp_path)
        hub.state.fail_next = {r"/commit/": [500] * 10}
        r = cli(["publish", "alpaca", "--repo", "me/broken"], env)
        assert r.returncode == 1
        assert "commit 1/1 to me/broken failed (HTTP 500)" in r.stderr
        assert TOKEN not in r.stdout + r.stderr and "Traceback" not in r.stderr
        assert len([x for x in hub.state.requests if "/commit/" in x[1]]) == 5  # retried with backoff


def test_publishing_a_mixture_stages_only_what_it_drew(built_samples, tmp_path, monkeypatch):
    """A rates mixture drawing 30 of flan_cot's 72 records and every alpaca record: the staged
    repo holds the mixture (the default config), its lineage, and per source only the drawn
    records; licenses are Hub ids, custom terms become `other`, and no local path shows."""
    (tmp_path / "mixtures").mkdir()
    (tmp_path / "mixtures" / "small.yaml").write_text(
        "strategy: rates\nsize: 62\ncomponents:\n  - {source: flan_cot}\n  - {source: alpaca}\n"
    )
    (tmp_path / "catalog.yaml").write_text(
        (REPO / "catalog.yaml")
        .read_text()
        .replace("license: CC-BY-NC-4.0", "license: non-commercial research only (custom)", 1)
    )
    monkeypatch.chdir(tmp_path)
    from forge.catalog import load_catalog

    cat = load_catalog(tmp_path / "catalog.yaml")
    assert cat.get("alpaca").license == "non-commercial research only (custom)"
    configs = collect_targets(["small"], cat, built_samples)
    folder = stage(configs, "me/small", tmp_path / "staged", home=built_samples)

    lineage = pl.read_parquet(current(built_samples, "mixtures", "small") / "ids.parquet")
    assert pl.read_parquet(folder / "lineage" / "small" / "ids.parquet").equals(lineage)
    mix = datasets.load_dataset(str(folder), "small", split="train")
    assert mix["id"] == lineage["id"].to_list() and mix.num_rows == 62
    assert datasets.load_dataset(str(folder), split="train")["id"] == mix["id"]  # default = the mixture
    flan = datasets.load_dataset(str(folder), "flan_cot", split="train")
    drawn = set(lineage.filter(pl.col("source") == "flan_cot")["id"].to_list())
    assert set(flan["id"]) == drawn and flan.num_rows == len(drawn) == 31 < 72

    text = (folder / "README.md").read_text()
    meta = DatasetCard.load(folder / "README.md").data.to_dict()
    assert validate_card_metadata(text) == []
    assert meta["license"] == ["apache-2.0", "other"]
    assert meta["license_name"] == "non-commercial-research-only-custom"
    assert meta["license_link"].startswith("https://")
    assert str(tmp_path) not in text and str(built_samples) not in text and "/home/" not in text
    assert "31 of 72 (those the mixture drew)" in text
    assert meta["size_categories"] == ["n<1K"] and meta["language"] == ["en"]


def test_card_languages_need_a_minimum_share(built_samples, catalog, tmp_path):
    from forge.publish import MIN_LANG_SHARE, _languages

    configs = collect_targets(["alpaca", "belle_0.5m"], catalog, built_samples)
    assert _languages(configs) == ["en", "zh"]
    configs[0].manifest = {**configs[0].manifest, "tag_counts": {"lang": {"en": 999, "da": 1}}}
    configs = configs[:1]
    assert 1 / 1000 < MIN_LANG_SHARE and _languages(configs) == ["en"]  # one Danish-looking line is noise


def test_pairs_publish_in_trl_layout(home, tmp_path):
    """The demo path through the CLI: `forge build hh_rlhf --sample` (48 self-written pairs),
    `forge mix hh-preference`, `forge publish hh-preference`. Each config holding pairs gets a
    `-pairs` companion in TRL's conversational layout, and `default` (load_dataset(repo)) is the
    mixture's pairs; a multi-turn record's earlier turns are prompt messages."""
    with LocalHub(tmp_path / "hub") as hub:
        env = hub_env(hub, home, tmp_path)
        for args in (["build", "hh_rlhf", "--sample"], ["mix", "hh-preference"]):
            r = cli(args, env)
            assert r.returncode == 0, r.stderr
        r = cli(["publish", "hh-preference", "--repo", "me/prefs"], env)
        assert r.returncode == 0, r.stderr
        out = home / "publish" / "me--prefs"
        uploaded = [path for c in hub.state.commits for _, path in c["operations"]]
        assert "data/hh-preference-pairs/train-00000-of-00001.parquet" in uploaded

        # forge pull of the default (the pairs) registers a `formatter: pairs` source: the same pairs
        work = tmp_path / "work"
        work.mkdir()
        p = cli(["pull", "me/prefs", "--catalog", str(work / "catalog.yaml")], env, cwd=work)
        assert p.returncode == 0, p.stderr
        assert "formatter: pairs" in (work / "catalog.yaml").read_text()
        cols = ["instruction", "output", "rejected", "history"]
        pulled = source_rows(home, "me__prefs__default").select(cols).sort("instruction")
        assert pulled.equals(source_rows(home, "hh_rlhf").select(cols).sort("instruction"))

    ds = datasets.load_dataset(str(out), split="train")
    assert ds.column_names == ["prompt", "chosen", "rejected", "id", "source"] and ds.num_rows == 48
    lineage = pl.read_parquet(current(home, "mixtures", "hh-preference") / "ids.parquet")
    assert ds["id"] == lineage["id"].to_list()  # every record of the sample is a pair, in stream order
    records = {r["id"]: r for r in source_rows(home, "hh_rlhf").to_dicts()}
    row = next(x for x in ds if x["prompt"][-1]["content"] == "How fast should I run?")
    rec = records[row["id"]]
    assert row["prompt"] == [
        {"role": "user", "content": "I want to start running. Where should I begin?"},
        {"role": "assistant", "content": rec["history"][0]["assistant"]},
        {"role": "user", "content": "How fast should I run?"},
    ]
    assert row["chosen"] == [{"role": "assistant", "content": rec["output"]}]
    assert row["rejected"] == [
        {"role": "assistant", "content": "As fast as you can every time, until you are exhausted."}
    ]
    assert (
        datasets.load_dataset(str(out), "hh_rlhf", split="train").column_names
        == source_rows(home, "hh_rlhf").columns
    )  # the forge config is unchanged beside its pairs
    text = (out / "README.md").read_text()
    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert validate_card_metadata(text) == []
    assert [c["config_name"] for c in meta["configs"]] == [
        "default", "hh_rlhf", "hh_rlhf-pairs", "hh-preference", "hh-preference-pairs"
    ]  # fmt: skip
    assert meta["configs"][0]["data_files"][0]["path"] == "data/hh-preference-pairs/*.parquet"
    assert (
        "preference" in meta["tags"]
        and "| `hh-preference-pairs` | pairs | 48 pairs of `hh-preference` |" in text
    )


def test_pairs_config_leaves_out_non_pairs(home, catalog, tmp_path):
    """hh-rlhf records whose rejected reply answers other turns are sft records: the `-pairs`
    config leaves them out; a target with a source without pairs keeps the forge union as default."""
    import json

    raw = tmp_path / "hh.jsonl"
    lines = (REPO / "samples" / "pairs" / "hh_pairs.jsonl").read_text().splitlines()[:5]
    other = {
        "chosen": "\n\nHuman: Hi?\n\nAssistant: Hello!",
        "rejected": "\n\nHuman: Bye?\n\nAssistant: Bye.",
    }
    raw.write_text("\n".join([*lines, json.dumps(other)]) + "\n")
    build_source(catalog.get("hh_rlhf"), home=home, from_path=raw)
    build_source(catalog.get("alpaca"), home=home, sample=True)
    configs = collect_targets(["hh_rlhf", "alpaca"], catalog, home)
    assert [(c.name, c.kind, c.rows) for c in configs] == [
        ("hh_rlhf", "source", 6), ("hh_rlhf-pairs", "pairs", 5), ("alpaca", "source", 32)
    ]  # fmt: skip
    folder = stage(configs, "me/mixed", tmp_path / "staged", home=home)
    pairs = datasets.load_dataset(str(folder), "hh_rlhf-pairs", split="train")
    assert pairs.num_rows == 5 and "Hi?" not in [p[-1]["content"] for p in pairs["prompt"]]
    assert datasets.load_dataset(str(folder), split="train").num_rows == 6 + 32  # forge's union

    # the layout reads back with formatter pairs and its default keys: the same pairs
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent(f"""
        sources:
          back:
            {{description: x, connector: parquet, formatter: pairs, lang: EN, task: MT, gen: MIX,
             local: {folder}/data/hh_rlhf-pairs/*.parquet}}
    """)
    )
    from forge.catalog import load_catalog

    r = build_source(load_catalog(tmp_path / "catalog.yaml").get("back"), home=home)
    cols = ["instruction", "input", "output", "rejected", "history"]
    original = source_rows(home, "hh_rlhf").filter(pl.col("kind") == "pair").select(cols)
    assert source_rows(home, "back").select(cols).equals(original) and r.quarantined == 0

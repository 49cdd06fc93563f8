"""The model sees the mixture that was asked for: token shares under packing, empty targets,
repeats and caps, epochs, and the run's own account of all of it."""

import json
import textwrap

import pytest

from forge.build import build_source
from forge.catalog import load_catalog
from forge.materialize import materialize
from forge.mixture import resolve
from forge.train.recipe import TrainArgs, run
from forge.train.run_manifest import loss_windows


def write_source(folder, name: str, n: int, words: int, empty_every: int = 0) -> None:
    with open(folder / f"{name}.jsonl", "w") as fh:
        for i in range(n):
            output = (
                ""
                if empty_every and i % empty_every == 0
                else " ".join(f"{name}{i}w{k}" for k in range(words))
            )
            fh.write(json.dumps({"instruction": f"{name} task {i}", "input": "", "output": output}) + "\n")


def catalog_entry(name: str, allow_empty: bool = False) -> str:
    return textwrap.dedent(f"""
      {name}:
        description: {name} records of one length
        connector: json
        connector_options: {{format: jsonl}}
        formatter: columns
        options: {{allow_empty_output: {str(allow_empty).lower()}}}
        local: {name}.jsonl
        lang: EN
        task: MT
        gen: SI
    """).replace("\n", "\n  ")


@pytest.fixture
def three_lengths(tmp_path):
    """Three sources whose records differ tenfold in length, built, with a user mixture dir."""
    write_source(tmp_path, "longs", 600, 400)  # over the 256-token cutoff: truncated
    write_source(tmp_path, "mids", 600, 40)
    write_source(tmp_path, "shorts", 600, 3)
    write_source(tmp_path, "prompts", 100, 5, empty_every=2)  # half of them prompt-only
    (tmp_path / "catalog.yaml").write_text(
        "sources:" + "".join(catalog_entry(n, n == "prompts") for n in ("longs", "mids", "shorts", "prompts"))
    )
    cat = load_catalog(tmp_path / "catalog.yaml")
    home = tmp_path / "home"
    for name in ("longs", "mids", "shorts", "prompts"):
        build_source(cat.get(name), home=home, max_quarantine=1.0)
    (tmp_path / "mixtures").mkdir()
    return cat, home, tmp_path / "mixtures"


def mixture(mixtures, name: str, body: str) -> str:
    (mixtures / f"{name}.yaml").write_text(body)
    return name


@pytest.mark.slow
def test_packing_keeps_the_mixtures_token_shares(three_lengths, tiny_model, tmp_path):
    cat, home, mixtures = three_lengths
    name = mixture(
        mixtures,
        "three",
        "strategy: rates\nsize: 1800\ncomponents:\n  - {source: longs}\n  - {source: mids}\n  - {source: shorts}\n",
    )
    mix = resolve(name, cat, home=home, user_dir=mixtures)
    args = TrainArgs(
        mixture=name,
        model=str(tiny_model),
        output_dir=str(tmp_path / "run"),
        max_steps=50,
        batch_size=8,
        cutoff_len=256,
    )
    manifest = run(args, mix, home)
    shares = manifest["composition"]
    assert set(shares) == {"longs", "mids", "shorts"}
    for label, s in shares.items():
        assert abs(s["trained_share"] - s["sampled_share"]) <= 0.03, (label, s)
    # records of about 100 tokens against records cut at 256: emitted longest-first, the ~666
    # full rows of `longs` and `mids` in the first 1000-record buffer would fill all 400 rows of
    # these 50 steps, with no `shorts` at all, while the stream holds about 17% of its tokens
    assert shares["shorts"]["sampled_share"] > 0.1 and shares["shorts"]["trained_share"] > 0.1
    # over-long records are reported, with the tokens cut; packing efficiency is real tokens only
    assert manifest["truncated"] > 0 and manifest["tokens_cut"] > manifest["truncated"] * 100
    assert 0.9 < manifest["packing_efficiency"] <= 1.0
    assert manifest["tokens"] <= manifest["batches"] * 8 * 256


@pytest.mark.slow
def test_empty_outputs_are_dropped_and_counted(three_lengths, tiny_model, tmp_path):
    cat, home, mixtures = three_lengths
    name = mixture(
        mixtures, "p", "strategy: concat\ncomponents:\n  - {source: prompts}\n  - {source: shorts}\n"
    )
    mix = resolve(name, cat, home=home, user_dir=mixtures)
    args = TrainArgs(
        mixture=name, model=str(tiny_model), output_dir=str(tmp_path / "r"), epochs=1, batch_size=4
    )
    manifest = run(args, mix, home)
    assert manifest["empty_outputs_dropped"] == 50  # every second of the 100 prompts
    assert manifest["examples_seen"] == 700 - 50  # one epoch, exactly: everything else once
    trained = [
        i
        for line in (tmp_path / "r" / "batches.jsonl").read_text().splitlines()
        for i in json.loads(line)["ids"]
    ]
    assert len(trained) == len(set(trained)) == 650


def test_mix_warns_about_empty_outputs_and_repeats(three_lengths, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from forge.cli import app

    cat, home, mixtures = three_lengths
    mixture(
        mixtures,
        "warn",
        "strategy: rates\nsize: 2000\ncomponents:\n  - {source: prompts}\n  - {source: shorts}\n",
    )
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["mix", "warn", "--dry-run", "--home", str(home)])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "prompts: 50 records have an empty output; forge train drops them" in out
    assert "repeats: prompts: 1,000 draws from 100 records = 10.0 epochs" in out
    assert "shorts" not in out.split("warning")[-1]  # 1000 of 600: 1.7 epochs, under the threshold


def test_a_caps_shortfall_is_redistributed_by_weight(three_lengths):
    cat, home, mixtures = three_lengths
    body = (
        "strategy: rates\nsize: 1200\ncomponents:\n  - {source: longs, weight: 2, max_examples: 100}\n"
        "  - {source: mids, weight: 3}\n  - {source: shorts, weight: 1}\n"
    )
    mix = resolve(mixture(mixtures, "capped", body), cat, home=home, user_dir=mixtures)
    counts = {leaf.label: leaf.count for leaf in mix.leaves}
    # longs wanted 400 but is capped at 100: its 300 go to mids and shorts 3:1
    assert counts == {"longs": 100, "mids": 825, "shorts": 275} and mix.total == 1200 and mix.shortfall == 0
    mix = resolve(
        mixture(mixtures, "kept", body.replace("rates\n", "rates\nredistribute: false\n")),
        cat,
        home=home,
        user_dir=mixtures,
    )
    assert {leaf.label: leaf.count for leaf in mix.leaves} == {"longs": 100, "mids": 600, "shorts": 200}
    assert mix.shortfall == 300
    manifest = materialize(mix, home)
    assert manifest["shortfall"] == 300 and manifest["rows"] == 900
    assert [c["epochs"] for c in manifest["components"]] == [round(100 / 600, 4), 1.0, round(200 / 600, 4)]


def test_loss_windows_average_the_ends_of_the_run():
    assert loss_windows([4.0, 2.0] + [1.0] * 16 + [0.5, 0.5]) == {"window": 2, "first": 3.0, "last": 0.5}
    assert loss_windows([2.0]) == {"window": 1, "first": 2.0, "last": 2.0}

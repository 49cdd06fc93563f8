"""Recipes: one definition of every option, YAML recipes that flags override, reruns that
reproduce, and the output papercuts (80 columns, --json, packing auto)."""

import json
import re
from pathlib import Path

import pytest

from forge.train.config import RECIPES_DIR, RecipeError, load_recipe, make_args, reference_table
from tests.inprocess import forge_main

REPO = Path(__file__).resolve().parent.parent


def cli(args, home, columns=80, cwd=None):
    """`forge ARGS` in this process (tests/inprocess.py); 80 columns is what rich uses in a pipe."""
    return forge_main(args, env={"FORGE_HOME": str(home), "COLUMNS": str(columns)}, cwd=cwd)


def test_readme_option_table_is_current():
    readme = (REPO / "docs" / "training.md").read_text()
    block = readme.split("<!-- options-table:start -->\n")[1].split("\n<!-- options-table:end -->")[0]
    assert block == reference_table(), "docs/training.md table is stale: python -m forge.train.config --table"


def test_every_option_is_a_flag_and_a_recipe_key():
    from typer.main import get_command

    from forge.cli import app
    from forge.train.config import flag, option_fields

    train = get_command(app).commands["train"]
    flags = {o for p in train.params for o in p.opts}
    for f in option_fields():
        assert flag(f.name) in flags, f.name
    assert all(load_recipe(p) for p in RECIPES_DIR.glob("*.yaml"))  # every shipped recipe parses


def test_unknown_recipe_key_names_the_line_and_a_close_match(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("mixture: alpaca-belle-cot\nmodel: x\n\nlerning_rate: 0.1\n")
    with pytest.raises(
        RecipeError, match=r"r.yaml:4: lerning_rate: unknown option \(did you mean 'learning_rate'\?\)"
    ):
        load_recipe(path)
    path.write_text("mixture: m\nmodel: x\nlora_r: eight\n")
    with pytest.raises(RecipeError, match=r"r.yaml:3: lora_r: expected int, found 'eight'"):
        load_recipe(path)


def test_flags_override_the_recipe_and_home_expands(tmp_path):
    args = make_args(RECIPES_DIR / "tiny.yaml", {"max_steps": 7, "lora_r": 4}, tmp_path)
    assert (args.max_steps, args.lora_r, args.learning_rate) == (7, 4, 0.01)
    assert args.model == f"{tmp_path}/tiny-llama" and args.mixture == "alpaca-belle-cot"
    with pytest.raises(RecipeError, match="--model is required"):
        make_args(None, {"mixture": "m"}, tmp_path)


def test_a_max_steps_flag_replaces_the_recipes_epochs_and_origins_are_kept(tmp_path):
    from forge.train.config import dump_recipe

    path = tmp_path / "r.yaml"
    path.write_text("mixture: m\nmodel: x\nepochs: 2\nmax_steps: 5\nlora_r: 4\n")
    assert (make_args(path, {}, tmp_path).epochs, make_args(path, {}, tmp_path).max_steps) == (2, 5)
    args = make_args(path, {"max_steps": 7, "lora_r": None}, tmp_path)  # None: the flag was not given
    assert (args.epochs, args.max_steps, args.lora_r) == (None, 7, 4)
    assert args.origin["max_steps"] == "flag" and args.origin["lora_r"] == "recipe"
    assert args.origin["epochs"] == "flag: --max-steps 7 replaces the recipe's epochs: 2"
    assert args.origin["seed"] == "default"
    with pytest.raises(RecipeError, match="--epochs and --max-steps both set the run's length"):
        make_args(path, {"max_steps": 7, "epochs": 1}, tmp_path)
    (tmp_path / "effective.yaml").write_text(dump_recipe(args))
    again = make_args(tmp_path / "effective.yaml", {}, tmp_path)  # every value reads back as it was
    assert again == args and set(again.origin.values()) == {"recipe"}


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("recipe-home")
    assert cli(["build", "alpaca", "belle_0.5m", "flan_cot", "--sample"], home).returncode == 0
    assert cli(["tiny-model", str(home / "tiny-llama")], home).returncode == 0
    return home


@pytest.mark.slow
def test_tiny_recipe_reproduces_from_the_run_folder(demo_home, tmp_path):
    first = cli(["train", "train/recipes/tiny.yaml", "--max-steps", "6", "--json"], demo_home, cwd=REPO)
    assert first.returncode == 0, first.stderr
    a = json.loads(first.stdout)
    recipe = Path(a["recipe"])
    assert "max_steps: 6" in recipe.read_text() and "learning_rate: 0.01" in recipe.read_text()
    again = cli(["train", str(recipe), "--output-dir", str(tmp_path / "again"), "--json"], demo_home)
    assert again.returncode == 0, again.stderr
    b = json.loads(again.stdout)
    assert len(a["losses"]) == 6 and b["losses"] == pytest.approx(a["losses"], rel=1e-5)
    assert b["composition"] == a["composition"]


@pytest.mark.slow
def test_prompt_methods_train_with_default_flags(demo_home, tmp_path):
    r = cli(
        ["train", "tiny", "--peft", "prefix", "--max-steps", "2", "--output-dir", str(tmp_path / "p")],
        demo_home,
        columns=200,
    )
    assert r.returncode == 0, r.stderr
    assert "note: packing is off: prefix adds virtual tokens before every sequence" in r.stdout
    bad = cli(["train", "tiny", "--peft", "prompt", "--packing", "--max-steps", "2"], demo_home)
    assert bad.returncode == 1 and "--packing: prompt adds virtual tokens" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_80_columns_keep_every_source_name_whole(demo_home):
    from forge.catalog import load_catalog

    names = load_catalog().names()
    out = cli(["sources"], demo_home).stdout  # a pipe: rich uses 80 columns
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines)
    first_column = [line.split()[0] for line in lines[2:] if line.strip() and not line.startswith("(")]
    assert first_column == names
    assert "hidden at 80 columns; --json has every field" in out
    wide = cli(["sources"], demo_home, columns=250).stdout
    assert "location" in wide.splitlines()[1]


@pytest.mark.parametrize(
    "args, key",
    [
        (["sources", "--json"], "sources"),
        (["stats", "--json"], "rows"),
        (["mix", "alpaca-belle-cot", "--dry-run", "--json"], "components"),
        (["templates", "--json"], None),
    ],
)
def test_json_output_parses(demo_home, args, key):
    r = cli(args, demo_home)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    if key:
        assert key in data
    else:
        assert isinstance(data, list) and {"lang", "set", "zero_shot"} <= set(data[0])


def test_version_and_completion(demo_home):
    r = cli(["--version"], demo_home)
    assert r.returncode == 0 and re.fullmatch(r"forge \d+\.\d+\.\d+\n", r.stdout)
    assert "--install-completion" in cli(["--help"], demo_home, columns=200).stdout

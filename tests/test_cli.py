import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FORGE = str(Path(sys.executable).parent / "forge")


def run(args, home, columns=200):
    env = {**os.environ, "FORGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": str(columns)}
    return subprocess.run([FORGE, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_help_on_every_verb(tmp_path):
    top = run(["--help"], tmp_path)
    assert top.returncode == 0
    verbs = ["sources", "build", "mix", "train", "tiny-model"]
    for verb in verbs:
        assert verb in top.stdout
        r = run([verb, "--help"], tmp_path)
        assert r.returncode == 0 and "Usage" in r.stdout, verb


# `forge --help` and every verb's, printed by one process in turn (a marker line before each)
EVERY_HELP = """
import sys
from forge.cli import main
for verb in sys.argv[1:]:
    print("=====", verb, flush=True)
    sys.argv = ["forge", *([verb] if verb != "forge" else []), "--help"]
    try:
        main()
    except SystemExit:
        pass
"""
PANELS = {
    "Data": ["sources", "build", "verify", "templates", "stats", "filter", "dedup", "report"],
    "Model stages": ["translate", "rewrite", "judge"],
    "Mixtures": ["mix", "publish", "pull"],
    "Train": ["tiny-model", "train", "merge", "real-model"],
    "Use": ["predict", "chat", "serve"],
    "Evaluate": ["eval", "ablate"],
}


def _commands():
    from typer.main import get_command

    from forge.cli import app

    group = get_command(app)
    return {"forge": group, **group.commands}


def _cut_or_wide(helps: dict[str, str], columns: int) -> list:
    """What a help text leaves out or lets run wide: every option name (and --no- form) of the
    command must stand whole, and no line may be longer than the terminal."""
    import re

    problems = []
    commands = _commands()
    for verb, text in helps.items():
        names = [o for p in commands[verb].params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
        problems += [(verb, n) for n in names if not re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
        problems += [(verb, line) for line in text.splitlines() if len(line) > columns]
    return problems


def _split_helps(out: str) -> dict[str, str]:
    return dict(chunk.split("\n", 1) for chunk in out.split("===== ")[1:])


def test_help_at_80_columns_cuts_nothing(tmp_path):
    """In a pipe (CI, `| less`) at 80 columns: plain help, every option name whole, no line
    over 80 characters; the verbs grouped as a user thinks of them."""
    helps = {}
    for verb in ("forge", "train", "predict"):  # the console script itself
        r = run([*([verb] if verb != "forge" else []), "--help"], tmp_path, columns=80)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        helps[verb] = r.stdout
    env = {**os.environ, "FORGE_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "COLUMNS": "80"}
    every = subprocess.run([sys.executable, "-c", EVERY_HELP, *_commands()], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert every.returncode == 0, every.stderr
    helps |= {v: t for v, t in _split_helps(every.stdout).items() if v not in helps}
    assert set(helps) == set(_commands())
    assert _cut_or_wide(helps, 80) == []
    assert "╭" not in "".join(helps.values())  # no boxes in a pipe
    # the stage verbs' --model is the endpoint's model, not a model folder to load
    assert "Model name the endpoint serves" in helps["translate"]
    top = helps["forge"]
    sections = [line[:-1] for line in top.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections == ["Options", *PANELS]
    for title, verbs in PANELS.items():
        block = top.split(f"\n{title}:\n")[1].split("\n\n")[0]
        assert [line.split()[0] for line in block.splitlines() if not line.startswith("     ")] == verbs
    assert sorted(v for vs in PANELS.values() for v in vs) == sorted(set(_commands()) - {"forge"})


def _in_terminal(args: list[str], columns: int, home) -> str:
    """What a command prints on a terminal (a pseudo-terminal) COLUMNS wide, colours removed."""
    import pty
    import re

    master, slave = pty.openpty()
    env = {**os.environ, "FORGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": str(columns)}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode()).replace("\r\n", "\n")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_rich_help_only_where_it_fits(tmp_path):
    """On a terminal RICH_MIN_COLUMNS wide, typer's rich panels with every option name whole;
    on a narrower terminal, the plain layout (rich would cut names at 80 columns)."""
    from forge.cli.helptext import RICH_MIN_COLUMNS

    verbs = list(_commands())
    wide = _split_helps(_in_terminal([sys.executable, "-c", EVERY_HELP, *verbs], RICH_MIN_COLUMNS, tmp_path))
    assert set(wide) == set(verbs)
    assert all("╭" in text for text in wide.values())
    assert _cut_or_wide(wide, RICH_MIN_COLUMNS) == []
    assert all(f"─ {title} ─" in wide["forge"] for title in PANELS)
    narrow = _split_helps(_in_terminal([sys.executable, "-c", EVERY_HELP, "forge", "predict"], 80, tmp_path))
    assert "╭" not in "".join(narrow.values()) and _cut_or_wide(narrow, 80) == []
    assert "--max-new-tokens <int range>" in narrow["predict"]


def test_build_sources_and_up_to_date(tmp_path):
    first = run(["build", "alpaca", "flan_cot", "--sample"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert "alpaca" in first.stdout and "built" in first.stdout
    again = run(["build", "alpaca", "--sample"], tmp_path)
    assert "alpaca: up to date (32 rows" in again.stdout and "nothing rewritten" in again.stdout
    listing = run(["sources"], tmp_path)
    line = next(x for x in listing.stdout.splitlines() if x.startswith("alpaca "))
    assert line.split()[:6] == ["alpaca", "EN", "MT", "SI", "general", "32"]  # built: 32 rows
    assert "CC-BY-NC-4.0" in line
    assert "belle_0.5m" in listing.stdout


def test_unknown_source_exit_code_and_message(tmp_path):
    r = run(["build", "alpacca", "--sample"], tmp_path)
    assert r.returncode == 1
    assert "unknown source 'alpacca'; did you mean alpaca" in r.stderr and "Traceback" not in r.stderr


def test_mix_dry_run_writes_nothing(tmp_path):
    run(["build", "alpaca", "belle_0.5m", "flan_cot", "--sample"], tmp_path)
    r = run(["mix", "alpaca-belle-cot", "--dry-run"], tmp_path)
    assert r.returncode == 0 and "131 examples" in r.stdout and "dry run" in r.stdout
    assert not (tmp_path / "mixtures").exists()


PEFT_FLAGS = {
    "lora": [],
    "qlora": [],
    "dora": [],
    "adalora": ["--adalora-tinit", "1", "--adalora-tfinal", "1"],
    "ia3": [],
    "prefix": ["--no-packing", "--num-virtual-tokens", "4"],
    "p_tuning": ["--no-packing", "--encoder-hidden-size", "32"],
    "prompt": ["--no-packing"],
}


@pytest.fixture(scope="module")
def sample_home(tmp_path_factory):
    from typer.testing import CliRunner

    from forge.cli import app

    home = tmp_path_factory.mktemp("cli-home")
    r = CliRunner().invoke(
        app, ["build", "alpaca", "belle_0.5m", "flan_cot", "--sample", "--home", str(home)]
    )
    assert r.exit_code == 0, r.output
    return home


@pytest.mark.parametrize("method", list(PEFT_FLAGS))
def test_forge_train_every_peft_method_then_merge(sample_home, tiny_model, tmp_path, method):
    """The Done-when command, verb by verb: forge train --mixture alpaca-belle-cot --peft <each>;
    forge merge folds LoRA-family adapters and refuses prompt-style ones in one line."""
    from typer.testing import CliRunner

    from forge.cli import app

    out = tmp_path / "run"
    args = ["train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--peft", method]
    args += ["--max-steps", "4", "--batch-size", "2", "--cutoff-len", "256", "--learning-rate", "0.01"]
    args += ["--output-dir", str(out), "--home", str(sample_home), *PEFT_FLAGS[method]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "done: loss" in r.output and f"adapter: {out / 'adapter'}" in r.output.replace("\n", "")
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert manifest["args"]["peft"] == method and manifest["mixture"] == "alpaca-belle-cot"
    assert len(manifest["losses"]) == 4 and manifest["examples_seen"] > 0
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    expected = {"qlora": "LORA", "dora": "LORA", "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}
    assert config["peft_type"] == expected.get(method, method.upper())
    merged = CliRunner().invoke(app, ["merge", str(out / "adapter"), "--out", str(tmp_path / "merged")])
    if method in ("prefix", "p_tuning", "prompt"):
        assert merged.exit_code == 1 and "cannot be merged into the base" in merged.output
    else:
        assert merged.exit_code == 0, merged.output
        assert (tmp_path / "merged" / "config.json").is_file()
        assert (tmp_path / "merged" / "run_manifest.json").is_file()


def test_forge_train_reports_what_a_user_needs(sample_home, tiny_model, tmp_path):
    """Step lines with loss, learning rate, tokens/s and ETA; the eval loss when computed; a
    summary over windowed means with per-component token shares; 2e-4 by default."""
    import re

    from typer.testing import CliRunner

    from forge.cli import app

    args = ["train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--max-steps", "4"]
    args += ["--batch-size", "2", "--eval-size", "8", "--eval-steps", "2", "--home", str(sample_home)]
    args += ["--output-dir", str(tmp_path / "run")]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    out = r.output
    assert "learning rate 0.0002" in out  # the LoRA default, not 3e-3
    steps = re.findall(r"step +(\d)/4  loss [\d.]+  lr ([\d.e+-]+)  [\d,]+ tok/s  ETA \d+:\d\d", out)
    assert [s for s, _ in steps] == ["1", "2", "3", "4"]
    assert float(steps[0][1]) <= 2e-4
    assert len(re.findall(r"step +[24]  eval loss [\d.]+", out)) == 2
    flat = " ".join(out.split())  # rich wraps long lines at the console's width
    assert re.search(
        r"done: loss [\d.]+ -> [\d.]+ \(means of the first and last 1 logged steps\), 4 steps", flat
    )
    assert re.search(r"trained token share \(sampled\): alpaca [\d.]+% \([\d.]+%\)", " ".join(out.split()))


def test_flags_beat_the_recipe_and_the_run_records_where_values_came_from(sample_home, tiny_model, tmp_path):
    """A recipe with epochs: 1 and a --max-steps flag trains exactly that many steps (the flag
    wins, said in the effective recipe.yaml, which names every value's origin); a warm-up as long
    as the run is clamped with a one-line note; the recipe.yaml reruns the same run."""
    import yaml
    from typer.testing import CliRunner

    from forge.cli import app

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"mixture: alpaca-belle-cot\nmodel: {tiny_model}\nepochs: 1\nbatch_size: 2\n"
                      "cutoff_len: 256\nwarmup_steps: 50\nlearning_rate: 0.01\n")  # fmt: skip
    common = ["--home", str(sample_home)]
    r = CliRunner().invoke(app, ["train", str(recipe), "--max-steps", "3", "--lora-r", "4",
                                 "--output-dir", str(tmp_path / "run"), *common], env={"COLUMNS": "80"})  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "for 3 steps" in r.stdout
    note = [line for line in r.stdout.splitlines() if line.startswith("note: warmup_steps")]
    assert note == [
        "note: warmup_steps 50 (recipe) is not shorter than the run's 3 steps; "
        "warming up for 0 instead (a tenth of the run)"
    ]
    manifest = json.loads((tmp_path / "run" / "run_manifest.json").read_text())
    assert manifest["batches"] == 3 and len(manifest["losses"]) == 3
    text = (tmp_path / "run" / "recipe.yaml").read_text()
    values = yaml.safe_load(text)
    assert (values["max_steps"], values["epochs"], values["warmup_steps"], values["lora_r"]) == (
        3,
        None,
        0,
        4,
    )
    where = {line.split(":")[0]: line.split("  # ", 1)[1] for line in text.splitlines() if "  # " in line}
    assert set(where) == set(values)  # every option, each with its origin
    assert where["max_steps"] == "flag" and where["lora_r"] == "flag"
    assert where["epochs"] == "flag: --max-steps 3 replaces the recipe's epochs: 1"
    assert where["batch_size"] == "recipe" and where["learning_rate"] == "recipe"
    assert where["lora_dropout"] == "default" and where["seed"] == "default"
    assert where["warmup_steps"] == "recipe: 50, clamped to a tenth of the 3-step run"
    assert f"recipe ({recipe})" in text.splitlines()[1]

    again = CliRunner().invoke(app, ["train", str(tmp_path / "run" / "recipe.yaml"),
                                     "--output-dir", str(tmp_path / "again"), *common])  # fmt: skip
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "again" / "run_manifest.json").read_text())
    assert rerun["losses"] == pytest.approx(manifest["losses"], rel=1e-5)
    assert "note: warmup_steps" not in again.stdout  # the recipe.yaml holds the clamped value

    both = CliRunner().invoke(app, ["train", str(recipe), "--epochs", "1", "--max-steps", "3", *common])
    assert both.exit_code == 1
    assert "--epochs and --max-steps both set the run's length: give one of them" in both.output


# A failing command during which libraries speak on stderr: one that installs its own stderr
# handler at INFO (as transformers does), one that relies on Python's last-resort handler (as
# `kernels` did offline), a Python warning, and a warning category a library re-enables.
CHATTY = """
import logging, sys, warnings
import forge.catalog

real = forge.catalog.load_catalog

def chatty(*args, **kwargs):
    lib = logging.getLogger("chatty_lib")
    lib.addHandler(logging.StreamHandler(sys.stderr))
    lib.setLevel(logging.INFO)
    lib.info("chatty_lib info line")
    lib.warning("chatty_lib warning line")
    logging.getLogger("kernels._internals.hf_hub").warning("kernels offline line")
    warnings.warn("python warning line", UserWarning)
    warnings.simplefilter("always", RuntimeWarning)
    warnings.warn("re-enabled warning line", RuntimeWarning)
    return real(*args, **kwargs)

forge.catalog.load_catalog = chatty
sys.argv = ["forge", *sys.argv[1:]]
from forge.cli import main
main()
"""
CHATTER = ["chatty_lib info line", "chatty_lib warning line", "kernels offline line",
           "python warning line", "re-enabled warning line"]  # fmt: skip


def test_library_chatter_never_reaches_stderr(tmp_path):
    env = {**os.environ, "FORGE_HOME": str(tmp_path), "COLUMNS": "200"}
    env.pop("FORGE_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", CHATTY, "build", "no_such_source"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert r.stderr.startswith("error:") and "no_such_source" in r.stderr, r.stderr

    debug = subprocess.run([sys.executable, "-c", CHATTY, "--debug", "build", "no_such_source"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)  # fmt: skip
    assert debug.returncode == 1
    for line in CHATTER:
        assert line in debug.stderr, (line, debug.stderr)


def test_a_worker_importing_the_forge_script_loads_no_cli():
    """A spawned worker (build parts, dedup) re-imports the script that started forge, which
    does `from forge.cli import main`; that must not load typer, rich and the verbs' modules."""
    code = (
        "import sys\nfrom forge.cli import main\n"
        "print(sorted(m for m in ('typer', 'rich', 'click', 'forge.cli.root', 'forge.cli.data') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

FORGE = str(Path(sys.executable).parent / "forge")


def run(args, home):
    env = {**os.environ, "FORGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([FORGE, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_help_on_every_verb(tmp_path):
    top = run(["--help"], tmp_path)
    assert top.returncode == 0
    verbs = ["sources", "build", "mix", "train", "tiny-model"]
    for verb in verbs:
        assert verb in top.stdout
        r = run([verb, "--help"], tmp_path)
        assert r.returncode == 0 and "Usage" in r.stdout, verb


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

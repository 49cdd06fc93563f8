import os
import subprocess
import sys
from pathlib import Path

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
    line = next(x for x in listing.stdout.splitlines() if x.strip("│ ").startswith("alpaca "))
    assert "EN" in line and "SI" in line and "CC-BY-NC-4.0" in line and "32 rows" in line
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

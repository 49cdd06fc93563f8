"""tests/inprocess.py, the in-process forge most CLI tests use, against a real `forge` process:
the same exit code, stdout and stderr, and nothing it changed left behind in the test's process."""

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.inprocess import forge_main

FORGE = [str(Path(sys.executable).parent / "forge")]  # the console script a user runs


@pytest.mark.parametrize(
    "args",
    [
        ["sources", "--json"],  # success, JSON on stdout
        ["build", "alpacca", "--sample"],  # forge's one-line error, exit 1
        ["mix", "alpaca-belle-cot", "--seed", "x"],  # a usage error, exit 2
        ["build", "alpaca", "--sample"],  # a build: the summary table at 200 columns
    ],
)
def test_in_process_forge_answers_like_a_real_process(args, tmp_path):
    env = {"FORGE_HOME": str(tmp_path / "home"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    real = subprocess.run(
        FORGE + args, env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    env["FORGE_HOME"] = str(tmp_path / "home2")  # a fresh home: a build is not "up to date"
    here = forge_main(args, env=env)
    assert here.returncode == real.returncode

    def same(text: str) -> str:  # a build's table shows its seconds
        return re.sub(r"\d+\.\d+", "#", text.replace("home2", "home"))

    assert same(here.stdout) == same(real.stdout)
    assert here.stderr == real.stderr


def test_in_process_forge_leaves_the_process_as_it_found_it(tmp_path):
    before = (dict(os.environ), os.getcwd(), sys.argv, logging.root.manager.disable, warnings.showwarning)
    r = forge_main(
        ["build", "alpacca"], env={"FORGE_HOME": str(tmp_path), "FORGE_TEST_ONLY": "1"}, cwd=tmp_path
    )
    assert r.returncode == 1 and "unknown source 'alpacca'" in r.stderr
    # main() silenced library logging and warnings and set PYTHONWARNINGS for its children
    after = (dict(os.environ), os.getcwd(), sys.argv, logging.root.manager.disable, warnings.showwarning)
    assert after == before

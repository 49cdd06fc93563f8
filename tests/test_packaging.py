"""The wheel ships one import package, `forge`, and a user's own train.py, connectors.py or
formatters.py in the working directory cannot shadow any part of it."""

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

USER_FILES = ("train.py", "connectors.py", "formatters.py")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("forge_instruct-*.whl")
    return whl


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory, wheel) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from the test venv's
    site-packages through a .pth line (that adds the folder, not its .pth files, so the
    editable checkout of forge stays out of sight)."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    uv = Path(sys.executable).parent / "uv"
    r = subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "--no-deps",
            "--offline",
            "--python",
            str(venv / "bin" / "python"),
            str(wheel),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    return venv


def test_the_wheel_holds_one_import_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"forge"}
    for inside in ("forge/connectors/base.py", "forge/formatters/cot.py", "forge/train/recipe.py"):
        assert inside in names
    assert "forge/train/recipes/tiny.yaml" in names and "forge/_data/catalog.yaml" in names


def test_user_files_named_like_forge_parts_do_not_shadow_it(wheel_venv, tiny_model, tmp_path):
    """From a folder holding the user's own train.py, connectors.py and formatters.py (each
    exits if imported): --version, `python -m forge.cli train --help` and a tiny train run."""
    work = tmp_path / "project"
    work.mkdir()
    for name in USER_FILES:
        (work / name).write_text(f"raise SystemExit('the user\\'s {name} was imported')\n")
    env = {**os.environ, "FORGE_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    py, forge = str(wheel_venv / "bin" / "python"), str(wheel_venv / "bin" / "forge")

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)

    r = run(py, "-c", "import forge.train.recipe as m; print(m.__file__)")
    assert r.returncode == 0, r.stderr
    assert str(wheel_venv) in r.stdout  # the wheel's copy, not the checkout
    r = run(forge, "--version")
    assert r.returncode == 0 and r.stdout.startswith("forge "), r.stderr
    r = run(py, "-m", "forge.cli", "train", "--help")
    assert r.returncode == 0 and "--mixture" in r.stdout, r.stderr
    r = run(forge, "build", "alpaca", "belle_0.5m", "flan_cot", "--sample")
    assert r.returncode == 0, r.stderr
    r = run(forge, "train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--max-steps", "1",
            "--batch-size", "2", "--cutoff-len", "128", "--output-dir", str(tmp_path / "run"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "run" / "run_manifest.json").read_text())["mixture"] == "alpaca-belle-cot"

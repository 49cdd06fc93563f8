import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets caches a loaded folder under a key that ignores the files' contents: a cache left in
# ~/.cache by an earlier run (or an older forge) would be read instead of what a test wrote
_DATASETS_CACHE = tempfile.mkdtemp(prefix="forge-tests-datasets-")
os.environ["HF_DATASETS_CACHE"] = _DATASETS_CACHE

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared" / "corpora").resolve()


def need(path: Path) -> Path:
    """A real sample under ../shared, or a skip that says what is missing."""
    if not path.exists():
        pytest.skip(f"real sample {path} not present (needs ../shared beside the checkout)")
    return path


def shared(rel: str) -> Path:
    return need(SHARED / rel)


def current(home: Path, kind: str, name: str) -> Path:
    """The committed version folder of a built source (kind "sources") or mixture ("mixtures")."""
    root = home / kind / name
    return root / (root / "CURRENT").read_text().strip()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "forge_home"
    monkeypatch.setenv("FORGE_HOME", str(h))
    return h


@pytest.fixture
def catalog():
    from forge.catalog import load_catalog

    return load_catalog()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """One tiny model for the whole run, built once even under pytest-xdist: the workers share
    the run's base temp folder and take turns under a file lock (tests only read the model)."""
    from filelock import FileLock

    from forge.train.tiny import make_tiny_model

    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's base is pytest-N/popen-gwK: pytest-N belongs to this run alone
    shared_root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = shared_root / "shared-tiny" / "tiny-llama"
    with FileLock(str(shared_root / "shared-tiny.lock")):
        done = shared_root / "shared-tiny.complete"  # beside the model, not in it
        if not done.exists():
            make_tiny_model(path)
            done.touch()
    return path


@pytest.fixture
def built_samples(home, catalog):
    from forge.build import build_source

    for name in ("alpaca", "belle_0.5m", "flan_cot"):
        build_source(catalog.get(name), home=home, sample=True)
    return home


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """(data home, run folder): a real tiny LoRA run on the sample mixture (alpaca, belle,
    flan_cot samples), 3 steps. Shared by the inference and eval tests; they only add files
    (predictions elsewhere, eval/ results) to the run folder. Trained in this process
    (tests/inprocess.py)."""
    from tests.inprocess import forge_main

    home = tmp_path_factory.mktemp("run-home")

    def forge(*args: str):
        return forge_main(list(args), env={"FORGE_HOME": str(home), "COLUMNS": "200"})

    assert forge("build", "alpaca", "belle_0.5m", "flan_cot", "--sample").returncode == 0
    out = home / "runs" / "tiny"
    r = forge("train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--max-steps", "3",
              "--learning-rate", "0.01", "--output-dir", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    return home, out


# Under pytest-xdist (`make test`), each worker is handed whole files as it frees up. Starting
# the longest files first keeps both cores busy to the end instead of leaving one worker alone
# with a long file at the finish. The order only schedules; it changes no test.
LONGEST_FIRST = [  # measured on a fresh clone (2026-12-05, --junitxml: each file's total)
    "test_ray.py",
    "test_crash_safety.py",
    "test_trainer.py",
    "test_ablate.py",
    "test_inference.py",
    "test_reliability.py",
    "test_serve_api.py",
    "test_dedup_exact.py",
    "test_stages.py",
    "test_cli.py",
    "test_publish.py",
    "test_locations.py",
    "test_dedup_fidelity.py",
    "test_eval.py",
    "test_composition.py",
    "test_serve_robust.py",
    "test_integrity.py",
    "test_packaging.py",
]


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within


if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one math thread each instead of each asking for every core
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_unconfigure(config):
    shutil.rmtree(_DATASETS_CACHE, ignore_errors=True)

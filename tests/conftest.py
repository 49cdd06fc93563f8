import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared" / "corpora").resolve()


def shared(rel: str) -> Path:
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"real sample {path} not present (needs ../shared beside the checkout)")
    return path


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
    from train.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture
def built_samples(home, catalog):
    from forge.build import build_source

    for name in ("alpaca", "belle_0.5m", "flan_cot"):
        build_source(catalog.get(name), home=home, sample=True)
    return home

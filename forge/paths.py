"""Where things live: the built-in registry files and the data home."""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def builtin_dir() -> Path:
    """Folder holding catalog.yaml, mixtures/, cot_templates/ and samples/.

    In a wheel they ship as package data under forge/_data; in a source checkout
    (editable install, tests) they sit at the repository root.
    """
    packaged = _PKG / "_data"
    if (packaged / "catalog.yaml").exists():
        return packaged
    return _PKG.parent


def templates_dir() -> Path:
    return builtin_dir() / "cot_templates"


def data_home() -> Path:
    return Path(os.environ.get("FORGE_HOME", "forge_data")).resolve()


def source_dir(name: str, home: Path | None = None) -> Path:
    return (home or data_home()) / "sources" / name


def quarantine_dir(name: str, home: Path | None = None) -> Path:
    return (home or data_home()) / "quarantine" / name


def mixture_dir(name: str, home: Path | None = None) -> Path:
    return (home or data_home()) / "mixtures" / name


def hub_cache_dir(home: Path | None = None) -> Path:
    return (home or data_home()) / "hub"

"""Where things live: the built-in registry files and the data home."""

from __future__ import annotations

import os
from pathlib import Path

from forge.store import Store

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


def source_store(name: str, home: Path | None = None) -> Store:
    """The versioned folder of a built source (checks the name; never leaves the home)."""
    return Store((home or data_home()) / "sources", name, "source")


def mixture_store(name: str, home: Path | None = None) -> Store:
    """The versioned folder of a materialised mixture."""
    return Store((home or data_home()) / "mixtures", name, "mixture")


def hub_cache_dir(home: Path | None = None) -> Path:
    return (home or data_home()) / "hub"

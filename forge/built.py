"""A built dataset's committed version as readers get it: opened, pinned and checked.

Every reader of a built source or mixture (mix, train, stats, filter, dedup, publish) goes
through open_built / verified_manifest, which check the manifest's seal and every shard's size
and xxh3 before a byte is read; `forge verify` (verify_store) and the build's up-to-date test
run the same check (version_problems), against the digests a writer records per shard
(file_digests), so what is recorded and how it is checked sit together. It is apart from
forge/build.py, which writes versions, because reading one needs none of the build's
connectors, formatters or language detector.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import xxhash

from forge.errors import BuildError
from forge.paths import source_store
from forge.schema import SCHEMA_VERSION
from forge.store import Store, StoreError, seal_broken


@dataclass
class Built:
    """One committed version of a built source, leased by this process for reading."""

    name: str
    version: str
    path: Path
    manifest: dict

    def files(self) -> list[Path]:
        return [self.path / s["file"] for s in self.manifest["shards"]]


def open_built(name: str, home: Path | None = None) -> Built | None:
    """The source's current version, pinned for this process (see forge.store) and checked
    against its hashes (verified_manifest), or None when nothing is built."""
    version = source_store(name, home).current()
    if version is None:
        return None
    return Built(name, version.id, version.path, verified_manifest(version.path, f"forge build {name}"))


def read_manifest(name: str, home: Path | None = None) -> dict | None:
    built = open_built(name, home)
    return built.manifest if built else None


# version folders this process has checked: versions are immutable and leased while read
_VERIFIED: dict[Path, dict] = {}


def verified_manifest(folder: Path, repair: str) -> dict:
    """A committed version's manifest, after checking that it is the manifest forge wrote (its
    seal) and that every shard has the size and xxh3 it lists. Readers (mix, train, stats,
    filter, dedup, publish) go through here, so a damaged shard that still decodes is never
    used: they fail in one line naming it and the command that repairs it. Once per process
    and version (bench/verify_bench.py measures the cost)."""
    folder = Path(folder)
    if folder in _VERIFIED:
        return _VERIFIED[folder]
    manifest, problems = version_problems(folder)
    if problems:
        raise BuildError(f"{folder}: {'; '.join(problems[:3])}; `{repair}` repairs it")
    _VERIFIED[folder] = manifest
    return manifest


def version_problems(folder: Path) -> tuple[dict | None, list[str]]:
    """The one check of a version folder that readers, `forge verify` and the up-to-date test
    share: (its manifest, what is wrong with it). The manifest is None when it cannot be read;
    the list is empty when the seal holds and every shard matches its size and xxh3."""
    path = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        problems = damaged_shards(Path(folder), manifest)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, [f"manifest.json unreadable ({type(e).__name__})"]
    if seal_broken(manifest):
        problems.insert(0, "manifest.json (edited after forge wrote it)")
    built_with = manifest.get("schema_version", SCHEMA_VERSION)  # mixtures record none
    if built_with != SCHEMA_VERSION:
        problems.insert(
            0,
            f"built with record schema v{built_with}; this forge reads v{SCHEMA_VERSION} "
            f"(v2 added the lang_output column, v3 the rejected and kind columns of preference pairs)",
        )
    return manifest, problems


def damaged_shards(folder: Path, manifest: dict) -> list[str]:
    """Shards of a version that are missing, or whose size or xxh3 differs from the manifest."""
    bad = []
    for s in manifest["shards"]:
        path = folder / s["file"]
        try:
            if path.stat().st_size != s["bytes"] or shard_digest(path) != s.get("xxh3"):
                bad.append(f"{s['file']} (content differs from the manifest)")
        except OSError:
            bad.append(f"{s['file']} (missing)")
    return bad


def file_digests(path: Path) -> dict:
    """sha256 (for the dataset card) and xxh3-128 (for fast integrity checks), one read."""
    from forge.connectors.base import hash_file

    sha, xx = hash_file(path, hashlib.sha256(), xxhash.xxh3_128())
    return {"sha256": sha, "xxh3": xx}


def shard_digest(path: Path) -> str:
    """xxh3-128 of a file: fast enough to check every shard before saying "up to date"."""
    from forge.connectors.base import hash_file

    return hash_file(path, xxhash.xxh3_128())[0]


def verify_store(store: Store) -> list[str]:
    """Problems with a dataset's committed version (sources and mixtures alike): an
    unreadable pointer or manifest, missing shards, shards whose bytes differ from the
    xxh3 in the manifest. Empty when it is intact."""
    try:
        version = store.current(lease=False)
    except StoreError as e:
        return [str(e)]
    if version is None:
        return ["not built"]
    manifest, found = version_problems(version.path)
    problems = [f"{version.id}/{p}" for p in found]
    if manifest is None:
        return problems
    if "ids_sha256" in manifest:  # a mixture's lineage file
        from forge.connectors.base import sha256_file

        ids = version.path / "ids.parquet"
        if not ids.exists() or sha256_file(ids) != manifest["ids_sha256"]:
            problems.append(f"{version.id}/ids.parquet (content differs from the manifest)")
    return problems

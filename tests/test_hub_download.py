"""The Hub path of a connector, end to end through huggingface_hub, against a local server
on 127.0.0.1 that serves a folder laid out like the dataset repo."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import current

from tests.conftest import REPO, shared
from tests.hub_server import LocalHub


def forge_cli(args, env, cwd):
    exe = Path(sys.executable).parent / "forge"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_build_downloads_from_hub_repo(tmp_path):
    root = tmp_path / "hub"
    repo = root / "datasets" / "someone" / "belle-raw"
    (repo / "data").mkdir(parents=True)
    shutil.copy(shared("belle/dev1K.json"), repo / "data" / "train.json")
    (repo / "README.md").write_text("not a data file")
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent("""
        sources:
          belle_hub:
            description: BELLE sample served from a Hub-shaped repo
            connector: json
            formatter: columns
            hub: {repo: someone/belle-raw, files: ["data/*.json"], revision: main}
            lang: CN
            task: MT
            gen: SI
            license: GPL-3.0
    """)
    )
    home = tmp_path / "home"
    with LocalHub(root) as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_OFFLINE": "0",
            "FORGE_HOME": str(home),
            "HF_HOME": str(tmp_path / "hf"),
        }
        first = forge_cli(["build", "belle_hub"], env, tmp_path)
        assert first.returncode == 0, first.stderr
        downloads = [p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
        assert len(downloads) == 1 and downloads[0].endswith("/data/train.json")
        manifest = json.loads((current(home, "sources", "belle_hub") / "manifest.json").read_text())
        assert manifest["rows"] == 1000 and manifest["raw"][0]["name"] == "data/train.json"
        assert manifest["origin"] == {
            "kind": "hub",
            "repo": "someone/belle-raw",
            "revision": "main",
            "files": ["data/*.json"],
        }
        # the download landed in the data home; a rebuild is a no-op and downloads nothing new
        assert (home / "hub" / "dataset" / "someone--belle-raw" / "main" / "data" / "train.json").exists()
        second = forge_cli(["build", "belle_hub"], env, tmp_path)
        assert "up to date" in second.stdout
        assert len([p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]) == 1


def test_unreachable_hub_is_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FORGE_HOME": str(tmp_path / "home")}
    r = forge_cli(["build", "belle_0.5m"], env, REPO)
    assert r.returncode == 1
    assert (
        "belle_0.5m: cannot reach the Hub for BelleGroup/train_0.5M_CN@efcb807b8c8411a294995125e5bcfee4e9d216ef and nothing is cached"
        in r.stderr
    )
    assert "Traceback" not in r.stderr

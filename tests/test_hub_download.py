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


def _jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def test_large_hub_source_builds_file_by_file_resumes_and_rebuilds_only_what_changed(tmp_path):
    """An xP3-shaped repo (one JSONL per language folder, real records): --subset downloads
    only its languages; each file is a part that fetches its own file; a build killed after
    one part resumes without downloading or rebuilding it again; a changed upstream file is
    the only one downloaded and rebuilt, and the result equals a fresh build."""
    belle = [json.loads(x) for x in shared("belle/dev1K.json").read_text().splitlines()]
    alpaca = json.loads(shared("alpaca/alpaca_5000.json").read_text())
    code = json.loads(shared("code_alpaca/code_alpaca_2k.json").read_text())
    root = tmp_path / "hub"
    repo = root / "datasets" / "someone" / "xp3-like"

    def as_xp3(records):
        return [
            {"inputs": (r["instruction"] + "\n" + r["input"]).strip(), "targets": r["output"]}
            for r in records
        ]

    _jsonl(repo / "zh" / "xp3_zh.jsonl", as_xp3(belle))  # ~0.5 MB: an LFS file (sha256 listed)
    _jsonl(repo / "en" / "xp3_en.jsonl", as_xp3(alpaca[:100]))  # small: a plain git file
    _jsonl(repo / "code" / "xp3_code.jsonl", as_xp3(code[:200]))
    (repo / "README.md").write_text("card")
    (tmp_path / "catalog.yaml").write_text(
        textwrap.dedent("""
        sources:
          xp3_like:
            description: xP3-shaped repo
            connector: json
            connector_options: {format: jsonl}
            formatter: columns
            options: {instruction: inputs, input: null, output: targets}
            hub: {repo: someone/xp3-like, files: ["*/*.jsonl"], subsets: "{subset}/*.jsonl", revision: main}
            lang: ML
            task: MT
            gen: COL
    """)
    )
    home = tmp_path / "home"
    with LocalHub(root) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "FORGE_HOME": str(home),
               "HF_HOME": str(tmp_path / "hf"), "FORGE_PART_BYTES": "1000", "COLUMNS": "200"}  # fmt: skip

        def downloads() -> list[str]:
            return [p.rsplit("/", 2)[-2] for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]

        def manifest() -> dict:
            return json.loads((current(home, "sources", "xp3_like") / "manifest.json").read_text())

        r = forge_cli(["build", "xp3_like", "--catalog", "catalog.yaml", "--subset", "zh", "--subset", "en"],
                      env, tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert sorted(downloads()) == ["en", "zh"]  # the code file was never fetched
        m = manifest()
        assert m["rows"] == 1100 and m["origin"]["subsets"] == ["zh", "en"]
        assert [x["name"] for x in m["raw"]] == ["en/xp3_en.jsonl", "zh/xp3_zh.jsonl"]
        assert m["raw"][1]["remote"] == "sha256:" + m["raw"][1]["sha256"]  # listed id = content
        assert m["raw"][0]["remote"].startswith("git:")

        bad = forge_cli(["build", "xp3_like", "--catalog", "catalog.yaml", "--subset", "xx"], env, tmp_path)
        assert bad.returncode == 1
        assert bad.stderr.strip() == (
            "error: xp3_like: someone/xp3-like@main has no files matching ['xx/*.jsonl']"
        )

        # the whole source, killed right after its first new part is kept
        crash = forge_cli(["build", "xp3_like", "--catalog", "catalog.yaml"],
                          {**env, "FORGE_FAULT": "build:part-kept"}, tmp_path)  # fmt: skip
        assert crash.returncode == -9
        assert sorted(downloads()) == ["code", "en", "zh"]
        r = forge_cli(["build", "xp3_like", "--catalog", "catalog.yaml"], env, tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(downloads()) == ["code", "en", "zh"]  # nothing fetched twice
        assert manifest()["parts"] == {"built": 0, "reused": 3} and manifest()["rows"] == 1300

        # upstream changes one file: only it is downloaded and rebuilt
        _jsonl(repo / "en" / "xp3_en.jsonl", as_xp3(alpaca[100:250]))
        r = forge_cli(["build", "xp3_like", "--catalog", "catalog.yaml"], env, tmp_path)
        assert r.returncode == 0, r.stderr
        assert sorted(downloads()) == ["code", "en", "en", "zh"]
        assert manifest()["parts"] == {"built": 1, "reused": 2} and manifest()["rows"] == 1350
        fresh = forge_cli(["build", "xp3_like", "--catalog", "catalog.yaml"],
                          {**env, "FORGE_HOME": str(tmp_path / "fresh")}, tmp_path)  # fmt: skip
        assert fresh.returncode == 0, fresh.stderr
        a, b = current(home, "sources", "xp3_like"), current(tmp_path / "fresh", "sources", "xp3_like")
        assert sorted(p.name for p in a.glob("*.parquet")) == sorted(p.name for p in b.glob("*.parquet"))
        for shard in a.glob("*.parquet"):
            assert shard.read_bytes() == (b / shard.name).read_bytes()

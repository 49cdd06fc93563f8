"""forge on Ray: the same bytes as a local run, and each record committed exactly once when
workers or a whole node die mid-build. One real two-node cluster on this machine (one CPU
each) serves the module; the node-loss test kills the second node, so it runs last."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, shared

ray = pytest.importorskip("ray")

from tests.ray_cluster import ENV, Cluster  # noqa: E402

PART_BYTES = "2000000"  # the real FLAN CoT TSVs (10 MB) become 6 parts


def _env(home: Path, env: dict | None) -> dict:
    return {**ENV, "FORGE_HOME": str(home), "COLUMNS": "200", "FORGE_PART_BYTES": PART_BYTES, **(env or {})}


def forge(home: Path, *args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "forge.cli", *args], env=_env(home, env), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)  # fmt: skip


def ray_build_in_background(cluster, home: Path, fault: str) -> subprocess.Popen:
    """`forge build flan_cot` on the cluster with FORGE_PART_FAULT set, left running so the
    test can kill a worker or a node under it."""
    return subprocess.Popen([sys.executable, "-m", "forge.cli", "build", "flan_cot", "--from",
                             str(shared("flan_cot")), "--executor", "ray", "--ray-address", cluster.address],
                            env=_env(home, {"FORGE_PART_FAULT": fault}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip


def version(home: Path, kind: str, name: str) -> Path:
    root = home / kind / name
    return root / (root / "CURRENT").read_text().strip()


def same_dataset(a: Path, b: Path) -> None:
    """Byte-identical shards, and manifests equal apart from timing."""
    files_a = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    files_b = sorted(p.name for p in b.iterdir() if not p.name.startswith("."))
    assert files_a == files_b
    for name in files_a:
        if name.endswith(".parquet"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    for m in (ma, mb):
        m.pop("built_at", None)
        m.pop("created_at", None)
        m.pop("manifest_xxh3", None)  # the seal hashes the timing too
    assert ma == mb
    assert not [p.name for p in b.iterdir() if p.name.startswith((".part-", ".fault-"))]


@pytest.fixture(scope="module")
def cluster():
    # a short root: Ray's socket paths must fit in 107 bytes, and pytest-xdist's temp folders
    # (/tmp/pytest-of-root/pytest-N/popen-gwK/...) leave too little room for them
    root = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    c = Cluster(root)
    try:
        c.start_node("head", head=True)
        c.start_node("node2")
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def local_flan(tmp_path_factory) -> Path:
    """The reference: FLAN CoT built by the local executor (in 6 parts)."""
    home = tmp_path_factory.mktemp("local")
    r = forge(home, "build", "flan_cot", "--from", str(shared("flan_cot")), "--workers", "2")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((version(home, "sources", "flan_cot") / "manifest.json").read_text())
    assert len(manifest["shards"]) == 6 and manifest["rows"] == 66_886
    return version(home, "sources", "flan_cot")


def test_local_path_never_imports_ray(tmp_path):
    code = (
        "import sys\n"
        "from forge.build import build_source\nfrom forge.catalog import load_catalog\n"
        f"build_source(load_catalog().get('alpaca'), home={str(tmp_path)!r}, sample=True)\n"
        "from forge import materialize, mixture, dedup, executor\n"
        "assert 'ray' not in sys.modules, 'the local path imported ray'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=ENV)
    assert r.returncode == 0, r.stderr


def test_executor_flags_are_checked(tmp_path):
    r = forge(tmp_path, "build", "alpaca", "--sample", "--executor", "spark")
    assert r.returncode == 1
    assert r.stderr.strip() == "error: --executor must be one of local, ray, got 'spark'"
    r = forge(tmp_path, "build", "alpaca", "--sample", "--ray-address", "auto")
    assert r.stderr.strip() == "error: --ray-address goes with --executor ray"
    # a cluster that is not there: one line, not a Ray traceback
    r = forge(tmp_path, "build", "alpaca", "--sample", "--executor", "ray", "--ray-address", "127.0.0.1:9")
    assert r.returncode == 1
    assert r.stderr.startswith("error: cannot start or join Ray at 127.0.0.1:9"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_ray_build_same_bytes_as_local(cluster, local_flan, tmp_path):
    r = forge(tmp_path, "build", "flan_cot", "--from", str(shared("flan_cot")), "--executor", "ray",
              "--ray-address", cluster.address)  # fmt: skip
    assert r.returncode == 0, r.stderr
    same_dataset(local_flan, version(tmp_path, "sources", "flan_cot"))


def test_worker_that_exits_is_retried_and_commits_once(cluster, local_flan, tmp_path):
    # part 2's first attempt writes its shards, then its worker dies with os._exit
    pids = tmp_path / "pids"
    pids.mkdir()
    r = forge(tmp_path / "home", "build", "flan_cot", "--from", str(shared("flan_cot")), "--executor", "ray",
              "--ray-address", cluster.address, env={"FORGE_PART_FAULT": f"exit:2:{pids}"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [p.name for p in pids.iterdir()] == ["part-2.pid"]  # the fault did fire, in a Ray worker
    assert int((pids / "part-2.pid").read_text()) != os.getpid()
    same_dataset(local_flan, version(tmp_path / "home", "sources", "flan_cot"))


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_worker_killed_by_pid_is_retried(cluster, local_flan, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    home = tmp_path / "home"
    proc = ray_build_in_background(cluster, home, f"pause:1:{pids}:60")
    wait_for(pids / "part-1.pid")
    victim = int((pids / "part-1.pid").read_text())
    assert victim != proc.pid  # a real Ray worker process, not the driver
    os.kill(victim, signal.SIGKILL)
    out, errs = proc.communicate(timeout=300)
    assert proc.returncode == 0, errs
    same_dataset(local_flan, version(home, "sources", "flan_cot"))


def test_ray_dedup_same_bytes_as_local(cluster, local_flan, tmp_path):
    """Real FLAN CoT (66,886 records, 1,343 dropped by the exact check): sign and pairs steps as Ray
    tasks, 20 partitions, give the local run's output byte for byte."""
    home = local_flan.parents[2]
    r = forge(home, "dedup", "flan_cot", "--out", str(tmp_path / "local"))
    assert r.returncode == 0, r.stderr
    r = forge(home, "dedup", "flan_cot", "--out", str(tmp_path / "ray"), "--executor", "ray",
              "--ray-address", cluster.address, env={"FORGE_DEDUP_PARTITION_BYTES": "1000000"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dropped 1,343" in r.stdout
    for name in ("part-00000.parquet", "dropped.parquet"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()
    manifests = [json.loads((tmp_path / k / "manifest.json").read_text()) for k in ("local", "ray")]
    assert [m.pop("name") for m in manifests] == ["local", "ray"]  # the --out folder's name
    assert manifests[0] == manifests[1]


def test_ray_mix_same_bytes_as_local(cluster, local_flan, tmp_path):
    """One Ray task per output shard (5 shards of 15,000): shards, lineage and manifest as local."""
    home = local_flan.parents[2]
    mixes = tmp_path / "mixtures"
    mixes.mkdir()
    (mixes / "flan-half.yaml").write_text(
        "name: flan-half\ndescription: half of FLAN CoT\nstrategy: rates\nsize: 70000\nseed: 3\n"
        "components:\n  - {source: flan_cot, weight: 1}\n"
    )
    env = {"FORGE_MIXTURES": str(mixes)}
    homes = {}
    for kind, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", cluster.address])):
        homes[kind] = tmp_path / kind
        import shutil

        shutil.copytree(home / "sources", homes[kind] / "sources")
        r = forge(homes[kind], "mix", "flan-half", "--shard-rows", "15000", *extra, env=env)
        assert r.returncode == 0, r.stderr
    a, b = (version(homes[k], "mixtures", "flan-half") for k in ("local", "ray"))
    assert len(list(a.glob("part-*.parquet"))) == 5
    same_dataset(a, b)
    assert (a / "ids.parquet").read_bytes() == (b / "ids.parquet").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["rows"] == 70_000 and manifest["components"][0]["epochs"] > 1


def test_ray_tasks_download_their_own_hub_files(cluster, tmp_path):
    """A Hub source listed by the driver and fetched inside the Ray tasks (the workers get
    HF_ENDPOINT from forge, not from their own environment): same shards as a local build."""
    from tests.hub_server import LocalHub

    repo = tmp_path / "hub" / "datasets" / "someone" / "belle-split"
    lines = shared("belle/dev1K.json").read_text().splitlines()
    for i in range(3):
        (repo / f"part{i}").mkdir(parents=True)
        (repo / f"part{i}" / "train.jsonl").write_text("\n".join(lines[i * 300 : (i + 1) * 300]) + "\n")
    (tmp_path / "catalog.yaml").write_text(
        "sources:\n  belle_split:\n    {description: x, connector: json, connector_options: {format: jsonl}, "
        "formatter: columns, hub: {repo: someone/belle-split, files: ['*/*.jsonl'], revision: main}, "
        "lang: CN, task: MT, gen: SI}\n"
    )
    with LocalHub(tmp_path / "hub") as hub:
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "FORGE_PART_BYTES": "1000"}
        for kind, extra in (("local", []), ("ray", ["--executor", "ray", "--ray-address", cluster.address])):
            r = forge(tmp_path / kind, "build", "belle_split", "--catalog", str(tmp_path / "catalog.yaml"), *extra,
                      env={**env, "HF_HOME": str(tmp_path / f"hf-{kind}")})  # fmt: skip
            assert r.returncode == 0, r.stderr
        gets = [p for m, p, _ in hub.state.requests if m == "GET" and "/resolve/" in p]
        assert len(gets) == 6  # each file once per build
    a, b = (version(tmp_path / k, "sources", "belle_split") for k in ("local", "ray"))
    assert json.loads((a / "manifest.json").read_text())["rows"] == 900
    same_dataset(a, b)


def test_losing_a_node_mid_build(cluster, local_flan, tmp_path):
    """Every part's first attempt pauses after writing its shards; once a part is paused on
    the second node, that node is killed whole (raylet, workers, agents). Ray reschedules its
    task on the head, and the build commits the same bytes. Runs last: the node stays dead."""
    pids = tmp_path / "pids"
    pids.mkdir()
    home = tmp_path / "home"
    proc = ray_build_in_background(cluster, home, f"pause:*:{pids}:2")
    deadline = time.monotonic() + 120
    on_node2 = None
    while on_node2 is None:
        assert time.monotonic() < deadline and proc.poll() is None, "no part ever ran on the second node"
        for f in pids.glob("part-*.pid"):
            try:
                if f.read_text() and cluster.on_node("node2", int(f.read_text())):
                    on_node2 = f
            except ValueError:
                pass
        time.sleep(0.05)
    cluster.kill_node("node2")
    out, errs = proc.communicate(timeout=300)
    assert proc.returncode == 0, errs
    same_dataset(local_flan, version(home, "sources", "flan_cot"))

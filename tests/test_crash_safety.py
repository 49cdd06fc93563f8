"""Crashes, concurrent writers, a full disk: what a build or a mix never loses.

Every test here runs forge in real subprocesses and kills them with SIGKILL, as an OOM
killer or a power cut would; nothing is mocked.
"""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import xxhash
from conftest import current

FORGE = [sys.executable, "-m", "forge.cli"]


def write_jsonl(path: Path, n: int, tag: str) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {
                "instruction": f"{tag} question {i}: add {i} and {i * 7}",
                "input": "",
                "output": f"{i * 8}",
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def forge(args, home, cwd=None, env=None, **kw):
    e = {**os.environ, "FORGE_HOME": str(home), "COLUMNS": "200", **(env or {})}
    return subprocess.run(FORGE + args, cwd=cwd, env=e, capture_output=True, text=True, **kw)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a version folder -> xxh3 of its bytes (the lease file is empty)."""
    return {
        str(p.relative_to(folder)): xxhash.xxh3_64_hexdigest(p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def data_files(snap: dict[str, str]) -> dict[str, str]:
    """The parts of a snapshot that a rerun must reproduce byte for byte (the manifest holds
    timings and a version id)."""
    return {k: v for k, v in snap.items() if k.endswith(".parquet")}


def kill_at(args, home, delay: float | None, fault: str | None, cwd=None) -> int:
    """Run forge, and SIGKILL it after `delay` seconds or at the named fault point."""
    e = {**os.environ, "FORGE_HOME": str(home)}
    if fault:
        e["FORGE_FAULT"] = fault
    p = subprocess.Popen(FORGE + args, cwd=cwd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if delay is not None:
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
    return p.wait(timeout=120)


FAULTS = ["build:parts-done", "commit:before-rename", "commit:before-pointer", "commit:after-pointer"]


@pytest.mark.slow
def test_kill_9_a_build_at_random_points_loses_nothing(tmp_path):
    """Builds of two inputs take turns: each round kills a build of the input that is not
    committed, at a fault point or at a random moment, then checks the committed version, the
    store as every reader checks it, and that a rerun gives the reference bytes."""
    from forge.built import verify_store
    from forge.paths import source_store

    inputs = {"a": write_jsonl(tmp_path / "a.jsonl", 20_000, "old"), "b": write_jsonl(tmp_path / "b.jsonl", 60_000, "new")}  # fmt: skip
    reference, took = {}, 0.0
    for key, path in inputs.items():
        ref_home = tmp_path / f"ref-{key}"
        t0 = time.perf_counter()
        assert forge(["build", "belle_0.5m", "--from", str(path)], ref_home).returncode == 0
        took = time.perf_counter() - t0  # b's: kills are drawn across start-up, parse, write, commit
        reference[key] = data_files(snapshot(current(ref_home, "sources", "belle_0.5m")))
    home = tmp_path / "home"
    assert forge(["build", "belle_0.5m", "--from", str(inputs["a"])], home).returncode == 0
    store_dir = home / "sources" / "belle_0.5m"

    rng = random.Random(12)
    points = [(None, f) for f in FAULTS] + [(rng.uniform(0.15, 0.7) * took, None) for _ in range(4)]
    kills, committed = 0, "a"
    for delay, fault in points:
        target = "b" if committed == "a" else "a"
        before_id = (store_dir / "CURRENT").read_text().strip()
        before = snapshot(store_dir / before_id)

        rc = kill_at(["build", "belle_0.5m", "--from", str(inputs[target])], home, delay, fault)
        kills += rc == -signal.SIGKILL
        after_id = (store_dir / "CURRENT").read_text().strip()
        # the previous version is still there, byte-identical, whether or not the commit happened
        assert snapshot(store_dir / before_id) == before, (delay, fault)
        if after_id != before_id:  # killed after the pointer moved: the new version is complete
            assert data_files(snapshot(store_dir / after_id)) == reference[target]
        # what every reader checks (manifest seal, each shard's size and hash) holds
        assert verify_store(source_store("belle_0.5m", home)) == [], (delay, fault)

        rerun = forge(["build", "belle_0.5m", "--from", str(inputs[target])], home)
        assert rerun.returncode == 0, rerun.stderr
        assert data_files(snapshot(current(home, "sources", "belle_0.5m"))) == reference[target]
        assert [p.name for p in store_dir.iterdir() if p.name.startswith(".tmp")] == []
        committed = target
    # the four fault points always kill; a random moment may fall after a fast build ended
    assert kills >= len(FAULTS) + 2, kills


@pytest.mark.slow
def test_kill_9_a_mix_loses_nothing_and_a_rerun_is_identical(tmp_path):
    home = tmp_path / "home"
    write_jsonl(tmp_path / "a.jsonl", 30_000, "a")
    assert forge(["build", "belle_0.5m", "--from", str(tmp_path / "a.jsonl")], home).returncode == 0
    assert forge(["build", "alpaca", "--sample"], home).returncode == 0
    (tmp_path / "mixtures").mkdir()
    (tmp_path / "mixtures" / "m.yaml").write_text(
        "strategy: rates\nsize: 40000\ncomponents:\n  - {source: belle_0.5m, weight: 3}\n"
        "  - {source: alpaca, weight: 1}\n"
    )
    t0 = time.perf_counter()
    first = forge(["mix", "m"], home, cwd=tmp_path)
    took = time.perf_counter() - t0
    assert first.returncode == 0, first.stderr
    reference = data_files(snapshot(current(home, "mixtures", "m")))
    assert "ids.parquet" in reference

    rng = random.Random(3)
    points = [(None, f) for f in ["mix:written", *FAULTS[1:]]] + [
        (rng.uniform(0.2, 0.95) * took, None) for _ in range(3)
    ]
    for delay, fault in points:
        before_id = (home / "mixtures" / "m" / "CURRENT").read_text().strip()
        before = snapshot(home / "mixtures" / "m" / before_id)
        kill_at(["mix", "m"], home, delay, fault, cwd=tmp_path)
        assert snapshot(home / "mixtures" / "m" / before_id) == before, (delay, fault)
        rerun = forge(["mix", "m"], home, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert data_files(snapshot(current(home, "mixtures", "m"))) == reference


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its reaping is pending


@pytest.mark.slow
def test_build_workers_die_with_a_killed_parent(tmp_path):
    files = tmp_path / "in"
    files.mkdir()
    for i in range(4):
        write_jsonl(files / f"part{i}.jsonl", 40_000, f"w{i}")
    script = textwrap.dedent(f"""
        import forge.build as b
        from forge.catalog import load_catalog
        b.PART_BYTES = 1 << 20          # one part per file
        b.PARALLEL_MIN_BYTES = 0        # and workers even for this small input
        b.build_source(load_catalog().get("belle_0.5m"), home={str(tmp_path / "home")!r},
                       from_path={str(files)!r}, workers=2)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 2:
        workers = [k for k in _children(parent.pid) if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
        time.sleep(0.05)
    assert len(workers) >= 2, "the build never started its workers"
    helpers = _children(parent.pid)  # workers and multiprocessing's resource tracker
    time.sleep(0.5)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    t0 = time.time()
    while time.time() - t0 < 5 and any(_alive(k) for k in helpers):
        time.sleep(0.1)
    survivors = [k for k in helpers if _alive(k)]
    for k in survivors:
        os.kill(k, signal.SIGKILL)
    assert survivors == [], f"{len(survivors)} build processes outlived their parent by 5 s"


@pytest.mark.slow
def test_a_reader_keeps_its_version_while_two_writers_rebuild(tmp_path):
    home = tmp_path / "home"
    old = write_jsonl(tmp_path / "old.jsonl", 5_000, "old")
    assert forge(["build", "belle_0.5m", "--from", str(old)], home).returncode == 0
    (tmp_path / "mixtures").mkdir()
    (tmp_path / "mixtures" / "m.yaml").write_text("strategy: concat\ncomponents:\n  - {source: belle_0.5m}\n")
    expected = forge(["mix", "m"], home, cwd=tmp_path)
    assert expected.returncode == 0
    expected_ids = _ids(current(home, "mixtures", "m"))

    # the reader pins the source, then waits while the writers run, then reads everything
    ready, go = tmp_path / "ready", tmp_path / "go"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import os, time, json
            from pathlib import Path
            os.chdir({str(tmp_path)!r})
            from forge.catalog import load_catalog
            from forge.mixture import MixtureStream, resolve
            home = Path({str(home)!r})
            mix = resolve("m", load_catalog(), home=home)
            Path({str(ready)!r}).touch()
            while not Path({str(go)!r}).exists():
                time.sleep(0.05)
            ids = [i for t in MixtureStream(mix, home) for i in t["id"].to_pylist()]
            print(json.dumps({{"ids": ids, "versions": mix.versions}}))
            """),
        ],
        env={**os.environ, "FORGE_HOME": str(home)},
        stdout=subprocess.PIPE,
        text=True,
    )
    while not ready.exists():
        time.sleep(0.05)
        assert reader.poll() is None
    inputs = [write_jsonl(tmp_path / f"new{i}.jsonl", 8_000 + 1_000 * i, f"new{i}") for i in range(2)]
    writers = [
        subprocess.Popen(
            FORGE + ["build", "belle_0.5m", "--from", str(f)],
            env={**os.environ, "FORGE_HOME": str(home), "FORGE_KEEP_VERSIONS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in inputs
    ]
    results = [(w.wait(timeout=120), w.communicate()) for w in writers]
    assert [rc for rc, _ in results] == [0, 0], results
    go.touch()
    out, _ = reader.communicate(timeout=120)
    seen = json.loads(out)
    # the reader read exactly the version it pinned, untouched by two commits after it
    assert seen["ids"] == expected_ids and seen["versions"] == {"belle_0.5m": "v000001"}
    # the last writer's build is current and complete
    final = json.loads((current(home, "sources", "belle_0.5m") / "manifest.json").read_text())
    assert final["rows"] in (8_000, 9_000) and final["version"] == "v000003"
    # keep=1: with the reader gone, the next writer collects what it held
    assert (
        forge(["build", "belle_0.5m", "--from", str(old)], home, env={"FORGE_KEEP_VERSIONS": "1"}).returncode
        == 0
    )
    assert sorted(p.name for p in (home / "sources" / "belle_0.5m").glob("v*")) == ["v000004"]


def _ids(folder: Path) -> list[str]:
    import polars as pl

    return pl.read_parquet(folder / "ids.parquet")["id"].to_list()


def test_a_second_writer_waits_or_fails_at_once_with_no_wait(tmp_path):
    from forge.paths import source_store

    home = tmp_path / "home"
    with source_store("alpaca", home).lock():
        r = forge(["build", "alpaca", "--sample", "--no-wait"], home, timeout=60)
        assert r.returncode == 1
        assert f"being written by another forge process (pid {os.getpid()})" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        waiting = subprocess.Popen(
            FORGE + ["build", "alpaca", "--sample"],
            env={**os.environ, "FORGE_HOME": str(home), "COLUMNS": "200"},
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        # its first stderr line says it waits (read, not slept for: a loaded machine may take
        # seconds just to start the process); a process that never says so is killed at 60 s
        guard = threading.Timer(60, waiting.kill)
        guard.start()
        first = waiting.stderr.readline()
        guard.cancel()
        assert "waiting for another forge process" in first, first
        assert waiting.poll() is None  # blocked on the lock
    out, errs = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, errs


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0


@pytest.mark.slow
def test_disk_full_mid_build_keeps_the_previous_version(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "6m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        home = mnt / "home"
        small = write_jsonl(tmp_path / "small.jsonl", 2_000, "s")
        big = write_jsonl(tmp_path / "big.jsonl", 200_000, "b")  # ~14 MB of Parquet will not fit
        assert forge(["build", "belle_0.5m", "--from", str(small)], home).returncode == 0
        before = snapshot(current(home, "sources", "belle_0.5m"))
        r = forge(["build", "belle_0.5m", "--from", str(big)], home)
        assert r.returncode == 1
        assert "no space left on the device" in r.stderr and "previous version is intact" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        assert snapshot(current(home, "sources", "belle_0.5m")) == before
        names = sorted(p.name for p in (home / "sources" / "belle_0.5m").iterdir())
        assert names == [".last-version", ".lock", ".parts", "CURRENT", "v000001"]  # no temporary files left
        # free space (a bigger disk), and the next build succeeds
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        again = forge(["build", "belle_0.5m", "--from", str(big)], home)
        assert again.returncode == 0, again.stderr
        assert (
            json.loads((current(home, "sources", "belle_0.5m") / "manifest.json").read_text())["rows"]
            == 200_000
        )
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_a_lease_keeps_a_version_until_it_is_released(tmp_path):
    """In one process: a version read with open_built survives later builds (keep=1) until
    store.release() drops the lease; then the next writer collects it."""
    from forge.build import build_source
    from forge.built import open_built
    from forge.catalog import load_catalog
    from forge.store import release

    home, src = tmp_path / "home", load_catalog().get("belle_0.5m")
    inputs = [write_jsonl(tmp_path / f"in{i}.jsonl", 50 + i, f"t{i}") for i in range(3)]
    build_source(src, home=home, from_path=inputs[0], keep=1)
    held = open_built("belle_0.5m", home)
    build_source(src, home=home, from_path=inputs[1], keep=1)
    folder = home / "sources" / "belle_0.5m"
    assert sorted(p.name for p in folder.glob("v*")) == ["v000001", "v000002"]  # v1 is leased
    release(held.path)
    build_source(src, home=home, from_path=inputs[2], keep=1)
    assert sorted(p.name for p in folder.glob("v*")) == ["v000003"]
    release()

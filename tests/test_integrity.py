"""What an adversary broke in round two (#30): lost catalog entries, a user's file swept away
by --out, run folders written into, damaged shards and edited manifests used, versions lost to
a missing CURRENT, and messages that named no file. Each test fails on the code before the fix."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, current
from tests.inprocess import forge_main

FORGE = [str(Path(sys.executable).parent / "forge")]


def cli(args, home, cwd=None, env=None):
    """`forge ARGS` in this process (tests/inprocess.py)."""
    e = {"FORGE_HOME": str(home), "COLUMNS": "200", **(env or {})}
    return forge_main(args, env=e, cwd=cwd or REPO)


def one_line_error(r, *fragments: str) -> str:
    assert r.returncode != 0, r.stdout
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# ---- the catalog: one writer at a time ----------------------------------------------------

WRITER = """
import sys
from pathlib import Path
from forge.catalog import add_entry

path, who = Path(sys.argv[1]), sys.argv[2]
for k in range(10):
    add_entry(path, f"t_{who}_{k}", {"derived_from": "alpaca", "lang": "EN", "task": "MT", "gen": "SI"})
"""


def test_concurrent_catalog_writers_lose_nothing(tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("# my sources\nsources:\n  mine:\n    derived_from: alpaca\n")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(catalog), str(w)]) for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    sources = yaml.safe_load(catalog.read_text())["sources"]
    assert set(sources) == {"mine"} | {f"t_{w}_{k}" for w in range(4) for k in range(10)}
    assert catalog.read_text().startswith("# my sources\n")  # appended, comments kept


# ---- --out: the rule holds at the moment of the swap ----------------------------------------


def _filter_paused(home: Path, out: Path, flag: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "FORGE_HOME": str(home), "FORGE_PAUSE": f"out:before-swap:{flag}"}
    return subprocess.Popen(FORGE + ["filter", "lang == en", "--out", str(out), *extra], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for(flag: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize("start", ["absent", "empty"])
def test_a_file_that_appears_in_out_mid_run_is_kept(start, built_samples, tmp_path):
    out = tmp_path / "out_x"
    if start == "empty":
        out.mkdir()
    flag = tmp_path / "paused"
    proc = _filter_paused(built_samples, out, flag)
    _wait_for(flag, proc)
    out.mkdir(exist_ok=True)
    (out / "user_notes.txt").write_text("mine")
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert "appeared there during the run" in stderr and "out_x.forge-result-" in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == ["user_notes.txt"]
    assert (out / "user_notes.txt").read_text() == "mine"
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out_x.forge-result-")]
    assert len(kept) == 1 and (kept[0] / "manifest.json").exists()


def test_overwrite_never_removes_a_file_the_user_added_to_an_earlier_output(built_samples, tmp_path):
    """--overwrite replaces what forge wrote (its marker lists each file); a file the user put
    in the folder afterwards, before the run or during it, makes it refuse, and nothing is lost."""
    out = tmp_path / "out_z"
    assert cli(["filter", "lang == en", "--out", str(out)], built_samples).returncode == 0
    (out / "sub").mkdir()
    (out / "sub" / "notes.txt").write_text("mine")
    r = cli(["filter", "lang == zh", "--out", str(out), "--overwrite"], built_samples)
    one_line_error(r, f"--out {out}: holds sub/notes.txt, which forge did not write")
    assert (out / "sub" / "notes.txt").read_text() == "mine"
    assert json.loads((out / "manifest.json").read_text())["query"] == "lang == en"
    (out / "sub" / "notes.txt").unlink()
    flag = tmp_path / "paused"
    proc = _filter_paused(built_samples, out, flag, "--overwrite")  # the check passes; then...
    _wait_for(flag, proc)
    (out / "late.txt").write_text("mine too")  # ...a file arrives before the swap
    flag.unlink()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "appeared there during the run" in stderr, stderr
    assert (out / "late.txt").read_text() == "mine too"
    (out / "late.txt").unlink()
    assert cli(["filter", "lang == zh", "--out", str(out), "--overwrite"], built_samples).returncode == 0
    assert json.loads((out / "manifest.json").read_text())["query"] == "lang == zh"


def test_out_without_intrusion_still_replaces_forge_output(built_samples, tmp_path):
    out = tmp_path / "out_y"
    assert cli(["filter", "lang == en", "--out", str(out)], built_samples).returncode == 0
    r = cli(["filter", "lang == zh", "--out", str(out), "--overwrite"], built_samples)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["query"] == "lang == zh"


def test_out_paths_that_cannot_be_folders_are_one_line(built_samples, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_line_error(cli(["filter", "lang == en", "--out", "afile/sub"], built_samples, cwd=tmp_path),
                   "afile is a file, not a folder")  # fmt: skip
    (tmp_path / "keep.txt").write_text("x")
    one_line_error(cli(["filter", "lang == en", "--out", "."], built_samples, cwd=tmp_path),
                   f"--out {tmp_path}: folder exists and was not written by forge")  # fmt: skip
    assert (tmp_path / "keep.txt").read_text() == "x"


# ---- run folders -----------------------------------------------------------------------


def test_train_never_writes_into_a_users_folder(built_samples, tiny_model, tmp_path):
    user = tmp_path / "thesis"
    (user / "adapter").mkdir(parents=True)
    files = {"batches.jsonl": "my notes", "thesis.txt": "chapter 1", "adapter/my_weights.bin": "w"}
    for name, text in files.items():
        (user / name).write_text(text)
    args = ["train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--max-steps", "1"]
    for extra in ([], ["--overwrite"]):
        one_line_error(cli([*args, "--output-dir", str(user), *extra], built_samples),
                       f"--output-dir {user}: folder exists and was not written by forge")  # fmt: skip
    assert {str(p.relative_to(user)) for p in user.rglob("*") if p.is_file()} == set(files)
    assert all((user / n).read_text() == t for n, t in files.items())

    earlier = tmp_path / "earlier-run"
    earlier.mkdir()
    (earlier / ".forge-output").write_text("")
    (earlier / "recipe.yaml").write_text("old")
    one_line_error(cli([*args, "--output-dir", str(earlier)], built_samples),
                   "holds an earlier forge output; pass --overwrite")  # fmt: skip
    assert (earlier / "recipe.yaml").read_text() == "old"


def test_ablate_refuses_a_users_folder(built_samples, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "mine.txt").write_text("x")
    r = cli(["ablate", "--out", str(user), "--mixture", "a", "--mixture", "b", "--eval", "mmlu=x"],
            built_samples)  # fmt: skip
    one_line_error(r, f"--out {user}: folder exists and was not written by forge")
    assert sorted(p.name for p in user.iterdir()) == ["mine.txt"]


def test_eval_out_never_replaces_a_file_forge_did_not_write(built_samples, tmp_path):
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    r = cli(["eval", "mmlu", "--data", str(REPO / "samples/evals/mmlu"), "--model", "x", "--out", str(notes)],
            built_samples)  # fmt: skip
    one_line_error(r, f"--out {notes}: exists and is not a forge eval result")
    assert notes.read_text() == '{"mine": 1}'


# ---- read-time integrity ---------------------------------------------------------------


def _flip_bit(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_never_read(built_samples, tiny_model, tmp_path):
    shard = sorted(current(built_samples, "sources", "alpaca").glob("part-*.parquet"))[0]
    _flip_bit(shard)
    repair = "`forge build alpaca` repairs it"
    one_line_error(cli(["mix", "alpaca-belle-cot"], built_samples), shard.name, repair)
    one_line_error(cli(["stats", "alpaca"], built_samples), shard.name, repair)
    one_line_error(cli(["filter", "lang == en", "--out", str(tmp_path / "f")], built_samples), shard.name)
    r = cli(["train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model), "--max-steps", "1",
             "--output-dir", str(tmp_path / "run")], built_samples)  # fmt: skip
    one_line_error(r, shard.name, repair)
    assert not (built_samples / "mixtures" / "alpaca-belle-cot" / "CURRENT").exists()  # nothing committed
    # the repair the message names works
    assert cli(["build", "alpaca", "--sample"], built_samples).returncode == 0
    assert cli(["mix", "alpaca-belle-cot"], built_samples).returncode == 0


def test_an_edited_manifest_is_caught(built_samples):
    path = current(built_samples, "sources", "alpaca") / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["manifest_xxh3"]  # sealed at commit
    manifest["rows"] = 999
    path.write_text(json.dumps(manifest, indent=2))
    r = cli(["verify", "alpaca"], built_samples)
    assert r.returncode == 1 and "manifest.json (edited after forge wrote it)" in r.stderr, r.stderr
    one_line_error(cli(["mix", "alpaca-belle-cot"], built_samples), "edited after forge wrote it")
    rebuilt = cli(["build", "alpaca", "--sample"], built_samples)
    assert rebuilt.returncode == 0 and "up to date" not in rebuilt.stdout, rebuilt.stdout
    assert cli(["verify", "alpaca"], built_samples).returncode == 0


def test_a_missing_pointer_loses_no_version(built_samples, tmp_path):
    store = built_samples / "sources" / "alpaca"
    assert cli(["build", "alpaca", "--sample", "--force"], built_samples).returncode == 0
    assert sorted(p.name for p in store.glob("v*")) == ["v000001", "v000002"]
    (store / "CURRENT").unlink()
    r = cli(["verify", "alpaca"], built_samples)
    assert r.returncode == 1 and "CURRENT is missing" in r.stderr and "newest v000002" in r.stderr, r.stderr
    one_line_error(cli(["stats", "alpaca"], built_samples), "CURRENT is missing", "forge build alpaca")

    other = tmp_path / "other.json"
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(3)]
    other.write_text(json.dumps(rows))
    r = cli(["build", "alpaca", "--from", str(other)], built_samples)
    assert r.returncode == 0, r.stderr
    assert (store / "CURRENT").read_text().strip() == "v000003"  # a new name, never v000001 again
    assert (store / "v000002" / "manifest.json").exists()  # kept (keep-versions 2), not swept


def test_version_names_are_never_reused(built_samples):
    store = built_samples / "sources" / "alpaca"
    (store / "v000001").rename(store / "elsewhere")  # a version vanishes (a user moved it)
    (store / "CURRENT").unlink()
    assert cli(["build", "alpaca", "--sample", "--force"], built_samples).returncode == 0
    assert (store / "CURRENT").read_text().strip() == "v000002"


def test_a_pointer_to_a_missing_version_says_so(built_samples):
    (built_samples / "sources" / "alpaca" / "CURRENT").write_text("v000009\n")
    one_line_error(cli(["stats", "alpaca"], built_samples), "names v000009, which is not there",
                   "newest complete version: v000001", "forge build alpaca")  # fmt: skip


# ---- messages that name the file and the next step ----------------------------------------


def test_a_symlink_inside_a_from_folder_is_read(tmp_path):
    folder, outside = tmp_path / "data", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    rows = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(4)]
    (folder / "a.json").write_text(json.dumps(rows[:2]))
    (outside / "b.json").write_text(json.dumps(rows[2:]))
    (folder / "b.json").symlink_to(outside / "b.json")
    r = cli(["build", "alpaca", "--from", str(folder)], tmp_path / "home")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((current(tmp_path / "home", "sources", "alpaca") / "manifest.json").read_text())
    assert manifest["rows"] == 4 and sorted(f["name"] for f in manifest["raw"]) == ["a.json", "b.json"]


def test_a_failed_build_link_is_one_line(tmp_path):
    home = tmp_path / "home"
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"instruction": "q", "input": "", "output": "a"}]))
    assert cli(["build", "alpaca", "--from", str(good)], home).returncode == 0
    target = tmp_path / "elsewhere"
    target.mkdir()
    (home / "sources" / "alpaca" / "failed-build").symlink_to(target)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "q"}, {"nothing": 1}]))
    one_line_error(cli(["build", "alpaca", "--from", str(bad)], home), "failed-build is not the folder",
                   "move it away")  # fmt: skip
    assert target.is_dir() and not any(target.iterdir())


def test_a_name_ending_in_a_newline_is_no_name():
    from forge.store import StoreError, check_name

    with pytest.raises(StoreError, match="invalid source name"):
        check_name("source", "alpaca\n")


def test_a_failed_predict_leaves_no_empty_file(tmp_path):
    from forge.errors import ForgeError
    from forge.train.predict import predict

    out = tmp_path / "preds.jsonl"
    with pytest.raises((ForgeError, ValueError, FileNotFoundError)):
        predict(None, "no_such_source", out, tmp_path / "home")
    assert not out.exists()

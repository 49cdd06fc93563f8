"""The JSON connector reads to the end of the file (issue #30, item 1).

Whatever follows an array's closing bracket is more records or a quarantine entry naming its
line, never skipped; a file that is one object wrapping its list of records is read as that
list, or refused in one line when it wraps several. Built through the `alpaca` catalog entry
(format sniffed), so every case also checks `rows + quarantined == input records`.
"""

import json
import os
import subprocess
from pathlib import Path

from conftest import current

from forge.build import build_source

FORGE = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "forge"


def records(start: int, n: int) -> list[dict]:
    return [
        {"instruction": f"question {i}", "input": "", "output": f"answer {i}"}
        for i in range(start, start + n)
    ]


def array(start: int, n: int) -> str:
    """A pretty-printed array, as Alpaca publishes it: each record takes 6 lines."""
    return json.dumps(records(start, n), indent=4)


def build(home, catalog, path):
    r = build_source(catalog.get("alpaca"), home=home, from_path=path, max_quarantine=1.0)
    assert r.rows + r.quarantined == r.input_records
    return r


def quarantined(home) -> list[dict]:
    path = current(home, "sources", "alpaca") / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def built_instructions(r) -> list[str]:
    import polars as pl

    return pl.concat([pl.read_parquet(r.out_dir / s["file"]) for s in r.shards])["instruction"].to_list()


def test_a_second_array_after_the_first_is_read(home, catalog, tmp_path):
    raw = tmp_path / "two.json"
    raw.write_text(array(0, 5) + array(5, 5))
    r = build(home, catalog, raw)
    assert (r.input_records, r.rows, r.quarantined) == (10, 10, 0)
    assert sorted(built_instructions(r)) == sorted(f"question {i}" for i in range(10))


def test_an_object_after_the_array_is_one_more_record(home, catalog, tmp_path):
    raw = tmp_path / "tail.json"
    raw.write_text(array(0, 5) + "\n" + json.dumps(records(5, 1)[0]) + "\n")
    r = build(home, catalog, raw)
    assert (r.input_records, r.rows, r.quarantined) == (6, 6, 0)
    assert "question 5" in built_instructions(r)


def test_garbage_after_the_array_is_quarantined_with_its_line(home, catalog, tmp_path):
    raw = tmp_path / "garbage.json"
    raw.write_text(array(0, 5) + "]]]garbage{")
    last_line = raw.read_text().count("\n") + 1  # the array's "]" and the garbage share it
    r = build(home, catalog, raw)
    assert (r.input_records, r.rows, r.quarantined) == (6, 5, 1)
    [entry] = quarantined(home)
    assert entry["file"] == "garbage.json" and entry["line"] == last_line
    assert entry["reason"].startswith(f"invalid JSON at line {last_line}")
    assert entry["raw"] == "]]]garbage{"  # everything after the array's closing bracket


def test_an_object_wrapping_the_list_is_read_as_the_list(home, catalog, tmp_path):
    raw = tmp_path / "wrapped.json"
    raw.write_text(json.dumps({"version": "1.0", "data": records(0, 10)}, indent=2))
    r = build(home, catalog, raw)
    assert (r.input_records, r.rows, r.quarantined) == (10, 10, 0)
    assert sorted(built_instructions(r)) == sorted(f"question {i}" for i in range(10))


def test_an_object_wrapping_the_list_on_one_line(home, catalog, tmp_path):
    raw = tmp_path / "wrapped.json"
    raw.write_text(json.dumps({"data": records(0, 10)}))  # json.dumps' default: one line
    r = build(home, catalog, raw)
    assert (r.input_records, r.rows, r.quarantined) == (10, 10, 0)


def test_an_object_with_two_lists_is_refused_in_one_line_naming_the_keys(tmp_path):
    raw = tmp_path / "splits.json"
    raw.write_text(json.dumps({"train": records(0, 3), "test": records(3, 2)}))
    env = {**os.environ, "FORGE_HOME": str(tmp_path / "home"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [str(FORGE), "build", "alpaca", "--from", str(raw)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0, r.stdout
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    for fragment in ("splits.json", "'train'", "'test'", "records_path"):
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "home" / "sources" / "alpaca" / "CURRENT").exists()

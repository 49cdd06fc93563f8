import json

import pytest
from conftest import current

from forge.build import build_source
from forge.errors import BuildError


def quarantined(home, source):
    path = current(home, "sources", source) / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_bad_lines_are_quarantined_with_file_line_reason(home, catalog, tmp_path):
    raw = tmp_path / "mixed.json"
    good = '{"instruction": "hi", "input": "", "output": "hello"}\n'
    raw.write_bytes(
        (good * 3).encode()
        + b'{"instruction": "broken", "output": \n'  # line 4: invalid JSON
        + b'{"instruction": "x", "input": "", "output": 5}\n'  # line 5: wrong type
        + b'{"instruction": "no output"}\n'  # line 6: missing field
        + b'{"instruction": "bad \xff bytes", "output": "y"}\n'  # line 7: invalid UTF-8
        + b'{"instruction": "nan", "output": NaN}\n'  # line 8: NaN
        + b'{"instruction": "empty", "output": "  "}\n'  # line 9: empty output
        + b'["not", "an", "object"]\n'  # line 10
        + (good * 2).encode()
    )
    r = build_source(catalog.get("belle_0.5m"), home=home, from_path=raw, max_quarantine=1.0)
    assert (r.rows, r.quarantined, r.input_records) == (5, 7, 12)
    assert r.rows + r.quarantined == r.input_records
    q = quarantined(home, "belle_0.5m")
    by_line = {e["line"]: e for e in q}
    assert sorted(by_line) == [4, 5, 6, 7, 8, 9, 10]
    assert by_line[4]["reason"].startswith("invalid JSON")
    assert by_line[5]["reason"] == "field 'output' is int, expected string"
    assert by_line[6]["reason"] == "missing field 'output'"
    assert by_line[7]["reason"].startswith("undecodable bytes (utf-8)") and "\\xff" in by_line[7]["raw"]
    assert by_line[8]["reason"] == "field 'output' is NaN"
    assert by_line[9]["reason"] == "field 'output' is empty"
    assert by_line[10]["reason"] == "expected a JSON object, found list"
    assert all(e["file"] == "mixed.json" and e["source"] == "belle_0.5m" for e in q)


def test_threshold_fails_the_build_and_keeps_old_shards(home, catalog, tmp_path):
    raw = tmp_path / "d.jsonl"
    raw.write_text('{"instruction": "a", "output": "b"}\n' * 200 + "{oops\n")  # 0.5% bad: built
    ok = build_source(catalog.get("belle_0.5m"), home=home, from_path=raw)
    live_quarantine = (current(home, "sources", "belle_0.5m") / "quarantine.jsonl").read_bytes()
    assert [json.loads(x)["line"] for x in live_quarantine.decode().splitlines()] == [201]
    raw.write_text('{"instruction": "a", "output": "b"}\n' * 10 + "{oops\n")
    with pytest.raises(
        BuildError, match=r"1 of 11 raw records quarantined \(9.1% > --max-quarantine 1.0%\).*unchanged"
    ):
        build_source(catalog.get("belle_0.5m"), home=home, from_path=raw)
    assert (ok.out_dir / ok.shards[0]["file"]).exists()
    # the rejected build's quarantine is kept apart; the live version keeps its own (none here)
    failed = home / "sources" / "belle_0.5m" / "failed-build" / "quarantine.jsonl"
    assert [json.loads(x)["line"] for x in failed.read_text().splitlines()] == [11]
    # and the live version's quarantine still matches the live shards, byte for byte
    assert (current(home, "sources", "belle_0.5m") / "quarantine.jsonl").read_bytes() == live_quarantine


def test_truncated_json_array(home, catalog, tmp_path):
    raw = tmp_path / "a.json"
    raw.write_text('[\n {"instruction": "a", "input": "", "output": "b"},\n {"instruction": "c", "inp')
    r = build_source(catalog.get("alpaca"), home=home, from_path=raw, max_quarantine=1.0)
    assert (r.rows, r.quarantined) == (1, 1)
    entry = quarantined(home, "alpaca")[0]
    assert entry["line"] == 3 and "invalid JSON at line 3" in entry["reason"]


def test_tsv_wrong_field_count(home, catalog, tmp_path):
    raw = tmp_path / "gsm8k_train.tsv"
    raw.write_text("q1\t1\tr1\nonly two\tfields\nq3\t3\tr3\n")
    r = build_source(catalog.get("flan_cot"), home=home, from_path=raw, max_quarantine=1.0)
    assert r.input_records == 3 and r.quarantined == 1 and r.rows == 4
    entry = quarantined(home, "flan_cot")[0]
    assert entry["line"] == 2 and entry["reason"].startswith("expected 3 tab-separated fields")


def test_csv_bad_rows(home, tmp_path):
    from forge.catalog import load_catalog

    raw = tmp_path / "med.csv"
    good = "心血管科,标题,问题一,回答一\n".encode("gb18030")
    raw.write_bytes(
        "department,title,ask,answer\n".encode("gb18030")
        + good
        + "内科,标题,只有三列\n".encode("gb18030")  # wrong field count
        + b"\xff\xfe\xfd,t,a,b\n"  # not GB18030
        + "内科,标题,问题二,\n".encode("gb18030")  # empty answer
        + good
    )
    r = build_source(load_catalog().get("chinese_medical"), home=home, from_path=raw, max_quarantine=1.0)
    assert (r.input_records, r.rows, r.quarantined) == (5, 2, 3)
    reasons = [(e["line"], e["reason"]) for e in quarantined(home, "chinese_medical")]
    assert reasons[0] == (3, "expected 4 fields (department, title, ask, answer), found 3")
    assert reasons[1] == (4, "undecodable bytes (gb18030)")
    assert reasons[2] == (5, "field 'answer' is empty")


def test_document_and_dialogue_bad_input(home, catalog, tmp_path):
    bad_doc = tmp_path / "task1.json"
    bad_doc.write_text('{"Definition": ["x"], "Instances": [{"input": "a", "output": ["b"]}')  # truncated
    r = build_source(catalog.get("natural_instructions"), home=home, from_path=bad_doc, max_quarantine=1.0)
    assert (r.rows, r.quarantined) == (0, 1)
    assert quarantined(home, "natural_instructions")[0]["reason"].startswith("invalid JSON at line 1")
    conv = tmp_path / "share.json"
    conv.write_text(
        json.dumps(
            [
                {"conversations": "not a list"},
                {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "x"}]},
                {"conversations": [{"from": "alien", "value": "hi"}]},
                {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
            ]
        )
    )
    r = build_source(catalog.get("sharegpt"), home=home, from_path=conv, max_quarantine=1.0)
    assert (r.input_records, r.rows, r.quarantined) == (4, 1, 3)
    assert [e["reason"] for e in quarantined(home, "sharegpt")] == [
        "field 'conversations' is str, expected a list",
        "field 'conversations'[0].value is int, expected string",
        "field 'conversations'[0].from: unknown speaker 'alien'",
    ]

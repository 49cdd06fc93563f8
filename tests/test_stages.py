"""Model-powered stages (issue #16): translate / rewrite / judge through an OpenAI-compatible
endpoint, cached, resumable, retried, validated and recorded in lineage. The endpoint is a
real HTTP server on 127.0.0.1 (tests/chat_server.py) with deterministic replies; the end-to-end
run through `forge serve` and a real tiny model is in test_translate_through_forge_serve."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from forge.lang import zh_content_problem
from forge.query import parse as compile_query
from forge.stages import kept_intact, parse_score
from tests.chat_server import ChatServer
from tests.conftest import REPO
from tests.inprocess import forge_main
from tests.serving import forge_serve

FORGE = str(Path(sys.executable).parent / "forge")


def run(args, cwd, env=None):
    """`forge ARGS` in this process (tests/inprocess.py), FORGE_HOME under `cwd`."""
    env = {"FORGE_HOME": str(cwd / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **(env or {})}
    return forge_main(args, env=env, cwd=cwd)


def records(cwd: Path, name: str) -> pl.DataFrame:
    folder = cwd / "home" / "sources" / name
    version = (folder / "CURRENT").read_text().strip()
    return pl.read_parquet(str(folder / version / "*.parquet"))


def manifest(cwd: Path, name: str) -> dict:
    folder = cwd / "home" / "sources" / name
    return json.loads((folder / (folder / "CURRENT").read_text().strip() / "manifest.json").read_text())


@pytest.fixture()
def built(tmp_path):
    r = run(["build", "flan_cot", "--sample"], tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path


def translate(cwd, url, *extra, limit=12):
    args = ["translate", "flan_cot", "--to", "zh", "--out", "flan_cot_zh", "--endpoint", url]
    return run([*args, "--model", "fake", "--limit", str(limit), *extra], cwd)


def test_translate_caches_every_reply_and_records_lineage(built):
    source = records(built, "flan_cot").head(12)
    with ChatServer() as server:
        r = translate(built, server.url)
        assert r.returncode == 0, r.stderr
        first = len(server.state.prompts)
        # one request per non-empty field; flan_cot records have no input
        asked = sum(
            1 for row in source.iter_rows(named=True) for f in ("instruction", "input", "output") if row[f]
        )
        assert first == asked
        again = translate(built, server.url)
        assert again.returncode == 0 and "up-to-date" in again.stdout
        forced = translate(built, server.url, "--force")
        assert forced.returncode == 0 and f"0 requests sent, {asked} answered from the cache" in forced.stdout
        assert len(server.state.prompts) == first  # neither rerun reached the endpoint
    out = records(built, "flan_cot_zh")
    assert out.height == 12
    m = manifest(built, "flan_cot_zh")
    assert m["origin"]["derived_from"] == "flan_cot" and m["origin"]["model"] == "fake"
    assert m["origin"]["template_id"].startswith("translate-")
    by_input = {row["id"]: row for row in source.iter_rows(named=True)}
    for row in out.iter_rows(named=True):
        stage = json.loads(row["meta"])["stage"]
        assert stage["name"] == "translate" and stage["to"] == "zh" and stage["input_source"] == "flan_cot"
        original = by_input[stage["input_id"]]
        assert row["raw_file"] == original["raw_file"] and row["raw_row"] == original["raw_row"]
        assert "词" in row["instruction"] and row["lang"] == "zh"
    # the entry was written to the user catalog, so the result is a source like any other
    assert "flan_cot_zh:" in (built / "catalog.yaml").read_text()
    listed = run(["sources", "flan_cot_zh", "--json"], built)
    assert json.loads(listed.stdout)["sources"][0]["location"] == "derived:translate(flan_cot)"


def test_a_changed_prompt_rebuilds_and_asks_again(built, tmp_path):
    with ChatServer() as server:
        assert translate(built, server.url).returncode == 0
        before = manifest(built, "flan_cot_zh")["build_hash"]
        n = len(server.state.prompts)
        template = tmp_path / "t.jinja"
        template.write_text(
            "Into {{ target }}, please. Keep numbers and (A) letters and #### lines exactly as written.\n\n{{ text }}"
        )
        entry = (built / "catalog.yaml").read_text()
        (built / "catalog.yaml").write_text(
            entry.replace("      to: zh\n", f"      to: zh\n      template: {template}\n")
        )
        r = run(["build", "flan_cot_zh", "--max-quarantine", "0.05"], built)
        assert r.returncode == 0, r.stderr
        assert manifest(built, "flan_cot_zh")["build_hash"] != before
        assert len(server.state.prompts) == 2 * n  # every prompt is new


def test_429_and_503_are_retried_then_answered(built):
    with ChatServer() as server:
        server.state.fail = [429, 429, 503]
        r = translate(built, server.url, "--concurrency", "1")
        assert r.returncode == 0, r.stderr
        assert server.state.statuses[:4] == [429, 429, 503, 200]
        assert "3 retries, 0 failed" in r.stdout
    assert records(built, "flan_cot_zh").height == 12


def test_a_reply_that_loses_a_number_quarantines_its_record(built):
    source = records(built, "flan_cot").head(40)
    digits = sum(
        1
        for row in source.iter_rows(named=True)
        if any(c.isdigit() for c in row["instruction"] + row["output"])
    )
    assert 0 < digits < 40
    with ChatServer() as server:
        server.state.lose_numbers = True
        r = translate(built, server.url, "--max-quarantine", "1", limit=40)
        assert r.returncode == 0, r.stderr
    assert records(built, "flan_cot_zh").height == 40 - digits
    m = manifest(built, "flan_cot_zh")
    assert m["quarantined"] == digits
    lines = [
        json.loads(x)
        for x in (built / "home" / "sources" / "flan_cot_zh" / m["version"] / "quarantine.jsonl")
        .read_text()
        .splitlines()
    ]
    assert all(q["reason"].startswith("translation check (") and "the number" in q["reason"] for q in lines)
    # the default share refuses the run, in one line, and leaves nothing committed
    with ChatServer() as server:
        server.state.lose_numbers = True
        r = run(["translate", "flan_cot", "--to", "zh", "--out", "other_zh", "--endpoint", server.url,
                 "--model", "lossy", "--limit", "12"], built)  # fmt: skip
    assert r.returncode == 1 and "records quarantined" in r.stderr and "Traceback" not in r.stderr
    assert not (built / "home" / "sources" / "other_zh" / "CURRENT").exists()


def test_an_endpoint_that_is_down_fails_clearly(built):
    r = translate(built, "http://127.0.0.1:9/v1", "--max-retries", "1")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot reach http://127.0.0.1:9/v1/chat/completions" in r.stderr


def test_resume_after_kill_asks_only_what_was_not_answered(built):
    with ChatServer() as server:
        server.state.delay = 0.15
        args = ["translate", "flan_cot", "--to", "zh", "--out", "flan_cot_zh", "--endpoint", server.url,
                "--model", "fake", "--limit", "12", "--concurrency", "1"]  # fmt: skip
        env = {**os.environ, "FORGE_HOME": str(built / "home"), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(
            [FORGE, *args], cwd=built, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        deadline = time.time() + 60
        while len(server.state.prompts) < 6 and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        answered = len(server.state.prompts)
        assert 6 <= answered < 24
        assert not (built / "home" / "sources" / "flan_cot_zh" / "CURRENT").exists()
        server.state.delay = 0
        r = run(args, built)
        assert r.returncode == 0, r.stderr
    import re

    sent, cached = map(
        int, re.search(r"(\d+) requests sent, (\d+) answered from the cache", r.stdout).groups()
    )
    # 24 prompts in all; every reply that reached the client before the kill was kept (the
    # one in flight at the kill, answered by the server but never received, is asked again)
    assert sent + cached == 24 and answered - 1 <= cached <= answered
    assert records(built, "flan_cot_zh").height == 12


def test_judge_scores_every_record_and_the_query_filters_on_them(built):
    with ChatServer() as server:
        r = run(["judge", "flan_cot", "--out", "flan_judged", "--endpoint", server.url, "--model", "fake",
                 "--limit", "12"], built)  # fmt: skip
        assert r.returncode == 0, r.stderr
    out = records(built, "flan_judged")
    scores = [json.loads(m)["judge"]["score"] for m in out["meta"]]
    want = [float(1 + len(o) % 10) for o in out["output"]]
    assert scores == want
    kept = out.filter(compile_query("judge_score >= 7"))
    assert kept.height == sum(1 for s in scores if s >= 7)


def test_translation_check_and_score_parsing():
    assert kept_intact("Pick (A) or (B): 3 + 4\n#### 7", "选 (A) 或 (B)：3 + 4\n#### 7") is None
    assert kept_intact("It costs 18 dollars.\n#### 18", "要十八元。\n#### 18") == "the number 18 was lost"
    assert kept_intact("Pick (A) or (C)", "选 (A)") == "the option (C) was lost"
    assert kept_intact("Run ```x = 1``` now", "运行 ```x = 2``` 吧") == "a code block changed"
    assert kept_intact("#### 42", "答案 42") == "the #### answer '42' was lost"
    assert parse_score("Score: 8. Good.") == 8 and parse_score("7 - fine") == 7
    assert parse_score("I cannot rate this.") is None and parse_score("Score: 12") is None


def test_zh_records_with_latin_questions_fail_the_check():
    latin = "Please explain the difference between a list and a tuple 请解释"
    chinese = "请解释列表和元组的区别"
    df = pl.DataFrame({"lang": ["zh"] * 20, "instruction": [latin] + [chinese] * 19, "input": [""] * 20})
    assert zh_content_problem(df) is None  # 1 of 20 = 5%: at the limit, not over it
    assert zh_content_problem(df.head(10).with_columns(instruction=pl.lit(latin))) is None  # too few to judge
    df = pl.DataFrame({"lang": ["zh"] * 40, "instruction": [latin] * 3 + [chinese] * 37, "input": [""] * 40})
    problem = zh_content_problem(df)
    assert problem and "3 of 40 zh records (7.5%)" in problem


def test_a_catalog_entry_with_a_bad_stage_is_one_line(tmp_path):
    (tmp_path / "catalog.yaml").write_text(
        "sources:\n  bad:\n    description: x\n    derive: {from: flan_cot, stage: summarise}\n"
        "    endpoint: {url: 'http://127.0.0.1:9/v1', model: m}\n    lang: EN\n    task: MT\n    gen: SI\n"
    )
    assert run(["build", "flan_cot", "--sample"], tmp_path).returncode == 0
    r = run(["build", "bad"], tmp_path)
    assert r.returncode == 1 and "derive.stage must be one of translate, rewrite, judge" in r.stderr


@pytest.mark.skipif(not (REPO / "train").exists(), reason="trainer not present")
def test_translate_through_forge_serve(built, tmp_path):
    """The real path: forge serve with a tiny random model as the endpoint. Its replies are
    noise, so most records are quarantined by the translation check; the test checks plumbing."""
    model = tmp_path / "tiny"
    assert run(["tiny-model", str(model)], built).returncode == 0
    with forge_serve(model, env={"FORGE_HOME": str(built / "home"), "HF_HUB_OFFLINE": "1"}) as base:
        r = run(["translate", "flan_cot", "--to", "zh", "--out", "served_zh", "--endpoint", f"{base}/v1",
                 "--model", "tiny", "--limit", "3", "--max-tokens", "16", "--max-quarantine", "1"], built)  # fmt: skip
        batched, alone, health = _concurrent_and_alone(base)
    # greedy requests that arrive together are decoded together, and get the same text
    assert batched == alone
    assert health["batching"] == "continuous" and health["batched_requests"] == 8
    assert health["largest_batch"] >= 2 and health["decode_steps"] < 8 * 12  # fewer steps than alone
    assert r.returncode == 0, r.stderr
    m = manifest(built, "served_zh")
    assert m["input_records"] == 3 and m["rows"] + m["quarantined"] == 3
    assert m["stage_stats"]["requests"] >= 3 and m["stage_stats"]["failed"] == 0


def _concurrent_and_alone(url: str) -> tuple[list[str], list[str], dict]:
    """Eight different prompts sent at once, then one at a time, to forge serve."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def ask(i: int) -> str:
        body = {"model": "tiny", "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": f"Question {i}: how many eggs are in {i + 2} boxes?"}]}  # fmt: skip
        req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        return json.load(urllib.request.urlopen(req, timeout=60))["choices"][0]["message"]["content"]

    before = json.load(urllib.request.urlopen(url + "/health", timeout=10))
    with ThreadPoolExecutor(8) as pool:
        batched = list(pool.map(ask, range(8)))
    health = json.load(urllib.request.urlopen(url + "/health", timeout=10))
    alone = [ask(i) for i in range(8)]
    health["decode_steps"] -= before["decode_steps"]
    health["batched_requests"] -= before["batched_requests"]
    return batched, alone, health


def test_a_refused_request_leaves_the_user_catalog_untouched(built):
    (built / "catalog.yaml").write_text("sources: {}\n")
    cases = [
        (["translate", "flan_cot", "--to", "xx", "--out", "b_zh"], "derive.to must be one of zh"),
        (["translate", "alpaca", "--to", "zh", "--out", "a_zh"], "its input 'alpaca' is not built"),
        (
            ["rewrite", "flan_cot", "--template", str(built / "nope.jinja"), "--out", "r"],
            "nope.jinja: cannot read",
        ),
    ]
    for args, message in cases:
        r = run([*args, "--endpoint", "http://127.0.0.1:9/v1", "--model", "m"], built)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (built / "catalog.yaml").read_text() == "sources: {}\n"


def test_translate_covers_a_dialogues_earlier_turns(tmp_path):
    """A multi-turn record is translated whole: its history turns too, each checked like a field."""
    fixture = REPO / "tests" / "data" / "fixtures" / "ultrachat.jsonl"
    r = run(["build", "ultrachat", "--from", str(fixture)], tmp_path)
    assert r.returncode == 0, r.stderr
    source = records(tmp_path, "ultrachat")
    turns = sum(len(h) for h in source["history"].to_list())
    assert turns == 1  # record 1 has one earlier turn, record 2 none
    with ChatServer() as server:
        args = ["translate", "ultrachat", "--to", "zh", "--out", "ultrachat_zh", "--endpoint", server.url]
        r = run([*args, "--model", "fake"], tmp_path)
        assert r.returncode == 0, r.stderr
        # instruction + output of 2 records, plus user + assistant of the one earlier turn
        assert len(server.state.prompts) == 2 * 2 + 2 * turns
    out = {row["raw_row"]: row for row in records(tmp_path, "ultrachat_zh").iter_rows(named=True)}
    first = out[source.row(0, named=True)["raw_row"]]
    assert first["history"] == [{"user": "词 词 词?", "assistant": "词 词 词 词."}]
    assert first["instruction"] == "词 词 词 词?" and first["lang"] == "zh"
    assert out[source.row(1, named=True)["raw_row"]]["history"] == []
    # --fields without history leaves the earlier turns as they were
    with ChatServer() as server:
        args = ["translate", "ultrachat", "--to", "zh", "--out", "ultrachat_zh2", "--endpoint", server.url]
        r = run([*args, "--model", "fake", "--fields", "instruction,output"], tmp_path)
        assert r.returncode == 0, r.stderr
        # the same instruction/output prompts as above: all four come from the cache
        assert "0 requests sent, 4 answered from the cache" in r.stdout and not server.state.prompts
    kept = records(tmp_path, "ultrachat_zh2")["history"].to_list()
    assert sorted(map(len, kept)) == [0, 1] and {
        "user": "What is rain?",
        "assistant": "Water falling from clouds.",
    } in [t for h in kept for t in h]

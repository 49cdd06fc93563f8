"""forge eval: real eval data (CMMLU, GSM8K, Belle-eval, MMCU from ../shared; C-Eval and MMLU
fixtures written in their published layouts), judges at real HTTP endpoints (forge serve, and
the tests' chat server), and the run-folder checks against the training lineage. Agreement with
lm-evaluation-harness's own task definitions: tests/test_eval_protocol.py."""

import json
import re
import subprocess

import pytest

from tests.chat_server import ChatServer, belle_judge_reply
from tests.conftest import REPO, SHARED, need
from tests.inprocess import forge_main
from tests.serving import forge_serve, free_port

EVALS = SHARED.parent / "evals"
FIXTURES = REPO / "samples" / "evals"  # C-Eval and MMLU items written for forge, in their layouts


def cli(args, home):
    """`forge ARGS` in this process (tests/inprocess.py: the imports are paid once per worker)."""
    return forge_main(args, env={"FORGE_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and lines and lines[-1].startswith("error:"), r.stderr
    return " ".join(lines)  # rich may wrap one long line


def test_cmmlu_five_shot_on_a_run_folder(run_dir):
    home, run = run_dir
    cmmlu = need(EVALS / "cmmlu")
    r = cli(["eval", "cmmlu", "--data", str(cmmlu), "--run", str(run), "--shots", "5", "--limit", "4"], home)
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "eval" / "cmmlu.json").read_text())
    subjects = sorted(p.stem for p in (cmmlu / "test").glob("*.csv"))
    # --limit counts per subject, as lm-eval's does
    assert res["items"] == 4 * len(subjects) and res["shots"] == 5 and res["seed"] == 0
    assert res["limit"] == {"n": 4, "per": "subject"}
    assert set(res["data"]) == {
        str(cmmlu / split / f"{s}.csv") for s in subjects for split in ("test", "dev")
    }
    proto = res["protocol"]
    assert proto["name"] == "lm-eval" and proto["task"] == "cmmlu_{subject}" and proto["shots"] == 5
    assert (
        proto["lm_eval_version"] == "0.4.13"
        and proto["chat_template"] is None
        and len(proto["template_id"]) == 16
    )
    recs = res["records"]
    assert [x["id"] for x in recs[:5]] == [
        "agronomy/0",
        "agronomy/1",
        "agronomy/2",
        "agronomy/3",
        "chinese_history/0",
    ]
    assert recs[0]["gold"] == "B" and recs[0]["line"] == 2  # the real first row: 土地 is B
    # lm-eval's CMMLU prompt: the subject's Chinese name in the authors' header, five solved dev
    # rows (" B\n\n" after each), then the question
    first = recs[0]["prompt"]
    assert first.startswith("以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n")
    assert first.count("答案：") == 6 and first.endswith("D. 资金\n答案：")
    assert len(re.findall(r"\n答案： [ABCD]\n\n", first)) == 5
    for x in recs:
        assert set(x["choices"]) == {"A", "B", "C", "D"}
        assert x["pred"] == max(x["choices"], key=x["choices"].get)
        assert x["correct"] == (x["pred"] == x["gold"]) and x["correct_norm"] == (x["pred_norm"] == x["gold"])
    assert res["micro"] == sum(x["correct"] for x in recs) / res["items"]
    assert res["acc_norm"] == sum(x["correct_norm"] for x in recs) / res["items"]
    assert all(v["items"] == 4 for v in res["per_subject"].values())
    assert res["overlap"]["contaminated_items"] == 0
    # deterministic: a second run gives the same numbers
    again = cli(["eval", "cmmlu", "--data", str(cmmlu), "--run", str(run), "--shots", "5", "--limit", "4",
                 "--out", str(home / "again.json")], home)  # fmt: skip
    assert again.returncode == 0
    assert [x["choices"] for x in json.loads((home / "again.json").read_text())["records"]] == [
        x["choices"] for x in recs
    ]


def test_ceval_mmlu_and_mmcu_layouts(tiny_model):
    from forge.train.evalsets import read
    from forge.train.evaluate import evaluate
    from forge.train.infer import load

    ceval = read("ceval", FIXTURES / "ceval")
    assert [i.id for i in ceval.items] == ["basic_arithmetic/0", "basic_arithmetic/1", "basic_arithmetic/2",
                                           "geography/0", "geography/1"]  # fmt: skip
    assert ceval.items[2].question == "下列哪个数是偶数？\n（只选一个）" and ceval.items[2].answer == "D"
    assert ceval.items[2].line == 4  # a field with a newline: the row starts on line 4
    assert [s.answer for s in ceval.shots["geography"]] == ["C", "B"]
    mmlu = read("mmlu", FIXTURES / "mmlu")
    assert [(i.subject, i.answer) for i in mmlu.items] == [
        ("colours", "A"), ("colours", "D"), ("units", "B"), ("units", "C"), ("units", "C"), ("units", "B")
    ]  # fmt: skip
    assert mmlu.items[5].question == "A kilogram is a unit of\nwhich quantity?"
    res = evaluate(load(str(tiny_model)), mmlu, shots=2)
    assert res["per_subject"]["units"]["items"] == 4 and res["per_subject"]["colours"]["items"] == 2
    assert res["macro"] == pytest.approx(
        (res["per_subject"]["units"]["accuracy"] + res["per_subject"]["colours"]["accuracy"]) / 2
    )
    first = res["records"][0]["prompt"]  # lm-eval's MMLU prompt: its header, 2 solved dev rows
    assert (
        first.startswith("The following are multiple choice questions (with answers) about colours.\n\n")
        and first.count("Answer:") == 3
        and "B. blue\nC. black\nD. white\nAnswer: B\n\n" in first
    )
    assert res["protocol"]["name"] == "lm-eval" and "acc_norm" not in res  # lm-eval's MMLU reports acc only
    # forge's own prompt stays as the "forge" protocol
    old = evaluate(load(str(tiny_model)), mmlu, shots=2, protocol="forge")
    assert (
        old["records"][0]["prompt"].startswith("Questions on colours") and old["protocol"]["name"] == "forge"
    )
    assert old["protocol"]["template_id"] != res["protocol"]["template_id"]
    mmcu = read("mmcu", need(SHARED / "alpaca_cot" / "eval_raw_mmcu_test.json"))
    [item] = mmcu.items
    assert item.subject == "心理" and item.answer == "D"
    assert item.options == {"A": "家庭", "B": "大学", "C": "杂志", "D": "意识"}


def test_gsm8k_and_answer_extraction(run_dir):
    from forge.train.eval_protocols import COT_CUE, COT_CUE_ZH, cot_cue
    from forge.train.evaluate import extract_answer, option_letters, parse_judge_score

    assert extract_answer("She sells 9 eggs.\n#### 18", "number") == "18"
    assert extract_answer("3 + 4 = 7, so the answer is 1,234.", "number") == "1234"
    assert extract_answer("5 then 6 then 7.0", "number") == "7"
    assert extract_answer("The answer is (C).", "letter") == "C"
    # prose capitals are not options; parenthesized letters come first; choices bound the letters
    assert extract_answer("A box holds 6 eggs, so (B) fits. I think B.", "letter", "ABCDE") == "B"
    assert extract_answer("I think so. A dog can't fly.", "letter") is None
    assert extract_answer("Between A and D, I'd pick D", "letter", "ABCD") == "D"
    assert extract_answer("So the answer is E", "letter", "ABCD") is None
    assert option_letters("Which? Options: (A) red (B) blue (C) green") == "ABC"
    assert option_letters("Is (A) true?") is None
    assert cot_cue("小明有3个苹果，又买了5个，一共有几个？") == COT_CUE_ZH
    assert cot_cue("Tom has 3 apples (苹果) and buys 5 more.") == COT_CUE
    assert extract_answer("Yes, it can. So the answer is no.", "yesno") == "no"
    assert extract_answer("no idea", "number") is None
    assert parse_judge_score("理由。\n得分: 0.7") == 0.7
    assert parse_judge_score("得分：1") == 1.0
    assert parse_judge_score("得分: 7") is None and parse_judge_score("很好") is None
    home, run = run_dir
    gsm = need(EVALS / "gsm8k" / "test_head200.jsonl")
    r = cli(
        [
            "eval",
            "gsm8k",
            "--data",
            str(gsm),
            "--run",
            str(run),
            "--limit",
            "4",
            "--max-new-tokens",
            "8",
            "--shots",
            "0",
        ],
        home,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "eval" / "gsm8k.json").read_text())
    assert [x["gold"] for x in res["records"]] == ["18", "3", "70000", "540"]  # the real first four answers
    # lm-eval's gsm8k prompt, zero-shot: plain text, no chat template, no cue
    assert res["protocol"]["name"] == "lm-eval" and res["protocol"]["task"] == "gsm8k" and res["shots"] == 0
    assert res["records"][0]["prompt"].startswith("Question: Janet") and res["records"][0]["prompt"].endswith(
        "\nAnswer:"
    )
    assert res["correct"] == sum(x["correct"] for x in res["records"]) and res["items"] == 4


def test_flan_cot_held_out_check_uses_the_run_lineage(run_dir):
    home, run = run_dir
    # the run trained on the sample TSVs: the check must say so
    r = cli(["eval", "flan-cot", "--data", str(REPO / "samples" / "flan_cot"), "--run", str(run),
             "--max-new-tokens", "4", "--out", str(home / "seen.json")], home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    seen = json.loads((home / "seen.json").read_text())["overlap"]
    lineage = [json.loads(x) for x in (run / "batches.jsonl").read_text().splitlines()]
    assert lineage and seen["held_out"] is False and seen["trained_on_items"] > 0
    # a slice of the real creak TSV the run never saw is held out
    creak = need(SHARED / "flan_cot" / "creak_train.tsv")
    r = cli(["eval", "flan-cot", "--data", str(creak), "--rows", "-5:", "--run", str(run),
             "--max-new-tokens", "4", "--out", str(home / "held.json")], home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    held = json.loads((home / "held.json").read_text())
    assert held["overlap"]["held_out"] is True and held["items"] == 5
    n = len(creak.read_text().splitlines())
    assert [x["line"] for x in held["records"]] == list(range(n - 4, n + 1))


def test_belle_eval_judged_by_forge_serve_and_by_a_scoring_endpoint(run_dir, tiny_model):
    home, run = run_dir
    belle = need(SHARED / "belle" / "eval_set.json")
    # 1. the judge is forge serve (tiny random model): its replies carry no score -> unparsable
    with forge_serve(tiny_model, env={"FORGE_HOME": str(home)}) as judge:
        r = cli(["eval", "belle", "--data", str(belle), "--run", str(run), "--limit", "3", "--max-new-tokens", "8",
                 "--judge-endpoint", f"{judge}/v1", "--judge-model", "tiny-llama"], home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    res = json.loads((run / "eval" / "belle.json").read_text())
    assert res["items"] == 3 and res["unjudged"] == 0 and res["judged"] + res["unparsable"] == 3
    assert res["judge"]["requests"] == 3 and res["judge"]["failed"] == 0
    assert all(x["judge_reply"] is not None for x in res["records"])
    # 2. a judge that answers with scores: each parsed exactly, unscored replies counted
    with ChatServer() as server:
        args = ["eval", "belle", "--data", str(belle), "--run", str(run), "--limit", "6", "--max-new-tokens", "8",
                "--judge-endpoint", server.url, "--judge-model", "fake", "--out", str(home / "belle.json")]  # fmt: skip
        assert cli(args, home).returncode == 0
        res = json.loads((home / "belle.json").read_text())
        for x in res["records"]:
            assert x["judge_reply"] == belle_judge_reply(x["generation"])
            want = None if len(x["generation"]) % 4 == 0 else (len(x["generation"]) % 11) / 10
            assert x["score"] == want and x["status"] == ("unparsable" if want is None else "judged")
        scores = [x["score"] for x in res["records"] if x["score"] is not None]
        assert res["judged"] == len(scores) and res["unparsable"] == 6 - len(scores)
        assert res["score"] == (pytest.approx(sum(scores) / len(scores)) if scores else None)
        # a rerun is answered from the reply cache
        n = len(server.state.prompts)
        assert cli(args, home).returncode == 0
        assert len(server.state.prompts) == n


def test_bad_input_is_one_line(run_dir, tmp_path):
    home, run = run_dir
    # an eval file in the wrong layout: an MMLU (headerless) CSV given as CMMLU
    err = one_line_error(cli(["eval", "cmmlu", "--data", str(FIXTURES / "mmlu" / "test" / "units_test.csv"),
                              "--run", str(run)], home))  # fmt: skip
    assert "units_test.csv:1: not a cmmlu file: expected the header ',Question,A,B,C,D,Answer'" in err
    # an answer letter outside the options
    bad = tmp_path / "bad.csv"
    bad.write_text(",Question,A,B,C,D,Answer\n0,q1,a,b,c,d,A\n1,q2,a,b,c,d,E\n", encoding="utf-8")
    err = one_line_error(cli(["eval", "cmmlu", "--data", str(bad), "--run", str(run)], home))
    assert f"{bad}:3: field 'Answer': answer 'E' is not one of the options A-D" in err
    # a GSM8K line without its #### answer
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text('{"question": "q", "answer": "#### 4"}\n{"question": "q2", "answer": "no marker"}\n')
    err = one_line_error(cli(["eval", "gsm8k", "--data", str(gsm), "--run", str(run)], home))
    assert f"{gsm}:2: field 'answer': no '#### <number>' at its end" in err
    # a run folder without an adapter
    broken = tmp_path / "run-without-adapter"
    broken.mkdir()
    (broken / "run_manifest.json").write_text((run / "run_manifest.json").read_text())
    err = one_line_error(cli(["eval", "mmlu", "--data", str(FIXTURES / "mmlu"), "--run", str(broken)], home))
    assert "not a forge run folder (no run_manifest.json and adapter/)" in err
    # an --out that is an existing folder: refused before any work, the folder untouched
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    err = one_line_error(cli(["eval", "mmlu", "--data", str(FIXTURES / "mmlu"), "--run", str(run),
                              "--out", str(folder)], home))  # fmt: skip
    assert f"--out {folder} is a folder; give a file path for the result JSON" in err
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    # shots without a dev split
    err = one_line_error(cli(["eval", "mmcu", "--data", str(need(SHARED / "alpaca_cot" / "eval_raw_mmcu_test.json")),
                              "--run", str(run), "--shots", "2"], home))  # fmt: skip
    assert "--shots 2: no dev split with 2 rows for 心理" in err


def test_gsm8k_takes_lm_evals_five_shots_unless_told(run_dir, tmp_path):
    """Without --shots, gsm8k is 5-shot as in lm-eval, drawn from train.jsonl beside the test
    file (without it the library's error says how to go on: tests/test_eval_protocol.py)."""
    home, run = run_dir
    rows = [{"question": f"Tom has {i} apples and buys 2. How many now?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}
            for i in range(8)]  # fmt: skip
    folder = tmp_path / "gsm"
    folder.mkdir()
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[2:]))
    out = folder / "five.json"
    args = ["eval", "gsm8k", "--data", str(folder / "test.jsonl"), "--run", str(run), "--limit", "1",
            "--max-new-tokens", "2", "--out", str(out)]  # fmt: skip
    r = cli(args, home)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["shots"] == 5 and res["protocol"]["shots"] == 5
    prompt = res["records"][0]["prompt"]
    assert prompt.count("Question: ") == 6 and prompt.endswith(
        "Question: Tom has 0 apples and buys 2. How many now?\nAnswer:"
    )


def test_a_judge_that_is_down_leaves_items_unjudged_and_the_run_finishes(run_dir):
    home, run = run_dir
    belle = need(SHARED / "belle" / "eval_set.json")
    r = cli(["eval", "belle", "--data", str(belle), "--run", str(run), "--limit", "2", "--max-new-tokens", "4",
             "--judge-endpoint", f"http://127.0.0.1:{free_port()}/v1", "--judge-model", "x",
             "--judge-retries", "1", "--out", str(run / "down.json")], home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "0 unparsable, 2 unjudged, of 2" in r.stdout
    res = json.loads((run / "down.json").read_text())
    assert res["score"] is None and res["unjudged"] == 2 and res["judge"]["retries"] == 2
    assert all(x["status"] == "unjudged" and "cannot reach" in x["judge_error"] for x in res["records"])

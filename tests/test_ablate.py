"""forge ablate on the demo data and the tiny model: arms trained and scored, a failing arm
shown as failed while the others finish, the report checked in headless Chromium, and a
rerun that skips what is done."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, need

FORGE = [sys.executable, "-m", "forge.cli"]
EVALS = SHARED.parent / "evals"


def cli(args, home, cwd=None):
    env = {**os.environ, "FORGE_HOME": str(home), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(FORGE + args, env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, tiny_model):
    need(EVALS / "cmmlu")
    home = tmp_path_factory.mktemp("ablate-home")
    shutil.copytree(tiny_model, home / "tiny-llama")  # where the tiny recipe looks for its model
    assert cli(["build", "alpaca", "belle_0.5m", "flan_cot", "--sample"], home).returncode == 0
    out = home / "ablation"
    args = ["ablate", "--out", str(out), "--recipe", str(REPO / "train" / "recipes" / "tiny.yaml"),
            "--mixture", "alpaca-belle-cot", "--mixture", "belle-cot",
            "--mixture", "cot-zh-en",  # needs cot_zh, which is not built: this arm fails
            "--train-flag=--max-steps=3", "--eval", f"cmmlu={EVALS / 'cmmlu'}",
            "--eval", f"gsm8k={EVALS / 'gsm8k' / 'test_head200.jsonl'}", "--limit", "1", "--shots", "0",
            "--max-new-tokens", "8"]  # fmt: skip
    first = cli(args, home)
    return home, out, args, first


def test_every_arm_is_trained_scored_and_reported(ablated):
    home, out, _, first = ablated
    assert first.returncode == 0, first.stderr + first.stdout
    report = json.loads((out / "report.json").read_text())
    arms = {a["name"]: a for a in report["arms"]}
    assert [a["name"] for a in report["arms"]] == ["alpaca-belle-cot", "belle-cot", "cot-zh-en"]
    for name in ("alpaca-belle-cot", "belle-cot"):
        a = arms[name]
        assert a["status"] == "done" and a["error"] is None
        manifest = json.loads((out / a["run"] / "run_manifest.json").read_text())
        assert manifest["mixture"] == name and manifest["args"]["seed"] == 0
        for suite in ("cmmlu", "gsm8k"):
            saved = json.loads((out / a["run"] / "eval" / f"{suite}.json").read_text())
            assert a["results"][suite]["score"] == saved["score"]
        # --limit counts per subject, as lm-eval's does: one item of each of the 6 CMMLU subjects
        assert json.loads((out / a["run"] / "eval" / "cmmlu.json").read_text())["items"] == 6
        assert json.loads((out / a["run"] / "eval" / "gsm8k.json").read_text())["items"] == 1
        assert a["results"]["cmmlu"]["per_subject"]["agronomy"]["items"] == 1
    failed = arms["cot-zh-en"]
    assert failed["status"] == "failed" and "cot_zh" in failed["error"] and failed["results"] == {}
    page = (out / "report.html").read_text()
    assert page.count("<img") == 2 and 'href="arms/belle-cot/run/eval/cmmlu.json"' in page
    assert "failed: training:" in page


def test_a_second_run_skips_finished_arms(ablated):
    home, out, args, _ = ablated
    before = {p: p.stat().st_mtime_ns for p in out.glob("arms/*/run/run_manifest.json")}
    again = cli(args, home)
    assert again.returncode == 0
    text = " ".join(again.stdout.split())
    assert (
        "[alpaca-belle-cot] trained already: skipped" in text
        and "[belle-cot] eval gsm8k done already: skipped" in text
    )
    assert "[cot-zh-en] training on mixture cot-zh-en" in text  # the failed arm is tried again
    assert {p: p.stat().st_mtime_ns for p in out.glob("arms/*/run/run_manifest.json")} == before


def test_a_sweep_writes_variant_mixtures_and_rejects_bad_values(tmp_path, home):
    from forge.mixture import load_spec
    from forge.train.ablate import AblateError, sweep_variants

    arms = sweep_variants("belle-cot:components.1.weight=0.5|2", tmp_path)
    assert [a.name for a in arms] == ["belle-cot-c1.weight-0.5", "belle-cot-c1.weight-2"]
    spec = load_spec(tmp_path / "mixtures" / "belle-cot-c1.weight-2.yaml")
    assert spec["components"][1] == {"source": "flan_cot", "weight": 2} and spec["name"] == arms[1].name
    with pytest.raises(AblateError, match="has no 'components.5.weight'"):
        sweep_variants("belle-cot:components.5.weight=1|2", tmp_path)
    from forge.mixture import MixtureError

    with pytest.raises(MixtureError, match=r"components\[0\].max_examples"):
        sweep_variants("belle-cot:components.0.max_examples=0|5", tmp_path)


def test_an_arms_eval_takes_the_protocols_shots_unless_told():
    from forge.train.ablate import EvalSpec

    assert "--shots" not in EvalSpec("gsm8k", "g.jsonl").args(8, [])  # forge eval's default: lm-eval's 5
    args = EvalSpec("gsm8k", "g.jsonl", shots=0).args(8, [])
    assert args[args.index("--shots") + 1] == "0"


def test_report_in_headless_chromium(ablated, tmp_path):
    browser_bin = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (browser_bin and driver_bin):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    _, out, _, _ = ablated
    options = webdriver.ChromeOptions()
    options.binary_location = browser_bin
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        browser.get((out / "report.html").as_uri())
        rows = browser.find_elements(By.CSS_SELECTOR, "#comparison > tbody > tr")
        assert len(rows) == 4  # header + 3 arms
        assert [c.text for c in rows[0].find_elements(By.TAG_NAME, "th")][-2:] == ["cmmlu", "gsm8k"]
        charts = browser.find_elements(By.CSS_SELECTOR, "#charts img")
        assert len(charts) == 2 and all(
            browser.execute_script("return arguments[0].naturalWidth", c) > 100 for c in charts
        )
        # the per-subject breakdown opens on a click
        summary = rows[1].find_element(By.TAG_NAME, "summary")
        summary.click()
        assert "agronomy" in rows[1].text
        shot = tmp_path / "report.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        shutil.copy(shot, out / "report.png")
    finally:
        browser.quit()
    assert Path(out / "report.png").is_file()

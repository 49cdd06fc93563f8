"""Talking to a trained model: prompt parity with training, predict, chat and an OpenAI-
compatible server tested with the real openai client, curl, and (when installed) Chromium."""

import json
import shutil
import subprocess
import time

import pytest

from tests.conftest import REPO
from tests.inprocess import forge_main
from tests.serving import forge_serve
from tests.serving import smollm2 as convert_smollm2


def cli(args, home, input=None):
    """`forge ARGS` in this process (tests/inprocess.py: the imports are paid once per worker)."""
    return forge_main(args, env={"FORGE_HOME": str(home), "COLUMNS": "200"}, input=input)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return convert_smollm2(tmp_path_factory)  # once per test run, shared with test_serve_api


def training_example(record, tokenizer, template):
    from forge.train.data import StreamStats, TokenizeConfig, tokenize_records

    cfg = TokenizeConfig(template=template, cutoff_len=100_000)
    return tokenize_records([{**record, "id": "x"}], tokenizer, cfg, StreamStats())[0]


def test_prompt_parity_alpaca_on_real_records(tiny_model):
    """For every BELLE sample record: the inference prompt is exactly the training tokens
    before the first trained token of the response."""
    import polars as pl
    from transformers import AutoTokenizer

    from forge.train.data import IGNORE, prompt_ids

    tok = AutoTokenizer.from_pretrained(tiny_model)
    records = pl.read_ndjson(REPO / "samples" / "belle" / "belle_sample.json").to_dicts()
    for rec in records:
        rec = {"instruction": rec["instruction"], "input": rec.get("input") or "", "output": rec["output"]}
        ex = training_example(rec, tok, "alpaca")
        p = prompt_ids(rec, tok, "alpaca")
        assert ex["input_ids"][: len(p)].tolist() == p
        assert (ex["labels"][: len(p)] == IGNORE).all() and ex["labels"][len(p)] != IGNORE


def test_prompt_parity_chat_template_and_multi_turn(smollm2):
    from transformers import AutoTokenizer

    from forge.train.data import prompt_ids
    from forge.train.infer import record_from_messages

    tok = AutoTokenizer.from_pretrained(smollm2)
    rec = {
        "instruction": "And of Italy?",
        "input": "",
        "history": [{"user": "What is the capital of France?", "assistant": "Paris."}],
        "output": "Rome.",
    }
    ex = training_example(rec, tok, "chat")
    p = prompt_ids(rec, tok, "chat")
    assert ex["input_ids"][: len(p)].tolist() == p
    text = tok.decode(p)
    assert text.endswith("<|im_start|>assistant\n") and "Paris.<|im_end|>" in text
    # the server's messages render to the same record, hence the same tokens
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert prompt_ids(record_from_messages(messages), tok, "chat") == p


def test_template_default_follows_the_tokenizer(smollm2, tiny_model, run_dir):
    from transformers import AutoTokenizer

    from forge.train.recipe import default_template

    assert default_template(AutoTokenizer.from_pretrained(smollm2)) == "chat"  # an instruct model
    assert default_template(AutoTokenizer.from_pretrained(tiny_model)) == "alpaca"  # no chat template
    _, out = run_dir
    assert json.loads((out / "run_manifest.json").read_text())["template"] == "alpaca"


@pytest.mark.slow
def test_predict_equals_one_at_a_time_generate_and_resumes(run_dir, tmp_path):
    import torch

    from forge.train.infer import build_prompt, load

    home, out = run_dir
    data = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"id": f"r{i}", "instruction": f"Say something about {w}."})
        for i, w in enumerate(
            [
                "cats",
                "the sea",
                "prime numbers and why they matter",
                "tea",
                "a very long winter in the north",
                "go",
            ]
        )
    ]
    data.write_text("\n".join(lines[:3] + ["{broken", lines[3]] + lines[4:]) + "\n")
    pred = tmp_path / "pred.jsonl"
    r = cli(["predict", str(data), "--run", str(out), "--out", str(pred), "--batch-size", "4",
             "--max-new-tokens", "12"], home)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "predicted 6 records (0 already in" in r.stdout and "1 rejected" in r.stdout
    rejected = [json.loads(x) for x in (tmp_path / "pred.jsonl.rejected.jsonl").read_text().splitlines()]
    assert [(e["line"], e["reason"].split(":")[0]) for e in rejected] == [(4, "invalid JSON")]
    got = {x["id"]: x for x in map(json.loads, pred.read_text().splitlines())}
    assert sorted(got) == [f"r{i}" for i in range(6)]

    # the same, one record at a time through plain model.generate: token for token
    loaded = load(run=str(out))
    for i, line in enumerate(lines):
        rec = json.loads(line)
        ids = torch.tensor([build_prompt(loaded, rec)])
        with torch.no_grad():
            new = loaded.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id, eos_token_id=sorted(loaded.stop_ids),
            )[0, ids.shape[1] :].tolist()  # fmt: skip
        stop = next((k for k, t in enumerate(new) if t in loaded.stop_ids), len(new))
        assert got[f"r{i}"]["completion_tokens"] == stop
        assert got[f"r{i}"]["generation"] == loaded.tokenizer.decode(new[:stop], skip_special_tokens=True)

    # resume: an interrupted run left 2 lines; the rerun predicts only the other 4
    pred.write_text("\n".join(pred.read_text().splitlines()[:2]) + "\n")
    again = cli(["predict", str(data), "--run", str(out), "--out", str(pred), "--max-new-tokens", "12"], home)
    assert "predicted 4 records (2 already in" in again.stdout
    final = [json.loads(x) for x in pred.read_text().splitlines()]
    assert sorted(x["id"] for x in final) == [f"r{i}" for i in range(6)]
    assert {x["id"]: x["generation"] for x in final} == {k: v["generation"] for k, v in got.items()}


def test_bad_model_folders_are_one_line(run_dir, tmp_path):
    home, out = run_dir
    r = cli(["predict", "alpaca", "--run", str(tmp_path), "--out", str(tmp_path / "o.jsonl")], home)
    assert r.returncode == 1 and "not a forge run folder" in r.stderr and "Traceback" not in r.stderr
    adapter = tmp_path / "adapter"
    shutil.copytree(out / "adapter", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "/gone/model"})
    )
    (adapter / "run_manifest.json").unlink()
    r = cli(["chat", "--adapter", str(adapter)], home, input="hi\n")
    assert r.returncode == 1 and "the adapter's base model is missing" in r.stderr


def test_chat_reads_turns_from_stdin(run_dir):
    home, out = run_dir
    r = cli(
        ["chat", "--run", str(out), "--max-new-tokens", "5"],
        home,
        input="hello\n/reset\nagain\n/exit\nnever\n",
    )
    assert r.returncode == 0, r.stderr
    assert len([x for x in r.stdout.splitlines() if x.strip() or x == ""]) >= 2
    assert "(history cleared)" in r.stdout


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    """forge serve on SmolLM2 (real language), with an API key, on a free loopback port."""
    home = tmp_path_factory.mktemp("serve-home")
    with forge_serve(smollm2, "--api-key", "sk-test", env={"FORGE_HOME": str(home)}, wait_s=300) as base:
        yield base


@pytest.mark.slow
def test_openai_client_against_forge_serve(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key="sk-test")
    assert [m.id for m in client.models.list().data] == ["SmolLM2-135M-Instruct"]
    question = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=question, max_tokens=20)
    answer = reply.choices[0].message.content
    assert "Paris" in answer and reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens > 3
    chunks = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=question, max_tokens=20, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == answer  # greedy: the stream joins to the same reply
    done = client.completions.create(
        model="SmolLM2-135M-Instruct", prompt="The capital of France is", max_tokens=5
    )
    assert done.choices[0].text and done.usage.completion_tokens <= 5
    stopped = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", messages=question, max_tokens=20, stop=["Paris"]
    )
    assert "Paris" not in stopped.choices[0].message.content

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong").models.list()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[], max_tokens=5)
    assert "messages must be a non-empty list" in str(e.value)
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.chat.completions.create(model="x", messages=question, max_tokens=10_000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="x", messages=question, temperature=7)


@pytest.mark.slow
def test_sse_framing_with_curl_and_a_client_that_leaves(server):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    body = json.dumps(
        {"messages": [{"role": "user", "content": "Count to five."}], "stream": True, "max_tokens": 12}
    )
    r = subprocess.run(
        ["curl", "-sN", server + "/v1/chat/completions", "-H", "Authorization: Bearer sk-test",
         "-H", "Content-Type: application/json", "-d", body],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    events = [e for e in r.stdout.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert (
        payloads[-1]["choices"][0]["finish_reason"] == "length"
    )  # 12 tokens with no end token: cut at max_tokens
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    # a client that disconnects mid-stream: the server goes on serving the next one
    subprocess.run(
        ["curl", "-sN", "--max-time", "1", server + "/v1/chat/completions", "-H", "Authorization: Bearer sk-test",
         "-H", "Content-Type: application/json", "-d", body.replace("12", "400")],
        capture_output=True, timeout=60,
    )  # fmt: skip
    import urllib.request

    assert json.load(urllib.request.urlopen(server + "/health", timeout=60))["status"] == "ok"


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
def test_chat_page_in_headless_chromium(smollm2, tmp_path):
    found = _chromium()
    if found is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with forge_serve(smollm2, wait_s=300) as base:
        options = webdriver.ChromeOptions()
        options.binary_location = found[0]
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,700"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(found[1]), options=options)
        try:
            browser.get(f"{base}/")
            WebDriverWait(browser, 60).until(lambda b: "SmolLM2" in b.find_element(By.ID, "model").text)
            box = browser.find_element(By.ID, "input")
            box.send_keys("What is the capital of France?")
            browser.find_element(By.ID, "send").click()
            reply = WebDriverWait(browser, 120).until(
                lambda b: b.find_element(By.CSS_SELECTOR, ".assistant[data-done='1']")
            )
            assert "Paris" in reply.text
            shot = tmp_path / "chat.png"
            browser.save_screenshot(str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.quit()


@pytest.mark.slow
def test_a_prompt_adapter_on_a_different_base_is_one_line(run_dir, tiny_model, tmp_path):
    from forge.train.tiny import make_tiny_model

    home, _ = run_dir
    other = make_tiny_model(tmp_path / "other", hidden=32, layers=1)
    r = cli(
        [
            "train",
            "tiny",
            "--model",
            str(tiny_model),
            "--peft",
            "prefix",
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "p"),
        ],
        home,
    )
    assert r.returncode == 0, r.stderr
    bad = cli(["predict", "alpaca", "--adapter", str(tmp_path / "p" / "adapter"), "--model", str(other),
               "--out", str(tmp_path / "o.jsonl")], home)  # fmt: skip
    assert bad.returncode == 1 and "does not fit the base" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def _creak_prompts(loaded, n: int) -> list[list[int]]:
    """Prompts of different lengths from real FLAN CoT questions (forge's sample without ../shared)."""
    from forge.train.infer import build_prompt
    from tests.conftest import SHARED

    tsv = SHARED / "flan_cot" / "creak_train.tsv"
    if not tsv.is_file():
        tsv = REPO / "samples" / "flan_cot" / "creak_train.tsv"
    questions = [line.split("\t")[0] for line in tsv.read_text(encoding="utf-8").splitlines()[:n]]
    return [build_prompt(loaded, {"instruction": q * (1 + i % 3), "input": "", "output": "", "history": []})
            for i, q in enumerate(questions)]  # fmt: skip


def test_continuous_decoding_gives_what_each_prompt_gets_alone(tiny_model):
    """Prompts join the running batch at different steps with different lengths and token
    budgets, and leave as they finish; each gets the tokens one-at-a-time generate gives it."""
    from forge.train.infer import Decoder, generate, load

    loaded = load(str(tiny_model))
    prompts = _creak_prompts(loaded, 7)
    budgets = [3, 9, 17, 5, 12, 1, 7]
    assert len({len(p) for p in prompts}) > 3 and Decoder.supported(loaded)
    decoder, got = Decoder(loaded), {}
    for i in range(3):
        got.update(decoder.add(i, prompts[i], budgets[i], []))
    for _ in range(4):
        got.update(decoder.step())
    for i in range(3, 7):  # join mid-flight
        got.update(decoder.add(i, prompts[i], budgets[i], []))
    assert 5 in got  # a budget of 1 is answered by the prefill alone
    while decoder.active:
        got.update(decoder.step())
        if decoder.active:
            assert decoder.mask[:, 0].any()  # padding that every row shares is trimmed
    assert decoder.cache is None and sorted(got) == list(range(7))
    for i, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)):
        alone = generate(loaded, [prompt], max_new_tokens=budget)[0]
        assert (got[i].tokens, got[i].finish_reason, got[i].text) == (
            alone.tokens,
            alone.finish_reason,
            alone.text,
        )
        assert got[i].prompt_tokens == len(prompt)


def test_static_batching_fallback_answers_like_generate(tiny_model):
    """Models whose KV cache cannot be merged row by row get whole batched generate calls."""
    import threading

    from forge.train.infer import generate, load
    from forge.train.serve import Batcher

    loaded = load(str(tiny_model))
    prompts = _creak_prompts(loaded, 5)
    batcher = Batcher(loaded, threading.Lock(), max_batch=8, continuous=False)
    assert batcher.decoder is None
    options = {"max_new_tokens": 6, "temperature": 0.0, "top_p": 1.0, "seed": 0, "stop": []}
    futures = [batcher.submit(p, options) for p in prompts]
    results = [f.result(timeout=60) for f in futures]
    alone = [generate(loaded, [p], max_new_tokens=6)[0] for p in prompts]
    assert [r.tokens for r in results] == [a.tokens for a in alone] and batcher.requests == 5


def test_continuous_decoding_is_only_used_where_rows_can_keep_their_positions(tiny_model):
    from transformers import BloomConfig, BloomForCausalLM

    from forge.train.infer import Decoder, Loaded, load

    assert Decoder.supported(load(str(tiny_model)))
    bloom = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2))
    assert not Decoder.supported(Loaded(bloom, None, "", "bloom", "bloom"))  # ALiBi: no position ids


def test_greedy_streams_decode_in_the_running_batch_and_leave_when_the_client_does(tiny_model):
    """A greedy stream shares the batch with plain requests (it no longer pauses them), joins to
    the reply the same request gets without streaming, and stops costing steps once its client
    goes away."""
    import http.client
    import urllib.parse
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def post(base: str, body: dict) -> dict:
        req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
        return json.load(urllib.request.urlopen(req, timeout=120))

    def streamed(base: str, body: dict, keep: int | None = None) -> str:
        url = urllib.parse.urlparse(base)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps({**body, "stream": True}),
                     {"Content-Type": "application/json"})  # fmt: skip
        resp, text, events = conn.getresponse(), "", 0
        for line in resp:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            text += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
            events += 1
            if keep is not None and events >= keep:
                break  # the client leaves mid-stream
        conn.close()
        return text

    def health(base: str) -> dict:
        return json.load(urllib.request.urlopen(base + "/health", timeout=30))

    ask = {
        "model": "tiny-llama",
        "temperature": 0,
        "messages": [{"role": "user", "content": "Name three colours."}],
    }
    with forge_serve(tiny_model, env={"HF_HUB_OFFLINE": "1"}) as base:
        with ThreadPoolExecutor(5) as pool:
            stream_job = pool.submit(streamed, base, {**ask, "max_tokens": 60})
            others = [pool.submit(post, base, {**ask, "max_tokens": 8, "messages": [
                {"role": "user", "content": f"Question {i}"}]}) for i in range(4)]  # fmt: skip
            text = stream_job.result()
            assert all(o.result()["choices"][0]["finish_reason"] for o in others)
        alone = post(base, {**ask, "max_tokens": 60})["choices"][0]["message"]["content"]
        assert text == alone and text
        h = health(base)
        assert h["batching"] == "continuous" and h["largest_batch"] >= 2 and h["batched_requests"] == 6
        before = h["decode_steps"]
        streamed(base, {**ask, "max_tokens": 1800}, keep=3)
        time.sleep(1.0)
        spent = health(base)["decode_steps"] - before
        # the random model never stops early: kept, this stream would run all 1800 steps
        assert spent < 900, spent

"""Preference training (train/preference.py): forge's DPO and ORPO losses, and their gradients
on the LoRA weights, equal TRL's on the same batch; pairs stream, batch and train end to end."""

import os
import re
from types import SimpleNamespace

import pytest
import torch

from forge.train.data import IGNORE
from forge.train.preference import completion_logps, dpo_loss, orpo_loss, preference_loss

PAIRS = [
    {"prompt": "Question: is 3 odd?\n", "chosen": "Yes, it is.", "rejected": "No."},
    {"prompt": "Say hi to me", "chosen": "Hi there, friend", "rejected": "Bye"},
    {"prompt": "Name a colour.", "chosen": "Blue", "rejected": "I would rather not say anything"},
]
BETA = 0.1


@pytest.fixture(scope="module")
def trl_dpo(tiny_model, tmp_path_factory):
    """TRL's DPOTrainer on the tiny model with a LoRA adapter whose B is not zero (so the policy
    differs from the reference), and one TRL-collated batch of the pairs (chosen rows first)."""
    pytest.importorskip("trl")
    import peft
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    lora = peft.LoraConfig(
        task_type="CAUSAL_LM",
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
    )
    model = peft.get_peft_model(base, lora)
    out = tmp_path_factory.mktemp("trl")
    cfg = DPOConfig(
        output_dir=str(out),
        beta=BETA,
        report_to=[],
        use_cpu=True,
        max_length=None,
        per_device_train_batch_size=3,
    )
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(PAIRS), processing_class=tok)
    # TRL copies an adapter it is handed as "ref" (re-training an existing adapter); without that
    # copy its reference is the adapter disabled, which is forge's reference
    trainer.model.delete_adapter("ref")
    trainer.model.train()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    return trainer, batch


def _forge_batch(batch: dict) -> dict:
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def _lora_grads(model, loss) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {
        n: p.grad.detach().clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None
    }


def test_dpo_equals_trl(trl_dpo):
    trainer, batch = trl_dpo
    model = trainer.model
    trainer._metrics["train"].clear()
    trl_loss = trainer.compute_loss(model, batch)
    trl_grads = _lora_grads(model, trl_loss)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    loss, metrics = preference_loss(model, _forge_batch(batch), "dpo", BETA)
    grads = _lora_grads(model, loss)

    assert abs(trl_metrics["rewards/margins"]) > 1e-4  # the policy is not the reference: a real check
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert set(grads) == set(trl_grads) and grads
    for name, g in grads.items():
        torch.testing.assert_close(g, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    pairs = {
        "reward_margin": "rewards/margins",
        "preference_accuracy": "rewards/accuracies",
        "chosen_rewards": "rewards/chosen",
        "rejected_rewards": "rewards/rejected",
        "chosen_logps": "logps/chosen",
        "rejected_logps": "logps/rejected",
    }
    for ours, theirs in pairs.items():
        assert metrics[ours].item() == pytest.approx(trl_metrics[theirs], abs=1e-4), ours


def test_orpo_equals_trl(trl_dpo):
    """TRL's ORPOTrainer pieces (get_batch_logps, odds_ratio_loss) on the same logits. TRL's NLL
    term also counts the prompt tokens; forge's, like its SFT loss, counts the chosen answer only:
    the NLL is compared on the completion tokens."""
    orpo = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    trainer, batch = trl_dpo
    model = trainer.model
    fb = _forge_batch(batch)
    n = len(PAIRS)

    logits = model(input_ids=fb["input_ids"], attention_mask=fb["attention_mask"]).logits
    mean = orpo.ORPOTrainer.get_batch_logps(logits, fb["labels"], average_log_prob=True)
    this = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device=logits.device))
    losses, chosen_r, rejected_r, _, _ = orpo.ORPOTrainer.odds_ratio_loss(this, mean[:n], mean[n:])
    targets = fb["labels"][:n, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits[:n, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE
    )
    trl_loss = nll - losses.mean()
    trl_grads = _lora_grads(model, trl_loss)

    loss, metrics = preference_loss(model, fb, "orpo", BETA)
    grads = _lora_grads(model, loss)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    for name, g in grads.items():
        torch.testing.assert_close(g, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert metrics["reward_margin"].item() == pytest.approx((chosen_r - rejected_r).mean().item(), abs=1e-6)


def test_loss_by_hand():
    """DPO and ORPO on hand-picked log-probs, against the formulas."""
    c, r = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    rc, rr = torch.tensor([-3.5, -5.0]), torch.tensor([-3.0, -2.5])
    loss, m = dpo_loss(c, r, rc, rr, beta=0.5)
    z = 0.5 * ((c - rc) - (r - rr))
    assert loss.item() == pytest.approx(torch.log1p(torch.exp(-z)).mean().item(), abs=1e-6)
    assert m["preference_accuracy"].item() == 0.5
    assert m["reward_margin"].item() == pytest.approx(z.mean().item(), abs=1e-6)
    cm, rm = torch.tensor([-0.2, -1.5]), torch.tensor([-0.9, -0.1])
    loss, m = orpo_loss(cm, rm, torch.tensor(0.7), beta=0.2)
    odds = lambda x: x - torch.log(1 - torch.exp(x))  # noqa: E731
    ratio = torch.nn.functional.logsigmoid(odds(cm) - odds(rm))
    assert loss.item() == pytest.approx(0.7 - 0.2 * ratio.mean().item(), abs=1e-6)


def test_completion_logps_masks_the_prompt():
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, IGNORE], [IGNORE, 1, 2, 3, 4]])
    total, count = completion_logps(logits, labels)
    logp = logits.log_softmax(-1)
    assert count.tolist() == [2, 4]
    assert total[0].item() == pytest.approx((logp[0, 1, 3] + logp[0, 2, 4]).item(), abs=1e-5)


def _hh_pairs(n: int) -> list[dict]:
    """hh-rlhf transcripts: a preferred and a rejected reply to the same turns; every 6th pair's
    rejected transcript answers other earlier turns (no pair: counted, not trained on)."""
    out = []
    for i in range(n):
        ask = f"\n\nHuman: What is {i} plus {i}?"
        chosen = f"{ask}\n\nAssistant: {i} plus {i} is {2 * i}."
        if i % 6 == 5:
            rejected = f"\n\nHuman: Hello?\n\nAssistant: Hi.{ask}\n\nAssistant: No idea."
        else:
            rejected = f"{ask}\n\nAssistant: I will not tell you."
        out.append({"chosen": chosen, "rejected": rejected})
    return out


@pytest.fixture
def pair_home(home, catalog, tmp_path, monkeypatch):
    import gzip
    import json

    from forge.build import build_source

    raw = tmp_path / "train.jsonl.gz"
    raw.write_bytes(gzip.compress("".join(json.dumps(p) + "\n" for p in _hh_pairs(24)).encode()))
    r = build_source(catalog.get("hh_rlhf"), home=home, from_path=raw)
    assert r.rows == 24
    build_source(catalog.get("alpaca"), home=home, sample=True)
    mixtures = tmp_path / "mixtures"
    mixtures.mkdir()
    (mixtures / "hh-pairs.yaml").write_text("strategy: concat\ncomponents:\n  - {source: hh_rlhf}\n")
    (mixtures / "hh-alpaca.yaml").write_text(
        "strategy: concat\ncomponents:\n  - {source: hh_rlhf}\n  - {source: alpaca}\n"
    )
    monkeypatch.setenv("FORGE_MIXTURES", str(mixtures))
    return home


def test_hh_rlhf_pairs_only_where_the_prompts_agree(pair_home):
    import polars as pl

    from forge.built import open_built

    df = pl.read_parquet(open_built("hh_rlhf", pair_home).files())
    kinds = df["kind"].to_list()
    assert kinds.count("pair") == 20 and kinds.count("sft") == 4
    pairs = df.filter(pl.col("kind") == "pair")
    assert pairs["rejected"].to_list()[0] == "I will not tell you."
    assert (df.filter(pl.col("kind") == "sft")["rejected"] == "").all()


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_forge_train_dpo_on_a_pair_mixture(pair_home, tiny_model, tmp_path, method):
    """`forge train --mixture <pairs> --method dpo --peft lora`: 3 steps of 2 pairs; the step
    lines and the manifest report the pair metrics; the 4 hh records whose rejected reply answers
    other turns are skipped and counted."""
    import json

    from typer.testing import CliRunner

    from forge.cli import app

    out = tmp_path / "run"
    args = [
        "train",
        "--mixture",
        "hh-pairs",
        "--model",
        str(tiny_model),
        "--method",
        method,
        "--peft",
        "lora",
    ]
    args += ["--max-steps", "3", "--batch-size", "2", "--learning-rate", "0.01", "--cutoff-len", "128"]
    args += ["--output-dir", str(out), "--home", str(pair_home)]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # the console may wrap at 80 columns in a worker process
    assert f"({method}, beta 0.1)" in text and "packing is off" in text
    steps = re.findall(r"step +(\d)/3 .*? margin -?[\d.]+ +pref acc [\d.]+", text)
    assert steps == ["1", "2", "3"], text
    m = json.loads((out / "run_manifest.json").read_text())
    assert m["method"] == method and m["packing_efficiency"] is None
    pref = m["preference"]
    assert pref["beta"] == 0.1 and pref["pairs_seen"] == 6
    assert len(pref["steps"]["reward_margin"]) == 3 and len(pref["steps"]["preference_accuracy"]) == 3
    assert set(pref["last"]) >= {"reward_margin", "preference_accuracy", "chosen_logps", "rejected_logps"}
    if method == "dpo":  # the adapter starts as the base: the first step's rewards are zero
        assert pref["first"]["reward_margin"] == 0.0
    ids = [i for line in (out / "batches.jsonl").read_text().splitlines() for i in json.loads(line)["ids"]]
    assert len(ids) == 6 and len(set(ids)) == 6
    _predict_and_chat_with(out, tmp_path)


def _predict_and_chat_with(run, tmp_path):
    """`forge predict` and `forge chat` load a preference run (base + adapter, the run's template),
    and the adapter they load is the trained one: its logits differ from the base's."""
    import json

    from typer.testing import CliRunner

    from forge.cli import app
    from forge.train.infer import load

    asks = tmp_path / "asks.jsonl"
    asks.write_text(
        '{"id": "a", "instruction": "What is 2 plus 2?"}\n{"id": "b", "instruction": "Say hi."}\n'
    )
    pred = tmp_path / "pred.jsonl"
    args = ["predict", str(asks), "--run", str(run), "--out", str(pred), "--max-new-tokens", "3"]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # the console may wrap lines (its width is fixed at import)
    assert "predicted 2 records" in text and "template alpaca" in text
    lines = {x["id"]: x for x in map(json.loads, pred.read_text().splitlines())}
    assert set(lines) == {"a", "b"} and "### Instruction:\nWhat is 2 plus 2?" in lines["a"]["prompt"]
    assert all(x["completion_tokens"] == 3 for x in lines.values())
    r = CliRunner().invoke(app, ["chat", "--run", str(run), "--max-new-tokens", "3"], input="hello\n/exit\n")
    assert r.exit_code == 0 and r.stdout.strip(), r.output
    loaded = load(run=str(run))
    ids = torch.tensor([loaded.tokenizer("What is 2 plus 2?")["input_ids"]])
    with torch.no_grad():
        tuned = loaded.model(input_ids=ids).logits
        with loaded.model.disable_adapter():
            base = loaded.model(input_ids=ids).logits
    assert (tuned - base).abs().max().item() > 1e-4


def test_dpo_refuses_a_mixture_with_plain_records(pair_home, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from forge.cli import app

    args = [
        "train",
        "--mixture",
        "hh-alpaca",
        "--model",
        str(tiny_model),
        "--method",
        "dpo",
        "--max-steps",
        "1",
    ]
    args += ["--output-dir", str(tmp_path / "run"), "--home", str(pair_home)]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert r.exit_code != 0
    assert "mixes in plain records: alpaca hold no pairs" in r.output
    assert "--packing" not in r.output
    r = CliRunner().invoke(app, [*args, "--packing"], env={"COLUMNS": "300"})
    assert r.exit_code != 0 and "pairs, which are never packed" in r.output


PAIR_ROWS = [
    {"question": "2+2?", "response_j": "4", "response_k": "5", "score": 3},
    {"question": "Capital of Peru?", "response_j": "Lima", "response_k": " Lima"},  # the same answer
    {"question": "Hi", "response_j": "Hello"},  # no rejected answer
    {
        "question": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "And 3+3?"},
        ],
        "response_j": [{"role": "assistant", "content": "6"}],
        "response_k": "7",
    },
]


def _pair_catalog(tmp_path, options: str):
    import json
    import textwrap

    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "my_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PAIR_ROWS))
    path = tmp_path / "catalog.yaml"
    path.write_text(
        textwrap.dedent(f"""
        sources:
          my_pairs:
            description: my team's preference pairs
            connector: json
            connector_options: {{format: jsonl}}
            formatter: pairs
            options: {options}
            local: data/my_pairs.jsonl
            lang: EN
            task: MT
            gen: HG
            license: MIT
        """)
    )
    return path


def test_pairs_from_a_catalog_entry_alone(home, tmp_path):
    """A local JSONL of pairs under its own column names joins the catalog with YAML only
    (formatter pairs); a string prompt and TRL's conversational form both read; a record with the
    same answer twice or no rejected answer is quarantined with the field named."""
    import json

    import polars as pl

    from forge.build import build_source
    from forge.catalog import load_catalog

    options = "{prompt: question, chosen: response_j, rejected: response_k, meta_keys: [score]}"
    cat = load_catalog(_pair_catalog(tmp_path, options))
    r = build_source(cat.get("my_pairs"), home=home, max_quarantine=1.0)
    assert (r.input_records, r.rows, r.quarantined) == (4, 2, 2)
    df = pl.read_parquet([str(r.out_dir / s["file"]) for s in r.shards])
    assert df["kind"].to_list() == ["pair", "pair"]
    assert df["instruction"].to_list() == ["2+2?", "And 3+3?"]
    assert df["output"].to_list() == ["4", "6"] and df["rejected"].to_list() == ["5", "7"]
    assert df["history"].to_list() == [[], [{"user": "Hi", "assistant": "Hello!"}]]
    metas = [json.loads(m) for m in df["meta"]]
    assert metas == [{"score": 3}, {"score": None, "system": "Be brief."}]
    reasons = [json.loads(x)["reason"] for x in r.quarantine_file.read_text().splitlines()]
    assert reasons == [
        "fields 'response_j' and 'response_k' hold the same answer",
        "missing field 'response_k'",
    ]


def test_pairs_option_typo_is_one_line(tmp_path):
    """A wrong option of the pairs formatter fails when the catalog loads, in one line naming it."""
    import subprocess
    import sys

    def build(options: str) -> subprocess.CompletedProcess:
        path = _pair_catalog(tmp_path, options)
        args = [sys.executable, "-m", "forge.cli", "build", "my_pairs", "--catalog", str(path)]
        env = {**os.environ, "FORGE_HOME": str(tmp_path / "home"), "COLUMNS": "300"}
        return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)

    r = build("{promt: question, chosen: response_j, rejected: response_k}")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert "source 'my_pairs', field 'options.promt': unknown option (did you mean 'prompt'?)" in r.stderr
    from forge.catalog import load_catalog
    from forge.errors import CatalogError

    path = _pair_catalog(tmp_path, "{prompt: question, chosen: [response_j]}")
    with pytest.raises(CatalogError, match=r"field 'options.chosen': expected a raw key name \(a string\)"):
        load_catalog(path)


def test_published_pairs_feed_trl(trl_dpo, home, catalog, tmp_path):
    """forge publish's pair layout goes through TRL's own DPO data preparation: the conversational
    prompt renders with the chat template and the completions are the chosen and rejected answers."""
    import copy

    import datasets

    from forge.build import build_source
    from forge.publish import collect_targets, stage

    trainer, _ = trl_dpo
    build_source(catalog.get("hh_rlhf"), home=home, sample=True)
    folder = stage(collect_targets(["hh_rlhf"], catalog, home), "me/p", tmp_path / "staged", home=home)
    ds = datasets.load_dataset(str(folder), split="train")  # default: the pairs, a pair source alone
    row = next(i for i, p in enumerate(ds["prompt"]) if p[-1]["content"] == "How fast should I run?")
    tok = copy.deepcopy(trainer.processing_class)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prepared = trainer._prepare_dataset(ds.select([row]), tok, trainer.args, "published")[0]
    prompt = tok.decode(prepared["prompt_ids"])
    assert prompt.startswith("<|user|>I want to start running.") and prompt.endswith(
        "<|user|>How fast should I run?</s><|assistant|>"
    )
    assert tok.decode(prepared["chosen_ids"]) == ds[row]["chosen"][0]["content"] + "</s>"
    assert (
        tok.decode(prepared["rejected_ids"]) == "As fast as you can every time, until you are exhausted.</s>"
    )

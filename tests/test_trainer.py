"""The trainer stage on CPU, offline, with tiny models. A loss that does not move fails."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from forge.build import build_source
from forge.catalog import load_catalog
from forge.mixture import resolve
from forge.train.arg_checks import check_args
from forge.train.data import IGNORE, StreamStats, TokenizeConfig, pad_batch, tokenize_records
from forge.train.packing import collate_packed, mask_style, pack
from forge.train.recipe import TrainArgs, run
from tests.conftest import REPO


@pytest.fixture(scope="module")
def yes_mix(tmp_path_factory):
    """A small source whose answers repeat: even prompt tuning on a random tiny model can learn it."""
    root = tmp_path_factory.mktemp("yes")
    with open(root / "data.jsonl", "w") as f:
        for i in range(64):
            f.write(
                json.dumps(
                    {
                        "instruction": f"Question {i}: is {i} a number?",
                        "input": "",
                        "output": "Yes, it is a number.",
                    }
                )
                + "\n"
            )
    (root / "catalog.yaml").write_text(
        textwrap.dedent("""
        sources:
          yes_data: {description: repeated answers, connector: json, formatter: columns, local: data.jsonl,
                     lang: EN, task: TS, gen: HG, license: MIT}
    """)
    )
    (root / "mixtures").mkdir()
    (root / "mixtures" / "yes.yaml").write_text("strategy: concat\ncomponents:\n  - {source: yes_data}\n")
    cat = load_catalog(root / "catalog.yaml")
    build_source(cat.get("yes_data"), home=root / "home")
    return resolve("yes", cat, home=root / "home", user_dir=root / "mixtures"), root / "home"


def yes_args(model: Path, out: Path, **knobs) -> TrainArgs:
    """A run on the yes mixture; each test names only what it varies."""
    return TrainArgs(mixture="yes", model=str(model), output_dir=str(out), **knobs)


# method, learning rate, the least the mean loss of the last 3 steps must fall below the first 3
METHODS = [
    ("lora", 1e-2, 0.3),
    ("dora", 1e-2, 0.3),
    ("adalora", 1e-2, 0.3),
    ("ia3", 0.1, 0.05),
    ("prefix", 0.1, 0.1),
    ("p_tuning", 0.1, 0.01),
    ("prompt", 0.1, 0.01),
    ("qlora", 1e-2, 0.3),
]


@pytest.mark.parametrize("method, lr, drop", METHODS, ids=[m[0] for m in METHODS])
def test_loss_falls_for_every_peft_method(yes_mix, tiny_model, tmp_path, method, lr, drop):
    mix, home = yes_mix
    prompt_style = method in ("prefix", "p_tuning", "prompt")
    args = yes_args(
        tiny_model,
        tmp_path / method,
        peft=method,
        max_steps=30,
        batch_size=4,
        learning_rate=lr,
        cutoff_len=256,
        packing=not prompt_style,
    )
    losses = run(args, mix, home)["losses"]
    assert len(losses) == 30 and all(l == l for l in losses)  # noqa: E741 (NaN check)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - drop, (method, first, last)


@pytest.mark.parametrize(
    "kind, attn",
    [
        ("llama", "sdpa"),
        ("llama", "eager"),
        ("mistral", None),
        ("qwen2", None),
        ("gpt_neox", None),
        ("glm", None),
        ("gpt2", None),
        ("codegen", None),
    ],
)
def test_packed_and_unpacked_give_the_same_per_sequence_loss(tiny_model, tmp_path, kind, attn):
    """Every family that packs (families.py) must keep packed sequences apart under its own
    default attention: the per-sequence losses of a packed batch equal the unpacked ones."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from forge.train.families import family_of

    tok = AutoTokenizer.from_pretrained(tiny_model)
    path = tiny_model if kind == "llama" else _family_model(kind, tok, tmp_path / kind)
    assert family_of(AutoConfig.from_pretrained(path).model_type).packs
    model = AutoModelForCausalLM.from_pretrained(
        path, **({"attn_implementation": attn} if attn else {})
    ).eval()
    recs = [
        {
            "id": str(i),
            "instruction": f"Add {i} and {i + 1}.",
            "input": "" if i % 2 else "x",
            "output": f"{i} + {i + 1} = {2 * i + 1}. " * (i % 3 + 1),
            "history": [],
        }
        for i in range(10)
    ]
    exs = tokenize_records(recs, tok, TokenizeConfig(), StreamStats())

    def nll(logits, labels):
        lp = torch.log_softmax(logits[:, :-1].float(), -1)
        tgt = labels[:, 1:]
        return -lp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0] * (tgt != IGNORE)

    with torch.no_grad():
        b = pad_batch(exs, tok.pad_token_id)
        loss = nll(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
        unpacked = {e["id"]: float(loss[i].sum()) for i, e in enumerate(exs)}
        rows = list(pack(iter(exs), cutoff_len=160, buffer_size=100))
        assert len(rows) < len(exs)  # something really was packed together
        pb = collate_packed(rows, tok.pad_token_id, mask=mask_style(model.config._attn_implementation))
        loss = nll(
            model(
                input_ids=pb["input_ids"],
                attention_mask=pb["attention_mask"],
                position_ids=pb["position_ids"],
            ).logits,
            pb["labels"],
        )
    packed = {}
    for i, r in enumerate(rows):
        at = 0
        for sid, n in zip(r["ids"], r["seq_lens"], strict=True):
            packed[sid] = float(loss[i, at : at + n - 1].sum())
            at += n
    assert packed.keys() == unpacked.keys()
    assert max(abs(packed[k] - unpacked[k]) for k in packed) < 1e-3


def test_packing_efficiency_on_the_sample_mixture(built_samples, catalog, tiny_model):
    """The packer on a long stream: 40 copies of the sample mixture in a row, at cutoff 1024.
    (The trainer packs each epoch on its own; this measures the algorithm, not that policy.)"""
    from transformers import AutoTokenizer

    from forge.train.packing import PackStats

    tok = AutoTokenizer.from_pretrained(tiny_model)
    from forge.mixture import MixtureStream
    from forge.train.data import stream_examples

    mix = resolve("alpaca-belle-cot", catalog, home=built_samples)

    def passes(n):
        for _ in range(n):
            yield from stream_examples(
                MixtureStream(mix, built_samples), tok, TokenizeConfig(cutoff_len=1024), StreamStats()
            )

    stats = PackStats()
    rows = list(pack(passes(40), cutoff_len=1024, buffer_size=1000, stats=stats))
    assert stats.efficiency >= 0.99, stats.efficiency
    assert sum(len(r["ids"]) for r in rows) == 131 * 40 and all(len(r["input_ids"]) <= 1024 for r in rows)


def test_resume_sees_the_same_records_in_the_same_order(yes_mix, tiny_model, tmp_path):
    mix, home = yes_mix
    base = dict(
        mixture="yes", model=str(tiny_model), batch_size=2, learning_rate=1e-2, cutoff_len=128, pack_buffer=16
    )
    run(TrainArgs(output_dir=str(tmp_path / "a"), max_steps=12, **base), mix, home)
    run(TrainArgs(output_dir=str(tmp_path / "b"), max_steps=6, save_steps=6, **base), mix, home)
    run(
        TrainArgs(
            output_dir=str(tmp_path / "b"),
            max_steps=12,
            resume_from=str(tmp_path / "b" / "checkpoint-6"),
            **base,
        ),
        mix,
        home,
    )
    full = [json.loads(x) for x in (tmp_path / "a" / "batches.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (tmp_path / "b" / "batches.jsonl").read_text().splitlines()]
    assert [b["batch"] for b in resumed] == list(range(1, 13))
    assert [b["ids"] for b in resumed] == [b["ids"] for b in full]


@pytest.mark.parametrize("layout", ["one node, 2 processes", "2 nodes, 1 process each"])
def test_two_processes_see_disjoint_records_whose_union_is_the_epoch(built_samples, tmp_path, layout):
    """Under torchrun on gloo, each global rank reads its own slice. The two-node layout runs two
    torchrun agents that meet over 127.0.0.1, as two machines would."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "FORGE_HOME": str(built_samples), "OMP_NUM_THREADS": "1"}
    probe = [str(REPO / "tests" / "dist_probe.py"), str(built_samples), str(tmp_path)]
    if layout.startswith("one"):
        commands = [[torchrun, "--nproc_per_node", "2", *probe]]
    else:
        node = [
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            "29541",
        ]
        commands = [[torchrun, *node, "--node_rank", str(k), *probe] for k in range(2)]
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        for c in commands
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    a, b = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2))
    assert not set(a) & set(b) and len(a) + len(b) == 131 and len(set(a) | set(b)) == 131


def test_merged_model_matches_base_plus_adapter(yes_mix, tiny_model, tmp_path):
    import peft
    from transformers import AutoModelForCausalLM

    from forge.train.recipe import merge

    mix, home = yes_mix
    run(
        yes_args(
            tiny_model,
            tmp_path / "r",
            max_steps=5,
            batch_size=2,
            learning_rate=5e-2,
            cutoff_len=128,
        ),
        mix,
        home,
    )
    merged_dir = merge(tmp_path / "r" / "adapter", tmp_path / "merged")
    x = torch.tensor([[1, 5, 9, 40, 77, 120]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        ref = peft.PeftModel.from_pretrained(base, tmp_path / "r" / "adapter").eval()(x).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model).eval()(x).logits
        got = AutoModelForCausalLM.from_pretrained(merged_dir).eval()(x).logits
    assert (ref - plain).abs().max() > 1e-3  # the adapter changed something
    assert torch.allclose(got, ref, atol=1e-4)
    assert json.loads((merged_dir / "run_manifest.json").read_text())["mixture"] == "yes"


def test_prompt_methods_cannot_merge(yes_mix, tiny_model, tmp_path):
    from forge.train.recipe import merge

    mix, home = yes_mix
    run(
        yes_args(
            tiny_model,
            tmp_path / "p",
            peft="prompt",
            packing=False,
            max_steps=2,
            batch_size=2,
        ),
        mix,
        home,
    )
    with pytest.raises(ValueError, match="a PROMPT_TUNING adapter adds virtual tokens and cannot be merged"):
        merge(tmp_path / "p" / "adapter", tmp_path / "m")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"peft": "prefix", "packing": True}, "--packing: prefix adds virtual tokens before every sequence"),
        ({"peft": "qlora", "quantization": 8}, "qlora is LoRA on a 4-bit base"),
        ({"fp16": True}, "--fp16 needs a CUDA GPU"),
        ({"peft": "bogus"}, "--peft 'bogus': choose one of"),
        ({"fsdp_config": "missing.json"}, "--fsdp-config missing.json: no such file"),
        ({"fsdp": True}, "--fsdp/--deepspeed shard the model across CUDA GPUs"),
        (
            {"peft": "qlora", "eval_size": 8, "eval_steps": 5},
            "4-bit bitsandbytes on CPU: an eval-mode forward",
        ),
        ({"lr_scheduler": "cosnie"}, "--lr-scheduler 'cosnie': choose one of linear, cosine"),
        ({"report_to": ["wandb"]}, "--report-to wandb needs one of wandb: pip install wandb"),
        (
            {"attn_implementation": "flash_attention_2"},
            "--attn-implementation flash_attention_2 needs a CUDA GPU",
        ),
    ],
)
def test_impossible_combinations_say_so_before_loading(kwargs, message):
    if set(kwargs) & {"fp16", "fsdp", "eval_steps", "attn_implementation"} and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match=message):
        check_args(TrainArgs(mixture="m", model="does-not-exist", output_dir="x", **kwargs))


def _family_model(kind: str, tok, out: Path) -> Path:
    import transformers as tf

    v = len(tok)
    small = dict(vocab_size=v, hidden_size=64, num_attention_heads=4, num_hidden_layers=2)
    config = {
        "bloom": lambda: tf.BloomConfig(vocab_size=v, hidden_size=64, n_head=4, n_layer=2),
        "qwen2": lambda: tf.Qwen2Config(**small, intermediate_size=128, num_key_value_heads=2),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**small, intermediate_size=128),
        "glm": lambda: tf.GlmConfig(**small, intermediate_size=128, num_key_value_heads=2, head_dim=16),
        "mistral": lambda: tf.MistralConfig(**small, intermediate_size=128, num_key_value_heads=2),
        "gpt2": lambda: tf.GPT2Config(vocab_size=v, n_embd=64, n_head=4, n_layer=2),
        "codegen": lambda: tf.CodeGenConfig(vocab_size=v, n_embd=64, n_head=4, n_layer=2, rotary_dim=8),
    }[kind]()
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(config, key, getattr(tok, key))
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("kind", ["bloom", "qwen2", "gpt_neox", "glm", "mistral", "codegen"])
def test_model_families_train(yes_mix, tiny_model, tmp_path, kind):
    from transformers import AutoTokenizer

    mix, home = yes_mix
    path = _family_model(kind, AutoTokenizer.from_pretrained(tiny_model), tmp_path / kind)
    m = run(
        yes_args(
            path,
            tmp_path / "run",
            max_steps=10,
            batch_size=2,
            learning_rate=2e-2,
            cutoff_len=128,
        ),
        mix,
        home,
    )
    families = {"qwen2": "qwen", "mistral": "llama", "codegen": "generic"}  # codegen: all-linear LoRA
    assert m["family"] == families.get(kind, kind)
    assert m["losses"][-1] < m["losses"][0]


def test_fsdp_and_deepspeed_configs_reach_the_trainer(tmp_path):
    from forge.train.recipe import training_arguments

    fsdp = tmp_path / "fsdp.json"
    fsdp.write_text(json.dumps({"transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "version": 2}))
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    both = TrainArgs(
        mixture="m", model="x", output_dir=str(tmp_path), fsdp_config=str(fsdp), deepspeed=str(ds)
    )
    with pytest.raises(ValueError, match="--deepspeed and --fsdp both shard the model; choose one"):
        check_args(both)
    ta = training_arguments(
        TrainArgs(mixture="m", model="x", output_dir=str(tmp_path), fsdp_config=str(fsdp))
    )
    assert ta.fsdp and ta.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert ta.ddp_find_unused_parameters is False and ta.deepspeed is None
    assert ta.lr_scheduler_type == "cosine"


def test_accelerate_launch_trains_on_two_processes_with_disjoint_data(built_samples, tiny_model, tmp_path):
    """accelerate launch --multi_gpu starts two real CPU processes (gloo DDP). Each reads its own
    slice of the stream; rank 0 alone writes the adapter and a manifest summed over ranks."""
    launcher = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "run"
    env = {**os.environ, "FORGE_HOME": str(built_samples), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29533"]
        + ["-m", "forge.cli", "train", "--mixture", "alpaca-belle-cot", "--model", str(tiny_model)]
        + ["--output-dir", str(out), "--no-packing", "--batch-size", "4", "--max-steps", "3"]
        + ["--cutoff-len", "128", "--learning-rate", "0.01"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done: loss") == 1, r.stdout  # only rank 0 talks
    ranks = [
        [json.loads(x) for x in (out / f"batches.rank{k}.jsonl").read_text().splitlines()] for k in range(2)
    ]
    assert [[b["batch"] for b in bs] for bs in ranks] == [[1, 2, 3], [1, 2, 3]]
    ids = [[i for b in bs for i in b["ids"]] for bs in ranks]
    assert len(ids[0]) == len(ids[1]) == 12 and not set(ids[0]) & set(ids[1])
    manifest = json.loads((out / "run_manifest.json").read_text())
    assert (manifest["world_size"], manifest["distributed"], manifest["examples_seen"]) == (
        2,
        "MULTI_CPU",
        24,
    )
    assert manifest["losses"][-1] < manifest["losses"][0]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / "batches.jsonl").exists()


def test_eval_runs_on_a_held_out_slice_never_trained_on(yes_mix, tiny_model, tmp_path):
    from forge.mixture import MixtureStream

    mix, home = yes_mix
    args = yes_args(
        tiny_model,
        tmp_path / "r",
        max_steps=10,
        batch_size=2,
        cutoff_len=128,
        learning_rate=1e-2,
        eval_size=8,
        eval_steps=5,
    )
    m = run(args, mix, home)
    assert len(m["eval_losses"]) == 2 and m["eval_losses"][1] < m["eval_losses"][0]
    stream = [i for t in MixtureStream(mix, home) for i in t["id"].to_pylist()]
    held_out = set(stream[:8])
    lines = (tmp_path / "r" / "batches.jsonl").read_text().splitlines()
    trained = {i for line in lines for i in json.loads(line)["ids"]}
    # the run stays inside the first epoch: no record twice, none from the held-out slice
    assert len(trained) == m["examples_seen"] == 20 and trained <= set(stream) - held_out


def test_packed_epochs_do_not_mix(yes_mix, tiny_model, tmp_path):
    """The pack buffer is larger than this mixture; each pass is still packed on its own, so the
    first 64 examples trained on are the 64 records of epoch one, each once."""
    mix, home = yes_mix
    args = yes_args(
        tiny_model,
        tmp_path / "r",
        max_steps=30,
        batch_size=2,
        cutoff_len=512,
    )
    m = run(args, mix, home)
    lines = (tmp_path / "r" / "batches.jsonl").read_text().splitlines()
    order = [i for line in lines for i in json.loads(line)["ids"]]
    assert m["examples_seen"] == len(order) > 64
    assert len(set(order[:64])) == 64


def test_eager_attention_trains_packed_with_an_additive_mask(yes_mix, tiny_model, tmp_path):
    """eager attention adds the mask to the scores: a boolean one would mask nothing."""
    mix, home = yes_mix
    args = yes_args(
        tiny_model,
        tmp_path / "r",
        max_steps=12,
        batch_size=2,
        cutoff_len=256,
        learning_rate=1e-2,
        attn_implementation="eager",
    )
    m = run(args, mix, home)
    assert m["args"]["attn_implementation"] == "eager" and m["packing_efficiency"] is not None
    assert sum(m["losses"][-3:]) / 3 < sum(m["losses"][:3]) / 3 - 0.3


def test_a_pass_with_no_examples_fails_instead_of_spinning(yes_mix, tiny_model, tmp_path):
    mix, home = yes_mix
    args = yes_args(
        tiny_model,
        tmp_path / "r",
        max_steps=3,
        cutoff_len=16,
        overlong="drop",
    )
    with pytest.raises(
        ValueError, match=r"rank 0 of 1: a whole pass over mixture 'yes' gave no examples \(64 dropped"
    ):
        run(args, mix, home)


@pytest.mark.parametrize(
    "extra",
    [{"gradient_checkpointing": True}, {"grad_accum": 2, "batch_size": 1}],
    ids=["gradient_checkpointing", "grad_accum"],
)
def test_run_control_options_still_learn(yes_mix, tiny_model, tmp_path, extra):
    """Checkpointing re-runs the forward in backward and accumulation splits the batch; under
    PEFT either can leave the adapter without gradients, and the loss would not move."""
    mix, home = yes_mix
    knobs = {"max_steps": 12, "cutoff_len": 256, "learning_rate": 1e-2, "batch_size": 2} | extra
    m = run(yes_args(tiny_model, tmp_path / "r", **knobs), mix, home)
    assert sum(m["losses"][-3:]) / 3 < sum(m["losses"][:3]) / 3 - 0.3, m["losses"]


def test_report_to_tensorboard_writes_event_files(yes_mix, tiny_model, tmp_path):
    mix, home = yes_mix
    args = yes_args(
        tiny_model,
        tmp_path / "r",
        max_steps=3,
        cutoff_len=256,
        report_to=["tensorboard"],
    )
    run(args, mix, home)
    events = list((tmp_path / "r").rglob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboardX.proto.event_pb2 import Event

    data, tags, at = events[0].read_bytes(), set(), 0
    while at < len(data):  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
        n = int.from_bytes(data[at : at + 8], "little")
        event = Event.FromString(data[at + 12 : at + 12 + n])
        tags |= {v.tag for v in event.summary.value}
        at += 12 + n + 4
    assert "train/loss" in tags

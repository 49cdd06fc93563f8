import json

import pytest

from forge.mixture import resolve
from forge.train.data import IGNORE, StreamStats, TokenizeConfig, tokenize_records
from forge.train.prompts import alpaca_segments


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def response_ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def test_labels_are_exactly_the_response_tokens(tokenizer):
    rec = {"id": "x", "instruction": "Add 2 and 3.", "input": "", "output": "2 + 3 = 5.", "history": []}
    [ex] = tokenize_records([rec], tokenizer, TokenizeConfig(), StreamStats())
    trained = [t for t in ex["labels"] if t != IGNORE]
    assert trained == response_ids(tokenizer, "2 + 3 = 5.")
    assert ex["input_ids"][-len(trained) :].tolist() == trained


def test_with_input_and_multi_turn_masking(tokenizer):
    rec = {
        "id": "y",
        "instruction": "Translate.",
        "input": "你好",
        "output": "Hello",
        "history": [{"user": "Hi", "assistant": "Hi there"}, {"user": "Count", "assistant": "1 2 3"}],
    }
    segs = alpaca_segments(rec)
    assert "### Input:\n你好" in "".join(t for t, _ in segs)
    [ex] = tokenize_records([rec], tokenizer, TokenizeConfig(), StreamStats())
    trained = [t for t in ex["labels"] if t != IGNORE]
    expected = sum((response_ids(tokenizer, a) for a in ("Hi there", "1 2 3", "Hello")), [])
    assert trained == expected
    [only_last] = tokenize_records([rec], tokenizer, TokenizeConfig(mask_history=True), StreamStats())
    assert [t for t in only_last["labels"] if t != IGNORE] == response_ids(tokenizer, "Hello")


def test_cutoff_truncates_or_drops_and_counts(tokenizer):
    rec = {"id": "z", "instruction": "Say a lot.", "input": "", "output": "word " * 200, "history": []}
    prompt = len(tokenizer(alpaca_segments(rec)[0][0], add_special_tokens=False)["input_ids"]) + 1  # + BOS
    stats = StreamStats()
    [ex] = tokenize_records([rec], tokenizer, TokenizeConfig(cutoff_len=prompt + 10), stats)
    assert len(ex["input_ids"]) == prompt + 10 and stats.truncated == 1
    assert sum(1 for t in ex["labels"] if t != IGNORE) == 10  # the response tail was cut
    stats = StreamStats()
    assert (
        tokenize_records([rec], tokenizer, TokenizeConfig(cutoff_len=prompt + 10, overlong="drop"), stats)
        == []
    )
    assert stats.dropped_overlong == 1
    stats = StreamStats()  # a prompt that fills the cutoff leaves nothing to learn: dropped, counted
    assert tokenize_records([rec], tokenizer, TokenizeConfig(cutoff_len=prompt), stats) == []
    assert stats.dropped_overlong == 1


def test_lora_training_steps_lower_the_loss(built_samples, catalog, tiny_model, tmp_path):
    from forge.train.recipe import TrainArgs, run

    mix = resolve("alpaca-belle-cot", catalog, home=built_samples)
    out = tmp_path / "run"
    args = TrainArgs(
        mixture=mix.name,
        model=str(tiny_model),
        output_dir=str(out),
        max_steps=12,
        batch_size=4,
        learning_rate=1e-2,
        logging_steps=1,
    )
    manifest = run(args, mix, built_samples)
    losses = manifest["losses"]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    assert (out / "adapter" / "adapter_config.json").exists()
    saved = json.loads((out / "run_manifest.json").read_text())
    assert saved["mixture"] == "alpaca-belle-cot" and saved["mixture_fingerprint"] == mix.fingerprint()
    batches = [json.loads(x) for x in (out / "batches.jsonl").read_text().splitlines()]
    assert (
        len(batches) == 12 and saved["examples_seen"] == sum(len(b["ids"]) for b in batches) > 48
    )  # packed rows
    assert saved["versions"]["torch"] and saved["packing_efficiency"] > 0.9
    assert saved["args"]["peft"] == "lora" and len(saved["data_fingerprint"]) == 16


def test_chat_template_masks_every_assistant_turn(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rec = {
        "id": "c",
        "instruction": "Second question",
        "input": "",
        "output": "Second answer",
        "history": [{"user": "First question", "assistant": "First answer"}],
    }
    [ex] = tokenize_records([rec], tokenizer, TokenizeConfig(template="chat"), StreamStats())
    trained = [t for t in ex["labels"] if t != IGNORE]
    expected = sum(
        (
            tokenizer("First answer</s>", add_special_tokens=False)["input_ids"],
            tokenizer("Second answer</s>", add_special_tokens=False)["input_ids"],
        ),
        [],
    )
    assert trained == expected
    [last] = tokenize_records(
        [rec], tokenizer, TokenizeConfig(template="chat", mask_history=True), StreamStats()
    )
    assert [t for t in last["labels"] if t != IGNORE] == tokenizer(
        "Second answer</s>", add_special_tokens=False
    )["input_ids"]
    tokenizer.chat_template = None


def test_streamed_examples_equal_one_batch_tokenization_in_order(
    built_samples, catalog, tokenizer, monkeypatch
):
    """The stream encodes slices ahead on a helper thread; the examples must come out exactly
    as one direct call would make them, in stream order, whatever the slice size."""
    import pyarrow as pa

    import forge.train.data as data
    from forge.mixture import MixtureStream

    mix = resolve("alpaca-belle-cot", catalog, home=built_samples)
    table = pa.concat_tables(list(MixtureStream(mix, built_samples)))
    records = table.select(["id", "instruction", "input", "output", "history"]).to_pylist()
    cfg = TokenizeConfig(cutoff_len=256)
    direct_stats = StreamStats()
    direct = tokenize_records(records, tokenizer, cfg, direct_stats)
    monkeypatch.setattr(data, "TOKENIZE_BATCH", 7)  # many slices, several in flight at once
    stats = StreamStats()
    streamed = list(data.stream_examples(MixtureStream(mix, built_samples), tokenizer, cfg, stats))
    assert len(streamed) == len(direct) == 131 - direct_stats.dropped_overlong
    assert [e["id"] for e in streamed] == [e["id"] for e in direct]
    for a, b in zip(streamed, direct, strict=True):
        assert (
            a["input_ids"].tolist() == b["input_ids"].tolist()
            and a["labels"].tolist() == b["labels"].tolist()
        )
    assert (stats.records, stats.tokens, stats.truncated) == (
        direct_stats.records,
        direct_stats.tokens,
        direct_stats.truncated,
    )


def test_batched_encode_gives_the_tokenizers_own_ids_on_real_text(tokenizer):
    from conftest import shared

    from forge.train.data import encode

    lines = shared("belle/dev1K.json").read_text(encoding="utf-8").splitlines()[:200]
    texts = [json.loads(x)["instruction"] + "\n" + json.loads(x)["output"] for x in lines]
    assert encode(tokenizer, texts) == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_train_on_inputs_trains_every_token_but_bos(tokenizer):
    rec = {"id": "t", "instruction": "Name a colour.", "input": "sky", "output": "Blue.", "history": []}
    [ex] = tokenize_records([rec], tokenizer, TokenizeConfig(train_on_inputs=True), StreamStats())
    assert ex["input_ids"][0] == tokenizer.bos_token_id and ex["labels"][0] == IGNORE
    assert ex["labels"][1:].tolist() == ex["input_ids"][1:].tolist()
    text = "".join(t for t, _ in alpaca_segments(rec))
    assert tokenizer.decode(ex["input_ids"][1:-1]) == text


def test_a_batch_lays_out_each_record_as_if_alone(tokenizer):
    """The batch is assembled with array arithmetic: a dropped record in the middle must not
    shift its neighbours."""
    recs = [
        {"id": "a", "instruction": "One.", "input": "", "output": "First.", "history": []},
        {"id": "b", "instruction": "Two.", "input": "", "output": "long " * 300, "history": []},
        {
            "id": "c",
            "instruction": "Three.",
            "input": "ctx",
            "output": "Third.",
            "history": [{"user": "u", "assistant": "v"}],
        },
    ]
    cfg = TokenizeConfig(cutoff_len=256, overlong="drop")
    stats = StreamStats()
    out = tokenize_records(recs, tokenizer, cfg, stats)
    assert [e["id"] for e in out] == ["a", "c"] and (stats.records, stats.dropped_overlong) == (3, 1)
    for ex, rec in zip(out, [recs[0], recs[2]], strict=True):
        [alone] = tokenize_records([rec], tokenizer, cfg, StreamStats())
        assert ex["input_ids"].tolist() == alone["input_ids"].tolist()
        assert ex["labels"].tolist() == alone["labels"].tolist()
    assert stats.tokens == sum(len(e["input_ids"]) for e in out)


def test_chat_template_that_writes_bos_gets_exactly_one(tokenizer):
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        rec = {"id": "b", "instruction": "Hi", "input": "", "output": "Hello", "history": []}
        [ex] = tokenize_records([rec], tokenizer, TokenizeConfig(template="chat"), StreamStats())
    finally:
        tokenizer.chat_template = None
    ids = ex["input_ids"].tolist()
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_first_token_is_never_a_target_even_when_training_on_inputs(tiny_model):
    """Without a BOS token the first prompt token would be trained with train_on_inputs; in a
    packed row that teaches the previous record's end to predict this one's start."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.bos_token = None
    rec = {"id": "n", "instruction": "Name a colour.", "input": "", "output": "Blue.", "history": []}
    [ex] = tokenize_records([rec], tok, TokenizeConfig(train_on_inputs=True), StreamStats())
    assert tok.bos_token_id is None and ex["input_ids"][0] != tok.convert_tokens_to_ids("<s>")
    assert ex["labels"][0] == IGNORE
    assert ex["labels"][1:].tolist() == ex["input_ids"][1:].tolist()

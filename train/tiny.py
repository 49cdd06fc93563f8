"""forge tiny-model: a tiny random Llama with a byte-level BPE tokenizer trained locally.

Everything is saved with save_pretrained, so the demo and the tests load it through the
same from_pretrained code path that a Hub id takes. No network is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def sample_texts() -> list[str]:
    """Text to train the tokenizer on: forge's shipped samples (English, Chinese, CoT)."""
    from forge.paths import builtin_dir

    texts = []
    for p in sorted((builtin_dir() / "samples").rglob("*")):
        if p.is_file():
            texts.extend(p.read_text(encoding="utf-8").splitlines())
    return texts


def make_tiny_model(
    out: Path, *, vocab_size: int = 2000, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0
) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(sample_texts(), vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # BPE stops short of the asked size on small corpora
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out

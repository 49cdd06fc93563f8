"""Per-family defaults: which modules LoRA targets, whether the family packs, and whether it
needs trust_remote_code. Any other AutoModelForCausalLM takes the generic path ("all-linear"
LoRA targets). The prompt template follows the tokenizer, not the family
(forge.train.recipe.default_template)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.model_type values
    lora_targets: tuple[str, ...] | str
    ia3_feedforward: tuple[str, ...] = ()
    remote_code: bool = False
    packs: bool = True  # accepts a 4-D block-diagonal mask (packed rows)
    notes: str = ""
    extra: dict = field(default_factory=dict)


FAMILIES = [
    Family(
        "llama",
        ("llama", "mistral"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ("down_proj",),
    ),
    Family(
        "qwen",
        ("qwen2", "qwen3", "qwen2_moe"),
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ("down_proj",),
    ),
    Family(
        "bloom",
        ("bloom",),
        ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        ("dense_4h_to_h",),
        packs=False,
        notes="ALiBi built from a 2-D mask: trains with dynamic padding, not packing",
    ),
    Family(
        "glm",
        ("glm", "glm4", "chatglm"),
        ("query_key_value", "qkv_proj", "dense", "o_proj", "gate_up_proj", "down_proj"),
        ("down_proj",),
        notes="ChatGLM 1-3 (model_type chatglm) need trust_remote_code; GLM-4 is native",
    ),
    Family(
        "baichuan",
        ("baichuan",),
        ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ("down_proj",),
        remote_code=True,
    ),
    Family(
        "internlm",
        ("internlm", "internlm2"),
        ("wqkv", "wo", "w1", "w2", "w3", "q_proj", "k_proj", "v_proj", "o_proj"),
        ("w2",),
        remote_code=True,
    ),
    Family("moss", ("moss",), ("qkv_proj", "out_proj", "fc_in", "fc_out"), ("fc_out",), remote_code=True),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
        ("dense_4h_to_h",),
    ),
]
GENERIC = Family("generic", (), "all-linear")


def family_of(model_type: str) -> Family:
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    return GENERIC


def present_targets(model, family: Family) -> list[str] | str:
    """The family's LoRA targets that this model really has (names differ across versions)."""
    if isinstance(family.lora_targets, str):
        return family.lora_targets
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    found = [t for t in family.lora_targets if t in names]
    return found or "all-linear"

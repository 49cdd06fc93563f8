"""Every training option, defined once: the recipe schema.

`forge train`'s flags, the keys of a recipe file (`forge train RECIPE.yaml`) and the option
table in docs/training.md are all derived from the fields of TrainArgs below, so adding an option
is one field here (then `python -m forge.train.config --table` refreshes that table, and a
test says when it is stale). Precedence: a field's default, then the recipe file, then flags.

Recipe values may use `{home}` for the data home ($FORGE_HOME or ./forge_data), e.g.
`model: "{home}/tiny-llama"`.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

PEFT_METHODS = ("lora", "qlora", "dora", "adalora", "ia3", "prefix", "p_tuning", "prompt")
PROMPT_STYLE = ("prefix", "p_tuning", "prompt")  # virtual tokens: no packing, no merge
RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


class RecipeError(ValueError):
    """A recipe file or option is wrong; the message names the file, line and key."""


def opt(default=None, help: str = "", *, group: str, factory=None):  # noqa: A002 - the help text
    meta = {"help": help, "group": group}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainArgs:
    # what to train
    mixture: str | None = opt(None, "Mixture to train on (mixtures/NAME.yaml).", group="data")
    model: str | None = opt(None, "Local model folder or Hub id of a causal LM.", group="model")
    output_dir: str | None = opt(
        None, "Where the adapter and run manifest go (default: data home/runs/MIXTURE-PEFT).", group="output"
    )
    # the objective
    method: str = opt(
        "sft",
        "Objective: sft | dpo | orpo (dpo and orpo train on a mixture of preference pairs).",
        group="objective",
    )
    beta: float = opt(0.1, "DPO: the KL weight beta; ORPO: the odds-ratio weight lambda.", group="objective")
    # the adapter
    peft: str = opt("lora", f"PEFT method: {' | '.join(PEFT_METHODS)}.", group="peft")
    peft_config: dict | None = opt(
        None,
        "Any peft config as a mapping with peft_type (JSON on the command line); overrides --peft.",
        group="peft",
    )
    lora_r: int = opt(8, "LoRA rank (AdaLoRA: the target rank).", group="peft")
    lora_alpha: int = opt(16, "LoRA scaling alpha.", group="peft")
    lora_dropout: float = opt(0.05, "Dropout on the LoRA path.", group="peft")
    target_modules: list[str] | None = opt(
        None,
        "Module names to adapt (comma-separated on the command line; default: the family's).",
        group="peft",
    )
    adalora_init_r: int = opt(12, "AdaLoRA initial rank.", group="peft")
    adalora_tinit: int = opt(0, "AdaLoRA warm-up steps before rank pruning.", group="peft")
    adalora_tfinal: int = opt(0, "AdaLoRA final steps at the target rank.", group="peft")
    adalora_delta_t: int = opt(1, "AdaLoRA steps between rank allocations.", group="peft")
    num_virtual_tokens: int = opt(8, "Virtual tokens of prefix / p_tuning / prompt tuning.", group="peft")
    encoder_hidden_size: int = opt(128, "p_tuning prompt encoder width.", group="peft")
    # the base model
    quantization: int | None = opt(None, "Load the base in 4 or 8 bits (bitsandbytes).", group="model")
    compute_dtype: str = opt(
        "float32", "bitsandbytes compute dtype: float32 | bfloat16 | float16.", group="model"
    )
    bf16: bool = opt(False, "bfloat16 mixed precision; the frozen base is loaded in bfloat16.", group="model")
    fp16: bool = opt(False, "float16 mixed precision (CUDA only).", group="model")
    attn_implementation: str | None = opt(
        None, "sdpa | eager | flash_attention_2 (GPU; packs by position_ids).", group="model"
    )
    gradient_checkpointing: bool = opt(False, "Recompute activations to save memory.", group="model")
    trust_remote_code: bool = opt(
        False, "Run model code from the model repo (chatglm, baichuan ...).", group="model"
    )
    # the schedule
    max_steps: int = opt(30, "Optimizer steps (ignored with epochs).", group="schedule")
    epochs: int | None = opt(
        None, "Passes over the mixture; sets the exact number of steps.", group="schedule"
    )
    batch_size: int = opt(8, "Rows (packed) or examples per device and step.", group="schedule")
    grad_accum: int = opt(1, "Gradient accumulation steps.", group="schedule")
    # 2e-4: the usual LoRA rate for 1B-13B models (the QLoRA paper's, and LLaMA-Factory's and
    # axolotl's examples); tiny random models learn visibly only at ~1e-2
    learning_rate: float = opt(
        2e-4, "Peak learning rate; 2e-4 suits LoRA on 1B-13B models.", group="schedule"
    )
    warmup_steps: int = opt(0, "Linear warm-up steps.", group="schedule")
    lr_scheduler: str = opt("cosine", "linear | cosine | constant | ... (transformers).", group="schedule")
    weight_decay: float = opt(0.0, "AdamW weight decay.", group="schedule")
    seed: int = opt(0, "Seed of the run (the mixture's order has its own seed).", group="schedule")
    # what the model sees
    cutoff_len: int = opt(512, "Longest sequence, in tokens.", group="data")
    overlong: str = opt("truncate", "Over-long records: truncate (the response tail) or drop.", group="data")
    packing: bool | None = opt(
        None,
        "Pack sequences (block-diagonal attention); default auto: on where the method and family can.",
        group="data",
    )
    pack_buffer: int = opt(1000, "Records per packing window.", group="data")
    train_on_inputs: bool = opt(False, "Also train on the prompt tokens.", group="data")
    mask_history: bool = opt(False, "Multi-turn: train on the last assistant turn only.", group="data")
    template: str | None = opt(
        None, "Prompt layout: alpaca | chat (default from the model family).", group="data"
    )
    # evaluation and output
    eval_size: int = opt(0, "Hold out the first N stream positions for evaluation.", group="eval")
    eval_steps: int = opt(0, "Evaluate every N steps (needs eval_size).", group="eval")
    logging_steps: int = opt(1, "Log every N steps.", group="output")
    save_steps: int = opt(0, "Save a checkpoint every N steps (0: only the final adapter).", group="output")
    resume_from: str | None = opt(
        None, "Checkpoint folder to resume from (exact data position).", group="output"
    )
    report_to: list[str] = opt(
        help="Trackers: tensorboard, wandb, ... (comma-separated on the command line).",
        group="output",
        factory=list,
    )
    # more than one device (launch with torchrun / accelerate launch)
    fsdp: bool = opt(False, "Shard the model with FSDP (CUDA GPUs).", group="distributed")
    fsdp_config: str | None = opt(None, "FSDP config JSON file (implies fsdp).", group="distributed")
    deepspeed: str | None = opt(None, "DeepSpeed config JSON file.", group="distributed")


def option_fields():
    return fields(TrainArgs)


def default_of(f):
    return f.default_factory() if f.default is MISSING else f.default


def base_type(f) -> type:
    """The field's value type without None: str, int, float, bool, list or dict."""
    hint = typing.get_type_hints(TrainArgs)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = args[0]
    origin = typing.get_origin(hint)
    return origin if origin in (list, dict) else hint


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def coerce(name: str, value, where: str):
    """A recipe or flag value as the field's type; RecipeError naming `where` otherwise."""
    kind = base_type(_FIELDS[name])
    if value is None:
        return None
    if kind is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if kind is dict and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise RecipeError(f"{where}: not valid JSON ({e})") from None
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        dict: lambda v: isinstance(v, dict),
    }[kind]
    if name == "packing" and value == "auto":
        return None
    if not ok(value):
        want = {list: "a list of strings", dict: "a mapping"}.get(kind, kind.__name__)
        raise RecipeError(f"{where}: expected {want}, found {value!r}")
    return float(value) if kind is float else value


def load_recipe(path: Path) -> dict:
    """A recipe file's options, checked: unknown keys get a close match and the file's line."""
    from forge.formatters.safeyaml import YamlInputError, key_lines, load_yaml_file

    try:
        data = load_yaml_file(path)
        lines = key_lines(path)
    except YamlInputError as e:
        raise RecipeError(str(e)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of option: value")
    names = [f.name for f in option_fields()]
    out = {}
    for key, value in data.items():
        where = f"{path}:{lines.get(str(key), 1)}: {key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"{where}: unknown option{hint}")
        out[key] = coerce(key, value, where)
    return out


def resolve_recipe(name_or_path: str | Path) -> Path:
    """A recipe file path, or the name of a shipped recipe (train/recipes/NAME.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    raise RecipeError(
        f"{name_or_path}: no such recipe file, and no shipped recipe of that name ({', '.join(known)})"
    )


def make_args(recipe: Path | None, flags: dict, home: Path) -> TrainArgs:
    """Defaults, then the recipe file, then the flags that were given (not None): a flag always
    wins, and a --max-steps flag also overrides the recipe's epochs (within one recipe, epochs
    sets the run's length). Where every value came from is kept in `args.origin` (default,
    recipe or flag) and `args.recipe_file`, which the run's effective recipe.yaml records."""
    from_recipe = load_recipe(recipe) if recipe else {}
    given = {k: v for k, v in flags.items() if v is not None}
    if "epochs" in given and "max_steps" in given:
        raise RecipeError("--epochs and --max-steps both set the run's length: give one of them")
    values = {**from_recipe, **given}
    origin = {f.name: "default" for f in option_fields()}
    origin |= {k: "recipe" for k in from_recipe} | {k: "flag" for k in given}
    if "max_steps" in given and values.get("epochs") is not None:
        origin["epochs"] = (
            f"flag: --max-steps {given['max_steps']} replaces the recipe's epochs: {values['epochs']}"
        )
        values["epochs"] = None
    for key in ("model", "output_dir", "resume_from", "fsdp_config", "deepspeed"):
        if isinstance(values.get(key), str):
            values[key] = values[key].replace("{home}", str(home))
    for key in ("mixture", "model"):
        if not values.get(key):
            where = f" (not in {recipe})" if recipe else ""
            raise RecipeError(f"{flag(key)} is required{where}: give it as a flag or a recipe key")
    args = TrainArgs(**values)
    args.origin, args.recipe_file = origin, str(recipe) if recipe else None
    return args


def dump_recipe(args: TrainArgs) -> str:
    """The effective recipe of a run, as YAML that `forge train FILE` reads back: every option
    with its value, each followed by where that value came from (`args.origin`)."""
    import yaml

    origin = getattr(args, "origin", {})  # TrainArgs made by hand (tests, the API) have none
    lines = []
    for key, value in asdict(args).items():
        where = origin.get(key) or ("default" if value == default_of(_FIELDS[key]) else "given")
        text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1 << 30)
        text = text.removesuffix("\n...\n").strip()
        if "\n" in text:  # a value YAML would spread over lines: JSON is YAML on one line
            text = json.dumps(value, ensure_ascii=False)
        lines.append((f"{key}: {text}", where))
    width = max((len(line) for line, _ in lines if len(line) <= 48), default=0)
    recipe = getattr(args, "recipe_file", None)
    head = (
        "# the effective recipe of this run: `forge train THIS_FILE` runs it again\n"
        f"# after each value, where it came from: default, recipe ({recipe or 'none given'}) or flag\n"
    )
    return head + "".join(f"{line:<{width}}  # {where}\n" for line, where in lines)


def reference_table() -> str:
    """The option table of docs/training.md (markdown), generated from TrainArgs."""
    rows = ["| recipe key / flag | default | what it sets |", "|---|---|---|"]
    for f in option_fields():
        default = default_of(f)
        shown = "auto" if f.name == "packing" else ("—" if default in (None, []) else f"`{default}`")
        key = f"`{f.name}` / `{flag(f.name)}`"
        rows.append(f"| {key} | {shown} | {f.metadata['help']} |")
    return "\n".join(rows)


_FIELDS = {f.name: f for f in fields(TrainArgs)}

if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--table"]:
        print(reference_table())
    else:
        print("usage: python -m forge.train.config --table   (the option table of docs/training.md)")

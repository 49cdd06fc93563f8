"""A training run's options, checked before any model loads: check_args, and resolve_packing,
which settles packing's "auto" first.

Each impossible combination (a prompt-style method with packing, fp16 without a GPU, a tracker
that is not installed, ...) is refused in one line that says what to change. The checks sit
apart from the recipe (train/recipe.py), whose `run` calls them first, because they are one
list of rules about the options (train/config.py) and read best as such; `forge train`
(forge/cli/model.py) also calls them itself, to refuse a bad option before it claims the
run folder.
"""

from __future__ import annotations

# ruff: noqa: E402 - forge.train.threads must set the OpenMP wait policy before torch loads
import importlib.util
import logging
from pathlib import Path

from forge.train import threads

threads.before_torch()  # idle OpenMP threads sleep: libgomp reads this once, when torch loads it
import torch

from forge.train.config import PEFT_METHODS, PROMPT_STYLE, TrainArgs
from forge.train.preference import METHODS, PREFERENCE

# bitsandbytes logs at import, on CPUs with avx512_bf16, that an optional kernel fetched from the
# Hub is missing; forge never fetches kernels at run time, so the line is noise before every error
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# --report-to name -> the packages transformers can log through (any one will do)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "clearml": ("clearml",),
    "trackio": ("trackio",),
}


def _check_numbers(args: TrainArgs) -> None:
    """Numeric options, checked before anything is loaded (NaN fails every comparison)."""
    import math

    positive = ("max_steps", "batch_size", "grad_accum", "cutoff_len", "pack_buffer", "lora_r", "lora_alpha")
    positive += ("num_virtual_tokens", "encoder_hidden_size", "adalora_init_r", "adalora_delta_t")
    for name in positive:
        v = getattr(args, name)
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.epochs is not None and (not isinstance(args.epochs, int) or args.epochs < 1):
        raise ValueError(f"--epochs must be a positive integer, got {args.epochs}")
    for name in ("warmup_steps", "eval_size", "eval_steps", "save_steps", "adalora_tinit", "adalora_tfinal"):
        v = getattr(args, name)
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be zero or a positive integer, got {v}")
    if not (math.isfinite(args.learning_rate) and 0 < args.learning_rate <= 10):
        raise ValueError(f"--learning-rate must be a finite number in (0, 10], got {args.learning_rate}")
    for name in ("lora_dropout", "weight_decay"):
        v = getattr(args, name)
        if not (0 <= v < 1):
            raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {v}")
    if args.quantization not in (None, 4, 8):
        raise ValueError(f"--quantization takes 4 or 8, got {args.quantization}")


def _check_paths(args: TrainArgs) -> None:
    """A --model that looks like a local path must be a model folder; checkpoints must exist."""
    model = Path(args.model).expanduser()
    looks_local = model.exists() or args.model.startswith((".", "/", "~")) or args.model.count("/") > 1
    if looks_local:
        if not model.is_dir():
            raise ValueError(
                f"--model {args.model}: no such folder (give a model folder or a Hub id OWNER/NAME)"
            )
        if not (model / "config.json").is_file():
            raise ValueError(
                f"--model {args.model}: not a model folder (no config.json); "
                f"give the folder save_pretrained wrote, or a Hub id"
            )
    if args.resume_from:
        ckpt = Path(args.resume_from)
        if not (ckpt / "data_state.json").is_file():
            raise ValueError(
                f"--resume-from {args.resume_from}: not a forge checkpoint (no data_state.json); "
                f"give a checkpoint-N folder of an earlier run"
            )


def _check_peft_config(config) -> None:
    import peft

    if not isinstance(config, dict):
        raise ValueError(f"--peft-config must be a JSON object, got {type(config).__name__}")
    kind = config.get("peft_type")
    known = sorted(t.value for t in peft.PeftType)
    if kind not in known:
        raise ValueError(f"--peft-config: peft_type {kind!r} is not one of {', '.join(known)}")
    try:
        peft.get_peft_config(dict(config))
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"--peft-config ({kind}): {e}") from None


def resolve_packing(args: TrainArgs) -> str | None:
    """packing None means auto: on unless the method adds virtual tokens or the run trains on
    preference pairs (never packed: each sequence is scored whole). Returns the note to print
    when auto turns it off (the model family is checked again once it is known)."""
    if args.packing is None and args.method in PREFERENCE:
        args.packing = False
        return f"packing is off: {args.method} scores each answer of a pair as a sequence of its own"
    if args.packing is None and args.peft in PROMPT_STYLE:
        args.packing = False
        return f"packing is off: {args.peft} adds virtual tokens before every sequence"
    return None


def check_args(args: TrainArgs) -> None:
    """Refuse impossible combinations in one line, before any model is loaded."""
    if not args.mixture or not args.model:
        raise ValueError("a run needs a mixture and a model (--mixture, --model, or recipe keys)")
    _check_numbers(args)
    _check_paths(args)
    if args.peft_config is not None:
        _check_peft_config(args.peft_config)
    if args.method not in METHODS:
        raise ValueError(f"--method {args.method!r}: choose one of {', '.join(METHODS)}")
    if args.method in PREFERENCE:
        if not (isinstance(args.beta, int | float) and 0 < args.beta < float("inf")):
            raise ValueError(f"--beta must be a positive number, got {args.beta}")
        if args.packing:
            raise ValueError(
                f"--packing: {args.method} trains on pairs, which are never packed (each answer is scored "
                f"as a sequence of its own); drop --packing"
            )
    if args.peft not in PEFT_METHODS and not args.peft_config:
        raise ValueError(
            f"--peft {args.peft!r}: choose one of {', '.join(PEFT_METHODS)} or pass --peft-config JSON"
        )
    if args.peft == "qlora" and args.quantization not in (None, 4):
        raise ValueError("qlora is LoRA on a 4-bit base: --quantization must be 4")
    if args.peft in PROMPT_STYLE and args.packing:
        raise ValueError(
            f"--packing: {args.peft} adds virtual tokens before every sequence, which packing cannot keep "
            f"apart; drop --packing (packing is off by default for {args.peft})"
        )
    if args.peft in PROMPT_STYLE and args.quantization:
        raise ValueError(f"{args.peft} with a quantized base is not supported by peft; drop --quantization")
    cuda = torch.cuda.is_available()
    if args.fp16 and not cuda:
        raise ValueError(
            "--fp16 needs a CUDA GPU (mixed precision with fp16 has no CPU kernels); use --bf16 or neither"
        )
    if args.bf16 and cuda and not torch.cuda.is_bf16_supported():
        raise ValueError("--bf16: this GPU has no bfloat16 support; use --fp16")
    if args.quantization or args.peft == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ValueError(
                "--quantization needs bitsandbytes: pip install 'forge-instruct[quant]'"
            ) from None
    for flag, path in (("--fsdp-config", args.fsdp_config), ("--deepspeed", args.deepspeed)):
        if path and not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file (it takes a JSON config file)")
    if args.deepspeed and (args.fsdp or args.fsdp_config):
        raise ValueError("--deepspeed and --fsdp both shard the model; choose one")
    if args.deepspeed:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ValueError("--deepspeed needs the deepspeed package: pip install deepspeed") from None
    if (args.fsdp or args.fsdp_config or args.deepspeed) and not cuda:
        raise ValueError(
            "--fsdp/--deepspeed shard the model across CUDA GPUs and this machine has none "
            "(on CPU, torchrun/accelerate launch run plain DDP: drop the flag)"
        )
    if (args.attn_implementation or "").startswith("flash") and not cuda:
        raise ValueError(
            f"--attn-implementation {args.attn_implementation} needs a CUDA GPU; use sdpa or eager"
        )
    four_bit = args.peft == "qlora" or args.quantization == 4
    if four_bit and args.eval_size and args.eval_steps and not cuda:
        # measured (../shared/ENVIRONMENT.md): the first eval-mode forward repacks the CPU 4-bit
        # weights for good; the adapter then gets wrong gradients and quietly stops learning
        raise ValueError(
            "4-bit bitsandbytes on CPU: an eval-mode forward repacks the weights and the adapter "
            "stops learning; drop --eval-steps (evaluate after training) or train on a GPU"
        )
    for tracker in args.report_to:
        modules = TRACKERS.get(tracker, ())
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise ValueError(
                f"--report-to {tracker} needs one of {', '.join(modules)}: pip install {modules[-1]}"
            )
    from transformers import SchedulerType

    schedulers = [t.value for t in SchedulerType]
    if args.lr_scheduler not in schedulers:
        raise ValueError(f"--lr-scheduler {args.lr_scheduler!r}: choose one of {', '.join(schedulers)}")
    if args.overlong not in ("truncate", "drop"):
        raise ValueError(f"--overlong {args.overlong!r}: choose truncate or drop")

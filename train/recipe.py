"""The fine-tuning recipe: a mixture stream -> a PEFT adapter, through the transformers Trainer.

Read it top to bottom: TrainArgs (every knob), MixtureDataset (the stream as a torch
IterableDataset, rank- and worker-aware), build_model (base model + PEFT), run (Trainer,
then adapter + run manifest).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import xxhash

from forge.mixture import Mixture, MixtureStream
from train.data import StreamStats, TokenizeConfig, pad_batch, stream_examples


@dataclass
class TrainArgs:
    mixture: str
    model: str
    output_dir: str
    peft: str = "lora"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    max_steps: int = 30
    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 3e-3
    cutoff_len: int = 512
    train_on_inputs: bool = False
    mask_history: bool = False
    seed: int = 0
    logging_steps: int = 1
    save_steps: int = 0
    trust_remote_code: bool = False
    extra: dict = field(default_factory=dict)


class MixtureDataset(torch.utils.data.IterableDataset):
    """Each (rank, DataLoader worker) reads its own slice of the same global stream."""

    def __init__(self, mix: Mixture, home: Path | None, tokenizer, cfg: TokenizeConfig):
        self.mix, self.home, self.tokenizer, self.cfg = mix, home, tokenizer, cfg
        self.stats = StreamStats()
        self.id_hash = xxhash.xxh64()  # fingerprint of the exact record ids trained on, in order
        self.yielded = 0
        self.state: dict | None = None

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        stream = MixtureStream(
            self.mix,
            self.home,
            rank=rank,
            world_size=world,
            worker=info.id if info else 0,
            num_workers=info.num_workers if info else 1,
        )
        if self.state:
            stream.load_state_dict(self.state)
        epoch = 0
        while True:  # the Trainer stops at max_steps; a finished stream starts its next pass
            for ex in stream_examples(stream, self.tokenizer, self.cfg, self.stats):
                self.id_hash.update(ex["id"].encode())
                self.yielded += 1
                yield ex
            epoch += 1
            stream.position = 0


def peft_config(args: TrainArgs):
    from peft import LoraConfig, TaskType

    if args.peft != "lora":
        raise ValueError(f"unknown --peft {args.peft!r}")
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules or "all-linear",
    )


def build_model(args: TrainArgs):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    model = get_peft_model(model, peft_config(args))
    return model, tokenizer


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "accelerate", "datasets", "pyarrow", "forge-instruct"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def run(args: TrainArgs, mix: Mixture, home: Path | None = None, on_log=None) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    set_seed(args.seed)
    model, tokenizer = build_model(args)
    cfg = TokenizeConfig(
        cutoff_len=args.cutoff_len, train_on_inputs=args.train_on_inputs, mask_history=args.mask_history
    )
    dataset = MixtureDataset(mix, home, tokenizer, cfg)
    losses: list[float] = []

    class LossLog(TrainerCallback):
        def on_log(self, _args, state, _control, logs=None, **_kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if on_log:
                    on_log(state.global_step, float(logs["loss"]))

    class StreamTrainer(Trainer):
        # The dataset slices the global stream by rank itself; accelerate must not shard it again.
        def get_train_dataloader(self):
            return torch.utils.data.DataLoader(
                self.train_dataset,
                batch_size=self.args.per_device_train_batch_size,
                collate_fn=lambda exs: pad_batch(exs, tokenizer.pad_token_id),
            )

    targs = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        report_to=[],
        seed=args.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
    )
    trainer = StreamTrainer(model=model, args=targs, train_dataset=dataset, callbacks=[LossLog()])
    if on_log is not None:  # the caller prints the losses; the Trainer's raw dict printer would repeat them
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    out = Path(args.output_dir)
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    manifest = {
        "mixture": mix.name,
        "mixture_fingerprint": mix.fingerprint(),
        "data_fingerprint": dataset.id_hash.hexdigest(),
        "examples_seen": dataset.yielded,
        "tokens": dataset.stats.tokens,
        "trained_tokens": dataset.stats.trained_tokens,
        "dropped_overlong": dataset.stats.dropped_overlong,
        "truncated": dataset.stats.truncated,
        "losses": losses,
        "seconds": round(seconds, 2),
        "args": asdict(args),
        "versions": versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pid": os.getpid(),
    }
    (out / "run_manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest

"""The fine-tuning recipe: a mixture stream -> a PEFT adapter, through the transformers Trainer.

Read it top to bottom (the options themselves, TrainArgs, are defined once in train/config.py):
  check_args       impossible combinations, said in one line before anything loads
                   (train/arg_checks.py)
  MixtureDataset   the stream as a torch IterableDataset: each (rank, worker) reads its own slice
                   of the same global stream, tokenizes in batches and packs (train/packing.py)
  peft_config      every PEFT method by name, plus any peft PeftType through --peft-config JSON
  build_model      base model (optionally 4/8-bit through bitsandbytes) + family defaults + PEFT
  run              Trainer, then adapter + tokenizer + run_manifest.json (the figures it computes,
                   such as counts over ranks and loss windows: train/run_manifest.py)

Resume: a checkpoint holds the Trainer state and data_state.json (the stream fingerprint and
the number of batches consumed). The stream is a pure function of the mixture, so a resumed
run replays it and skips exactly the consumed batches: it sees the same next batch as an
uninterrupted run. Evaluation uses a held-out slice: the first `eval_size` positions of the
global stream are never trained on.
"""

from __future__ import annotations

# ruff: noqa: E402 - forge.train.threads must set the OpenMP wait policy before torch loads
import json
import time
from dataclasses import asdict
from itertools import chain
from pathlib import Path

import numpy as np

from forge.train import threads

threads.before_torch()  # idle OpenMP threads sleep: libgomp reads this once, when torch loads it
import torch
import xxhash

from forge.build import write_json_atomic
from forge.mixture import Mixture, MixtureStream
from forge.paths import data_home
from forge.train.arg_checks import check_args, resolve_packing
from forge.train.config import TrainArgs, dump_recipe
from forge.train.data import IGNORE, StreamStats, TokenizeConfig, pad_batch, stream_examples
from forge.train.families import family_of, present_targets
from forge.train.packing import PackStats, collate_packed, mask_style, pack
from forge.train.preference import (
    PREFERENCE,
    PREFERENCE_METRICS,
    PreferenceMixin,
    check_pair_mixture,
    stream_pairs,
)
from forge.train.run_manifest import _gather_counts, composition, loss_windows, tokenizer_hash, versions


class MixtureDataset(torch.utils.data.IterableDataset):
    """Yields ready batches. Each (rank, worker) reads its own slice of the global stream."""

    def __init__(
        self,
        mix: Mixture,
        home: Path | None,
        tokenizer,
        cfg: TokenizeConfig,
        args: TrainArgs,
        start: int = 0,
        stop: int | None = None,
        mask: str | None = "bool",  # how the model takes a packed row's mask (packing.mask_style)
    ):
        self.mix, self.home, self.tokenizer, self.cfg, self.args = mix, home, tokenizer, cfg, args
        self.start, self.stop, self.mask = start, stop, mask
        self.stats = StreamStats()
        self.pack_stats = PackStats()
        self.id_hash = xxhash.xxh64()  # fingerprint of the exact record ids trained on, in order
        self.batches = 0
        self.examples = 0
        self.tokens = 0  # in the batches handed to the model (the stream tokenizes ahead of them)
        self.trained_tokens = 0
        self.skip_batches = 0
        self.trace: list[list[str]] = []  # record ids per batch, for tests and lineage
        self.component_tokens: dict[str, int] = {}  # tokens handed to the model, per mixture component

    def _passes(self, rank: int, world: int, worker: int, workers: int):
        """One example stream per pass over the mixture: args.epochs of them, or until the
        Trainer stops at max_steps."""
        done = 0
        while self.args.epochs is None or done < self.args.epochs:
            done += 1
            stream = MixtureStream(
                self.mix, self.home, rank=rank, world_size=world, worker=worker, num_workers=workers
            )
            stream.position = self.start
            before = self._kept()
            examples = stream_pairs if self.args.method in PREFERENCE else stream_examples
            yield examples(_until(stream, self.stop), self.tokenizer, self.cfg, self.stats)
            if self.stop is not None:
                return
            if self._kept() == before:  # or the next pass spins forever
                raise ValueError(
                    f"rank {rank} of {world}: a whole pass over mixture {self.mix.name!r} gave no examples "
                    f"({self.stats.dropped_overlong:,} dropped by --cutoff-len {self.cfg.cutoff_len} "
                    f"with --overlong {self.cfg.overlong}, {self.stats.empty_outputs:,} with an empty "
                    f"output; or the mixture has fewer records than ranks)"
                )

    def _kept(self) -> int:
        return self.stats.records - self.stats.dropped_overlong - self.stats.empty_outputs

    def _batches(self):
        """Lists of packed rows (or of examples, unpacked), batch_size each."""
        info = torch.utils.data.get_worker_info()
        rank, world = _rank_world()
        passes = self._passes(rank, world, info.id if info else 0, info.num_workers if info else 1)
        if self.args.packing:
            # each pass is packed on its own: the buffer never mixes two epochs, so every record is
            # trained on once per epoch before the next epoch begins
            rows = chain.from_iterable(
                pack(p, self.args.cutoff_len, self.args.pack_buffer, stats=self.pack_stats) for p in passes
            )
            return _chunks(rows, self.args.batch_size)
        return _chunks(chain.from_iterable(passes), self.args.batch_size)

    def count_batches(self) -> int:
        """Batches in this dataset's passes (args.epochs must be set): a dry run of tokenizing
        and packing on a fresh copy, so the Trainer knows its exact number of steps."""
        probe = MixtureDataset(
            self.mix, self.home, self.tokenizer, self.cfg, self.args, self.start, self.stop, self.mask
        )
        return sum(1 for _ in probe._batches())

    def __iter__(self):
        pad = self.tokenizer.pad_token_id
        packed = self.args.packing
        pairs = self.args.method in PREFERENCE
        for n, items in enumerate(self._batches()):
            if n < self.skip_batches:  # resume: replay the stream, skip what was consumed
                continue
            if pairs:  # both answers of every pair count: 2B sequences
                items_ids = [p["id"] for p in items]
                items = [p["chosen"] for p in items] + [p["rejected"] for p in items]
            ids = [i for r in items for i in r["ids"]] if packed else [e["id"] for e in items]
            if pairs:
                ids = items_ids
            for i in ids:
                self.id_hash.update(i.encode())
            self.examples += len(ids)
            self.tokens += sum(len(x["input_ids"]) for x in items)
            self.trained_tokens += sum(int(np.count_nonzero(x["labels"] != IGNORE)) for x in items)
            for x in items:
                pieces = (
                    zip(x["components"], x["seq_lens"], strict=True)
                    if packed
                    else [(x["component"], len(x["input_ids"]))]
                )
                for component, n_tokens in pieces:
                    self.component_tokens[component] = self.component_tokens.get(component, 0) + n_tokens
            self.batches = n + 1
            self.trace.append(ids)
            # pairs: pad_batch over the chosen then the rejected sequences is collate_pairs' 2B rows
            yield collate_packed(items, pad, mask=self.mask) if packed else pad_batch(items, pad)


def _until(stream: MixtureStream, stop: int | None):
    for table in stream:
        if stop is not None and stream.position > stop:
            keep = table["_position"].to_numpy() < stop
            import pyarrow as pa

            table = table.filter(pa.array(keep))
            if table.num_rows:
                yield table
            return
        yield table


def _chunks(items, n: int):
    chunk = []
    for x in items:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def peft_config(args: TrainArgs, model):
    import peft

    if args.peft_config:
        return peft.get_peft_config(dict(args.peft_config))
    family = family_of(getattr(model.config, "model_type", ""))
    targets = args.target_modules or present_targets(model, family)
    task = peft.TaskType.CAUSAL_LM
    if args.peft in ("lora", "qlora", "dora"):
        return peft.LoraConfig(
            task_type=task,
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets,
            use_dora=args.peft == "dora",
        )
    if args.peft == "adalora":
        return peft.AdaLoraConfig(
            task_type=task,
            init_r=args.adalora_init_r,
            target_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            target_modules=targets,
            tinit=args.adalora_tinit,
            tfinal=args.adalora_tfinal,
            deltaT=args.adalora_delta_t,
            total_step=args.max_steps,
        )
    if args.peft == "ia3":
        ff = [t for t in family.ia3_feedforward if isinstance(targets, list) and t in targets]
        return peft.IA3Config(task_type=task, target_modules=targets, feedforward_modules=ff or None)
    if args.peft == "prefix":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=args.num_virtual_tokens)
    if args.peft == "p_tuning":
        return peft.PromptEncoderConfig(
            task_type=task,
            num_virtual_tokens=args.num_virtual_tokens,
            encoder_hidden_size=args.encoder_hidden_size,
        )
    return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=args.num_virtual_tokens)


def build_model(args: TrainArgs, say=None):
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    family = family_of(getattr(config, "model_type", ""))
    if not family.packs:
        if args.packing:
            raise ValueError(f"--packing: {family.name} models cannot pack ({family.notes}); drop --packing")
        if args.packing is None and say:
            say(f"packing is off: {family.name}: {family.notes}")
        args.packing = False
    elif args.packing is None:
        args.packing = True
    if family.remote_code and not args.trust_remote_code:
        raise ValueError(
            f"{args.model}: the {family.name} family runs code from the model repo; pass --trust-remote-code"
        )
    tokenizer = AutoTokenizer.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    kwargs: dict = {"trust_remote_code": args.trust_remote_code}
    if args.attn_implementation:
        kwargs["attn_implementation"] = args.attn_implementation
    bits = 4 if args.peft == "qlora" else args.quantization
    if not bits and (args.bf16 or args.fp16):
        # the frozen base in half precision halves its memory; peft keeps the adapter in float32
        kwargs["dtype"] = torch.bfloat16 if args.bf16 else torch.float16
    if bits:
        from transformers import BitsAndBytesConfig

        dtype = getattr(torch, args.compute_dtype)
        kwargs["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            if bits == 4
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    model = AutoModelForCausalLM.from_pretrained(args.model, **kwargs)
    if bits:
        # bitsandbytes on CPU repacks 4-bit weights for good on an eval-mode forward, after which
        # LoRA gets no gradient: switch to train mode before anything runs a forward
        model.train()
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=args.gradient_checkpointing)
    elif args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(model, peft_config(args, model))
    model.train()
    template = args.template or default_template(tokenizer)
    return model, tokenizer, family, template


def default_template(tokenizer) -> str:
    """The tokenizer's own chat template when it ships one (an instruct model was tuned on
    it), forge's alpaca layout otherwise; training and inference both start from this."""
    return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"


def training_arguments(args: TrainArgs):
    """The transformers TrainingArguments for a run: our knobs, plus FSDP/DeepSpeed passed through."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        lr_scheduler_type=args.lr_scheduler,
        weight_decay=args.weight_decay,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500,
        eval_strategy="steps" if args.eval_size and args.eval_steps else "no",
        eval_steps=args.eval_steps or None,
        report_to=args.report_to or [],
        seed=args.seed,
        disable_tqdm=True,
        bf16=args.bf16,
        fp16=args.fp16,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,  # adapters train every parameter they add
        fsdp=True if args.fsdp or args.fsdp_config else None,
        fsdp_config=args.fsdp_config,
        deepspeed=args.deepspeed,
        ignore_data_skip=True,  # our dataset skips consumed batches itself (see MixtureDataset)
    )


def _set_origin(args: TrainArgs, key: str, where: str) -> None:
    """Say in the effective recipe (args.origin, train/config.py) why a value is what it is."""
    args.origin = {**getattr(args, "origin", {}), key: where}


def clamp_warmup(args: TrainArgs) -> str | None:
    """A warm-up as long as the run would never reach the peak learning rate: it is cut to a
    tenth of the run. Returns the note to print when it does."""
    if args.warmup_steps < args.max_steps or args.warmup_steps == 0:
        return None
    was, origin = args.warmup_steps, getattr(args, "origin", {}).get("warmup_steps", "given")
    args.warmup_steps = args.max_steps // 10
    _set_origin(args, "warmup_steps", f"{origin}: {was}, clamped to a tenth of the {args.max_steps}-step run")
    return (
        f"warmup_steps {was} ({origin}) is not shorter than the run's {args.max_steps} steps; "
        f"warming up for {args.warmup_steps} instead (a tenth of the run)"
    )


def default_output_dir(args: TrainArgs, home: Path | None = None) -> Path:
    """Where a run goes when the recipe names no output_dir: data home/runs/MIXTURE-PEFT."""
    return Path(home or data_home()) / "runs" / f"{args.mixture}-{args.peft}"


def run(args: TrainArgs, mix: Mixture, home: Path | None = None, on_log=None, say=None) -> dict:
    """Train; `on_log` gets every logged step, `say` the notes (packing turned off, ...)."""
    from transformers import Trainer, TrainerCallback, set_seed

    threads.setup("train")  # torch on every core, the tokenizer on one thread beside it
    if args.output_dir is None:
        args.output_dir = str(default_output_dir(args, home))
    note = resolve_packing(args)
    if note and say:
        say(note)
    check_args(args)
    if args.method in PREFERENCE:
        check_pair_mixture(mix, args.method)
    set_seed(args.seed)
    model, tokenizer, family, template = build_model(args, say)
    cfg = TokenizeConfig(
        cutoff_len=args.cutoff_len,
        train_on_inputs=args.train_on_inputs,
        mask_history=args.mask_history,
        overlong=args.overlong,
        template=template,
    )
    mask = mask_style(getattr(model.config, "_attn_implementation", None))
    dataset = MixtureDataset(mix, home, tokenizer, cfg, args, start=args.eval_size, mask=mask)
    eval_set = None
    if args.eval_size:
        eval_ds = MixtureDataset(mix, home, tokenizer, cfg, args, start=0, stop=args.eval_size, mask=mask)
        eval_set = _EvalList(list(eval_ds))
    losses: list[float] = []
    evals: list[float] = []
    preference: dict[str, list[float]] = (
        {k: [] for k in PREFERENCE_METRICS} if args.method in PREFERENCE else {}
    )
    clock = {"start": time.perf_counter(), "tokens": 0}

    class StreamLog(TrainerCallback):
        def on_train_begin(self, _args, state, _control, **_kw):
            clock.update(start=time.perf_counter(), tokens=dataset.tokens, step=state.global_step)

        def on_log(self, _args, state, _control, logs=None, **_kw):
            if logs and "loss" in logs:
                logs["packing_efficiency"] = round(dataset.pack_stats.efficiency, 4) if args.packing else None
                losses.append(float(logs["loss"]))
                elapsed = max(time.perf_counter() - clock["start"], 1e-9)
                done = max(state.global_step - clock.get("step", 0), 1)
                entry = {
                    "step": state.global_step,
                    "max_steps": state.max_steps,
                    "loss": float(logs["loss"]),
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                    "tokens_per_s": (dataset.tokens - clock["tokens"]) / elapsed,
                    "eta_s": elapsed / done * max(state.max_steps - state.global_step, 0),
                    "packing": logs.get("packing_efficiency"),
                }
                for key, values in preference.items():  # the pair metrics of this logging window
                    if key in logs:
                        values.append(float(logs[key]))
                        entry[key] = float(logs[key])
                logs["tokens_per_s"] = round(entry["tokens_per_s"], 1)
                if on_log:
                    on_log(entry)
            if logs and "eval_loss" in logs:
                evals.append(float(logs["eval_loss"]))
                if on_log:
                    on_log({"step": state.global_step, "eval_loss": float(logs["eval_loss"])})

        def on_optimizer_step(self, _args, state, _control, model=None, **_kw):
            if args.peft == "adalora":  # AdaLoRA re-allocates ranks from the current gradients
                model.base_model.update_and_allocate(state.global_step)

        def on_save(self, _args, state, _control, **_kw):
            if not state.is_world_process_zero:  # every rank consumed the same number of batches
                return
            ckpt = Path(_args.output_dir) / f"checkpoint-{state.global_step}"
            (ckpt / "data_state.json").write_text(
                json.dumps(
                    {
                        "batches": dataset.batches,
                        "examples": dataset.examples,
                        "fingerprint": mix.fingerprint(),
                    }
                )
            )

    base = (PreferenceMixin, Trainer) if args.method in PREFERENCE else (Trainer,)

    class StreamTrainer(*base):
        # The dataset slices the stream by rank and builds batches itself; accelerate must not
        # shard or re-batch it again.
        def get_train_dataloader(self):
            return torch.utils.data.DataLoader(self.train_dataset, batch_size=None)

        def get_eval_dataloader(self, eval_dataset=None):
            return torch.utils.data.DataLoader(eval_dataset or self.eval_dataset, batch_size=None)

    targs = training_arguments(args)  # sets up the process group under torchrun / accelerate
    if args.epochs:
        # exact: count the batches of the requested passes first (per-epoch packing makes the
        # count a pure function of the mixture); ranks agree on the smallest count
        n = dataset.count_batches()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([n], device=targs.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            n = int(t.item())
        if n == 0:
            raise ValueError(f"--epochs {args.epochs}: the mixture gives no batch on this rank")
        args.max_steps = targs.max_steps = -(-n // args.grad_accum)
        _set_origin(args, "max_steps", f"counted: {args.epochs} epoch(s) of this mixture")
        if args.peft == "adalora":  # its rank schedule is laid out over the run's steps
            for config in model.peft_config.values():
                config.total_step = args.max_steps
    note = clamp_warmup(args)
    if note:
        targs.warmup_steps = args.warmup_steps
        if say:
            say(note)
    if args.resume_from:
        state = json.loads((Path(args.resume_from) / "data_state.json").read_text())
        if state["fingerprint"] != mix.fingerprint():
            raise ValueError(
                f"{args.resume_from}: checkpoint was trained on another mixture build; refusing to resume"
            )
        dataset.skip_batches = state["batches"]
    trainer = StreamTrainer(
        model=model, args=targs, train_dataset=dataset, eval_dataset=eval_set, callbacks=[StreamLog()]
    )
    trainer.method, trainer.beta = args.method, args.beta
    if on_log is not None:  # the caller prints the losses; the Trainer's raw dict printer would repeat them
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=args.resume_from)
    seconds = time.perf_counter() - t0
    out = Path(args.output_dir)
    trainer.save_model(str(out / "adapter"))  # the main process writes; FSDP/DeepSpeed gather first
    rank, world = _rank_world()
    # lineage: the record ids of every batch this rank trained on, in order; one file per rank
    lineage = out / ("batches.jsonl" if world == 1 else f"batches.rank{rank}.jsonl")
    with open(lineage, "a" if args.resume_from else "w") as fh:
        for n, ids in enumerate(dataset.trace, start=dataset.skip_batches + 1):
            fh.write(json.dumps({"batch": n, "ids": ids}) + "\n")
    counts = _gather_counts(dataset, world)
    manifest = {
        "mixture": mix.name,
        "mixture_fingerprint": mix.fingerprint(),
        "source_versions": mix.versions,  # the exact build of every source this run read
        "data_fingerprint": counts["data_fingerprint"],
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "base_model": args.model,
        "family": family.name,
        "template": template,
        "world_size": world,
        "distributed": trainer.accelerator.distributed_type.value,  # NO | MULTI_GPU | FSDP | DEEPSPEED ...
        "examples_seen": counts["examples"],
        "batches": dataset.batches,
        "tokens": counts["tokens"],
        "trained_tokens": counts["trained_tokens"],
        "records_tokenized": counts["records_tokenized"],  # dropped/truncated count among these
        "dropped_overlong": counts["dropped_overlong"],
        "truncated": counts["truncated"],
        "tokens_cut": counts["tokens_cut"],  # removed from the truncated records
        "empty_outputs_dropped": counts["empty_outputs"],
        "composition": composition(counts["sampled_tokens"], counts["component_tokens"]),
        "loss_windows": loss_windows(losses),
        "packing_efficiency": round(counts["pack_tokens"] / counts["pack_slots"], 4)
        if args.packing and counts["pack_slots"]
        else None,
        "losses": losses,
        "eval_losses": evals,
        "method": args.method,
        # per logged step, for dpo / orpo: reward margin, preference accuracy, chosen and rejected
        # log-probs and rewards (train/preference.py)
        "preference": {
            "beta": args.beta,
            "pairs_seen": counts["examples"],
            "not_pairs_skipped": counts["not_pairs"],  # records of pair sources that are no pair
            "first": {k: v[0] for k, v in preference.items() if v},
            "last": {k: v[-1] for k, v in preference.items() if v},
            "steps": preference,
        }
        if preference
        else None,
        "seconds": round(seconds, 2),
        "args": asdict(args),
        "recipe": "recipe.yaml",
        "versions": versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if rank == 0:
        # the effective recipe: `forge train RUN/recipe.yaml` runs this again
        (out / "recipe.yaml").write_text(dump_recipe(args), encoding="utf-8")
        tokenizer.save_pretrained(out / "adapter")
        write_json_atomic(out / "run_manifest.json", manifest)
        write_json_atomic(out / "adapter" / "run_manifest.json", manifest)
    return manifest


def _rank_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _EvalList(torch.utils.data.Dataset):
    def __init__(self, batches: list):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        return self.batches[i]


def merge(adapter_dir: Path, out: Path, max_shard_size: str = "5GB") -> Path:
    """LoRA-family adapters only: merge into a fresh full-precision copy of the base."""
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = peft.PeftConfig.from_pretrained(adapter_dir)
    if cfg.peft_type.value not in ("LORA", "ADALORA", "IA3", "LOHA", "LOKR"):
        raise ValueError(
            f"{adapter_dir}: a {cfg.peft_type.value} adapter adds virtual tokens and cannot be merged into the base"
        )
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model_name_or_path)
    model = peft.PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out)
    src = adapter_dir / "run_manifest.json"
    if src.exists():
        manifest = json.loads(src.read_text())
        manifest["merged_from"] = str(adapter_dir)
        (out / "run_manifest.json").write_text(json.dumps(manifest, indent=2))
    return out

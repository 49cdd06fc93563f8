"""The mixture verbs: sample sources into a weighted mixture, publish datasets to the Hub, and
pull published ones back as catalog sources."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from forge.cli.common import (
    CatalogOpt,
    ExecutorFlags,
    ExecutorOpt,
    HomeOpt,
    JsonOpt,
    KeepOpt,
    NoWaitOpt,
    OverwriteOpt,
    RayAddressOpt,
    _byte_size,
    _fail,
    _home,
    _print_json,
    _progress,
    _show,
    _table,
    add,
    console,
    err,
)

PANEL = "Mixtures"


def register(app: typer.Typer) -> None:
    for verb in (mix, publish, pull):
        add(app, PANEL, verb)


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
    from forge.materialize import materialize
    from forge.mixture import resolve
    from forge.paths import mixture_store

    run_on = ExecutorFlags(executor, ray_address).choose()

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
    shard_bytes = _byte_size("--max-shard-size", max_shard_size)
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


def pull(
    spec: Annotated[str, typer.Argument(help="OWNER/NAME[:config] of a published dataset.")],
    revision: Annotated[str, typer.Option(help="Hub revision to pull: a branch, tag or commit.")] = "main",
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

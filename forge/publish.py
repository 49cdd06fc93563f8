"""forge publish / forge pull: built sources, filter results and mixtures <-> Hub dataset repos.

Staging writes a folder that is already a valid Hub dataset repo:

    data/<config>/train-00000-of-00003.parquet ...   one config per source, one per mixture
    lineage/<mixture>/ids.parquet                    a mixture's lineage (position, id, source, raw row)
    README.md                                        YAML header (configs, languages, licenses,
                                                     task categories, size) + dataset card

Publishing a mixture stages exactly its records (its own config, which is also `default`), and
for each of its sources only the records the mixture drew (--full-sources: all of them). A
source named as a target on its own is published whole. Licenses are Hub license ids
(custom terms: `other` with license_name/license_link); no local path reaches the card.

A config holding preference pairs also gets `<config>-pairs`, the pairs in TRL's
conversational preference layout (forge/pairs_layout.py); `default` is the pairs when every
source published (or drawn by the mixture) holds pairs, so load_dataset(repo) feeds a DPO trainer.

`datasets.load_dataset(folder, config)` reads it exactly as the Hub would serve it. Upload
goes through huggingface_hub's HfApi: create_repo, then create_commit in batches that stay
under the Hub's per-commit limits, each retried with backoff on 429 and 5xx. The token comes
from huggingface_hub (HF_TOKEN or the login cache) and is scrubbed from every message.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from forge.built import open_built
from forge.catalog import Catalog, add_entry
from forge.errors import ForgeError
from forge.paths import data_home
from forge.store import finish_out, output_files, prepare_out

MAX_FILES_PER_COMMIT = 50
RETRY_STATUS = {429, 500, 502, 503, 504}
RETRIES = 5


class PublishError(ForgeError):
    pass


@dataclass
class Config:
    name: str
    kind: str  # source | mixture | filter | pairs (a config's pairs in TRL's layout)
    files: list[Path]  # Parquet files with RECORD_SCHEMA
    rows: int
    manifest: dict
    license: str | None = None
    licenses: list[str] = field(default_factory=list)
    keep_ids: set[str] | None = None  # only these records (a source subset a mixture drew)
    full_rows: int | None = None  # the source's rows when this config is a subset
    extra: dict[str, Path] = field(default_factory=dict)  # path in the repo -> local file
    homepage: str | None = None
    pairs_of: str | None = None  # kind pairs: the config whose pair records these are


# Hub license ids forge's catalog values map to; anything else is published as `other`
HUB_LICENSE_IDS = {
    "apache-2.0",
    "mit",
    "cc-by-4.0",
    "cc-by-sa-3.0",
    "cc-by-sa-4.0",
    "cc-by-nc-4.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nc-nd-4.0",
    "cc0-1.0",
    "gpl-2.0",
    "gpl-3.0",
    "lgpl-3.0",
    "agpl-3.0",
    "bsd-2-clause",
    "bsd-3-clause",
    "odc-by",
    "odbl",
    "openrail",
    "unlicense",
}
MIN_LANG_SHARE = 0.01  # a language is listed in the card when at least 1% of the rows have it


def _parquet_files(folder: Path, manifest: dict) -> list[Path]:
    return [folder / s["file"] for s in manifest["shards"]]


def collect_targets(
    targets: list[str],
    catalog: Catalog,
    home: Path,
    allow_missing_license: bool = False,
    full_sources: bool = False,
) -> list[Config]:
    """Resolve each TARGET to configs: a built source, a mixture (with its sources, cut to
    the records it drew unless full_sources), or a `forge filter` output folder."""
    import polars as pl

    from forge.materialize import materialize, read_materialized
    from forge.mixture import available, resolve

    configs: dict[str, Config] = {}
    whole = {t for t in targets if t in catalog}  # sources asked for by name: published whole

    def add_source(name: str, built=None, keep_ids: set[str] | None = None) -> None:
        if name in configs:
            return
        built = built or open_built(name, home)  # pinned: a rebuild meanwhile changes nothing here
        if built is None:
            raise PublishError(f"source {name!r} is not built; run: forge build {name}")
        m = built.manifest
        src = catalog.get(name)
        lic = src.license
        rows, full = (len(keep_ids), m["rows"]) if keep_ids is not None else (m["rows"], None)
        configs[name] = Config(
            name,
            "source",
            built.files(),
            rows,
            m,
            lic,
            [lic] if lic else [],
            keep_ids,
            full,
            {},
            src.homepage,
        )

    for target in targets:
        if target in catalog:
            add_source(target)
        elif target in available():
            mix = resolve(target, catalog, home=home)
            current = read_materialized(target, home)
            if current is None or current[1].get("fingerprint") != mix.fingerprint():
                materialize(mix, home)
                current = read_materialized(target, home)
            folder, mm = current
            used = pl.read_parquet(folder / "ids.parquet", columns=["id", "source"]).unique()
            for leaf in mix.leaves:
                keep = None
                if not full_sources and leaf.source not in whole:
                    keep = set(used.filter(pl.col("source") == leaf.source)["id"].to_list())
                add_source(leaf.source, mix.pinned[leaf.source], keep)
            lics = sorted({configs[leaf.source].license or "" for leaf in mix.leaves})
            configs[target] = Config(
                target,
                "mixture",
                _parquet_files(folder, mm),
                mm["rows"],
                mm,
                None,
                [x for x in lics if x],
                extra={f"lineage/{target}/ids.parquet": folder / "ids.parquet"},
            )
        elif Path(target).is_dir() and (Path(target) / "manifest.json").exists():
            fm = json.loads((Path(target) / "manifest.json").read_text())
            name = fm.get("name") or Path(target).name
            # the manifest's shards: never dropped.parquet beside them
            configs[name] = Config(name, "filter", _parquet_files(Path(target), fm), fm["rows"], fm)
            for s in fm.get("sources", []):
                lic = catalog.get(s).license if s in catalog else None
                configs[name].licenses.extend([lic] if lic else [])
        else:
            from forge.catalog import unknown_message

            raise PublishError(
                unknown_message(
                    "target (source, mixture or filter folder)", target, catalog.names() + list(available())
                )
            )
    missing = [c.name for c in configs.values() if c.kind == "source" and not c.license]
    if missing and not allow_missing_license:
        raise PublishError(
            f"no license in the catalog for {', '.join(missing)}; add `license:` to the catalog entry, "
            f"or pass --allow-missing-license to publish anyway"
        )
    return _with_pairs(list(configs.values()))


def _with_pairs(configs: list[Config]) -> list[Config]:
    """Each config followed by its pairs in TRL's layout (`<name>-pairs`) when it holds any."""
    from forge.pairs_layout import SUFFIX, count_pairs

    out = []
    names = {c.name for c in configs}
    for c in configs:
        out.append(c)
        n = count_pairs(c.files, c.keep_ids)
        if not n:
            continue
        name = c.name + SUFFIX
        if name in names:
            raise PublishError(f"config {name!r} would hold {c.name}'s pairs, and a target has that name")
        out.append(replace(c, name=name, kind="pairs", rows=n, full_rows=None, extra={}, pairs_of=c.name))
    return out


def _size_category(n: int) -> str:
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
    ]
    return next((label for bound, label in bounds if n < bound), "100M<n<1B")


def _write_config(cfg: Config, out: Path, max_shard_bytes: int) -> list[str]:
    """Rewrite a config's rows into train-NNNNN-of-MMMMM.parquet shards of at most
    ~max_shard_bytes (estimated from the source's own bytes per row, then checked)."""
    total_bytes = sum(f.stat().st_size for f in cfg.files)
    per_row = max(1.0, total_bytes / max(cfg.rows, 1))
    rows_per_shard = max(1, int(max_shard_bytes * 0.9 / per_row))
    n_shards = max(1, math.ceil(cfg.rows / rows_per_shard))
    folder = out / "data" / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"train-{i:05d}-of-{n_shards:05d}.parquet" for i in range(n_shards)]
    writer, shard, in_shard = None, 0, 0
    schema = pq.read_schema(cfg.files[0]) if cfg.files else None
    if cfg.kind == "pairs":
        from forge.pairs_layout import PAIR_SCHEMA, to_pairs

        schema = PAIR_SCHEMA
    keep = pa.array(sorted(cfg.keep_ids), pa.string()) if cfg.keep_ids is not None else None
    subset_counts: dict[str, dict] = {k: {} for k in ("lang", "task", "gen", "category")}
    for f in cfg.files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=8192):
            if keep is not None:  # a source cut to the records a mixture drew
                batch = batch.filter(pc.is_in(batch.column("id"), value_set=keep))
                for key in subset_counts:
                    for item in pc.value_counts(batch.column(key)).to_pylist():
                        value = item["values"]
                        subset_counts[key][value] = subset_counts[key].get(value, 0) + item["counts"]
            if cfg.kind == "pairs":
                batch = to_pairs(batch)
            while batch.num_rows:
                if writer is None:
                    writer = pq.ParquetWriter(folder / names[shard], schema, compression="zstd")
                take = min(rows_per_shard - in_shard, batch.num_rows)
                writer.write_batch(batch.slice(0, take))
                in_shard += take
                batch = batch.slice(take)
                if in_shard >= rows_per_shard and shard < n_shards - 1:
                    writer.close()
                    writer, shard, in_shard = None, shard + 1, 0
    if writer is not None:
        writer.close()
    for name in names[shard + 1 :]:  # rounding left a shard empty: write it with the schema
        pq.write_table(schema.empty_table(), folder / name)
    if keep is not None:  # the card describes the rows published, not the whole source
        cfg.manifest = {
            **cfg.manifest,
            "tag_counts": {k: dict(sorted(v.items())) for k, v in subset_counts.items()},
        }
    return names


def stage(
    configs: list[Config],
    repo: str,
    out: Path,
    max_shard_bytes: int = 500 << 20,
    home: Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Hub-ready folder (atomically: a temp folder renamed into place). `out` must
    be new, empty, or an earlier forge staging folder (with overwrite)."""
    home = home or data_home()
    tmp = prepare_out(out, overwrite)
    try:
        shard_names = {cfg.name: _write_config(cfg, tmp, max_shard_bytes) for cfg in configs}
        for cfg in configs:
            for repo_path, local in cfg.extra.items():
                (tmp / repo_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, tmp / repo_path)
        (tmp / "README.md").write_text(dataset_card(configs, repo, shard_names, home), encoding="utf-8")
        finish_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_configs(configs: list[Config]) -> list[Config]:
    """What load_dataset(repo) gives: the (first) mixture, else the union of the sources; their
    pairs in TRL's layout instead when every source they hold has pairs."""
    sources = [c for c in configs if c.kind == "source"]
    mixtures = [c for c in configs if c.kind == "mixture"]
    chosen = mixtures[:1] or sources
    pairs = {c.pairs_of: c for c in configs if c.kind == "pairs"}
    if chosen and all(c.name in pairs for c in sources + chosen):
        return [pairs[c.name] for c in chosen]
    return chosen


def _card_metadata(configs: list[Config]) -> dict:
    licenses = sorted({lic for c in configs for lic in c.licenses})
    yaml_configs = []
    default = default_configs(configs)
    has_mixture = any(c.kind == "mixture" for c in configs)
    if default:  # a mixture is what was asked for: it is what load_dataset(repo) gives
        paths = [f"data/{c.name}/*.parquet" for c in default]
        yaml_configs.append(
            {
                "config_name": "default",
                "default": True,
                # a mixture's one config, or the union of the sources (a list, even of one)
                "data_files": [{"split": "train", "path": paths[0] if has_mixture else paths}],
            }
        )
    for c in configs:
        yaml_configs.append(
            {"config_name": c.name, "data_files": [{"split": "train", "path": f"data/{c.name}/*.parquet"}]}
        )
    published = default or configs  # the rows load_dataset(repo) gives
    total = sum(c.rows for c in published)
    ids = sorted({_hub_license(x) for x in licenses}) or ["other"]
    meta = {
        "configs": yaml_configs,
        "language": _languages(published),
        "license": ids if len(ids) > 1 else ids[0],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(total)],
        "tags": ["instruction-tuning", "forge"]
        + (["preference"] if any(c.kind == "pairs" for c in configs) else []),
    }
    custom = [x for x in licenses if _hub_license(x) == "other"]
    if custom:  # the Hub's fields for terms that have no license id
        meta["license_name"] = _slug(custom[0])
        links = [c.homepage for c in configs if c.license == custom[0] and c.homepage]
        if links:
            meta["license_link"] = links[0]
    return meta


def _languages(configs: list[Config]) -> list[str]:
    """Languages of at least MIN_LANG_SHARE of the rows: detection on a stray record or two
    (a Danish-looking line in an English corpus) does not make a dataset Danish."""
    counts: dict[str, int] = {}
    for c in configs:
        for lang, n in c.manifest.get("tag_counts", {}).get("lang", {}).items():
            counts[lang] = counts.get(lang, 0) + n
    total = sum(counts.values()) or 1
    return sorted(k for k, n in counts.items() if k != "und" and n / total >= MIN_LANG_SHARE)


def _hub_license(value: str) -> str:
    """A catalog license (SPDX-style, or free text for custom terms) as a Hub license id."""
    lowered = value.strip().lower()
    return lowered if lowered in HUB_LICENSE_IDS else "other"


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:64] or "custom"


def dataset_card(configs: list[Config], repo: str, shard_names: dict[str, list[str]], home: Path) -> str:
    meta = _card_metadata(configs)
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {repo}",
        "",
        "Instruction-tuning data built with **forge** from each corpus's raw published files, in one",
        "unified schema (`instruction`, `input`, `output`, `history`, tags and provenance).",
        "",
        "```python",
        "import datasets",
        f"ds = datasets.load_dataset({repo!r}, {configs[0].name!r}, split='train')",
        "```",
        "",
        "## Configs",
        "",
        "| config | kind | rows | shards | license |",
        "|---|---|---|---|---|",
    ]
    for c in configs:
        rows = (
            f"{c.rows:,} pairs of `{c.pairs_of}`"
            if c.kind == "pairs"
            else f"{c.rows:,}"
            if c.full_rows is None
            else f"{c.rows:,} of {c.full_rows:,} (those the mixture drew)"
        )
        lines.append(
            f"| `{c.name}` | {c.kind} | {rows} | {len(shard_names[c.name])} | {', '.join(c.licenses) or '—'} |"
        )
    lines += [
        "",
        "## Tag statistics",
        "",
        "Records per tag value (record-level `lang` is detected; `task`/`gen` follow Alpaca-CoT's legend).",
        "",
        "| config | lang | task | gen | category |",
        "|---|---|---|---|---|",
    ]
    for c in (c for c in configs if c.kind != "pairs"):  # a pairs config's tags are its config's
        tc = c.manifest.get("tag_counts", {})

        def fmt(key: str, tc=tc) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in sorted(tc.get(key, {}).items(), key=lambda kv: -kv[1]))

        lines.append(f"| `{c.name}` | {fmt('lang')} | {fmt('task')} | {fmt('gen')} | {fmt('category')} |")
    pairs = [c.name for c in configs if c.kind == "pairs"]
    if pairs:
        from forge.pairs_layout import card_section

        lines += card_section(pairs[-1])
    lines += ["", "## Provenance", ""]
    for c in configs:
        m = c.manifest
        if c.kind == "pairs":
            continue
        if c.kind == "source":
            lines += [
                f"### `{c.name}`",
                "",
                f"- origin: {_public_origin(m.get('origin', {}))}",
                f"- license: {c.license or 'not stated'}",
                f"- build hash: `{m['build_hash']}` (schema v{m['schema_version']}, connector {m['connector']['name']} "
                f"v{m['connector']['version']}, formatter {m['formatter']['name']} v{m['formatter']['version']})",
                f"- raw records: {m['input_records']:,}; quarantined: {m['quarantined']:,}",
                "- raw files (sha256):",
            ]
            lines += [f"  - `{r['name']}` `{r['sha256']}` ({r['bytes']:,} bytes)" for r in m["raw"]]
            lines.append("")
        elif c.kind == "mixture":
            lines += [
                f"### mixture `{c.name}`",
                "",
                f"- strategy {m['spec'].get('strategy', 'rates')}, seed {m['seed']}, {m['rows']:,} examples",
                f"- mixture fingerprint: `{m['fingerprint']}`; lineage ids sha256: `{m['ids_sha256']}`",
                f"- component licenses: {', '.join(c.licenses) or 'none stated'}",
                "- components: " + ", ".join(f"{x['label']} ({x['count']:,})" for x in m["components"]),
                "",
            ]
        else:
            lines += [
                f"### filter `{c.name}`",
                "",
                f"- query: `{m.get('query')}`",
                f"- sources: {', '.join(m.get('sources', []))}",
                "",
            ]
    lines += [
        "Every record keeps `raw_file`, `raw_row` and `raw_line`: the exact place in the raw file it came from.",
        "",
    ]
    return "\n".join(lines)


def _public_origin(origin: dict) -> str:
    """Where a source's raw files came from, as far as it is public: a Hub repo or URLs. A
    local path names the publisher's machine, not the data, and stays out of the card."""
    if origin.get("repo"):
        return f"https://huggingface.co/datasets/{origin['repo']}" + (
            f" @ {origin['revision']}" if origin.get("revision") else ""
        )
    if origin.get("urls"):
        urls = origin["urls"] if isinstance(origin["urls"], list) else [origin["urls"]]
        return ", ".join(urls)
    if origin.get("kind") == "sample":
        return "the small sample shipped with forge"
    return "local copies of the raw files (checksums below)"


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _retrying(call, token: str | None, what: str, sleep=time.sleep):
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(RETRIES):
        try:
            return call()
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status in RETRY_STATUS and attempt < RETRIES - 1:
                sleep(min(30.0, 0.5 * 2**attempt))
                continue
            raise PublishError(_scrub(f"{what} failed (HTTP {status}): {e}", token)) from None
        except _transport_errors() as e:  # refused, reset, timed out, DNS: worth retrying
            if attempt < RETRIES - 1:
                sleep(min(30.0, 0.5 * 2**attempt))
                continue
            raise PublishError(
                _scrub(
                    f"{what} failed after {RETRIES} tries: cannot reach the Hub ({type(e).__name__}: {e})",
                    token,
                )
            ) from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures below HTTP: OSError, and the HTTP clients' own connection errors
    (huggingface_hub talks through httpx/httpx2 in recent versions, requests in older ones)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx", "httpx2"):  # huggingface_hub 2.x ships its HTTP client as httpx2
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(errors)


def staged_files(folder: Path) -> list[Path]:
    """The files of a staged folder that go to the Hub (not forge's own marker)."""
    return [folder / f for f in output_files(folder)]


def upload(
    folder: Path,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    files_per_commit: int = MAX_FILES_PER_COMMIT,
) -> list[str]:
    """create_repo, then commits of at most MAX_FILES_PER_COMMIT files each. Returns commit urls."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    token = get_token()
    api = HfApi(token=token)
    _retrying(
        lambda: api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True),
        token,
        f"create {repo}",
    )
    if revision and revision != "main" and not create_pr:
        _retrying(
            lambda: api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True),
            token,
            f"create branch {revision}",
        )
    files = staged_files(folder)
    # data first, card last: the card only appears once every file it names is there
    files.sort(key=lambda p: p.name == "README.md")
    batches = [files[i : i + files_per_commit] for i in range(0, len(files), files_per_commit)]
    urls = []
    for i, batch in enumerate(batches, start=1):
        ops = [
            CommitOperationAdd(path_in_repo=str(p.relative_to(folder)), path_or_fileobj=str(p)) for p in batch
        ]
        info = _retrying(
            lambda ops=ops, i=i: api.create_commit(
                repo,
                ops,
                commit_message=f"forge publish ({i}/{len(batches)})",
                repo_type="dataset",
                revision=revision,
                create_pr=create_pr,
            ),
            token,
            f"commit {i}/{len(batches)} to {repo}",
        )
        urls.append(info.pr_url or info.commit_url)
    return urls


def pull(spec: str, catalog_file: Path, *, revision: str = "main") -> tuple[str, dict]:
    """Register OWNER/NAME[:config] as a source in a user catalog file. Reads the dataset
    card from the Hub to take its languages and license."""
    from huggingface_hub import hf_hub_download

    repo, _, config = spec.partition(":")
    if repo.count("/") != 1:
        raise PublishError(f"expected OWNER/NAME[:config], got {spec!r}")
    try:
        readme = Path(hf_hub_download(repo, "README.md", repo_type="dataset", revision=revision))
    except Exception as e:
        raise PublishError(
            f"cannot read the dataset card of {repo}@{revision}: {type(e).__name__}: {e}"
        ) from None
    text = readme.read_text(encoding="utf-8")
    meta = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else {}
    configs = {c["config_name"]: c for c in meta.get("configs", [])}
    config = config or ("default" if "default" in configs else next(iter(configs), ""))
    if configs and config not in configs:
        raise PublishError(f"{repo} has no config {config!r}; configs: {', '.join(configs)}")
    paths = configs[config]["data_files"][0]["path"] if configs else ["**/*.parquet"]
    paths = [paths] if isinstance(paths, str) else paths
    langs = meta.get("language") or []
    lang = "EN" if langs == ["en"] else "CN" if langs == ["zh"] else "ML"
    lic = meta.get("license")
    name = f"{repo.replace('/', '__')}__{config}".replace("-", "_")
    entry = {
        "description": f"{repo} ({config}) pulled from the Hub",
        "connector": "parquet",
        "formatter": "columns",
        "options": {"history": "history"},
        "hub": {"repo": repo, "files": paths, "revision": revision},
        "lang": lang,
        "task": "MT",
        "gen": "COL",
        "license": ", ".join(lic) if isinstance(lic, list) else lic,
        "homepage": f"https://huggingface.co/datasets/{repo}",
    }
    if all(Path(x).parent.name.endswith("-pairs") for x in paths) and "preference" in (
        meta.get("tags") or []
    ):
        entry.update(formatter="pairs", options={})  # forge's TRL layout (forge/pairs_layout.py)
    add_entry(catalog_file, name, entry, replace=True)  # pulling again refreshes the entry
    return name, entry

"""forge publish / forge pull: built sources, filter results and mixtures <-> Hub dataset repos.

Staging writes a folder that is already a valid Hub dataset repo:

    data/<config>/train-00000-of-00003.parquet ...   one config per source, one per mixture
    README.md                                        YAML header (configs, languages, licenses,
                                                     task categories, size) + dataset card

`datasets.load_dataset(folder, config)` reads it exactly as the Hub would serve it. Upload
goes through huggingface_hub's HfApi: create_repo, then create_commit in batches that stay
under the Hub's per-commit limits, each retried with backoff on 429 and 5xx. The token comes
from huggingface_hub (HF_TOKEN or the login cache) and is scrubbed from every message.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from forge.build import open_built
from forge.catalog import Catalog
from forge.errors import ForgeError
from forge.paths import data_home
from forge.store import MARKER, finish_out, prepare_out

MAX_FILES_PER_COMMIT = 50
RETRY_STATUS = {429, 500, 502, 503, 504}
RETRIES = 5


class PublishError(ForgeError):
    pass


@dataclass
class Config:
    name: str
    kind: str  # source | mixture | filter
    files: list[Path]  # Parquet files with RECORD_SCHEMA
    rows: int
    manifest: dict
    license: str | None = None
    licenses: list[str] = field(default_factory=list)


def _parquet_files(folder: Path, manifest: dict) -> list[Path]:
    return [folder / s["file"] for s in manifest["shards"]]


def collect_targets(
    targets: list[str], catalog: Catalog, home: Path, allow_missing_license: bool = False
) -> list[Config]:
    """Resolve each TARGET to configs: a built source, a mixture (with its sources), or a
    `forge filter` output folder."""
    from forge.mixture import available, materialize, read_materialized, resolve

    configs: dict[str, Config] = {}

    def add_source(name: str, built=None) -> None:
        if name in configs:
            return
        built = built or open_built(name, home)  # pinned: a rebuild meanwhile changes nothing here
        if built is None:
            raise PublishError(f"source {name!r} is not built; run: forge build {name}")
        m = built.manifest
        lic = catalog.get(name).license
        configs[name] = Config(name, "source", built.files(), m["rows"], m, lic, [lic] if lic else [])

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
            for leaf in mix.leaves:
                add_source(leaf.source, mix.pinned[leaf.source])
            lics = sorted({configs[leaf.source].license or "" for leaf in mix.leaves})
            configs[target] = Config(
                target, "mixture", _parquet_files(folder, mm), mm["rows"], mm, None, [x for x in lics if x]
            )
        elif Path(target).is_dir() and (Path(target) / "manifest.json").exists():
            fm = json.loads((Path(target) / "manifest.json").read_text())
            name = fm.get("name") or Path(target).name
            configs[name] = Config(name, "filter", sorted(Path(target).glob("*.parquet")), fm["rows"], fm)
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
    return list(configs.values())


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
    for f in cfg.files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=8192):
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
        (tmp / "README.md").write_text(dataset_card(configs, repo, shard_names, home), encoding="utf-8")
        finish_out(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _card_metadata(configs: list[Config]) -> dict:
    sources = [c for c in configs if c.kind == "source"]
    langs = sorted(
        {lang for c in configs for lang in c.manifest.get("tag_counts", {}).get("lang", {}) if lang != "und"}
    )
    licenses = sorted({lic for c in configs for lic in c.licenses})
    yaml_configs = []
    if sources:
        yaml_configs.append(
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": "train", "path": [f"data/{c.name}/*.parquet" for c in sources]}],
            }
        )
    for c in configs:
        yaml_configs.append(
            {"config_name": c.name, "data_files": [{"split": "train", "path": f"data/{c.name}/*.parquet"}]}
        )
    total = sum(c.rows for c in sources) or sum(c.rows for c in configs)
    meta = {
        "configs": yaml_configs,
        "language": langs,
        "license": [_hub_license(x) for x in licenses]
        if len(licenses) > 1
        else (_hub_license(licenses[0]) if licenses else "other"),
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(total)],
        "tags": ["instruction-tuning", "forge"],
    }
    return meta


def _hub_license(spdx: str) -> str:
    return spdx.lower()


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
        lines.append(
            f"| `{c.name}` | {c.kind} | {c.rows:,} | {len(shard_names[c.name])} | {', '.join(c.licenses) or '—'} |"
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
    for c in configs:
        tc = c.manifest.get("tag_counts", {})

        def fmt(key: str, tc=tc) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in sorted(tc.get(key, {}).items(), key=lambda kv: -kv[1]))

        lines.append(f"| `{c.name}` | {fmt('lang')} | {fmt('task')} | {fmt('gen')} | {fmt('category')} |")
    lines += ["", "## Provenance", ""]
    for c in configs:
        m = c.manifest
        if c.kind == "source":
            origin = m.get("origin", {})
            where = origin.get("repo") or origin.get("urls") or origin.get("path") or "?"
            lines += [
                f"### `{c.name}`",
                "",
                f"- origin: {where}" + (f" @ {origin['revision']}" if origin.get("revision") else ""),
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
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)


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
    data = yaml.safe_load(catalog_file.read_text()) if catalog_file.exists() else None
    data = data or {"sources": {}}
    data.setdefault("sources", {})[name] = entry
    tmp = catalog_file.with_name(f".{catalog_file.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    os.replace(tmp, catalog_file)
    return name, entry

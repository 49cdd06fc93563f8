"""catalog.yaml: the registry of sources, validated on load.

The built-in catalog ships with the package; a user's ``catalog.yaml`` in the current
directory (or given with --catalog) adds sources and may override built-in ones by name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from forge.connectors import CONNECTORS
from forge.errors import CatalogError
from forge.formatters import FORMATTERS
from forge.formatters.safeyaml import YamlInputError, load_yaml_file
from forge.paths import builtin_dir
from forge.store import StoreError, check_name
from forge.vocab import CATEGORIES, DATASET_LANGS, GENS, TASKS

REQUIRED = ("connector", "formatter", "lang", "task", "gen", "description")
KNOWN = set(REQUIRED) | {
    "connector_options",
    "options",
    "hub",
    "local",
    "sample",
    "url",
    "license",
    "homepage",
    "rows",
    "category",
    "priority",
    "members",
    "derive",
    "endpoint",
}
HUB_KEYS = {"repo", "files", "revision", "repo_type", "subsets"}


@dataclass
class HubLocation:
    repo: str
    files: list[str]
    revision: str = "main"
    repo_type: str = "dataset"
    # a glob with {subset} (xP3: "{subset}/*.jsonl"): `forge build --subset zh` reads only
    # the files it matches, and downloads nothing else
    subsets: str | None = None


@dataclass
class Source:
    name: str
    connector: str
    formatter: str
    lang: str
    task: str
    gen: str
    description: str
    category: str = "general"
    connector_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    hub: HubLocation | None = None
    local: str | None = None  # path or glob, relative to the catalog file's folder
    sample: str | None = None  # small self-written sample shipped with forge
    url: str | list[str] | None = None  # plain HTTP(S) download when the corpus is not on the Hub
    license: str | None = None
    homepage: str | None = None
    rows: int | None = None
    priority: int = 100  # dedup: lower survives
    # globs of members to read inside archives (.zip/.tar/.tar.gz) among the located files
    members: list[str] = field(default_factory=list)
    # a derived source: {from: SOURCE, stage: translate|rewrite|judge, ...} (forge/stages.py)
    derive: dict | None = None
    endpoint: dict | None = None  # the OpenAI-compatible endpoint a derived source calls
    catalog_file: Path = Path("catalog.yaml")

    @property
    def base_dir(self) -> Path:
        return self.catalog_file.parent


class Catalog:
    def __init__(self, sources: dict[str, Source], files: list[Path]):
        self.sources = sources
        self.files = files

    def __contains__(self, name: str) -> bool:
        return name in self.sources

    def get(self, name: str) -> Source:
        if name not in self.sources:
            raise CatalogError(unknown_message("source", name, list(self.sources)))
        return self.sources[name]

    def names(self) -> list[str]:
        return sorted(self.sources)


def unknown_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint}"


def _fail(path: Path, entry: str, fld: str, message: str) -> CatalogError:
    return CatalogError(f"{path}: source {entry!r}, field {fld!r}: {message}")


def _check_choice(path: Path, entry: str, fld: str, value, choices) -> None:
    if value not in choices:
        raise _fail(path, entry, fld, f"{value!r} is not one of {', '.join(sorted(choices))}")


def parse_source(path: Path, name: str, spec) -> Source:
    try:
        check_name("source", name)
    except StoreError as e:
        raise CatalogError(f"{path}: {e}") from None
    if not isinstance(spec, dict):
        raise CatalogError(f"{path}: source {name!r}: expected a mapping, found {type(spec).__name__}")
    for key in spec:
        if key not in KNOWN:
            close = difflib.get_close_matches(key, sorted(KNOWN), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(path, name, key, f"unknown field{hint}")
    if "derive" in spec:
        # a derived source reads another source's built records: no connector, no formatter
        if not isinstance(spec["derive"], dict) or not spec["derive"].get("from"):
            raise _fail(path, name, "derive", "expected a mapping with 'from' and 'stage'")
        if not isinstance(spec.get("endpoint", {}), dict):
            raise _fail(path, name, "endpoint", "expected a mapping (url, model, ...)")
        spec = {"connector": "parquet", "formatter": "columns", **spec, "local": "(derived)"}
    for key in REQUIRED:
        if key not in spec:
            raise _fail(path, name, key, "required field is missing")
    _check_choice(path, name, "connector", spec["connector"], CONNECTORS)
    _check_choice(path, name, "formatter", spec["formatter"], FORMATTERS)
    _check_choice(path, name, "lang", spec["lang"], DATASET_LANGS)
    _check_choice(path, name, "task", spec["task"], TASKS)
    _check_choice(path, name, "gen", spec["gen"], GENS)
    category = spec.get("category", "general")
    _check_choice(path, name, "category", category, CATEGORIES)
    for key in ("connector_options", "options"):
        if key in spec and not isinstance(spec[key], dict):
            raise _fail(path, name, key, "expected a mapping")
    check_options = getattr(FORMATTERS[spec["formatter"]], "check_options", None)
    problem = check_options(spec.get("options") or {}) if check_options else None
    if problem:  # a formatter that declares its options (pairs): a typo fails here, in one line
        raise _fail(path, name, f"options.{problem[0]}", problem[1])
    rows = spec.get("rows")
    if rows is not None and (not isinstance(rows, int) or rows < 0):
        raise _fail(path, name, "rows", f"expected a non-negative integer, found {rows!r}")
    hub = None
    if "hub" in spec:
        h = spec["hub"]
        if not isinstance(h, dict) or "repo" not in h:
            raise _fail(path, name, "hub", "expected a mapping with at least 'repo'")
        extra = set(h) - HUB_KEYS
        if extra:
            raise _fail(path, name, f"hub.{sorted(extra)[0]}", "unknown field")
        if not isinstance(h.get("revision", "main"), str):
            # YAML reads an all-digit sha (or 1e5...) as a number, which would lose digits
            raise _fail(path, name, "hub.revision", f"must be a quoted string, found {h['revision']!r}")
        files = h.get("files", [])
        if isinstance(files, str):
            files = [files]
        subsets = h.get("subsets")
        if subsets is not None and (not isinstance(subsets, str) or "{subset}" not in subsets):
            raise _fail(
                path, name, "hub.subsets", f"expected a glob containing {{subset}}, found {subsets!r}"
            )
        hub = HubLocation(
            h["repo"], list(files), str(h.get("revision", "main")), h.get("repo_type", "dataset"), subsets
        )
    members = spec.get("members", [])
    if isinstance(members, str):
        members = [members]
    if not isinstance(members, list) or not all(isinstance(m, str) and m for m in members):
        raise _fail(path, name, "members", f"expected a glob or a list of globs, found {members!r}")
    if not (hub or spec.get("local") or spec.get("sample") or spec.get("url")):
        raise _fail(path, name, "hub", "a source needs at least one location: hub, local or sample")
    return Source(
        name=name,
        connector=spec["connector"],
        formatter=spec["formatter"],
        lang=spec["lang"],
        task=spec["task"],
        gen=spec["gen"],
        description=spec["description"],
        category=category,
        connector_options=dict(spec.get("connector_options", {})),
        options=dict(spec.get("options", {})),
        hub=hub,
        local=None if "derive" in spec else spec.get("local"),
        sample=spec.get("sample"),
        url=spec.get("url"),
        license=spec.get("license"),
        homepage=spec.get("homepage"),
        rows=rows,
        priority=int(spec.get("priority", 100)),
        members=members,
        derive=dict(spec["derive"]) if "derive" in spec else None,
        endpoint=dict(spec.get("endpoint") or {}) if "derive" in spec else None,
        catalog_file=path,
    )


def load_file(path: Path) -> dict[str, Source]:
    try:
        data = load_yaml_file(path)
    except YamlInputError as e:
        raise CatalogError(str(e)) from None
    if not isinstance(data, dict) or not isinstance(data.get("sources"), dict):
        raise CatalogError(f"{path}: expected a top-level 'sources:' mapping")
    return {name: parse_source(path, str(name), spec) for name, spec in data["sources"].items()}


def load_catalog(user_catalog: Path | None = None) -> Catalog:
    files = [builtin_dir() / "catalog.yaml"]
    if user_catalog is not None:
        if not user_catalog.exists():
            raise CatalogError(f"{user_catalog}: catalog file not found")
        files.append(user_catalog)
    else:
        here = Path.cwd() / "catalog.yaml"
        if here.exists() and here.resolve() != files[0].resolve():
            files.append(here)
    sources: dict[str, Source] = {}
    for f in files:
        sources.update(load_file(f))
    return Catalog(sources, files)


def pinned_revision(src: Source) -> str | None:
    """The revision a source's location is pinned to: the Hub revision, or the git ref inside
    a raw GitHub URL (owner/repo/REF/path). A branch name here means "not pinned"."""
    if src.hub:
        return src.hub.revision
    if src.url:
        url = src.url if isinstance(src.url, str) else src.url[0]
        parts = url.split("/")
        if len(parts) > 5 and parts[2] == "raw.githubusercontent.com":
            return parts[5]
    return None


def add_entry(path: Path, name: str, entry: dict, *, replace: bool = False) -> bool:
    """Add one source to a user catalog file. The entry is appended as text, so the file keeps
    its comments and order; a layout that cannot take an appended entry (another top-level key
    after `sources:`, or an entry being replaced) is rewritten whole. Either way the result is
    parsed back and compared before it replaces the file. Returns True when appended."""
    from forge.store import file_lock

    # read, edit and replace under one lock: concurrent `forge translate/pull/...` runs would
    # otherwise each add to the same old file, and all but the last entry would be lost
    with file_lock(path):
        return _add_entry_locked(path, name, entry, replace)


def _add_entry_locked(path: Path, name: str, entry: dict, replace: bool) -> bool:
    import re

    import yaml

    from forge.store import write_atomic

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        data = (yaml.safe_load(text) if text.strip() else None) or {}
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("sources") or {}, dict):
        raise CatalogError(f"{path}: expected a top-level 'sources:' mapping")
    sources = data.get("sources") or {}
    if name in sources and not replace:
        raise CatalogError(f"{path}: source {name!r} is already there")
    wanted = {**data, "sources": {**sources, name: entry}}
    block = yaml.safe_dump({name: entry}, allow_unicode=True, sort_keys=False, width=100)
    block = "".join(f"  {line}\n" for line in block.splitlines())
    if "sources" not in data:
        base = text.rstrip("\n") + ("\n\n" if text.strip() else "") + "sources:"
    elif not sources:  # `sources: {}` (or null) cannot take an indented entry below it
        base = re.sub(r"(?m)^sources:[ \t]*(\{[ \t]*\}|null|~)[ \t]*(#.*)?$", r"sources:  \2", text, count=1)
    else:
        base = text
    candidate = base.rstrip("\n") + "\n\n" + block
    try:
        appended = name not in sources and yaml.safe_load(candidate) == wanted
    except yaml.YAMLError:
        appended = False
    if not appended:
        candidate = yaml.safe_dump(wanted, sort_keys=False, allow_unicode=True, width=100)
    write_atomic(path, candidate.encode("utf-8"))
    return appended

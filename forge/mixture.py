"""Named weighted mixtures: mixtures/NAME.yaml -> a deterministic, rank-aware record stream.

A mixture file:

    name: alpaca-belle-cot
    strategy: concat          # concat | rates | proportional
    seed: 0
    size: null                # total examples (rates / proportional); or use `stop`
    stop: all_exhausted       # first_exhausted | all_exhausted (when size is not given)
    temperature: 1.0          # proportional only: rate ~ min(n, cap) ** (1 / T)
    cap: null                 # proportional only: default per-component cap
    redistribute: true        # with size: what a capped component cannot give goes to the others
    repeat_warning: 2.0       # warn when a component is drawn more than this many times over
    components:
      - source: alpaca        # a built source ...
        weight: 1.0
        max_examples: null    # cap on draws from this component
        epochs: 1             # concat only: passes over the component
      - where: "lang == zh and category == cot"   # ... a tag query over all built sources
      - mixture: belle-cot    # ... or another mixture (nesting; weights multiply)

How strategies set the draw counts c_i (the sampling itself is in forge.sampling):
  concat        c_i = min(n_i * epochs_i, max_examples_i): every record once (Alpaca-CoT's
                meaning of a mixture name), interleaved evenly, in a seeded order.
  rates         rate_i = weight_i / sum(weight). N = size, or for first_exhausted the
                largest N at which no component repeats, for all_exhausted the smallest N
                at which every component is used whole (smaller ones cycle). c_i is the
                largest-remainder split of N by rate, then capped by max_examples_i. With
                `size`, a cap's shortfall is split again among the components still below
                their caps, by weight, until the mixture holds N (redistribute: false keeps
                the shortfall and reports it).
  proportional  rate_i ~ weight_i * min(n_i, cap_i) ** (1 / temperature), then as rates.
Nested mixtures are flattened to leaf components: a sub-mixture's share is split among its
leaves in proportion to its own counts. Writing a mixture to disk (forge mix) is forge.materialize.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from forge.built import Built, open_built
from forge.catalog import Catalog, unknown_message
from forge.errors import MixtureError, QueryError
from forge.formatters.safeyaml import YamlInputError, load_yaml_file
from forge.paths import builtin_dir
from forge.sampling import WINDOW_BLOCKS, Schedule, largest_remainder
from forge.store import check_name

STRATEGIES = ("concat", "rates", "proportional")
MAX_EXAMPLES = 1_000_000_000  # a mixture larger than this is a typo (size: 1e11), not a plan
STOPS = ("first_exhausted", "all_exhausted")
TOP_KEYS = {
    "name",
    "description",
    "strategy",
    "seed",
    "size",
    "stop",
    "temperature",
    "cap",
    "components",
    "redistribute",
    "repeat_warning",
}
REPEAT_WARNING = 2.0
COMPONENT_KEYS = {"source", "where", "mixture", "weight", "max_examples", "epochs"}


def mixture_dirs(user_dir: Path | None = None) -> list[Path]:
    """The built-in mixtures, then ./mixtures (or `user_dir`), then each folder in
    $FORGE_MIXTURES (os.pathsep-separated; forge ablate puts its sweep variants there).
    A later folder's mixture wins over an earlier one of the same name."""
    dirs = [builtin_dir() / "mixtures"]
    extra = [user_dir if user_dir is not None else Path.cwd() / "mixtures"]
    extra += [Path(p) for p in os.environ.get("FORGE_MIXTURES", "").split(os.pathsep) if p]
    for d in extra:
        if d.is_dir() and all(d.resolve() != x.resolve() for x in dirs):
            dirs.append(d)
    return dirs


def available(user_dir: Path | None = None) -> dict[str, Path]:
    found = {}
    for d in mixture_dirs(user_dir):
        for p in sorted(d.glob("*.yaml")):
            found[p.stem] = p
    return found


@dataclass
class Leaf:
    """One leaf component after flattening: a source, optionally filtered by a query."""

    label: str
    source: str | None
    where: str | None
    count: int = 0
    size: int = 0

    @property
    def epochs(self) -> float:
        """How many times over the component is drawn (above 1: its records repeat)."""
        return self.count / self.size if self.size else 0.0


@dataclass
class Mixture:
    name: str
    path: Path
    spec: dict
    leaves: list[Leaf]
    seed: int
    rowsets: list = field(default_factory=list)  # per leaf: matching row positions, or None for all rows
    pinned: dict[str, Built] = field(default_factory=dict)  # source -> the version this mixture reads

    @property
    def build_hashes(self) -> dict[str, str]:
        return {name: b.manifest["build_hash"] for name, b in sorted(self.pinned.items())}

    @property
    def shortfall(self) -> int:
        """Examples short of the requested size (caps with redistribute: false)."""
        size = self.spec.get("size")
        return max(0, int(size) - self.total) if size else 0

    def repeat_warnings(self) -> list[str]:
        """One line per component drawn more than repeat_warning times over."""
        limit = float(self.spec.get("repeat_warning", REPEAT_WARNING))
        return [
            f"{leaf.label}: {leaf.count:,} draws from {leaf.size:,} records = {leaf.epochs:.1f} epochs "
            f"(each record about {leaf.epochs:.0f} times; repeat_warning is {limit:g})"
            for leaf in self.leaves
            if leaf.epochs > limit
        ]

    @property
    def versions(self) -> dict[str, str]:
        return {name: b.version for name, b in sorted(self.pinned.items())}

    @property
    def total(self) -> int:
        return sum(leaf.count for leaf in self.leaves)

    def fingerprint(self) -> str:
        """Hash of everything the stream depends on: spec, build hashes, seed."""
        payload = {
            "spec": self.spec,
            "builds": self.build_hashes,
            "seed": self.seed,
            "leaves": [[leaf.label, leaf.count, leaf.size] for leaf in self.leaves],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def schedule(self) -> Schedule:
        return Schedule([leaf.count for leaf in self.leaves], [leaf.size for leaf in self.leaves], self.seed)


def _err(path: Path, key: str, msg: str) -> MixtureError:
    return MixtureError(f"{path}: {key}: {msg}")


def load_spec(path: Path) -> dict:
    try:
        spec = load_yaml_file(path)
    except YamlInputError as e:
        raise MixtureError(str(e)) from None
    if not isinstance(spec, dict):
        raise MixtureError(f"{path}: expected a mapping at the top level")
    for key in spec:
        if key not in TOP_KEYS:
            raise _err(path, key, f"unknown key; expected one of {', '.join(sorted(TOP_KEYS))}")
    strategy = spec.get("strategy", "rates")
    if strategy not in STRATEGIES:
        raise _err(path, "strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}")
    if spec.get("stop", "all_exhausted") not in STOPS:
        raise _err(path, "stop", f"{spec['stop']!r} is not one of {', '.join(STOPS)}")
    for key in ("size", "cap"):
        v = spec.get(key)
        if v is not None and (not _is_int(v) or v <= 0 or v > MAX_EXAMPLES):
            raise _err(path, key, f"expected a positive integer up to {MAX_EXAMPLES:,}, found {v!r}")
    t = spec.get("temperature", 1.0)
    if not _is_number(t) or t <= 0 or t > 1000:
        raise _err(path, "temperature", f"expected a finite number in (0, 1000], found {t!r}")
    if not isinstance(spec.get("redistribute", True), bool):
        raise _err(path, "redistribute", f"expected true or false, found {spec['redistribute']!r}")
    rw = spec.get("repeat_warning", REPEAT_WARNING)
    if not _is_number(rw) or rw <= 0:
        raise _err(path, "repeat_warning", f"expected a positive number, found {rw!r}")
    if not isinstance(spec.get("seed", 0), int):
        raise _err(path, "seed", f"expected an integer, found {spec.get('seed')!r}")
    comps = spec.get("components")
    if not isinstance(comps, list) or not comps:
        raise _err(path, "components", "expected a non-empty list")
    for i, c in enumerate(comps):
        where = f"components[{i}]"
        if not isinstance(c, dict):
            raise _err(path, where, "expected a mapping")
        for key in c:
            if key not in COMPONENT_KEYS:
                raise _err(
                    path,
                    f"{where}.{key}",
                    f"unknown key; expected one of {', '.join(sorted(COMPONENT_KEYS))}",
                )
        kinds = [k for k in ("source", "mixture") if k in c]
        if len(kinds) > 1 or (not kinds and "where" not in c):
            raise _err(
                path, where, "give exactly one of source / mixture (optionally with where), or where alone"
            )
        w = c.get("weight", 1.0)
        if not _is_number(w) or w < 0 or w > 1e12:
            raise _err(path, f"{where}.weight", f"expected a finite non-negative number, found {w!r}")
        for key in ("max_examples", "epochs"):
            v = c.get(key)
            limit = MAX_EXAMPLES if key == "max_examples" else 10_000
            if v is not None and (not _is_int(v) or v <= 0 or v > limit):
                raise _err(
                    path, f"{where}.{key}", f"expected a positive integer up to {limit:,}, found {v!r}"
                )
    return spec


def _is_number(v) -> bool:
    import math

    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def component_rows(built: Built, where: str | None) -> np.ndarray | int:
    """Row count of a built source, or the matching row positions when filtered."""
    if where is None:
        return int(built.manifest["rows"])
    import polars as pl

    from forge.query import parse

    files = [str(p) for p in built.files()]
    if not files:
        return np.zeros(0, dtype=np.int64)
    lf = pl.scan_parquet(files).with_row_index("_row")
    rows = lf.filter(parse(where)).select("_row").collect()["_row"].to_numpy()
    return rows.astype(np.int64)


def resolve(
    name: str,
    catalog: Catalog,
    *,
    home: Path | None = None,
    user_dir: Path | None = None,
    seed: int | None = None,
    _stack: tuple[str, ...] = (),
) -> Mixture:
    """Load, validate and flatten a mixture against the built catalog."""
    known = available(user_dir)
    if name not in known:
        raise MixtureError(unknown_message("mixture", name, list(known)))
    if name in _stack:
        raise MixtureError(
            f"{known[name]}: components: cycle in nested mixtures: {' -> '.join(_stack + (name,))}"
        )
    path = known[name]
    check_name("mixture", name, str(path))
    spec = load_spec(path)
    strategy = spec.get("strategy", "rates")
    mix_seed = int(spec.get("seed", 0) if seed is None else seed)
    groups: list[tuple[dict, list[Leaf], list]] = []  # (component spec, leaves, filtered rows)
    pinned: dict[str, Built] = {}
    for i, comp in enumerate(spec["components"]):
        key = f"components[{i}]"
        if "mixture" in comp:
            sub = resolve(
                comp["mixture"], catalog, home=home, user_dir=user_dir, seed=mix_seed, _stack=_stack + (name,)
            )
            pinned.update(sub.pinned)
            groups.append((comp, sub.leaves, sub.rowsets))
            continue
        sources = [comp["source"]] if "source" in comp else _built_sources(catalog, home, pinned)
        leaves, rowsets = [], []
        for s in sources:
            if s not in catalog:
                raise _err(path, f"{key}.source", unknown_message("source", s, catalog.names()))
            # every source is pinned once per mixture: all its components read the same version
            built = pinned.get(s) or open_built(s, home)
            if built is None:
                raise _err(path, f"{key}.source", f"source {s!r} is not built; run: forge build {s}")
            pinned[s] = built
            try:
                rows = component_rows(built, comp.get("where"))
            except QueryError as e:
                raise _err(path, f"{key}.where", str(e)) from e
            n = int(rows) if isinstance(rows, int) else len(rows)
            if n == 0 and "where" not in comp:
                raise _err(path, f"{key}.source", f"source {s!r} is built but has no records")
            if n:
                label = s if comp.get("where") is None else f"{s}[{comp['where']}]"
                leaves.append(Leaf(label, s, comp.get("where"), size=n))
                rowsets.append(None if isinstance(rows, int) else rows)
        if not leaves:
            raise _err(path, f"{key}.where", f"no records match {comp.get('where')!r}")
        groups.append((comp, leaves, rowsets))

    counts = _group_counts(path, spec, strategy, groups)
    leaves_out: list[Leaf] = []
    rowsets_out: list = []
    for (_comp, leaves, rowsets), total in zip(groups, counts, strict=True):
        base = np.array([leaf.count or leaf.size for leaf in leaves], dtype=np.float64)
        split = largest_remainder(int(total), base) if base.sum() > 0 else np.zeros(len(leaves), np.int64)
        for leaf, c, rows in zip(leaves, split, rowsets, strict=True):
            leaves_out.append(Leaf(leaf.label, leaf.source, leaf.where, count=int(c), size=leaf.size))
            rowsets_out.append(rows)
    return Mixture(name, path, spec, leaves_out, mix_seed, rowsets_out, pinned)


def _built_sources(catalog: Catalog, home: Path | None, pinned: dict[str, Built]) -> list[str]:
    out = []
    for s in catalog.names():
        built = pinned.get(s) or open_built(s, home)
        if built is not None:
            pinned[s] = built
            out.append(s)
    return out


def _group_counts(path: Path, spec: dict, strategy: str, groups) -> list[int]:
    sizes = np.array(
        [sum(leaf.count or leaf.size for leaf in leaves) for _, leaves, _ in groups], dtype=np.float64
    )
    caps = np.array([c.get("max_examples") or np.inf for c, _, _ in groups], dtype=np.float64)
    if strategy == "concat":
        epochs = np.array([c.get("epochs", 1) for c, _, _ in groups], dtype=np.float64)
        counts = np.minimum(sizes * epochs, caps)
        if counts.sum() > MAX_EXAMPLES:
            raise _err(
                path,
                "components",
                f"the mixture would hold {int(counts.sum()):,} examples (more than {MAX_EXAMPLES:,}); "
                f"lower epochs or set max_examples",
            )
        return [int(x) for x in counts]
    weights = np.array([float(c.get("weight", 1.0)) for c, _, _ in groups])
    if strategy == "proportional":
        cap = spec.get("cap")
        eff = np.minimum(sizes, caps if cap is None else np.minimum(caps, cap))
        weights = weights * eff ** (1.0 / float(spec.get("temperature", 1.0)))
    if weights.sum() <= 0:
        raise _err(path, "components", "all weights are zero")
    rates = weights / weights.sum()
    available_ = np.minimum(sizes, caps)
    if spec.get("size"):
        total = int(spec["size"])
    else:
        live = rates > 0
        ratio = available_[live] / rates[live]
        total = int(
            np.floor(
                ratio.min()
                if spec.get("stop", "all_exhausted") == "first_exhausted"
                else np.ceil(ratio.max())
            )
        )
    if total > MAX_EXAMPLES:
        raise _err(
            path,
            "size" if spec.get("size") else "components",
            f"the mixture would hold {total:,} examples (more than {MAX_EXAMPLES:,}); "
            f"set a smaller size, or check the weights",
        )
    counts = np.minimum(largest_remainder(total, rates), caps)
    if spec.get("size") and spec.get("redistribute", True):
        # water-filling: a capped component's shortfall goes to the others by weight, again
        # and again until the size is reached or every component with weight is at its cap
        while (short := total - int(counts.sum())) > 0:
            open_ = (counts < caps) & (rates > 0)
            if not open_.any():
                break
            counts = np.minimum(counts + largest_remainder(short, np.where(open_, rates, 0.0)), caps)
    return [int(x) for x in counts]


class RecordReader:
    """Random access to records of built sources, by (leaf, record index), with an LRU
    cache of decoded row groups bounded in count and in bytes, so memory stays bounded
    however long the records are (a row group of long CoT records decodes to ~40 MB). The
    two-level permutation (forge.sampling) keeps a stretch of the stream inside a window of
    WINDOW_BLOCKS row groups per component, so two windows' worth is what the cache holds."""

    def __init__(
        self,
        mix: Mixture,
        home: Path | None = None,
        columns: list[str] | None = None,
        cache_row_groups: int = 2 * WINDOW_BLOCKS,
        cache_bytes: int = 512 << 20,
    ):
        self.mix = mix
        self.columns = columns
        self.cache: OrderedDict = OrderedDict()
        self.cache_size = cache_row_groups
        self.cache_bytes = cache_bytes
        self.cached_bytes = 0
        self.layout = {}
        for leaf in mix.leaves:
            if leaf.source in self.layout:
                continue
            built = mix.pinned[leaf.source]
            manifest, folder = built.manifest, built.path
            groups = []  # (file, row group, first row, rows)
            start = 0
            for s in manifest["shards"]:
                meta = pq.ParquetFile(folder / s["file"]).metadata
                for g in range(meta.num_row_groups):
                    n = meta.row_group(g).num_rows
                    groups.append((folder / s["file"], g, start, n))
                    start += n
            self.layout[leaf.source] = (groups, np.array([g[2] for g in groups], dtype=np.int64))

    def _group(self, source: str, gi: int) -> pa.Table:
        key = (source, gi)
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        path, g, _, _ = self.layout[source][0][gi]
        table = pq.ParquetFile(path).read_row_group(g, columns=self.columns)
        self.cache[key] = table
        self.cached_bytes += table.nbytes
        while len(self.cache) > 1 and (
            len(self.cache) > self.cache_size or self.cached_bytes > self.cache_bytes
        ):
            self.cached_bytes -= self.cache.popitem(last=False)[1].nbytes
        return table

    def take(self, leaves: np.ndarray, records: np.ndarray) -> pa.Table:
        """Rows for (leaf, record index) pairs, in the given order."""
        rows = np.empty(len(records), dtype=np.int64)
        for li in np.unique(leaves):
            sel = leaves == li
            rowset = self.mix.rowsets[li]
            rows[sel] = records[sel] if rowset is None else rowset[records[sel]]
        parts, order = [], []
        for li in np.unique(leaves):
            source = self.mix.leaves[li].source
            groups, starts = self.layout[source]
            idx = np.flatnonzero(leaves == li)
            gidx = np.searchsorted(starts, rows[idx], side="right") - 1
            for g in np.unique(gidx):
                sel = idx[gidx == g]
                table = self._group(source, int(g))
                parts.append(table.take(pa.array(rows[sel] - starts[g])))
                order.append(sel)
        if not parts:
            return pa.table({})
        table = pa.concat_tables(parts)
        inverse = np.empty(len(records), dtype=np.int64)
        inverse[np.concatenate(order)] = np.arange(len(records))
        return table.take(pa.array(inverse))


class MixtureStream:
    """Iterate a mixture's records as Arrow tables, for one reader of many.

    reader = rank * num_workers + worker; readers = world_size * num_workers. Each reader
    sees the global positions k with k % readers == reader. state_dict() records the next
    global position, so a resumed stream continues exactly where it stopped.
    """

    def __init__(
        self,
        mix: Mixture,
        home: Path | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        worker: int = 0,
        num_workers: int = 1,
        columns: list[str] | None = None,
    ):
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ValueError(f"bad reader: rank {rank}/{world_size}, worker {worker}/{num_workers}")
        self.mix = mix
        self.home = home
        self.reader = rank * num_workers + worker
        self.readers = world_size * num_workers
        self.columns = columns
        self.position = 0  # next global stream position this reader has not yet yielded past

    def state_dict(self) -> dict:
        return {"position": self.position, "fingerprint": self.mix.fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("fingerprint") not in (None, self.mix.fingerprint()):
            raise MixtureError("state was saved for a different mixture build; refusing to resume")
        self.position = int(state["position"])

    def ids(self):
        """(positions, leaf indices, record indices) blocks, no record data read."""
        yield from self.mix.schedule().iter_blocks(self.position, self.reader, self.readers)

    def __iter__(self):
        reader = RecordReader(self.mix, self.home, self.columns)
        for block in self.ids():
            table = reader.take(block.components, block.records)
            table = table.append_column("_position", pa.array(block.positions))
            table = table.append_column(
                "_component", pa.array([self.mix.leaves[i].label for i in block.components])
            )
            self.position = int(block.positions[-1]) + 1
            yield table


TAG_KEYS = ("source", "lang", "task", "gen", "category")


def stream_tag_counts(mix: Mixture) -> tuple[dict, dict]:
    """Realised tag counts of the whole stream, and the target counts the component shares
    imply (share of component i times the tag distribution of its records).

    Realised counts come from the sampling semantics, not a pass over the stream: component
    i's c_i draws are c_i div n_i whole epochs plus the first c_i mod n_i records of the next
    epoch's permutation (forge.sampling), so the cost is one read of each component's tag
    columns however large the mixture."""
    from collections import Counter

    import polars as pl

    schedule = mix.schedule()
    realised = {k: Counter() for k in TAG_KEYS}
    target = {k: Counter() for k in TAG_KEYS}
    for i, (leaf, rows) in enumerate(zip(mix.leaves, mix.rowsets, strict=True)):
        if leaf.count == 0:
            continue
        files = [str(p) for p in mix.pinned[leaf.source].files()]
        df = pl.scan_parquet(files).select(list(TAG_KEYS)).collect()
        if rows is not None:
            df = df[rows]
        epochs, rest = divmod(leaf.count, leaf.size)
        partial = df[schedule.records(i, epochs * leaf.size, leaf.count)] if rest else df.clear()
        for key in TAG_KEYS:
            for value, n in df[key].value_counts().iter_rows():
                target[key][value] += leaf.count * n / df.height
                realised[key][value] += epochs * n
            for value, n in partial[key].value_counts().iter_rows():
                realised[key][value] += n
    return ({k: dict(v) for k, v in realised.items()}, {k: dict(v) for k, v in target.items()})


def empty_output_counts(mix: Mixture) -> dict[str, int]:
    """Per component: records whose output is empty or whitespace (prompt-only corpora such
    as InstructionWild). The trainer drops them; mix warns so the user knows before training."""
    import polars as pl

    out = {}
    for leaf, rows in zip(mix.leaves, mix.rowsets, strict=True):
        files = [str(p) for p in mix.pinned[leaf.source].files()]
        if not files:
            continue
        col = pl.scan_parquet(files).select(pl.col("output").str.strip_chars().str.len_chars() == 0)
        empty = col.collect().to_series().to_numpy()
        if rows is not None:
            empty = empty[rows]
        if (n := int(empty.sum())) > 0:
            out[leaf.label] = n
    return out


def pair_counts(mix: Mixture) -> dict[str, tuple[int, int]]:
    """Per component: (preference pairs, records) among the rows the mixture draws from it. A
    DPO / ORPO run needs pairs in every component: a component without any is plain records."""
    import polars as pl

    out = {}
    for leaf, rows in zip(mix.leaves, mix.rowsets, strict=True):
        files = [str(p) for p in mix.pinned[leaf.source].files()]
        if not files:
            out[leaf.label] = (0, 0)
            continue
        col = pl.scan_parquet(files).select(pl.col("kind") == "pair")
        is_pair = col.collect().to_series().to_numpy()
        if rows is not None:
            is_pair = is_pair[rows]
        out[leaf.label] = (int(is_pair.sum()), len(is_pair))
    return out

"""Dedup drops only true duplicates: star clusters (no chaining), whole conversations,
variants of one raw record kept apart."""

import json
import textwrap

import numpy as np
import polars as pl

from forge.build import build_source
from forge.catalog import load_catalog
from forge.dedup import decide, record_texts, run
from forge.executor import Executor
from forge.schema import RECORD_SCHEMA

RECORD = RECORD_SCHEMA.names


def test_chains_do_not_drop_a_record_for_one_it_does_not_resemble():
    """A~B at 0.77 and B~C at 0.74, A~C at 0.56 (exact Jaccard): B is a copy of A, C is not a
    copy of anything."""
    words = list(np.random.default_rng(0).choice([f"w{i}" for i in range(5000)], 30))
    a = " ".join(words)
    words[0:30:5] = ["x" + w for w in words[0:30:5]]
    b = " ".join(words)
    words[2:30:5] = ["y" + w for w in words[2:30:5]]
    c = " ".join(words)
    grams = [{t[i : i + 5] for i in range(len(t) - 4)} for t in (a, b, c)]
    jac = lambda x, y: len(grams[x] & grams[y]) / len(grams[x] | grams[y])  # noqa: E731
    assert jac(0, 1) >= 0.7 and jac(1, 2) >= 0.7 and jac(0, 2) < 0.6
    r = decide(np.arange(3), np.array([1, 2, 3], np.uint64), [a, b, c], 0.7)
    assert r.dup_of.tolist() == [-1, 0, -1]  # union-find made C a "copy" of A at 0.56
    assert r.sim[1] == np.float32(jac(0, 1))  # the exact similarity, not the MinHash estimate


def _chain_texts(n_chains: int, length: int = 60) -> list[str]:
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(5000)]
    texts = []
    for _ in range(n_chains):
        words = list(rng.choice(vocab, length))
        for _step in range(4):  # each link changes a few words of the previous one
            texts.append(" ".join(words))
            for k in rng.choice(length, 6, replace=False):
                words[k] = str(rng.choice(vocab))
    return texts


def test_no_dropped_record_is_below_the_threshold_to_its_survivor(home, tmp_path):
    texts = _chain_texts(40)
    lines = [json.dumps({"instruction": t, "input": "", "output": "ok"}) for t in texts]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    cat = tmp_path / "catalog.yaml"
    cat.write_text(
        "sources:\n  chains:\n    {description: x, connector: json, formatter: columns, "
        f"local: {tmp_path / 'c.jsonl'}, lang: EN, task: MT, gen: SI}}\n"
    )
    build_source(load_catalog(cat).get("chains"), home=home)
    m = run(["chains"], tmp_path / "dd", home=home)
    dropped = pl.read_parquet(tmp_path / "dd" / "dropped.parquet")
    kept = pl.read_parquet(tmp_path / "dd" / "part-00000.parquet")
    assert m["dropped"] == dropped.height > 0 and kept.height + dropped.height == len(texts)
    everything = pl.concat([kept, dropped.select(kept.columns)])
    text_of = dict(zip(everything["id"], record_texts(everything.to_arrow()).to_pylist(), strict=True))

    def texts_of(ids):
        return [text_of[i] for i in ids]

    def jaccard(x: str, y: str) -> float:
        gx, gy = ({t[i : i + 5] for i in range(len(t) - 4)} for t in (x, y))
        return len(gx & gy) / len(gx | gy)

    exact = [jaccard(x, y) for x, y in zip(texts_of(dropped["id"]), texts_of(dropped["dup_of"]), strict=True)]
    assert min(exact) >= 0.7, min(exact)  # by the exact measure, not the MinHash estimate
    assert set(dropped["dup_of"]) <= set(kept["id"])  # every copy names a record that survives


def test_exact_dedup_keys_on_the_whole_conversation(home, tmp_path):
    rows = [
        {"history": [{"user": "Can you fix my bike?", "assistant": "Sure, what is broken?"}],
         "instruction": "Thanks", "output": "You're welcome!"},
        {"history": [{"user": "Write me a poem about rain.", "assistant": "Drops on the roof..."}],
         "instruction": "Thanks", "output": "You're welcome!"},
        {"history": [{"user": "Can you fix my bike?", "assistant": "Sure, what is broken?"}],
         "instruction": "Thanks", "output": "You're welcome!"},
    ]  # fmt: skip
    (tmp_path / "h.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cat = tmp_path / "catalog.yaml"
    cat.write_text(
        textwrap.dedent(f"""
        sources:
          chats:
            description: dialogue endings
            connector: json
            formatter: columns
            options: {{history: history}}
            local: {tmp_path / "h.jsonl"}
            lang: EN
            task: MT
            gen: HG
        """)
    )
    build_source(load_catalog(cat).get("chats"), home=home)
    m = run(["chats"], tmp_path / "dd", home=home, near=False)
    assert m["dropped"] == 1  # the third repeats the first whole conversation; the second does not


def test_renderings_of_one_raw_record_are_not_duplicates(home, catalog, tmp_path):
    build_source(catalog.get("flan_cot"), home=home, sample=True)  # zero-shot + inversion per row
    # a zero-shot and an inversion rendering of one row share at most 0.67 of their shingles
    # (exact Jaccard; the MinHash estimate put some at 0.7), so compare at 0.6
    default = run(["flan_cot"], tmp_path / "a", home=home, threshold=0.6)
    dropped = pl.read_parquet(tmp_path / "a" / "dropped.parquet")
    everything = pl.concat([pl.read_parquet(tmp_path / "a" / "part-00000.parquet"), dropped.select(RECORD)])
    origin = {r["id"]: (r["raw_file"], r["raw_row"]) for r in everything.iter_rows(named=True)}
    # what is dropped by default copies another raw row; never its own other rendering
    assert all(origin[i] != origin[d] for i, d in zip(dropped["id"], dropped["dup_of"], strict=True))
    across = run(["flan_cot"], tmp_path / "b", home=home, across_variants=True, threshold=0.6)
    assert across["dropped"] > default["dropped"]  # zero-shot and inversion share the text


def test_from_folder_reads_data_files_only_and_lfs_pointers_say_so(home, catalog, tmp_path):
    import pytest

    from forge.errors import BuildError

    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "part1.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    (folder / "convert.py").write_text("import json\nprint('not data')\n")
    (folder / "README.md").write_text("# about\n")
    r = build_source(catalog.get("belle_0.5m"), home=home, from_path=folder)
    assert (r.rows, r.quarantined) == (1, 0)  # the script and the README were read as data before
    origin = json.loads((r.out_dir / "manifest.json").read_text())["origin"]
    assert origin["skipped"] == ["README.md", "convert.py"]
    lfs = tmp_path / "big.jsonl.gz"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(BuildError, match=r"is a Git LFS pointer, not the data"):
        build_source(catalog.get("belle_0.5m"), home=home, from_path=lfs)


def test_filter_without_quality_steps_still_writes_dropped(built_samples, tmp_path):
    from forge.selection import filter_to_folder

    filter_to_folder("lang == en", ["alpaca"], tmp_path / "f", home=built_samples)
    dropped = pl.read_parquet(tmp_path / "f" / "dropped.parquet")
    assert dropped.height == 0 and "reason" in dropped.columns


def test_stats_histogram_labels_its_last_bin_with_the_real_range():
    from forge.selection import _histogram

    s = pl.Series("n", list(range(100)) + [5000])
    bins = _histogram(s)
    assert sum(n for _, _, n in bins) == 101
    for lo, hi, n in bins:  # every value counted lies in the range its bin claims
        assert n == int(((s >= lo) & (s < hi)).sum())
    assert bins[-1][1] == 5001


def test_partitioned_dedup_equals_the_in_memory_reference(home, catalog, tmp_path, monkeypatch):
    """run() spills keys to disk partitions and joins only the duplicate graph; on planted
    near duplicates across two sources with priorities, its survivors, dup_of, kind and
    similarity equal decide() over the whole input held in memory, with one partition or dozens."""
    import pyarrow as pa

    from forge import dedup
    from forge.dedup import exact_keys, exact_texts
    from tests.conftest import current
    from tests.test_tags import _planted

    path, _, copies = _planted(tmp_path)
    build_source(catalog.get("belle_0.5m"), home=home, from_path=path)
    build_source(catalog.get("alpaca"), home=home, sample=True)
    prio = {"belle_0.5m": 10, "alpaca": 20}
    # the reference: every record of both sources in memory, in shard order
    table = pa.concat_tables(
        pl.read_parquet(current(home, "sources", s) / "*.parquet").to_arrow()
        for s in ("alpaca", "belle_0.5m")
    )
    norm = record_texts(table)
    ids = table["id"].to_pylist()
    p = np.array([prio[s] for s in table["source"].to_pylist()])
    order = np.lexsort((np.array(ids, dtype=object).astype(str), p))
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    ref = decide(rank, exact_keys(exact_texts(table)), norm.to_pylist(), 0.7)
    expected = {
        ids[i]: (ids[ref.dup_of[i]], f"{ref.kind[i]} duplicate", float(ref.sim[i]))
        for i in np.flatnonzero(ref.dup_of >= 0)
    }
    assert len(expected) >= len(copies) * 0.9
    # one partition; then dozens; then dozens with the sign and pairs steps in two worker
    # processes (this one and a spawned one), as a corpus of PARALLEL_MIN_ROWS gets them
    for partition_bytes, workers in ((1 << 30, 1), (4096, 1), (4096, 2)):
        monkeypatch.setattr(dedup, "PARTITION_BYTES", partition_bytes)
        monkeypatch.setattr(dedup, "PARALLEL_MIN_ROWS", 0)
        out = tmp_path / f"dd-{partition_bytes}-{workers}"
        m = run(
            ["alpaca", "belle_0.5m"],
            out,
            home=home,
            priorities=prio,
            across_variants=True,
            executor=Executor("local", workers),
        )
        dropped = pl.read_parquet(out / "dropped.parquet")
        got = {
            r["id"]: (r["dup_of"], r["reason"], float(r["similarity"])) for r in dropped.iter_rows(named=True)
        }
        assert got == expected
        assert m["input_rows"] == len(ids) and m["rows"] == len(ids) - len(expected)
        assert not (out / ".spill").exists()


def _synthetic(path, n: int, seed: int = 0) -> None:
    """n records of 8 random sentences from a pool; 2% are near copies of earlier ones."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5000)])
    pool = [" ".join(words[rng.integers(0, 5000, 8)]) for _ in range(5000)]
    picks = rng.integers(0, len(pool), (n, 8))
    with open(path, "w") as fh:
        for i in range(n):
            p = picks[i]
            if i > 0 and rng.random() < 0.02:
                p = picks[rng.integers(0, i)].copy()
                p[rng.integers(0, 8)] = rng.integers(0, len(pool))
            s = [pool[j] for j in p]
            fh.write(
                json.dumps({"instruction": " ".join(s[:2]), "input": "", "output": " ".join(s[2:])}) + "\n"
            )


def test_dedup_memory_does_not_grow_with_the_corpus(tmp_path):
    """Python and numpy memory at its peak (tracemalloc, each run in a fresh interpreter)
    while deduplicating 3 and 12 batches of records (24,576 and 98,304): keys and signatures
    live in disk partitions, so
    4x the records must cost no more than the duplicate graph (2% of them) and a few buffers.
    Holding every signature and id in memory, as dedup used to, grows by ~30 MB here."""
    import subprocess
    import sys

    from tests.conftest import REPO

    peaks = {}
    for n in (3 * 8192, 12 * 8192):
        data = tmp_path / f"s{n}.jsonl"
        _synthetic(data, n)
        (tmp_path / f"c{n}.yaml").write_text(
            textwrap.dedent(f"""
            sources:
              synth:
                {{description: x, connector: json, connector_options: {{format: jsonl}}, formatter: columns, local: {data}, lang: EN, task: MT, gen: SI}}
            """)
        )
        home = tmp_path / f"h{n}"
        build_source(load_catalog(tmp_path / f"c{n}.yaml").get("synth"), home=home)
        code = (
            "import json, tracemalloc\nfrom forge import dedup\ndedup.PARTITION_BYTES = 1 << 20\n"
            f"tracemalloc.start()\nm = dedup.run(['synth'], {str(tmp_path / f'dd{n}')!r}, home={str(home)!r})\n"
            "print(json.dumps([m['input_rows'], m['dropped'], tracemalloc.get_traced_memory()[1]]))\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300
        )
        assert r.returncode == 0, r.stderr
        rows, dropped, peaks[n] = json.loads(r.stdout.splitlines()[-1])
        assert rows == n and 0.015 * n < dropped < 0.025 * n
    print({n: f"{p / 2**20:.1f} MB" for n, p in peaks.items()})
    assert peaks[12 * 8192] < peaks[3 * 8192] + (3 << 20), peaks

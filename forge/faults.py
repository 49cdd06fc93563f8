"""Named crash points for fault-injection tests.

`point(name)` does nothing unless FORGE_FAULT names it, in which case the process kills
itself with SIGKILL right there, as a power cut or an OOM kill would. The tests use it to
crash a build or a mix inside its commit and check that nothing committed is lost.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    """FORGE_FAULT=NAME kills the process here. FORGE_PAUSE=NAME:FILE pauses it here instead:
    it creates FILE and waits (at most 60 s) until the test removes it, so a test can act at
    exactly this moment (a user's file appearing in an --out folder mid-run)."""
    if os.environ.get("FORGE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get("FORGE_PAUSE", "")
    if pause.startswith(f"{name}:"):
        import time
        from pathlib import Path

        flag = Path(pause[len(name) + 1 :])
        flag.touch()
        deadline = time.monotonic() + 60
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def part_attempt(index: int, folder) -> None:
    """FORGE_PART_FAULT makes the first attempt of a build part misbehave, for the executor
    tests (a marker file in the build's temporary folder tells a retry from a first attempt).
    KIND:PART:DIR[:SECONDS], PART a part number or * for every part:
      exit:2:DIR          part 2's first attempt writes DIR/part-2.pid, then dies (os._exit)
      pause:*:DIR:4       each part's first attempt writes DIR/part-N.pid, then sleeps 4 s,
                          so a test can kill its worker or its node
    Both fire after the part's shards are written: what a dead attempt leaves must never be
    committed."""
    import time
    from pathlib import Path

    spec = os.environ.get("FORGE_PART_FAULT", "")
    if not spec:
        return
    kind, which, piddir, *seconds = spec.split(":")
    if which not in ("*", str(index)):
        return
    try:
        fd = os.open(Path(folder) / f".fault-part-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        return  # a retry: behave
    (Path(piddir) / f"part-{index}.pid").write_text(str(os.getpid()))
    if kind == "exit":
        os._exit(1)
    if kind == "pause":
        time.sleep(float(seconds[0]))

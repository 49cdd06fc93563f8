"""Named crash points for fault-injection tests.

`point(name)` does nothing unless FORGE_FAULT names it, in which case the process kills
itself with SIGKILL right there, as a power cut or an OOM kill would. The tests use it to
crash a build or a mix inside its commit and check that nothing committed is lost.
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    if os.environ.get("FORGE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)

"""Run forge's command-line entry in the test's own process, with what a subprocess would see.

`forge train`, `eval`, `predict` and `chat` each spend 6-8 CPU-seconds importing torch,
transformers and peft before they do anything (measured: `python -X importtime`); a test that
starts one as a subprocess pays that every time. Run here, the imports are paid once per pytest
worker. It is the same entry point as the `forge` script (`forge.cli.main`: option parsing, the
one-line errors, exit codes), given its own argv, environment, working folder, stdin and terminal
width, and everything it changes in this process (environment, logging, warnings, signal handlers,
the rich consoles' width, the working folder) is put back afterwards.

What needs a real process stays a subprocess: kill -9, signals, thread and wait-policy settings
read when torch loads, servers, and anything that asserts on a fresh interpreter's stderr.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path


def forge_main(
    args: list[str],
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess:
    """`forge ARGS` as if run with `env` added to this process's environment: the exit code,
    stdout and stderr as text, like subprocess.run(..., capture_output=True, text=True)."""
    from forge.cli import common, main

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv = sys.argv
    saved_stdin = sys.stdin
    main_module = sys.modules["__main__"]
    saved_package = getattr(main_module, "__package__", None)
    saved_disable = logging.root.manager.disable
    saved_show = warnings.showwarning
    saved_widths = (common.console._width, common.err._width)
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        os.environ.update(env or {})
        columns = os.environ.get("COLUMNS", "")
        # what rich reads from COLUMNS when a fresh process creates its consoles
        width = int(columns) if columns.isdigit() else 80
        common.console._width = common.err._width = width
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = ["forge", *args]
        # click names the program in usage errors from __main__ (here pytest's) unless it has
        # no package; then from argv[0], "forge", as for the `forge` script
        main_module.__package__ = None
        sys.stdin = io.StringIO(input or "")
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main()
            except SystemExit as e:
                code = e.code
    finally:
        # key by key, never emptied: a server thread of the test may read it meanwhile
        for key in [k for k in os.environ if k not in saved_env]:
            del os.environ[key]
        for key, value in saved_env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        os.chdir(saved_cwd)
        sys.argv, sys.stdin = saved_argv, saved_stdin
        main_module.__package__ = saved_package
        logging.disable(saved_disable)
        warnings.showwarning = saved_show
        common.console._width, common.err._width = saved_widths
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed to stderr, exit status 1
        err.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(["forge", *args], code, out.getvalue(), err.getvalue())

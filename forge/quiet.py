"""forge owns its stderr: what the libraries below it log, warn or draw there is not forge's to say.

`own_stderr()` runs first thing in the CLI. Without `--debug` it
- drops every log record below ERROR, from any logger, whoever configured it and whenever
  (`logging.disable` is checked before a logger's own level and handlers: a library that installs
  its own stderr handler later, as transformers does, is covered too, and no list of loggers or
  messages is kept);
- ignores every Python warning, here and in the processes forge starts (PYTHONWARNINGS);
- turns third-party progress bars off when stderr is not a terminal (tqdm, huggingface_hub,
  datasets), since a bar in a log file is a wall of carriage returns.

forge's own words go through its rich consoles, not `logging`, so none of this hides them.
With `--debug` (or FORGE_DEBUG=1) nothing is silenced: library warnings and logs are shown.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# read by tqdm (4.66+), huggingface_hub and datasets when they create a bar
_NO_BARS = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


_SHOW_WARNING = warnings.showwarning


def _drop_warning(*args, **kwargs) -> None:
    return None


def debugging() -> bool:
    return os.environ.get("FORGE_DEBUG", "") not in ("", "0")


def own_stderr(debug: bool | None = None) -> None:
    """Silence library chatter unless debugging; safe to call more than once."""
    if debug is None:
        debug = debugging()
    if debug:
        logging.disable(logging.NOTSET)
        warnings.showwarning = _SHOW_WARNING
        warnings.resetwarnings()
        warnings.simplefilter("default")
        return
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    # a library may add its own filters later ("always" for its category): nothing is shown anyway
    warnings.showwarning = _drop_warning
    # build workers, torchrun ranks and ablation runs inherit the environment, not this process's state
    os.environ["PYTHONWARNINGS"] = "ignore"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.stderr.isatty():
        for key, value in _NO_BARS.items():
            os.environ.setdefault(key, value)

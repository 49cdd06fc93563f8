# Two entry points for a fresh machine: `make demo` and `make test`.
# torch is pinned to the CPU wheel that this machine has on disk; a looser pin pulls a
# multi-GB CUDA build. On a GPU machine, install torch your usual way first.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
export FORGE_HOME ?= $(CURDIR)/forge_data
export HF_HUB_OFFLINE ?= 1

$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) TORCH="$(TORCH)" PY=$(PY) scripts/install.sh
	touch $@

# the tests also run forge on a real Ray cluster: the ray extra on top of the demo's install
$(VENV)/.installed-ray: $(VENV)/.installed
	VENV=$(VENV) TORCH="$(TORCH)" PY=$(PY) FORGE_EXTRAS=dev,quant,report,track,serve,real,ray scripts/install.sh
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/forge build alpaca belle_0.5m flan_cot cot_zh --sample
	$(VENV)/bin/forge mix alpaca-belle-cot
	$(VENV)/bin/forge tiny-model $(FORGE_HOME)/tiny-llama
	$(VENV)/bin/forge train train/recipes/tiny.yaml
	$(VENV)/bin/forge eval mmlu --data samples/evals/mmlu --run $(FORGE_HOME)/runs/alpaca-belle-cot-lora --shots 2
	@echo
	@echo "Everything went under $(FORGE_HOME):"
	@echo "  sources/NAME/vNNNNNN/   Parquet shards, manifest, quarantine.jsonl (CURRENT names the live one)"
	@echo "  mixtures/NAME/vNNNNNN/  alpaca-belle-cot shards + ids.parquet lineage"
	@echo "  runs/                   adapter + run_manifest.json + eval/mmlu.json (scores per item)"

test: $(VENV)/.installed-ray
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest tests

.PHONY: install demo test

# Everything a user or CI needs, from a machine with only Python >= 3.11 and pip.
#   make demo        create .venv if missing, install, simulate the demo cohort, run it
#   make test        same venv; lint, type check and every test (slow ones included), as CI
#   make test-quick  lint, type check and the tests not marked slow (the inner loop)
#   make test-slow   the tests marked slow
# The tests run in PYTEST_WORKERS processes (pytest-xdist; whole files per process);
# PYTEST_WORKERS=0 runs them in this one (for -s, pdb or a single test, call pytest itself).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned to a CPU build by default; see README, "Install; the two commands".
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
SRC := pipeline cluster tests benchmarks
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: install demo test test-quick test-slow lint typecheck schema docs-config bench-simulate bench-scaling clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	TORCH_VERSION=$(TORCH_VERSION) TORCH_INDEX=$(TORCH_INDEX) TORCH_CPU_INDEX=$(TORCH_CPU_INDEX) \
		PIP="$(BIN)/python -m pip" sh .ci/install-torch.sh
	$(BIN)/python -m pip install --quiet -e ".[dev,scvi]"
	@touch $@

demo: $(STAMP)
	$(BIN)/immunoprofile simulate configs/demo.yaml --out demo_data
	$(BIN)/immunoprofile run configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(PYTEST)

test-quick: lint typecheck
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

# Regenerate configs/schema.json from the typed config (a test checks they agree).
schema: $(STAMP)
	$(BIN)/python -c "import json; from pipeline.config import RunConfig; \
		print(json.dumps(RunConfig.model_json_schema(), indent=2, sort_keys=True))" > configs/schema.json

# Regenerate docs/configuration.md from the typed config (a test checks they agree).
docs-config: $(STAMP)
	$(BIN)/python -m pipeline.config_reference > docs/configuration.md

# The full-size simulator benchmark (docs/benchmarks.md).
bench-simulate: $(STAMP)
	rm -rf cohort_data
	$(BIN)/python benchmarks/measure.py --label simulate-cohort --json benchmarks/results/simulate.jsonl \
		-- $(BIN)/immunoprofile simulate configs/cohort.yaml --out cohort_data

# The whole pipeline at 50k, 250k and ~1M cells with the scanpy baseline (docs/benchmarks.md,
# about 40 minutes on 2 cores; needs ~10 GB of disk in SCALING_ROOT).
SCALING_ROOT ?= scaling_work
bench-scaling: $(STAMP)
	$(BIN)/python benchmarks/scaling.py --sizes 50k,250k,1M,4M --root $(SCALING_ROOT) \
		--json benchmarks/results/scaling.jsonl
	$(BIN)/python benchmarks/scaling_report.py benchmarks/results/scaling.jsonl --plot docs/img/scaling.png

clean:
	rm -rf demo_data demo_work .pytest_cache .mypy_cache .ruff_cache

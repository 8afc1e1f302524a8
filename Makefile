# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: demo report test lint dry-run clean-demo

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (snakemake 9)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	# uv downloads in parallel; the locks pin every package: runtime (torch/torchvision from the registry,
	# CUDA build) in requirements.lock, test/lint tools in requirements-dev.lock. Bytecode is compiled once
	# here: every Snakemake job is a new Python process, and where PYTHONDONTWRITEBYTECODE is set each one
	# would otherwise compile torch, pandas and snakemake from source (3x slower start-up).
	$(BIN)/uv pip install --python $(BIN)/python --quiet --compile-bytecode -r requirements.lock -r requirements-dev.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --workflow-profile profiles/cpu
	$(MAKE) report
	@cat results/demo/tables/summary.md

# The HTML report of the demo run (figures, tables, provenance); open it in a browser.
report: $(STAMP)
	$(BIN)/snakemake --workflow-profile none --report results/demo/report.html

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --workflow-profile none

dry-run: $(STAMP)
	$(BIN)/snakemake -n --workflow-profile none

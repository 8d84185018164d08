# The two commands of the README (and `make docs`, the documentation site). Each works on a fresh machine: it makes .venv if absent and installs into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first, pinned to the builds this machine serves from disk; pyproject keeps ranges.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: test demo docs install install-dev lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.torch: $(VENV)/bin/python
	$(PY) -m pip install -q $(TORCH_PINS)
	touch $@

$(VENV)/.dev: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.runtime

$(VENV)/.runtime: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

install: $(VENV)/.runtime
install-dev: $(VENV)/.dev

test: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15

# Warnings are errors: a broken reference, an undocumented public name or recipe key fails the build.
docs: $(VENV)/.dev
	$(VENV)/bin/sphinx-build -E -W --keep-going -n -q -b html docs docs/_build/html

demo: $(VENV)/.runtime
	$(VENV)/bin/resdense demo --out demo_out

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.dev
	for f in benchmarks/*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache docs/_build

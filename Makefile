# pearl-serve: set up, test, run. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

PAIR ?= qwen2.5-coder-0.5b-1.5b
ENGINES_DIR ?= engines

.PHONY: help setup test engines clean

help:
	@echo "make setup   create $(VENV) with the pinned dependencies and the pearl package"
	@echo "make test    run the test suite"
	@echo "make engines [PAIR=name] [DRY_RUN=1] [FORCE=1]"
	@echo "             build a pair's engines into $(ENGINES_DIR)/<pair> (pairs: build/configs/*.yaml;"
	@echo "             default $(PAIR)); DRY_RUN=1 prints the per-device build plan only"
	@echo "make clean   remove the venv and caches"

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest tests

engines: setup
	$(PY) -m pearl_build $(PAIR) --engines-dir $(ENGINES_DIR) $(if $(DRY_RUN),--dry-run) $(if $(FORCE),--force)

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

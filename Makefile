# pearl-serve: set up, test, run. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: help setup test clean

help:
	@echo "make setup   create $(VENV) with the pinned dependencies and the pearl package"
	@echo "make test    run the test suite"
	@echo "make clean   remove the venv and caches"

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-data.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-data.txt
	$(PIP) install -q --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

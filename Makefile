# One-command set-up: every target creates .venv and installs the package on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test lint bench demo clean

$(STAMP): setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(PY) -m compileall -q engine states tests bench
	bash -n scripts/*.sh scripts/lib/*.sh

bench: $(STAMP)
	$(PY) bench/run.py

demo: $(STAMP)
	$(PY) -m engine.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis

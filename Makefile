# Two commands for a bare machine: `make demo` (the embedded default job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/llm-tuning demo

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q

.PHONY: demo test

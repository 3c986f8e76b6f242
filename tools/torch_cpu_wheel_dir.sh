#!/usr/bin/env bash
# Prints a folder that holds the CPU build of torch 2.13.0 (a wheel), for `uv pip install --find-links`: uv does not
# read pip's configuration, and torch's +cpu builds are not on PyPI. The folder is one of pip's find-links folders
# when one has the wheel (this machine's /opt/wheels), else the agl cache, where pip downloads it (from pip's own
# cache when it has it) from PyTorch's CPU index. Never a CUDA build.
#
#   tools/torch_cpu_wheel_dir.sh [PYTHON]     # PYTHON: the interpreter whose pip configuration is read (python3.11)
set -euo pipefail

PYTHON="${1:-python3.11}"
for dir in $("$PYTHON" -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | tr ' ' '\n'); do
    if ls "$dir"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then echo "$dir"; exit 0; fi
done
dir="${XDG_CACHE_HOME:-$HOME/.cache}/agl/wheels"
mkdir -p "$dir"
"$PYTHON" -m pip download -q --no-deps -d "$dir" "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu >&2
if ! ls "$dir"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    echo "no CPU wheel of torch 2.13.0 found (looked in pip's find-links and $dir)" >&2
    exit 1
fi
echo "$dir"

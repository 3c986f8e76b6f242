#!/usr/bin/env bash
# The model server vs plain transformers `generate` on one GPU: 64 concurrent requests vs a batch of 64, bfloat16,
# 128 new tokens each (SmolLM2-135M unless --model is given), tokens/s, median of 3.
#
#   bash benchmarks/gpu_model_server.sh                       # on a GPU machine, after `make setup`
#   bash benchmarks/gpu_model_server.sh --model /path/to/dir  # another local Hugging Face model
#   bash benchmarks/gpu_model_server.sh --device cpu --quick  # a check that runs anywhere (CPU, float32, 16 tokens)
#
# `generate` is launch-bound on a GPU at this model size (a decode step is hundreds of small kernels). The server
# runs twice on the same model: on its static path (fixed KV cache slots, one CUDA graph replayed per step, the
# default on a GPU) and on its dynamic path (transformers' forward and cache, as on the CPU). `--static-generate`
# adds transformers' own static-cache generate (torch.compile; minutes of compiling). Later flags override the
# defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

device=cuda
prev=""
for arg in "$@"; do
    if [ "$prev" = "--device" ]; then device="$arg"; fi
    prev="$arg"
done

if [ "$device" = "cpu" ]; then
    defaults=(--device cpu --concurrency 1,8 --max-tokens 64)
else
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: pass --device cpu --quick to check the script')"
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
    defaults=(--device cuda --dtype bfloat16 --concurrency 1,64 --max-tokens 128 --decode both --no-eager-generate)
fi
exec "$PYTHON" benchmarks/model_server.py "${defaults[@]}" "$@"

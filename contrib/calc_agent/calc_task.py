"""The calculator task, standard library only: safe arithmetic, the tool-call prompt and the reward rule.

Shared by the pure-Python agent (``calc_agent.py``), the main job (``contrib/recipes/grpo_calculator.py``) and
TRL's side of ``benchmarks/grpo_vs_trl.py``, which runs in another interpreter without agl, so nothing here imports
agl.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable

__all__ = ["EXPRESSION", "PROMPT", "TOOL_CALL", "calculate", "evaluate", "format_number", "score"]

PROMPT = (
    "You can use a calculator. To use it, reply with one line: CALC: <expression>\n"
    "Example: for 'Calculate 3 + 4.' reply CALC: 3 + 4\n\n{question}"
)
TOOL_CALL = re.compile(r"\s*CALC:\s*([-+*/().\d\s]+?)\s*")
"""A reply that is exactly one tool call."""
EXPRESSION = re.compile(r"-?\d+(?:\.\d+)?(?:\s*[-+*/]\s*-?\d+(?:\.\d+)?)+")
"""The first arithmetic expression in a looser reply."""

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    raise ValueError(f"the calculator cannot evaluate {ast.dump(node)}")


def evaluate(expression: str) -> float:
    """+ - * / and parentheses, nothing else (no eval); ``ValueError``/``SyntaxError`` for anything more,
    ``ZeroDivisionError`` for a division by zero."""
    return _evaluate(ast.parse(expression.strip(), mode="eval"))


def calculate(expression: str) -> float | None:
    """:func:`evaluate`, or ``None`` for what it cannot evaluate."""
    try:
        return evaluate(expression)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


def score(reply: str, answers: Callable[[str], bool]) -> float:
    """The reward of one reply: 1.0 when it is exactly a tool call (``CALC: <expression>``) whose expression
    ``answers`` the task; 0.5 when the first arithmetic expression in a looser reply does; 0.0 otherwise."""
    exact = TOOL_CALL.fullmatch(reply)
    if exact is not None and answers(exact.group(1)):
        return 1.0
    loose = EXPRESSION.search(reply)
    return 0.5 if loose is not None and answers(loose.group(0)) else 0.0

"""An agent written for AgentOps, unchanged for agl: an ``@agent`` class whose ``@task`` asks an OpenAI-compatible
server (``OPENAI_BASE_URL``, the tests' loopback server) and calls a ``@tool``, inside an AgentOps trace (session).
``agl dev --agent agentops_agent.py:agent --tracer agentops`` trains it; so does ``Trainer(tracer="agentops")``."""

from __future__ import annotations

import os

import agentops
import openai
from agentops import agent as agentops_agent
from agentops import task, tool


@tool
def check(answer: str, expected: str) -> float:
    """1.0 when the model's answer ends with what was expected."""
    return 1.0 if answer.strip().endswith(expected) else 0.0


@agentops_agent(name="solver")
class Solver:
    def __init__(self) -> None:
        self.client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="not-needed")

    @task
    def solve(self, question: str) -> str:
        reply = self.client.chat.completions.create(model="qwen", messages=[{"role": "user", "content": question}])
        return reply.choices[0].message.content or ""


def agent(task: dict, resources: dict) -> float:
    trace = agentops.start_trace("math", tags=["agl"])
    try:
        answer = Solver().solve(task["question"])
        return check(answer, task["question"])
    finally:
        agentops.end_trace(trace)


tasks = [{"question": "2+2"}, {"question": "3*3"}]

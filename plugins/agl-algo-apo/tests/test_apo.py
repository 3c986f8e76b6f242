"""The whole APO loop: Trainer → runners (OTel tracer) → an unmodified openai agent → a real loopback
OpenAI-compatible server that plays both the agent's model and the optimizer, with scripted deterministic answers
(some edits are better than others, some are invalid); the store is a real SQLite file."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

from agl_algo_apo import APO, CANDIDATE_SPAN, APOConfig, APOReport, make_config
from agl_kernel.agent import rollout
from agl_kernel.cli import cli
from agl_kernel.errors import ConfigError
from agl_kernel.models import LLM, PromptTemplate
from agl_kernel.store.defaults import make_store
from agl_kernel.testing.openai_server import FakeOpenAIServer
from agl_kernel.trainer import Trainer

TASKS = [{"a": a, "b": 2} for a in range(1, 7)]


def _user_text(request: dict[str, Any]) -> str:
    return "\n".join(m.get("content") or "" for m in request.get("messages", []) if m.get("role") != "assistant")


def agent_model(request: dict[str, Any]) -> str:
    """The agent's model: right or wrong by the keywords of its prompt. a=1 is always right; CAREFUL: a ≤ 5;
    STEP: even a; CAREFUL with EXACT: every task."""
    text = _user_text(request)
    a, b = (int(x) for x in re.search(r"(\d+)\+(\d+)", text).groups())  # type: ignore[union-attr]
    careful, step, exact = "CAREFUL" in text, "STEP" in text, "EXACT" in text
    right = a == 1 or (careful and exact) or (careful and a <= 5) or (step and a % 2 == 0) or (exact and a % 2 == 0)
    return str(a + b if right else a + b + 1)


def single_template_optimizer(request: dict[str, Any]) -> str:
    text = _user_text(request)
    if "The runs that went worst" in text:
        return "The agent adds one too many. Tell it to be careful."
    proposal = int(re.search(r"proposal (\d+) of", text).group(1))  # type: ignore[union-attr]
    parent = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.DOTALL).group(1)  # type: ignore[union-attr]
    return {
        1: f"<prompt>Be CAREFUL. {parent}</prompt>",
        2: f"Here it is: <prompt>{parent} Be CAREFUL, please.</prompt>",
        3: f"<prompt>Think STEP by step. {parent}</prompt>",
        4: "<prompt>Add the two numbers.</prompt>",  # drops {question}
        5: "Sure! I would make the prompt more careful.",  # no <prompt> block: garbage
    }[proposal]


def make_router(optimizer: Any) -> Any:
    def reply(request: dict[str, Any]) -> str:
        return optimizer(request) if request.get("model") == "optimizer" else agent_model(request)

    return reply


@rollout
async def solver(task: dict[str, int], resources: dict[str, Any]) -> float:
    llm = resources["llm"]
    client = openai.AsyncOpenAI(base_url=llm.endpoint, api_key="test", max_retries=0)
    try:
        messages = [{"role": "user", "content": resources["instructions"].format(question=f"{task['a']}+{task['b']}")}]
        if "style" in resources:  # the two-template agent: a system prompt and a user prompt
            messages = [
                {"role": "system", "content": resources["style"].format()},
                {"role": "user", "content": resources["instructions"].format(question=f"{task['a']}+{task['b']}")},
            ]
        reply = await client.chat.completions.create(model=llm.model, messages=messages)  # type: ignore[arg-type]
    finally:
        await client.close()
    return 1.0 if reply.choices[0].message.content.strip() == str(task["a"] + task["b"]) else 0.0


def fit(
    tmp_path: Path, server: FakeOpenAIServer, prompts: dict[str, str], *, by_name: bool = False, **options: Any
) -> tuple[APOReport, Any]:
    """APO made here with ``options`` (``by_name``: selected by name, ``Trainer(algorithm="apo", options=...)``)."""
    options.setdefault("optimizer_base_url", server.base_url)
    options = {"critique_model": "optimizer", "output_path": str(tmp_path / "best.json"), "console": False, **options}
    options = {k: v for k, v in options.items() if v is not None}
    resources: dict[str, Any] = {name: PromptTemplate(template=text) for name, text in prompts.items()}
    resources["llm"] = LLM(endpoint=server.base_url, model="agent")
    trainer = Trainer(
        algorithm="apo" if by_name else APO(**options),
        options={"algorithm": options} if by_name else None,
        n_runners=4,
        store_path=tmp_path / "agl.db",
        tracer="otel",
        initial_resources=resources,
        progress=False,
    )
    with trainer:
        report = trainer.fit(solver, TASKS, TASKS)
    return report, tmp_path / "agl.db"


def rows(report: APOReport, round_no: int) -> dict[str, Any]:
    return {row.candidate: row for row in report.rounds[round_no]}


def test_beam_keeps_the_better_candidates_and_publishes_the_best(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="agl_algo_apo")
    with FakeOpenAIServer(make_router(single_template_optimizer)) as server:
        report, db = fit(
            tmp_path, server, {"instructions": "Compute {question}."}, rounds=1, beam_width=2, branch_factor=5
        )
        optimizer_requests = [c["request"] for c in server.calls if c["request"].get("model") == "optimizer"]

    assert report.seed_score == pytest.approx(1 / 6)
    assert report.best_score == pytest.approx(5 / 6)
    assert report.best_prompts == {"instructions": "Be CAREFUL. Compute {question}."}
    first = rows(report, 1)
    # c1 (CAREFUL, 5/6) and c3 (STEP, 4/6: the only one right on a=6) stay; c2 scores as c1 but adds nothing on any
    # task, so the Pareto selection keeps c3 over it; the seed (1/6) is dropped.
    assert first["c1"].status == "beam" and first["c1"].score == pytest.approx(5 / 6)
    assert first["c3"].status == "beam" and first["c3"].score == pytest.approx(4 / 6)
    assert first["c2"].status == "dropped" and first["c2"].score == pytest.approx(5 / 6)
    assert first["c0"].status == "dropped"
    assert first["c4"].status == "rejected" and "drops the required variable(s) question" in first["c4"].reason
    assert first["c5"].status == "rejected" and "no <prompt>...</prompt> block" in first["c5"].reason
    logged = caplog.text
    assert "c4" in logged and "drops the required variable" in logged and "no <prompt>" in logged

    # The critique saw real trajectories: the prompt the agent sent, the model's wrong answer, the reward.
    critiques = [r for r in optimizer_requests if "The runs that went worst" in _user_text(r)]
    assert len(critiques) == 1 and len(optimizer_requests) == 1 + 5 and report.optimizer_calls == 6
    critique = _user_text(critiques[0])
    wrong = re.search(r"user: Compute (\d)\+2\.\nassistant: (\d+)\nOutcome: succeeded, reward 0", critique)
    assert wrong is not None and int(wrong.group(2)) == int(wrong.group(1)) + 3  # the model's off-by-one answer
    best_part = critique.split("The runs that went best")[1]
    assert "user: Compute 1+2.\nassistant: 3\nOutcome: succeeded, reward 1" in best_part  # a=1 is always right

    async def check_store() -> None:
        store = make_store(None, path=db)
        async with store:
            latest = await store.get_latest_resources()
            assert (
                latest is not None and latest.resources["instructions"].template == report.best_prompts["instructions"]
            )
            assert latest.resources_id == report.resources_id and latest.version == report.version
            assert latest.resources["llm"].model == "agent"  # what APO does not optimize is passed on
            history = (await store.query_resources(resources_id=report.resources_id)).items
            assert next(h.resources["instructions"].template for h in history) == "Compute {question}."  # the seed
            metrics = [
                r for r in (await store.query_rollouts()).items if (r.metadata or {}).get("kind") == "training-metrics"
            ]
            assert len(metrics) == 1 and metrics[0].metadata["algorithm"] == "apo"
            spans = (await store.query_spans(metrics[0].rollout_id, "latest", name=CANDIDATE_SPAN)).items
            recorded = {(s.attributes["agl.apo.round"], s.attributes["agl.apo.candidate"]): s.attributes for s in spans}
            assert recorded[(1, "c1")]["agl.apo.score"] == pytest.approx(5 / 6)
            assert recorded[(1, "c1")]["agl.apo.prompt"] == "Be CAREFUL. Compute {question}."
            assert recorded[(1, "c4")]["agl.apo.status"] == "rejected"

    import asyncio

    asyncio.run(check_store())
    written = json.loads((tmp_path / "best.json").read_text())
    assert written["prompts"] == report.best_prompts and written["score"] == pytest.approx(5 / 6)

    shown = CliRunner().invoke(cli, ["resources", "show", "instructions", "--path", str(db)])
    assert shown.exit_code == 0, shown.output
    assert "Compute {question}." in shown.output and "Be CAREFUL. Compute {question}." in shown.output
    listed = CliRunner().invoke(cli, ["resources", "list", "--path", str(db)], env={"COLUMNS": "200"})  # ids unclipped
    assert listed.exit_code == 0 and report.resources_id in listed.output


def test_without_pareto_the_beam_is_the_top_means(tmp_path: Path) -> None:
    with FakeOpenAIServer(make_router(single_template_optimizer)) as server:
        report, _ = fit(
            tmp_path,
            server,
            {"instructions": "Compute {question}."},
            rounds=1,
            beam_width=2,
            branch_factor=5,
            pareto=False,
        )
    first = rows(report, 1)
    assert {c for c, row in first.items() if row.status == "beam"} == {"c1", "c2"}
    assert first["c3"].status == "dropped"


def two_template_optimizer(request: dict[str, Any]) -> str:
    """Critique: blames the template that lacks its keyword. Edit: adds the keyword of the template it is asked
    to edit (style → CAREFUL, instructions → EXACT)."""
    text = _user_text(request)
    if "The runs that went worst" in text:
        blamed = "instructions" if "EXACT" not in text else "style"
        return f"The answers are off by one.\nTEMPLATE: {blamed}"
    name = re.search(r'Rewrite the prompt template "(\w+)"', text).group(1)  # type: ignore[union-attr]
    parent = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.DOTALL).group(1)  # type: ignore[union-attr]
    return f"<prompt>{parent} Be CAREFUL.</prompt>" if name == "style" else f"<prompt>EXACT answer: {parent}</prompt>"


@pytest.mark.parametrize(
    "selection, order", [("round-robin", ["style", "instructions"]), ("blame", ["instructions", "style"])]
)
def test_every_template_of_a_multi_template_agent_is_optimized(
    tmp_path: Path, selection: str, order: list[str]
) -> None:
    with FakeOpenAIServer(make_router(two_template_optimizer)) as server:
        report, _ = fit(
            tmp_path,
            server,
            {"style": "You add numbers.", "instructions": "Compute {question}."},
            rounds=2,
            beam_width=1,
            branch_factor=1,
            template_selection=selection,
        )
    edited = [next(r.template for r in report.rounds[i] if r.status == "beam") for i in (1, 2)]
    assert edited == order
    assert report.best_prompts == {
        "style": "You add numbers. Be CAREFUL.",
        "instructions": "EXACT answer: Compute {question}.",
    }
    assert report.seed_score == pytest.approx(1 / 6) and report.best_score == pytest.approx(1.0)


def test_optimizer_down_or_failing_rejects_candidates_and_keeps_the_seed(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="agl_algo_apo")
    with FakeOpenAIServer(make_router(single_template_optimizer)) as server:
        with FakeOpenAIServer() as gone:
            down_url = gone.base_url  # a port that nothing listens on once this server has stopped
        report, _db = fit(
            tmp_path / "down",
            server,
            {"instructions": "Compute {question}."},
            rounds=1,
            branch_factor=2,
            optimizer_base_url=down_url,
        )
        failing, _ = fit(
            tmp_path / "fail",
            server,
            {"instructions": "Compute {question}."},
            rounds=1,
            branch_factor=2,
            critique_model="fail",
        )  # the test server answers HTTP 500 for it
    for result, reason in ((report, "cannot be reached"), (failing, "HTTP 500")):
        assert result.best_prompts == {"instructions": "Compute {question}."}
        assert result.best_score == result.seed_score == pytest.approx(1 / 6)
        rejected = [r for r in result.rounds[1] if r.status == "rejected"]
        assert len(rejected) == 2 and all(reason in (r.reason or "") for r in rejected)
    assert "cannot be reached" in caplog.text and "HTTP 500" in caplog.text
    written = json.loads((tmp_path / "down" / "best.json").read_text())
    assert written["prompts"] == {"instructions": "Compute {question}."}


def test_bad_configuration_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^algorithm\.beam_widht: unknown option\. Did you mean 'beam_width'\?"):
        APO(beam_widht=2)
    with pytest.raises(ConfigError, match=r"^algorithm\.beam_width: must be >= 1: 0$"):
        APO(beam_width=0)
    with pytest.raises(ConfigError, match=r"^algorithm\.rounds: expected an integer, got 'three'$"):
        Trainer(algorithm="apo", options={"algorithm": {"rounds": "three"}}, store="memory")
    with pytest.raises(ConfigError, match=r"^algorithm\.templates: must name at least one template"):
        APO(templates=[])
    template = tmp_path / "critique.md"
    template.write_text("Critique {templates} with {nonsense}")
    with pytest.raises(ValueError, match=r"uses \{nonsense\}"):
        APO(critique_template=str(template))
    with pytest.raises(ValueError, match="cannot read the optimizer template"):
        APO(edit_template=str(tmp_path / "missing.md"))
    with (
        FakeOpenAIServer(make_router(single_template_optimizer)) as server,
        pytest.raises(ValueError, match="templates names 'nope'"),
    ):
        fit(tmp_path, server, {"instructions": "Compute {question}."}, templates=["nope"])


def test_a_repeated_prompt_is_not_run_again(tmp_path: Path) -> None:
    def same_edit(request: dict[str, Any]) -> str:
        if "The runs that went worst" in _user_text(request):
            return "Be careful."
        return "<prompt>Be CAREFUL. Compute {question}.</prompt>"

    with FakeOpenAIServer(make_router(same_edit)) as server:
        report, _ = fit(tmp_path, server, {"instructions": "Compute {question}."}, rounds=1, branch_factor=3)
    first = rows(report, 1)
    assert first["c1"].status == "beam" and first["c1"].score == pytest.approx(5 / 6)
    assert [first[c].reason for c in ("c2", "c3")] == ["the same prompts as candidate c1"] * 2
    # The seed on 6 validation tasks, its training batch of 4, then c1 alone on the 6 validation tasks.
    assert report.rollouts == 6 + 4 + 6


def test_selected_by_name_with_options_and_the_optimizer_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Trainer(algorithm="apo", options=...)`` (string values, as from the command line); the optimizer's
    endpoint and key from OPENAI_BASE_URL / OPENAI_API_KEY, and the key is not recorded in the store."""
    assert APO.Options is APOConfig and make_config(beam_width="2").beam_width == 2
    with FakeOpenAIServer(make_router(single_template_optimizer)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-for-the-test")
        assert APOConfig().optimizer_base_url is None  # read when APO runs, not kept in the options
        report, db = fit(
            tmp_path, server, {"instructions": "Compute {question}."}, by_name=True, optimizer_base_url=None,
            rounds="1", beam_width="2", branch_factor="3", pareto="false",
        )  # fmt: skip
        assert any(c["request"].get("model") == "optimizer" for c in server.calls)  # reached through the variable
    assert report.best_score > report.seed_score and len(report.rounds) == 2
    assert b"sk-secret-for-the-test" not in db.read_bytes()

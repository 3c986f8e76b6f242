"""``agl rollouts why ROLLOUT_ID``: through the CLI, on a real SQLite store file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from agl_kernel import semconv
from agl_kernel.cli import cli
from agl_kernel.models import AttemptStatus, Span
from agl_kernel.store.defaults import make_store

pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")


def _span(attempted, name, attributes, n):
    return Span(
        rollout_id=attempted.rollout_id,
        attempt_id=attempted.attempt.attempt_id,
        trace_id="a" * 32,
        span_id=f"{n:016x}",
        name=name,
        attributes=attributes,
    )


def _store_rollout(db: Path, with_token_ids: bool) -> str:
    async def main() -> str:
        async with make_store(path=db) as store:
            attempted = await store.start_rollout({"q": 1})
            llm = {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.GEN_AI_REQUEST_MODEL: "qwen"}
            if with_token_ids:
                llm.update({semconv.LLM_PROMPT_TOKEN_IDS: [1, 2, 3], semconv.LLM_RESPONSE_TOKEN_IDS: [4, 5]})
            await store.add_many_spans(
                [
                    _span(attempted, "chat qwen", llm, 1),
                    _span(attempted, semconv.REWARD_SPAN, {semconv.REWARD_VALUE: 1.0}, 2),
                ]
            )
            await store.update_attempt(
                attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED
            )
            return attempted.rollout_id

    return asyncio.run(main())


def _why(*args: str):
    return CliRunner().invoke(cli, ["rollouts", "why", *args], env={"COLUMNS": "250"})


def test_a_rollout_without_token_ids_gets_a_clear_reason(tmp_path: Path) -> None:
    db = tmp_path / "agl.db"
    rollout_id = _store_rollout(db, with_token_ids=False)
    result = _why(rollout_id, "--path", str(db))
    assert result.exit_code == 0, result.output
    assert f"Rollout {rollout_id} (succeeded)" in result.output
    assert "1 LLM calls, 0 triplets, final reward 1" in result.output
    assert "No training data because:" in result.output
    assert "no_token_ids" in result.output
    assert "no prompt or response token ids were captured" in result.output and "return_token_ids" in result.output


def test_a_good_rollout_and_json_output(tmp_path: Path) -> None:
    db = tmp_path / "agl.db"
    rollout_id = _store_rollout(db, with_token_ids=True)
    result = _why(rollout_id, "--path", str(db))
    assert result.exit_code == 0, result.output
    assert "1 triplets" in result.output and "Every LLM call gave training data." in result.output
    as_json = _why(rollout_id, "--path", str(db), "--json", "--agent-match", "planner")
    report = json.loads(as_json.output)
    assert report["rollout_id"] == rollout_id and report["attempt_status"] == "succeeded"
    assert report["triplets"] == 0 and report["calls"][0]["reason"] == "filtered_out"
    assert "filtered out" in report["why"][0]


def test_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = _why("ro-1")
    assert missing.exit_code == 2 and "there is no store file at" in missing.output and "--path" in missing.output
    assert not (tmp_path / ".agl").exists()  # a read-only command creates no store
    db = tmp_path / "agl.db"
    _store_rollout(db, with_token_ids=True)
    unknown = _why("ro-nope", "--path", str(db))
    assert unknown.exit_code == 2 and "ro-nope" in unknown.output
    both = _why("ro-1", "--path", str(db), "--url", "http://127.0.0.1:1")
    assert both.exit_code == 2 and "either --url or --store/--path" in both.output
    bad = _why("ro-1", "--path", str(db), "--agent-match", "(")
    assert bad.exit_code == 2 and "not a valid regular expression" in bad.output

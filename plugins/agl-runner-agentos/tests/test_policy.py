"""Policies from a file the user writes (Agent-OS's format) or from Python; bad files refused in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import governed_agents
import pytest

from agl_kernel.errors import ConfigError
from agl_kernel.plugins import create_component
from agl_runner_agentos import AgentOSPolicy, PolicyFileError, deny_sql, load_policy

HERE = Path(__file__).parent


def test_a_policy_file_is_loaded_with_its_severities(tmp_path: Path) -> None:
    policy = load_policy(str(governed_agents.write_policy(tmp_path)))
    denied = policy.decide("a", "run_sql", {"query": "drop table x"})
    assert (denied.allowed, denied.rule, denied.severity, denied.policy) == (
        False,
        "no-destructive-sql",
        "critical",
        "sql-safety",
    )
    assert policy.decide("a", "run_sql", {"query": "UPDATE t SET a=1"}).severity == "low"
    allowed = policy.decide("a", "run_sql", {"query": "SELECT 1"})
    assert allowed.allowed and allowed.rule is None and allowed.severity is None


def test_a_json_policy_and_python_policies(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(
        '{"name": "j", "rules": [{"name": "no-shell", "condition": {"field": "tool_name", "operator": "eq", '
        '"value": "shell"}, "action": "deny"}]}'
    )
    policy = load_policy(str(path), default_severity="medium")
    assert policy.decide("a", "shell", {}).severity == "medium"
    assert policy.decide("a", "ls", {}).allowed
    from_function = load_policy(f"{HERE / 'governed_agents.py'}:python_policy")
    assert not from_function.decide("a", "t", {"query": "DROP x"}).allowed
    assert from_function.decide("a", "t", {"query": "DELETE FROM x"}).allowed
    document = deny_sql().documents[0]
    assert (
        isinstance(load_policy(document), AgentOSPolicy)
        and not load_policy([document]).decide("a", "t", {"query": "delete from x"}).allowed
    )

    class Engine:  # Agent-OS's policy-engine protocol
        def check_violation(self, agent_role: str, tool_name: str, args: dict) -> str | None:
            return "no writes" if tool_name == "write" else None

    engine = load_policy(Engine(), default_severity="low")
    assert engine.decide("a", "write", {}).reason == "no writes" and engine.decide("a", "read", {}).allowed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rules: [\n  - name: x\n    condition: {field: q", r"is not valid YAML/JSON \(line \d+, column \d+\)"),
        ("- 1\n- 2\n", r"must hold an Agent-OS policy document"),
        (
            "rules:\n  - name: x\n    condition: {field: q, operator: like, value: 1}\n    action: deny\n",
            r"is not an Agent-OS policy: rules\.0\.condition\.operator: Input should be",
        ),
        ("name: empty\nrules: []\n", r"has no rules"),
        (
            "rules:\n  - name: x\n    condition: {field: q, operator: eq, value: 1}\n    action: deny\n"
            "    severity: fatal\n",
            r"rule 'x': severity must be one of critical, high, medium, low, not 'fatal'",
        ),
    ],
    ids=["yaml-syntax", "not-a-mapping", "bad-operator", "no-rules", "bad-severity"],
)
def test_a_bad_policy_file_is_refused_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError, match=expected) as error:
        load_policy(str(path))
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    with pytest.raises(ConfigError, match=r"^runner\.policy: the policy file .*bad\.yaml"):
        create_component("runners", "agentos", worker_id="w", options={"policy": str(path)})


def test_a_missing_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^runner\.policy: there is no policy file at .*nope\.yaml$"):
        create_component("runners", "agentos", worker_id="w", options={"policy": str(tmp_path / "nope.yaml")})
    with pytest.raises(PolicyFileError, match=r"cannot load the policy 'no_such_module:policy': "):
        load_policy("no_such_module:policy")


def test_the_cli_refuses_a_bad_policy_file_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: {")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agl_kernel.cli",
            "runner",
            "--store",
            "memory",
            "--agent",
            f"{HERE / 'governed_agents.py'}:sync_agent",
            "--runner",
            "agentos",
            "--set",
            f"runner.policy={bad}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: runner.policy: the policy file "), result.stderr
    assert "is not valid YAML/JSON" in lines[0] and "Traceback" not in result.stderr

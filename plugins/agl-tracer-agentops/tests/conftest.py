"""The tests run each scenario as a script in a fresh Python process (AgentOps' state is process-wide), with the
network guard (``_netguard.py``) imported first and the example agent (``agentops_agent.py``) importable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a test script: no AGL_ / AGENTOPS_ settings of the caller, this folder importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGL_", "AGENTOPS_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["COLUMNS"] = "250"
    env.update(extra)
    return env


def run_script(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (the network guard first) in a fresh interpreter; fail with its output unless it exits 0."""
    script = "import _netguard\n" + textwrap.dedent(code)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.fixture
def script(tmp_path: Path):  # type: ignore[no-untyped-def]
    return lambda code, **env: run_script(code, tmp_path, **env)

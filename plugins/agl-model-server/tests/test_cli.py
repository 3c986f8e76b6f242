"""The plugin registers ``agl serve-model``, and importing it does not load torch."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner


def test_serve_model_command_is_registered() -> None:
    from agl_kernel.cli import cli

    result = CliRunner().invoke(cli, ["serve-model", "--help"])
    assert result.exit_code == 0, result.output
    assert "--model" in result.output and "smollm2" in result.output


def test_importing_the_plugin_is_cheap() -> None:
    code = "import sys, agl_model_server, agl_model_server.hooks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="agl.plugins")}
    assert names.get("model-server") == "agl_model_server.hooks"


def test_a_server_started_in_a_process_leaves_its_logging_configuration_alone() -> None:
    """GRPO serves its policy in the trainer's process: starting the server (and answering) adds no handler to the
    root logger and leaves its level, so the host's own logging stays as the user set it."""
    code = """
import logging, httpx
from agl_model_server import ModelServer
from agl_model_server.testing import make_tiny_model, make_tiny_tokenizer
root = logging.getLogger()
before = (list(root.handlers), root.level)
tokenizer = make_tiny_tokenizer()
server = ModelServer(model=make_tiny_model(len(tokenizer)), tokenizer=tokenizer, model_name="tiny").start()
try:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    httpx.post(server.base_url + "/chat/completions", json=body, timeout=60).raise_for_status()
finally:
    server.stop()
print(root.handlers, logging.getLevelName(root.level), before == (list(root.handlers), root.level))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "True", out.stdout


def test_serve_model_rejects_an_unknown_log_level_in_one_line() -> None:
    from agl_kernel.cli import cli

    result = CliRunner().invoke(cli, ["serve-model", "--log-level", "loud"])
    assert result.exit_code == 2
    assert "'loud' is not one of" in result.output and "Traceback" not in result.output

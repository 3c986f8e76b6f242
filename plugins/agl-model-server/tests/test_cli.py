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

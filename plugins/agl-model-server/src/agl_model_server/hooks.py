"""The ``agl serve-model`` command (hook implementations registered as ``model-server`` in ``agl.plugins``).

Importing this module loads only click: torch and transformers load when the command runs.
"""

from __future__ import annotations

import click

from agl_kernel.plugins import hookimpl

__all__ = ["agl_register_commands"]


@hookimpl
def agl_register_commands(cli: click.Group) -> None:
    if isinstance(cli, click.Group):  # only a click group takes commands (tests call hooks with stand-ins)
        cli.add_command(serve_model)


@click.command("serve-model")
@click.option(
    "--model",
    "model_path",
    default="smollm2",
    show_default=True,
    help="A local Hugging Face model directory, or 'smollm2' for SmolLM2-135M-Instruct (converted once and cached).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--served-model-name", default=None, help="The name clients use in `model` (default: from the model).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available, else cpu).")
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    help="Weights dtype; auto = bfloat16 on a GPU, the checkpoint's on the CPU.",
)
@click.option("--max-batch-size", default=64, show_default=True, type=int, help="Most sequences decoded together.")
@click.option(
    "--max-model-len", default=None, type=int, help="Context limit (prompt + completion), at most the model's."
)
@click.option(
    "--decode",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "static", "dynamic"]),
    help="static: fixed KV cache slots and CUDA graphs (Llama-shaped models); dynamic: transformers' own cache; "
    "auto: static when the model allows it.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"], case_sensitive=False),
    help="The server's log level (trace: uvicorn's protocol traces too).",
)
def serve_model(
    model_path: str,
    host: str,
    port: int,
    served_model_name: str | None,
    device: str | None,
    dtype: str,
    max_batch_size: int,
    max_model_len: int | None,
    decode: str,
    log_level: str,
) -> None:
    """Serve a causal LM with an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models,
    POST /v1/weights to load new weights in place), with continuous batching, token ids and logprobs."""
    import logging

    import torch

    level = logging.DEBUG if log_level == "trace" else log_level.upper()  # the choice as listed: lower case
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from agl_model_server._server import ModelServer

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else None  # type: ignore[assignment]
    click.echo(f"loading {model_path} on {device} ...", err=True)
    server = ModelServer(
        model_path,
        model_name=served_model_name,
        device=device,
        dtype=dtype,
        max_batch_size=max_batch_size,
        max_model_len=max_model_len,
        static_decode=None if decode == "auto" else decode == "static",
    )
    click.echo(
        f"serving {server.model_name!r} at http://{host}:{port}/v1 (max_model_len {server.max_model_len})", err=True
    )
    server.serve(host, port, log_level=log_level)

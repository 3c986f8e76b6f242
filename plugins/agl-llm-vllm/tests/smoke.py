"""Smoke use of agl-llm-vllm installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a fresh
venv's python, without vllm, torch or pytest): the backend by name with typed options, the one-line error that says
what to install when the interpreter has no vllm, and the ``agl vllm serve`` command."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.plugins import create_component


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


def main() -> None:
    backend = create_component("llm_backends", "vllm", options={"dtype": "float32", "enforce_eager": "true"})
    check(backend.options.dtype == "float32" and backend.options.enforce_eager, f"options: {backend.options}")
    try:
        create_component("llm_backends", "vllm", options={"dtype": "float64"})
    except ConfigError as err:
        check("dtype" in str(err), f"the error names the option: {err}")
    else:
        check(False, "dtype=float64 was accepted")

    backend = create_component("llm_backends", "vllm", options={"python": sys.executable, "model": "some/model"})
    try:
        asyncio.run(backend.start(None, None, model_name="policy"))
    except MissingDependencyError as err:
        check("pip install 'agl-llm-vllm[vllm]'" in str(err) and "\n" not in str(err), f"the message: {err}")
    else:
        check(False, f"start() with {sys.executable} (no vllm) did not fail")

    done = subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", "vllm", "serve", "--help"], capture_output=True, text=True, timeout=120
    )
    check(done.returncode == 0 and "--enforce-eager" in done.stdout, f"agl vllm serve --help: {done.stderr[-2000:]}")
    print("agl-llm-vllm smoke: ok (options by name, the missing-vllm error, agl vllm serve --help)")


if __name__ == "__main__":
    main()

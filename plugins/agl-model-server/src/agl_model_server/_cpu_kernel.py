"""The static path's CPU projection kernel (``_cpu_linear.c``), compiled on first use.

At a decode step's few rows, a projection reads its whole weight matrix to do a little arithmetic with it. MKL's
``sgemm`` reads the weights at 6-7 GB/s on this project's 2-core CPU. The C kernel next to this file streams them
at 12-16 GB/s: it runs each pair of weight rows against up to six rows of ``x`` in AVX2 registers and prefetches
ahead. A SmolLM2 decode step's projections at 8 rows take about half as long (see docs/performance.md).

The kernel is built once per machine with the C compiler (``$CC``, else ``cc``/``gcc``) into
``$AGL_KERNELS_DIR``, else ``$XDG_CACHE_HOME/agl/kernels``, else ``~/.cache/agl/kernels``; the file's name holds
a hash of the source and the flags. :func:`load` returns ``None`` (and the static path uses ``torch.mm``) when the
CPU lacks AVX2/FMA, no compiler is found, the build fails, or ``AGL_CPU_KERNEL=0``; the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from agl_model_server._models import cache_dir

__all__ = ["MAX_ROWS", "load"]

logger = logging.getLogger(__name__)

MAX_ROWS = 32
"""Up to this many rows the kernel beats ``torch.mm`` here (both bound by reading the weights); above it, a
prefill's many rows make the product compute-bound, where MKL is the better kernel."""

_SOURCE = Path(__file__).with_name("_cpu_linear.c")
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]

Linear = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``linear(x, weight)``: ``x @ weight.T`` for a contiguous float32 ``x`` of at most :data:`MAX_ROWS` rows and a
contiguous float32 ``weight``."""


def _unsupported() -> str | None:
    if os.environ.get("AGL_CPU_KERNEL", "1") == "0":
        return "AGL_CPU_KERNEL=0"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    return None


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *_FLAGS]).encode()).hexdigest()[:16]
    target = cache_dir("kernels", "AGL_KERNELS_DIR") / f"agl_linear_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes building at once each write their own file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def load() -> Linear | None:
    """The kernel as ``linear(x, weight)``, or ``None`` where it cannot run (the reason is logged)."""
    reason = _unsupported()
    compiler = _compiler()
    if reason is None and compiler is None:
        reason = "no C compiler found (set CC, or install gcc)"
    if reason is None:
        try:
            function = ctypes.CDLL(str(_build(compiler))).agl_linear_f32  # type: ignore[arg-type]
        except Exception as err:
            reason = f"building {_SOURCE.name} failed: {err}"
    if reason is not None:
        logger.info("the CPU decode kernel is not used (%s); decode steps use torch.mm", reason)
        return None
    function.restype = None
    function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]

    def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows, width = x.shape
        out = torch.empty(rows, weight.shape[0], dtype=torch.float32)
        # ctypes releases the GIL for the call.
        function(x.data_ptr(), weight.data_ptr(), out.data_ptr(), rows, width, weight.shape[0], torch.get_num_threads())
        return out

    return linear

"""The static path's CPU projection kernel (``_cpu_linear.c``): built with the machine's C compiler, equal to
``x @ W.T``, used by the decode step, and left out (for ``torch.mm``) when it cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agl_model_server import _cpu_kernel
from agl_model_server._static import StaticDecoder
from agl_model_server.testing import make_tiny_model

needs_kernel = pytest.mark.skipif(
    _cpu_kernel._unsupported() is not None or _cpu_kernel._compiler() is None,
    reason="the kernel needs an AVX2 CPU and a C compiler",
)


@needs_kernel
@pytest.mark.parametrize("width", [576, 37, 8, 3])
@pytest.mark.parametrize("outputs", [577, 64, 1])
def test_kernel_equals_a_matrix_product(width: int, outputs: int) -> None:
    linear = _cpu_kernel.load()
    assert linear is not None, "an AVX2 CPU with a compiler must get the kernel"
    torch.manual_seed(width * outputs)
    weight = torch.randn(outputs, width)
    for rows in [1, 2, 5, 6, 7, 12, 13, _cpu_kernel.MAX_ROWS]:  # every row tile size, whole and cut
        x = torch.randn(rows, width)
        expected = x.double() @ weight.double().t()
        got = linear(x, weight)
        assert got.shape == (rows, outputs) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-5)


@needs_kernel
def test_decode_step_projections_use_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    kernel = _cpu_kernel.load()
    assert kernel is not None

    def counting(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return kernel(x, weight)

    monkeypatch.setattr(_cpu_kernel, "load", lambda: counting)
    torch.manual_seed(0)
    model = make_tiny_model(200)
    decoder = StaticDecoder(model, max_slots=4, max_len=64)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    with torch.inference_mode():
        decoder.prefill([0, 1], prompts)
        calls.clear()
        decoder.tokens[:2] = torch.tensor([12, 13])
        logits = decoder.step(torch.tensor([0, 1]), 2, 5)
        reference = model(input_ids=torch.tensor([prompts[0] + [12]])).logits[0, -1]
    layers = len(model.model.layers)
    assert calls == [2] * (7 * layers + 1), "every projection of the step (7 per layer and the head) at 2 rows"
    torch.testing.assert_close(logits[0], reference, atol=1e-3, rtol=0)


def test_without_the_kernel_the_static_path_uses_torch_mm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_cpu_kernel, "load", lambda: None)
    torch.manual_seed(0)
    model = make_tiny_model(200)
    decoder = StaticDecoder(model, max_slots=2, max_len=64)
    with torch.inference_mode():
        first = decoder.prefill([0], [[5, 6, 7]])
        reference = model(input_ids=torch.tensor([[5, 6, 7]])).logits[0, -1]
    torch.testing.assert_close(first[0], reference, atol=1e-3, rtol=0)


def _load_in_subprocess(**env: str) -> subprocess.CompletedProcess[str]:
    """``load()`` in a fresh process with ``env`` added; it prints ``kernel True/False`` and logs any reason."""
    script = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from agl_model_server import _cpu_kernel\n"
        "print('kernel', _cpu_kernel.load() is not None)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=180,
        check=False,
    )


@needs_kernel
def test_a_failed_build_falls_back_with_the_reason_logged(tmp_path: Path) -> None:
    """A compiler that fails (here: not a compiler) leaves the kernel out and says why; nothing is cached."""
    done = _load_in_subprocess(CC=shutil.which("false") or "/bin/false", AGL_KERNELS_DIR=str(tmp_path / "k"))
    assert done.returncode == 0, done.stderr
    assert "kernel False" in done.stdout
    assert "the CPU decode kernel is not used (building _cpu_linear.c failed" in done.stderr
    assert not list((tmp_path / "k").glob("*.so"))


@needs_kernel
def test_the_build_is_cached_per_source_and_can_be_switched_off(tmp_path: Path) -> None:
    for _ in range(2):
        done = _load_in_subprocess(AGL_KERNELS_DIR=str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert "kernel True" in done.stdout, done.stderr
    built = list(tmp_path.glob("agl_linear_*.so"))
    assert len(built) == 1, built
    stamp = built[0].stat().st_mtime_ns
    _load_in_subprocess(AGL_KERNELS_DIR=str(tmp_path))
    assert built[0].stat().st_mtime_ns == stamp, "a second process loads the built file instead of building again"
    off = _load_in_subprocess(AGL_KERNELS_DIR=str(tmp_path), AGL_CPU_KERNEL="0")
    assert "kernel False" in off.stdout

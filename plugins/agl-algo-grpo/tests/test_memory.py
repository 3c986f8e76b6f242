"""keep_freed_memory: a training thread's large tensors, freed and allocated again each step, reuse the process's
memory instead of faulting fresh pages in (what an update's gradients and activations do every step)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agl_algo_grpo._policy import glibc_malloc

SCRIPT = """
import resource, sys, threading
if sys.argv[1] == "keep":
    from agl_algo_grpo._policy import keep_freed_memory
    assert keep_freed_memory()
import torch

def steps(out):
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        grads = [torch.ones(113 * 2**20 // 4), torch.ones(8 * 2**20 // 4), torch.ones(2**20 // 4)]
        del grads
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

faults = []
thread = threading.Thread(target=steps, args=(faults,))  # like GRPO's training thread, started after the call
thread.start(); thread.join()
print(*faults)
"""


@pytest.mark.skipif(not glibc_malloc(), reason="glibc's malloc settings (Linux with glibc only)")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    def faults(mode: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        return [int(n) for n in done.stdout.split()]

    pages = (113 + 8 + 1) * 2**20 // 4096
    default, kept = faults("default"), faults("keep")
    assert all(n > pages // 2 for n in default[1:]), f"by default every step faults its pages in again: {default}"
    # The heap settles within a few steps (small objects allocated between the tensors move the first holes).
    assert all(n < pages // 20 for n in kept[-2:]), f"with keep_freed_memory later steps reuse the memory: {kept}"

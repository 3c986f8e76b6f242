"""Fixtures of the plugin's tests (helpers live in :mod:`agl_algo_grpo.testing`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from agl_algo_grpo import TrainingSample
from agl_algo_grpo.testing import synthetic_samples


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The models are tiny: threads only cost, more so on a machine shared with other test runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def samples() -> list[TrainingSample]:
    return synthetic_samples()

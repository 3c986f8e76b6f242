"""Fixtures of the plugin's tests (helpers live in :mod:`agl_algo_grpo.testing`)."""

from __future__ import annotations

import pytest

from agl_algo_grpo import TrainingSample
from agl_algo_grpo.testing import synthetic_samples


@pytest.fixture
def samples() -> list[TrainingSample]:
    return synthetic_samples()

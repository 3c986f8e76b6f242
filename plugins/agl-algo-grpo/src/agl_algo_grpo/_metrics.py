"""Where training metrics go: the store (for the dashboard), the console and, if asked, TensorBoard.

**In the store.** Each run opens one rollout that is not a task: ``store.start_rollout(input={"kind":
"training-metrics", "algorithm": "grpo"}, mode=None, metadata={"kind": "training-metrics", ...})``. It is never
queued, so no runner takes it; it ends ``succeeded`` (``failed`` if training raised). Every training step adds a
span named ``agl.training.step`` to it, every validation a span ``agl.training.validation``; their attributes are
``agl.training.step`` (the policy version: updates done so far, the step's update included) and one
``agl.training.metric.<name>`` per metric (floats), plus ``agl.training.no_triplet_reasons`` (JSON: a list of up
to 10 ``{"rollout_id", "reason"}``) when rollouts gave no training data. To read them back::

    metrics = await store.query_rollouts(...)   # the rollout whose metadata["kind"] == "training-metrics"
    spans = await store.query_spans(rollout_id, "latest", name="agl.training.step")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from agl_kernel.errors import MissingDependencyError
from agl_kernel.models import AttemptStatus, Span
from agl_kernel.store import LightningStore

__all__ = [
    "METRIC_PREFIX",
    "METRICS_ROLLOUT_KIND",
    "MetricsRecorder",
    "NO_TRIPLET_REASONS",
    "STEP_ATTRIBUTE",
    "TRAINING_STEP_SPAN",
    "VALIDATION_SPAN",
]

TRAINING_STEP_SPAN = "agl.training.step"
VALIDATION_SPAN = "agl.training.validation"
STEP_ATTRIBUTE = "agl.training.step"
METRIC_PREFIX = "agl.training.metric."
NO_TRIPLET_REASONS = "agl.training.no_triplet_reasons"
METRICS_ROLLOUT_KIND = "training-metrics"

_COLUMNS = [  # (metric, header, format) for the console table
    ("reward_mean", "reward", "{:.3f}"),
    ("reward_std", "std", "{:.3f}"),
    ("success_rate", "success", "{:.0%}"),
    ("rollouts_succeeded", "ok", "{:.0f}"),
    ("rollouts_without_triplets", "no data", "{:.0f}"),
    ("triplets_trained", "triplets", "{:.0f}"),
    ("loss", "loss", "{:.4f}"),
    ("kl", "kl", "{:.4f}"),
    ("clip_fraction", "clip", "{:.3f}"),
    ("grad_norm", "grad norm", "{:.3f}"),
    ("tokens_per_s", "tok/s", "{:.0f}"),
    ("rollout_time_s", "rollout s", "{:.1f}"),
    ("update_time_s", "update s", "{:.1f}"),
    ("val_reward_mean", "val reward", "{:.3f}"),
]


class MetricsRecorder:
    """Records metrics of one training run (see the module docstring for the layout in the store)."""

    def __init__(
        self,
        store: LightningStore,
        *,
        algorithm: str = "grpo",
        console: Optional[Console] = None,
        tensorboard_dir: Optional[str] = None,
    ) -> None:
        self.store = store
        self.algorithm = algorithm
        self.console = console
        self.rollout_id: Optional[str] = None
        self.attempt_id: Optional[str] = None
        self._trace_id = os.urandom(16).hex()
        self._writer: Any = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise MissingDependencyError(
                    "tensorboard_dir needs TensorBoard: pip install tensorboard (or leave tensorboard_dir unset)"
                ) from exc
            self._writer = SummaryWriter(tensorboard_dir)

    async def open(self, metadata: Optional[Mapping[str, Any]] = None) -> str:
        rollout = await self.store.start_rollout(
            input={"kind": METRICS_ROLLOUT_KIND, "algorithm": self.algorithm},
            mode=None,
            metadata={"kind": METRICS_ROLLOUT_KIND, "algorithm": self.algorithm, **(metadata or {})},
        )
        self.rollout_id, self.attempt_id = rollout.rollout_id, rollout.attempt.attempt_id
        return rollout.rollout_id

    async def record(
        self,
        step: int,
        metrics: Mapping[str, float],
        *,
        validation: bool = False,
        no_triplet_reasons: Sequence[Mapping[str, str]] = (),
        started: Optional[float] = None,
    ) -> None:
        """Store ``metrics`` for ``step`` as a span, log them to TensorBoard and print them."""
        now = time.time()
        if self.rollout_id is not None and self.attempt_id is not None:
            attributes: dict[str, Any] = {STEP_ATTRIBUTE: step}
            attributes.update({f"{METRIC_PREFIX}{k}": float(v) for k, v in metrics.items()})
            if no_triplet_reasons:
                attributes[NO_TRIPLET_REASONS] = json.dumps(list(no_triplet_reasons)[:10])
            await self.store.add_span(
                Span(
                    rollout_id=self.rollout_id,
                    attempt_id=self.attempt_id,
                    trace_id=self._trace_id,
                    span_id=os.urandom(8).hex(),
                    name=VALIDATION_SPAN if validation else TRAINING_STEP_SPAN,
                    attributes=attributes,
                    start_time=started if started is not None else now,
                    end_time=now,
                )
            )
        if self._writer is not None:
            prefix = "val" if validation else "train"
            for key, value in metrics.items():
                self._writer.add_scalar(f"{prefix}/{key}", float(value), step)
            self._writer.flush()
        if self.console is not None:
            self._print(step, metrics, validation, no_triplet_reasons)

    def _print(
        self, step: int, metrics: Mapping[str, float], validation: bool, reasons: Sequence[Mapping[str, str]]
    ) -> None:
        assert self.console is not None
        if validation:
            shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            self.console.print(f"[bold]validation[/bold] at step {step}: {shown}")
            return
        table = Table(title=f"{self.algorithm} step {step}", title_justify="left")
        columns = [(key, header, fmt) for key, header, fmt in _COLUMNS if key in metrics]
        for _, header, _ in columns:
            table.add_column(header, justify="right")
        table.add_row(*(fmt.format(metrics[key]) for key, _, fmt in columns))
        self.console.print(table)
        for item in list(reasons)[:3]:
            self.console.print(f"  [yellow]no training data[/yellow] from {item['rollout_id']}: {item['reason']}")
        if len(reasons) > 3:
            self.console.print(f"  ... and {len(reasons) - 3} more rollouts without training data")

    async def close(self, *, succeeded: bool = True) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.rollout_id is not None and self.attempt_id is not None:
            status = AttemptStatus.SUCCEEDED if succeeded else AttemptStatus.FAILED
            await self.store.update_attempt(self.rollout_id, self.attempt_id, status=status)
            self.rollout_id = self.attempt_id = None

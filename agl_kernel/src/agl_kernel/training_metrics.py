"""Where an algorithm's training metrics go: the store (for the dashboard), the console and, if asked, TensorBoard.
Shared by every algorithm (GRPO, APO, third-party ones), so the dashboard reads one layout.

**In the store.** Each run opens one rollout that is not a task: ``store.start_rollout(input={"kind":
"training-metrics", "algorithm": NAME}, mode=None, metadata={"kind": "training-metrics", ...})``. It is never
queued, so no runner takes it; it ends ``succeeded`` (``failed`` if training raised). Every training step adds a
span named ``agl.training.step`` to it, every validation a span ``agl.training.validation``; their attributes are
``agl.training.step`` (the policy version: updates done so far, the step's update included) and one
``agl.training.metric.<name>`` per metric (floats), plus ``agl.training.no_triplet_reasons`` (JSON: a list of up
to 10 ``{"rollout_id", "reason"}``) when rollouts gave no training data. An algorithm may add spans of its own
to the same rollout with :meth:`MetricsRecorder.add_span` (APO: one ``agl.apo.candidate`` span per candidate).
To read them back::

    metrics = await store.query_rollouts(...)   # the rollout whose metadata["kind"] == "training-metrics"
    spans = await store.query_spans(rollout_id, "latest", name="agl.training.step")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from agl_kernel.errors import MissingDependencyError
from agl_kernel.models import AttemptStatus, Span
from agl_kernel.store import LightningStore

__all__ = [
    "METRICS_ROLLOUT_KIND",
    "METRIC_PREFIX",
    "NO_TRIPLET_REASONS",
    "STEP_ATTRIBUTE",
    "TRAINING_STEP_SPAN",
    "VALIDATION_SPAN",
    "Column",
    "MetricsRecorder",
]

TRAINING_STEP_SPAN = "agl.training.step"
VALIDATION_SPAN = "agl.training.validation"
STEP_ATTRIBUTE = "agl.training.step"
METRIC_PREFIX = "agl.training.metric."
NO_TRIPLET_REASONS = "agl.training.no_triplet_reasons"
METRICS_ROLLOUT_KIND = "training-metrics"

Column = tuple[str, str, str]
"""(metric, header, format) of one console column, e.g. ``("loss", "loss", "{:.4f}")``."""


class MetricsRecorder:
    """Records metrics of one training run (see the module docstring for the layout in the store)."""

    def __init__(
        self,
        store: LightningStore,
        *,
        algorithm: str,
        console: Console | None = None,
        tensorboard_dir: str | None = None,
        columns: Sequence[Column] | None = None,
        validation_columns: Sequence[Column] | None = None,
    ) -> None:
        self.store = store
        self.algorithm = algorithm
        self.console = console
        self.columns = list(columns) if columns is not None else None
        """What the console table shows, every column on every step (``-`` for a metric the step lacks, e.g. the
        loss of a step without an update); ``None``: every metric of the step, as ``{:.4g}``."""
        self.validation_columns = list(validation_columns) if validation_columns is not None else None
        """What the console line of a validation shows (``header: value``); ``None``: every metric, as ``{:.3f}``."""
        self.rollout_id: str | None = None
        self.attempt_id: str | None = None
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

    async def open(self, metadata: Mapping[str, Any] | None = None) -> str:
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
        started: float | None = None,
    ) -> None:
        """Store ``metrics`` for ``step`` as a span, log them to TensorBoard and print them."""
        now = time.time()
        attributes: dict[str, Any] = {STEP_ATTRIBUTE: step}
        attributes.update({f"{METRIC_PREFIX}{k}": float(v) for k, v in metrics.items()})
        if no_triplet_reasons:
            attributes[NO_TRIPLET_REASONS] = json.dumps(list(no_triplet_reasons)[:10])
        name = VALIDATION_SPAN if validation else TRAINING_STEP_SPAN
        await self.add_span(name, attributes, started=started if started is not None else now, ended=now)
        if self._writer is not None:
            prefix = "val" if validation else "train"
            for key, value in metrics.items():
                self._writer.add_scalar(f"{prefix}/{key}", float(value), step)
            self._writer.flush()
        if self.console is not None:
            self._print(step, metrics, validation, no_triplet_reasons)

    async def add_span(
        self, name: str, attributes: Mapping[str, Any], *, started: float | None = None, ended: float | None = None
    ) -> None:
        """Add a span to the run's metrics rollout (nothing before :meth:`open` or after :meth:`close`)."""
        if self.rollout_id is None or self.attempt_id is None:
            return
        now = time.time()
        await self.store.add_span(
            Span(
                rollout_id=self.rollout_id,
                attempt_id=self.attempt_id,
                trace_id=self._trace_id,
                span_id=os.urandom(8).hex(),
                name=name,
                attributes=dict(attributes),
                start_time=started if started is not None else now,
                end_time=ended if ended is not None else now,
            )
        )

    def _print(
        self, step: int, metrics: Mapping[str, float], validation: bool, reasons: Sequence[Mapping[str, str]]
    ) -> None:
        assert self.console is not None
        if validation:
            if self.validation_columns is None:
                shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
            else:
                columns = self.validation_columns
                shown = "  ".join(f"{header}: {_cell(metrics, key, fmt)}" for key, header, fmt in columns)
            self.console.print(f"[bold]validation[/bold] at step {step}: {shown}")
            return
        table = Table(title=f"{self.algorithm} step {step}", title_justify="left")
        columns = [(key, key, "{:.4g}") for key in metrics] if self.columns is None else self.columns
        for _, header, _ in columns:
            table.add_column(header, justify="right")
        table.add_row(*(_cell(metrics, key, fmt) for key, _, fmt in columns))
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


def _cell(metrics: Mapping[str, float], key: str, fmt: str) -> str:
    """``metrics[key]`` formatted, or ``-`` when the step has no such metric."""
    return fmt.format(metrics[key]) if key in metrics else "-"

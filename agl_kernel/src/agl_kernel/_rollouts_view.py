"""``agl rollouts list`` and ``agl rollouts show ID``: the rollouts in a store, and one rollout's attempts, reward
and the exception its last failed attempt ended with."""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agl_kernel import semconv
from agl_kernel.errors import AglError
from agl_kernel.models import AttemptStatus, RolloutMode, RolloutStatus
from agl_kernel.runs import RunSummary, list_runs, run_of

__all__ = ["exception_of", "last_frames", "list_rollouts", "parse_time", "runs_report", "show_rollout"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
FRAME_LINES = 12
"""How many lines from the end of a stack trace are shown."""


def parse_time(value: str | None, option: str, now: float | None = None) -> float | None:
    """Seconds since the epoch for ``10m``/``2h``/``3d`` (that long ago) or an ISO time (local time when it has no
    zone); ``None`` for ``None``."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        parsed = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise AglError(
            f"{option} {value!r} is neither a duration (like 30s, 10m, 2h, 3d) nor an ISO time (like 2026-01-31T12:00)"
        ) from None
    return parsed.timestamp()


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def last_frames(stacktrace: str | None, lines: int = FRAME_LINES) -> list[str]:
    """The last ``lines`` lines of a formatted stack trace (the innermost frames and the exception line)."""
    if not stacktrace:
        return []
    return stacktrace.rstrip("\n").splitlines()[-lines:]


async def exception_of(store: Any, rollout_id: str, attempt_id: str) -> dict[str, Any] | None:
    """The exception the attempt ended with (from the runner's exception span): type, message, stack trace."""
    spans = (await store.query_spans(rollout_id, attempt_id, name=semconv.EXCEPTION_SPAN)).items
    if not spans:
        return None
    attributes = spans[-1].attributes
    return {
        "type": attributes.get(semconv.EXCEPTION_TYPE),
        "message": attributes.get(semconv.EXCEPTION_MESSAGE),
        "stacktrace": attributes.get(semconv.EXCEPTION_STACKTRACE),
    }


_FAILED_ATTEMPTS = (AttemptStatus.FAILED, AttemptStatus.TIMEOUT)


async def _last_failed_attempt(store: Any, rollout_id: str) -> Any:
    attempts = await store.query_attempts(
        rollout_id, status_in=list(_FAILED_ATTEMPTS), sort_by="sequence_id", sort_order="desc", limit=1
    )
    return attempts.items[0] if attempts.items else None


async def list_rollouts(
    store: Any,
    *,
    status: list[str] | None = None,
    mode: list[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    run: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """The newest ``limit`` rollouts that match the filters, newest first, each with its reward and (for a failed
    one) the exception type of its last failed attempt; ``total`` counts every match."""
    from agl_kernel.rewards import get_reward

    async with store:
        status_in = [RolloutStatus(s) for s in status] if status else None
        mode_in = [RolloutMode(m) for m in mode] if mode else None
        windowed = since is not None or until is not None or run is not None
        page = await store.query_rollouts(
            status_in=status_in,
            mode_in=mode_in,
            sort_by="start_time",
            sort_order="desc",
            limit=None if windowed else limit,
        )
        rollouts = page.items
        total = page.total
        if windowed:
            rollouts = [
                r
                for r in rollouts
                if (since is None or r.start_time >= since)
                and (until is None or r.start_time <= until)
                and (run is None or run_of(r) == run)
            ]
            total = len(rollouts)
            rollouts = rollouts[:limit]
        rows = []
        for rollout in rollouts:
            reward = await get_reward(store, rollout.rollout_id) if rollout.attempt_count else None
            exception = None
            if rollout.status is RolloutStatus.FAILED or rollout.status is RolloutStatus.REQUEUING:
                failed = await _last_failed_attempt(store, rollout.rollout_id)
                if failed is not None:
                    exception = await exception_of(store, rollout.rollout_id, failed.attempt_id)
            rows.append({"rollout": rollout, "reward": reward, "exception": exception})
    return {"rows": rows, "total": total}


def list_to_json(report: dict[str, Any]) -> bytes:
    return msgspec.json.encode(
        {
            "total": report["total"],
            "rollouts": [
                {
                    "rollout_id": row["rollout"].rollout_id,
                    "run": run_of(row["rollout"]),
                    "status": row["rollout"].status,
                    "mode": row["rollout"].mode,
                    "attempts": row["rollout"].attempt_count,
                    "reward": row["reward"],
                    "start_time": row["rollout"].start_time,
                    "end_time": row["rollout"].end_time,
                    "exception_type": None if row["exception"] is None else row["exception"]["type"],
                    "exception_message": None if row["exception"] is None else row["exception"]["message"],
                }
                for row in report["rows"]
            ],
        }
    )


def render_list(report: dict[str, Any], console: Console) -> None:
    rows = report["rows"]
    if not rows:
        console.print("No rollouts match.")
        return
    # No rules between columns: room for every column on an 80-column terminal.
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    id_width = max(len(row["rollout"].rollout_id) for row in rows)
    table.add_column("rollout", no_wrap=True, min_width=id_width)  # ids are never cut: they are what users copy
    table.add_column("status", min_width=9)
    table.add_column("mode")
    table.add_column("attempts", justify="right", min_width=8)
    table.add_column("reward", justify="right", min_width=6)
    table.add_column("started", no_wrap=True, min_width=11)
    table.add_column("exception", overflow="fold", min_width=10)
    for row in rows:
        rollout, exception = row["rollout"], row["exception"]
        status = rollout.status.value
        color = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(status)
        table.add_row(
            rollout.rollout_id,
            f"[{color}]{status}[/{color}]" if color else status,
            rollout.mode.value if rollout.mode is not None else "-",
            str(rollout.attempt_count),
            "-" if row["reward"] is None else f"{row['reward']:g}",
            _when(rollout.start_time)[5:16],  # month-day hour:minute (the JSON has the exact time)
            escape(exception["type"] or "?") if exception else "",
        )
    console.print(table)
    shown = len(rows)
    if report["total"] > shown:
        console.print(f"{shown} of {report['total']} matching rollouts shown (newest first); --limit shows more.")
    console.print("`agl rollouts show ID` shows one rollout; `agl rollouts why ID` its training data.", highlight=False)


async def show_rollout(store: Any, rollout_id: str) -> dict[str, Any]:
    """The rollout, its attempts (oldest first), its reward and the exception of its last failed attempt."""
    from agl_kernel.rewards import get_reward

    async with store:
        rollout = await store.get_rollout(rollout_id)
        attempts = (await store.query_attempts(rollout_id, sort_by="sequence_id")).items
        reward = await get_reward(store, rollout_id) if attempts else None
        exception = None
        failed = next((a for a in reversed(attempts) if a.status in _FAILED_ATTEMPTS), None)
        if failed is not None:
            exception = await exception_of(store, rollout_id, failed.attempt_id)
            if exception is not None:
                exception["attempt_id"] = failed.attempt_id
    return {"rollout": rollout, "attempts": attempts, "reward": reward, "exception": exception}


def show_to_json(report: dict[str, Any]) -> bytes:
    rollout = report["rollout"]
    return msgspec.json.encode(
        {
            "rollout": rollout,
            "attempts": report["attempts"],
            "reward": report["reward"],
            "exception": report["exception"],
        }
    )


def render_exception(exception: dict[str, Any], console: Console, heading: str) -> None:
    console.print(
        f"[bold red]{escape(heading)}[/bold red] [bold]{escape(str(exception.get('type') or '?'))}[/bold]: "
        f"{escape(str(exception.get('message') or ''))}",
        highlight=False,
    )
    frames = last_frames(exception.get("stacktrace"))
    if frames:
        console.print("  last frames of the stack trace:", highlight=False)
        for line in frames:
            console.print(f"    {escape(line)}", highlight=False, soft_wrap=True)


def render_show(report: dict[str, Any], console: Console) -> None:
    rollout, attempts, exception = report["rollout"], report["attempts"], report["exception"]
    console.print(
        f"Rollout [bold]{escape(rollout.rollout_id)}[/bold]: {rollout.status.value}, mode "
        f"{rollout.mode.value if rollout.mode is not None else '-'}, {rollout.attempt_count} attempt(s), reward "
        f"{'-' if report['reward'] is None else format(report['reward'], 'g')}",
        highlight=False,
    )
    console.print(
        f"  run {escape(run_of(rollout) or '-')}, started {_when(rollout.start_time)}, ended "
        f"{_when(rollout.end_time)}, resources {escape(rollout.resources_id or '-')}",
        highlight=False,
    )
    console.print(f"  input: {escape(repr(rollout.input)[:200])}", highlight=False)
    if attempts:
        table = Table()
        table.add_column("#", justify="right", min_width=2)
        table.add_column("attempt", no_wrap=True, min_width=max(len(a.attempt_id) for a in attempts))
        for column in ("status", "worker", "started", "ended"):
            table.add_column(column)
        for attempt in attempts:
            table.add_row(
                str(attempt.sequence_id),
                attempt.attempt_id,
                attempt.status.value,
                escape(attempt.worker_id or "-"),
                _when(attempt.start_time),
                _when(attempt.end_time),
            )
        console.print(table)
    else:
        console.print("  no attempts yet")
    if exception is not None:
        render_exception(exception, console, f"Attempt {exception.get('attempt_id')} failed with")


# ---------------------------------------------------------------------------------------------------- agl runs


async def runs_report(store: Any, limit: int) -> dict[str, Any]:
    """The newest ``limit`` runs in ``store`` (from their rollouts), and how many there are."""
    async with store:
        runs = await list_runs(store)
    return {"runs": runs[:limit], "total": len(runs)}


def runs_to_json(report: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"total": report["total"], "runs": report["runs"]})


def render_runs(report: dict[str, Any], console: Console) -> None:
    runs: list[RunSummary] = report["runs"]
    if not runs:
        console.print("No runs yet: `agl dev`, `agl train` or Trainer(...).fit/dev start one.")
        return
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    table.add_column("run", no_wrap=True, min_width=max(len(r.run_id or "(no run)") for r in runs))
    table.add_column("algorithm", no_wrap=True)
    table.add_column("started", no_wrap=True)
    # Columns that would say nothing (no run still running, no run using other resources than its own, whose id
    # is the run id) are left out: room on an 80-column terminal.
    others = {r.run_id: [i for i in r.resources_ids if i != r.run_id] for r in runs}
    counts = ["rollouts", "finished", "failed"] + (["running"] if any(r.running for r in runs) else [])
    for column in counts:
        table.add_column(column, justify="right", min_width=len(column))
    if any(others.values()):
        table.add_column("resources", overflow="fold", min_width=9)
    for run in runs:
        failed = run.by_status.get(RolloutStatus.FAILED.value, 0)
        values = {
            "rollouts": str(run.rollouts),
            "finished": str(run.by_status.get(RolloutStatus.SUCCEEDED.value, 0)),
            "failed": f"[red]{failed}[/red]" if failed else "0",
            "running": str(run.running),
        }
        row = [escape(run.run_id or "(no run)"), escape(run.algorithm or "-"), _when(run.started)[5:16]]
        row += [values[column] for column in counts]
        if any(others.values()):
            row.append(escape(", ".join(others[run.run_id]) or "its own"))
        table.add_row(*row)
    console.print(table)
    if report["total"] > len(runs):
        console.print(f"{len(runs)} of {report['total']} runs shown (newest first); --limit shows more.")
    console.print("`agl rollouts list --run RUN` lists one run's rollouts.", highlight=False)

"""``agl rollouts why ROLLOUT_ID``: what training data a rollout gives, and why any LLM call gave none."""

from __future__ import annotations

import os
from typing import Any

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agl_kernel import semconv
from agl_kernel.adapters import CallReason, TripletAdapter, TripletResult
from agl_kernel.errors import AglError


def open_store(store: str | None, path: str | None, url: str | None, token: str | None = None) -> Any:
    """The store the command reads: ``--url`` (the ``http`` store), ``--store``/``--path``, or the default file,
    which must exist (a read-only command must not create an empty store)."""
    from agl_kernel.store.defaults import DEFAULT_STORE_PATH, make_store

    if url is not None:
        if store is not None or path is not None:
            raise AglError("give either --url or --store/--path, not both")
        return make_store("http", url=url) if token is None else make_store("http", url=url, token=token)
    if token is not None and url is None and os.environ.get("AGL_STORE_TOKEN") != token:
        raise AglError("--token is for a store server: give it with --url SERVER_URL")
    if store is None or path is not None:
        file = path or DEFAULT_STORE_PATH
        if not os.path.exists(file):
            raise AglError(
                f"there is no store file at {os.path.abspath(file)}; run the command where the training ran, or "
                f"point to the store with --path FILE, --store NAME or --url SERVER_URL"
            )
    return make_store(store, path=path)


async def explain(store: Any, rollout_id: str, attempt_id: str, adapter: TripletAdapter) -> dict[str, Any]:
    """The rollout, its attempt and the triplet adapter's result for that attempt's spans."""
    async with store:
        rollout = await store.get_rollout(rollout_id)
        attempt = await store.get_attempt(rollout_id, attempt_id)
        spans = (await store.query_spans(rollout_id, attempt.attempt_id)).items
    exception = None
    for span in reversed(spans):  # the exception the attempt ended with (the runner's exception span)
        if span.name == semconv.EXCEPTION_SPAN:
            exception = {
                "type": span.attributes.get(semconv.EXCEPTION_TYPE),
                "message": span.attributes.get(semconv.EXCEPTION_MESSAGE),
                "stacktrace": span.attributes.get(semconv.EXCEPTION_STACKTRACE),
            }
            break
    return {
        "rollout": rollout,
        "attempt": attempt,
        "result": adapter.adapt(spans),
        "span_count": len(spans),
        "exception": exception,
    }


def to_json(report: dict[str, Any]) -> bytes:
    result: TripletResult = report["result"]
    return msgspec.json.encode(
        {
            "rollout_id": report["rollout"].rollout_id,
            "rollout_status": report["rollout"].status,
            "attempt_id": report["attempt"].attempt_id,
            "attempt_status": report["attempt"].status,
            "spans": report["span_count"],
            "triplets": len(result.triplets),
            "final_reward": result.final_reward,
            "calls": result.calls,
            "why": result.why(),
            "exception": report.get("exception"),
        }
    )


def render(report: dict[str, Any], console: Console) -> None:
    rollout, attempt, result = report["rollout"], report["attempt"], report["result"]
    console.print(
        f"Rollout [bold]{escape(rollout.rollout_id)}[/bold] ({rollout.status.value}), attempt "
        f"{escape(attempt.attempt_id)} #{attempt.sequence_id} ({attempt.status.value}): {report['span_count']} spans, "
        f"{len(result.calls)} LLM calls, [bold]{len(result.triplets)} triplets[/bold], final reward "
        f"{'none' if result.final_reward is None else f'{result.final_reward:g}'}",
        highlight=False,
    )
    if result.calls:
        table = Table()
        for column in ("seq", "span", "agent", "model", "prompt tok", "response tok", "reward", "outcome"):
            numeric = column in ("seq", "prompt tok", "response tok", "reward")
            table.add_column(column, justify="right" if numeric else "left")
        for call in result.calls:
            if call.reason is None:
                outcome = f"[green]triplet {call.triplet}[/green]"
            elif call.reason is CallReason.MERGED:
                outcome = f"[green]merged into triplet {call.triplet}[/green]"
            else:
                outcome = f"[red]{call.reason.value}[/red]"
            table.add_row(
                str(call.sequence_id),
                call.span_id,
                escape(call.agent or "-"),
                escape(call.model or "-"),
                "-" if call.prompt_tokens is None else str(call.prompt_tokens),
                "-" if call.response_tokens is None else str(call.response_tokens),
                "-" if call.reward is None else f"{call.reward:g}",
                outcome,
            )
        console.print(table)
    exception = report.get("exception")
    if exception is not None:
        from agl_kernel._rollouts_view import render_exception

        render_exception(exception, console, f"The attempt ended with an exception ({attempt.status.value}):")
    reasons = result.why()
    if not reasons:
        console.print("[green]Every LLM call gave training data.[/green]")
        return
    console.print("[bold]No training data[/bold] because:" if not result.triplets else "[bold]Left out[/bold]:")
    for line in reasons:
        console.print(f"  - {escape(line)}", highlight=False)

"""``agl ray status``: the runner actors of runs under the ``ray`` strategy, where they are and what they run.

It joins the cluster as a short-lived Ray driver, finds the actors by name (``agl-runner-<run id>-<n>`` in the
strategy's namespace) and asks each for its status: the actor answers between rollouts and during them alike
(its methods share one event loop with the runner), with the rollout in flight as the store knows it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

__all__ = ["ray_group"]


def _resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS``, else the local cluster this machine last started (Ray's ``auto``)."""
    address = address or os.environ.get("RAY_ADDRESS") or "auto"
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            address = canonicalize_bootstrap_address_or_die("auto")
        except Exception:  # Ray's own message (no cluster found) comes from ray.init below
            pass
    return address


def actor_statuses(
    address: str | None, *, namespace: str = "agl", run_id: str | None = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The status of every runner actor (of ``run_id``, or of every run) on the cluster at ``address``."""
    import ray

    from agl_strategy_ray._cluster import connect, disconnect
    from agl_strategy_ray._strategy import ACTOR_PREFIX

    connected = connect(_resolve_address(address), namespace=namespace, quiet=True)
    try:
        prefix = ACTOR_PREFIX + (f"{run_id}-" if run_id else "")
        names = sorted(n for n in ray.util.list_named_actors() if n.startswith(prefix))
        asked = []
        for name in names:
            try:
                handle = ray.get_actor(name, namespace=namespace)
                asked.append((name, handle.status.remote()))
            except Exception as exc:  # gone between listing and asking
                asked.append((name, exc))
        deadline = time.monotonic() + timeout
        statuses = []
        for name, ref in asked:
            entry: dict[str, Any] = {"actor": name}
            if isinstance(ref, Exception):
                entry["error"] = f"{type(ref).__name__}: {ref}"
            else:
                try:
                    entry.update(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
                except Exception as exc:
                    entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            statuses.append(entry)
        return statuses
    finally:
        disconnect(connected)


@click.group("ray")
def ray_group() -> None:
    """The ray strategy's runner actors (agl-strategy-ray)."""


@ray_group.command("status")
@click.option("--address", default=None, help="The Ray cluster (HOST:PORT; default RAY_ADDRESS, else the local one).")
@click.option("--namespace", default="agl", show_default=True, help="The strategy's Ray namespace.")
@click.option("--run", "run_id", default=None, help="Only this run's actors.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per actor, one a line.")
def status_command(address: str | None, namespace: str, run_id: str | None, as_json: bool) -> None:
    """List the runs' runner actors: node, pid, rollouts finished and the rollout in flight."""
    statuses = actor_statuses(address, namespace=namespace, run_id=run_id)
    if as_json:
        for entry in statuses:
            click.echo(json.dumps(entry, sort_keys=True))
        return
    if not statuses:
        click.echo("no runner actors" + (f" of run {run_id}" if run_id else "") + f" in namespace {namespace!r}")
        return
    header = ("actor", "worker", "host", "pid", "finished", "in flight", "state")
    rows = []
    for entry in statuses:
        if "error" in entry:
            rows.append((entry["actor"], "-", "-", "-", "-", "-", entry["error"][:60]))
            continue
        state = "serving" if entry.get("running") else "stopped"
        if entry.get("restarted"):
            state += " (restarted)"
        rows.append(
            (
                entry["actor"],
                ",".join(entry["worker_ids"]),
                entry["host"],
                str(entry["pid"]),
                str(entry["finished"]),
                ",".join(entry.get("rollout_ids") or []) or "-",
                state,
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())

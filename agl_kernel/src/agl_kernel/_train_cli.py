"""``agl dev`` and ``agl runner``: run an agent through the loop, or serve a store with runners."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Optional

import click

__all__ = ["dev_command", "runner_command"]


def _store_option(spec: Optional[str], path: Optional[str], token: Optional[str]) -> Any:
    """A store from the command line: a URL means a store server, anything else a store plugin by name."""
    from agl_kernel.store.defaults import make_store

    if spec is not None and spec.startswith(("http://", "https://")):
        return make_store("http", url=spec, **({"token": token} if token else {}))
    return make_store(spec, path=path)


def _component(kind: str, spec: Optional[str]) -> Any:
    """A component by registered name or by ``module:attr`` spec."""
    from agl_kernel._imports import import_object
    from agl_kernel.plugins import create_component

    if spec is None:
        return None
    return create_component(kind, import_object(spec) if ":" in spec else spec)


def _dataset(spec: str) -> list[Any]:
    """Tasks from a ``.jsonl``/``.json`` file, or from an object spec (a list, or a function returning one)."""
    from agl_kernel._imports import import_object

    if os.path.isfile(spec) and spec.endswith((".jsonl", ".json")):
        with open(spec, encoding="utf-8") as file:
            if spec.endswith(".json"):
                return list(json.load(file))
            return [json.loads(line) for line in file if line.strip()]
    data = import_object(spec)
    return list(data() if callable(data) else data)


@click.command("dev")
@click.option("--agent", "agent_spec", required=True, help="The agent: module:name or path/to/file.py:name.")
@click.option("--dataset", "dataset_spec", required=True, help="Tasks: a .jsonl/.json file or module:name.")
@click.option("--runners", "n_runners", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--strategy", default="shm", show_default=True, help="shm (one process) or cs (runner processes).")
@click.option("--store", default=None, help="A store plugin by name. Default: sqlite at --path.")
@click.option("--path", default=None, help="The store's file. Default: ./.agl/agl.db.")
@click.option("--tracer", default="noop", show_default=True, help="A tracer plugin by name or module:name.")
def dev_command(
    agent_spec: str, dataset_spec: str, n_runners: int, strategy: str, store: Optional[str], path: Optional[str],
    tracer: str,
) -> None:
    """Run an agent on every task of a dataset through the whole loop (baseline algorithm), to debug it."""
    from agl_kernel._imports import import_object
    from agl_kernel.trainer import Trainer

    agent = import_object(agent_spec)
    tracer_obj = _component("tracers", tracer)
    with Trainer(n_runners=n_runners, strategy=strategy, store=store, store_path=path, tracer=tracer_obj) as trainer:
        report = trainer.dev(agent, _dataset(dataset_spec))
    mean = "n/a" if report.mean_reward is None else f"{report.mean_reward:.3f}"
    click.echo(f"rollouts by status: {report.by_status}; mean reward: {mean}")


@click.command("runner")
@click.option("--store", "store_spec", default=None,
              help="The store: a server URL (http://host:4747) or a store plugin by name. Default: sqlite at --path.")
@click.option("--path", default=None, help="The store's file, for a store plugin that keeps one.")
@click.option("--token", envvar="AGL_STORE_TOKEN", default=None, help="The server's bearer token [env AGL_STORE_TOKEN].")
@click.option("--agent", "agent_spec", required=True, help="The agent: module:name or path/to/file.py:name.")
@click.option("--runners", "n_runners", type=click.IntRange(min=1), default=1, show_default=True,
              help="Runners in this process (asyncio tasks).")
@click.option("--tracer", default="noop", show_default=True, help="A tracer plugin by name or module:name.")
@click.option("--worker-id", default=None, help="Worker id (a suffix -N is added for several runners).")
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Exit when this process is gone.")
def runner_command(
    store_spec: Optional[str], path: Optional[str], token: Optional[str], agent_spec: str, n_runners: int,
    tracer: str, worker_id: Optional[str], parent_pid: Optional[int],
) -> None:
    """Serve rollouts from a store with runners, until Ctrl-C or SIGTERM (e.g. on another machine)."""
    from agl_kernel._imports import import_object
    from agl_kernel.runner import run_runners
    from agl_kernel.store.defaults import describe_store

    agent = import_object(agent_spec)
    store = _store_option(store_spec, path, token)
    click.echo(f"agl runner: {n_runners} runner(s) for {agent_spec} on {describe_store(store)}", err=True)

    async def main() -> int:
        try:
            return await run_runners(
                store, agent, n_runners=n_runners, tracer=_component("tracers", tracer), worker_prefix=worker_id,
                parent_pid=parent_pid,
            )
        finally:
            await store.close()

    done = asyncio.run(main())
    click.echo(f"agl runner: stopped after {done} rollout(s)", err=True)

"""``agl train``, ``agl dev``, ``agl runner`` and ``agl config``: pick every component by name, configure it from a
run file, the environment and ``--set``, and run the loop (or serve a store with runners)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import click

from agl_kernel._cli_token import token_option
from agl_kernel.errors import ConfigError

__all__ = ["config_command", "dev_command", "runner_command", "train_command"]


# ------------------------------------------------------------------------------------------ shared selection


def _option(*decls: str, **kwargs: Any) -> Callable[[Any], Any]:
    return click.option(*decls, default=None, **kwargs)


_CONFIG_FLAGS = [
    _option("--config", "config_path", metavar="RUN.TOML", help="A TOML run file (see `agl config --help`)."),
    click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="TABLE.KEY=VALUE",
        help="Set one option, over the run file and AGL_<TABLE>__<KEY> variables (repeatable): algorithm.steps=3.",
    ),
]

_RUN_FLAGS = [
    _option("--agent", "agent", help="The agent: module:name or path/to/file.py:name [run.agent]."),
    _option("--dataset", "dataset", help="Tasks: a .jsonl/.json file or module:name [run.dataset]."),
    _option("--val-dataset", "val_dataset", help="Validation tasks, in the same forms [run.val_dataset]."),
    _option("--runners", "runners", type=click.IntRange(min=1), help="How many runners [run.runners; default 1]."),
    _option("--llm", "llm", metavar="URL", help="An OpenAI-compatible endpoint for the agent's LLM [run.llm]."),
    _option("--llm-model", "llm_model", metavar="NAME", help="The model to ask --llm for [run.llm_model]."),
    _option(
        "--resources",
        "resources",
        metavar="SPEC",
        help="Resources the run starts from (prompts, LLMs): a .json file or module:name of a dict [run.resources].",
    ),
]


def _selection_flags(*, algorithm: bool) -> list[Callable[[Any], Any]]:
    flags = [
        _option("--store", "store", help="Store by name, or a store server URL [store.name; default sqlite]."),
        _option("--path", "path", help="The store's file, for stores that keep one [store.path]."),
        _option("--tracer", "tracer", help="Tracer by name or module:name [tracer.name; default noop]."),
        _option("--runner", "runner", help="Runner by name or module:name [runner.name; default litagent]."),
        _option("--strategy", "strategy", help="shm (one process), cs (runner processes), ... [strategy.name]."),
        _option("--adapter", "adapter", help="Adapter by name [adapter.name; default: the algorithm's choice]."),
    ]
    if algorithm:
        flags.insert(
            0, _option("--algorithm", "algorithm", help="Algorithm by name [algorithm.name; default baseline].")
        )
    return flags


def _apply(flags: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decorate(command: Any) -> Any:
        for flag in reversed(flags):
            command = flag(command)
        return command

    return decorate


def _flag_values(values: dict[str, Any]) -> dict[str, Any]:
    """The command's flags as configuration keys (``--store http://...`` is the ``http`` store at that URL)."""
    store = values.get("store")
    flags = {
        "run.agent": values.get("agent"),
        "run.dataset": values.get("dataset"),
        "run.val_dataset": values.get("val_dataset"),
        "run.runners": values.get("runners"),
        "run.llm": values.get("llm"),
        "run.llm_model": values.get("llm_model"),
        "run.resources": values.get("resources"),
        "algorithm.name": values.get("algorithm"),
        "store.name": store,
        "store.path": values.get("path"),
        "tracer.name": values.get("tracer"),
        "runner.name": values.get("runner"),
        "strategy.name": values.get("strategy"),
        "adapter.name": values.get("adapter"),
    }
    if store is not None and store.startswith(("http://", "https://")):
        flags["store.name"], flags["store.url"] = "http", store
    return flags


def _load(values: dict[str, Any]) -> Any:
    from agl_kernel.config import load_run_config

    flags = _flag_values(values)
    for table in ("runner", "tracer"):  # options a strategy hands to the runner processes it starts, as JSON
        for key, value in json.loads(values.get(f"{table}_options") or "{}").items():
            flags[f"{table}.{key}"] = value
    config = load_run_config(values.get("config_path"), overrides=values.get("overrides") or (), flags=flags)
    token = _command_line_token(values)
    if token is not None:  # from AGL_STORE_TOKEN, the http store reads it itself (after a run file's store.token)
        if config.choice("store").name != "http":
            raise ConfigError("--token: the token is for a store server; give its URL with --store http://HOST:PORT")
        flags["store.token"] = token
        config = load_run_config(values.get("config_path"), overrides=values.get("overrides") or (), flags=flags)
    return config


def _command_line_token(values: dict[str, Any]) -> str | None:
    """``--token`` when it was given on the command line (not read from AGL_STORE_TOKEN)."""
    if values.get("token") is None:
        return None
    source = click.get_current_context().get_parameter_source("token")
    return values["token"] if source == click.core.ParameterSource.COMMANDLINE else None


def _required(value: str | None, key: str, flag: str) -> str:
    if not value:
        raise ConfigError(f"{key}: required; pass {flag} or set {key.split('.')[1]} in the [run] table of --config")
    return value


def _import(spec: str, key: str) -> Any:
    from agl_kernel.config import import_spec

    return import_spec(spec, key)


def _agent(spec: str, key: str = "run.agent") -> Any:
    """The agent ``spec`` names, checked now (a LitAgent, or a function taking (task, <resource>)) so a wrong one
    is one line on the command line, not a traceback from a runner."""
    from agl_kernel.agent import as_lit_agent

    agent = _import(spec, key)
    try:
        as_lit_agent(agent)
    except TypeError as err:
        raise ConfigError(
            f"{key}: {spec!r}: {err}; an agent is a LitAgent or a function (task, resources[, rollout]), "
            "or decorated with @llm_rollout / @prompt_rollout"
        ) from None
    return agent


def _dataset(spec: str, key: str) -> list[Any]:
    """Tasks from a ``.jsonl``/``.json`` file, or from an object spec (a list, or a function returning one)."""
    if spec.endswith((".jsonl", ".json")) and ":" not in spec:
        try:
            with open(spec, encoding="utf-8") as file:
                if spec.endswith(".json"):
                    return list(json.load(file))
                return [json.loads(line) for line in file if line.strip()]
        except (OSError, ValueError) as err:
            raise ConfigError(f"{key}: cannot read {spec!r}: {err}") from None
    data = _import(spec, key)
    if isinstance(data, (str, bytes, dict)):
        raise ConfigError(
            f"{key}: {spec!r} is a {type(data).__name__}, not a list of tasks (or a function returning one)"
        )
    try:
        tasks = data() if callable(data) else data
    except Exception as err:
        raise ConfigError(f"{key}: calling {spec!r} raised {type(err).__name__}: {err}") from None
    if isinstance(tasks, (str, bytes, dict)):
        raise ConfigError(f"{key}: {spec!r} gave a {type(tasks).__name__}, not a list of tasks")
    try:
        return list(tasks)
    except TypeError as err:
        raise ConfigError(f"{key}: {spec!r} is not a list of tasks (or a function returning one): {err}") from None


def _print_report(report: Any) -> None:
    """The run's outcome in the words of every progress table (``finished``, ``failed``, ``reward ≥ 1``, ``mean
    reward``); rollouts in any other status (cancelled, still running at a timeout) are counted after them."""
    from agl_kernel.progress import count_full_rewards, format_outcomes

    by_status = getattr(report, "by_status", None)
    if by_status is not None:
        outcomes = getattr(report, "outcomes", None)
        rewards = [o.reward for o in outcomes or () if o.reward is not None]
        line = format_outcomes(
            finished=by_status.get("succeeded", 0),
            failed=by_status.get("failed", 0),
            full_reward=count_full_rewards(rewards) if outcomes is not None else None,
            mean_reward=getattr(report, "mean_reward", None),
        )
        others = "".join(f"  {status}: {n}" for status, n in by_status.items() if status not in ("succeeded", "failed"))
        click.echo(f"rollouts: {sum(by_status.values())}  {line}{others}")
        failures: Any = getattr(report, "failures", None)  # the trainer printed them in full; point at the next step
        first = getattr(failures, "first", None)
        if first:
            click.echo(f"{failures.count} failed: see `agl rollouts why {first[0].rollout_id}`")
    else:
        click.echo(f"done: {type(report).__name__}")


SIGTERM_EXIT_CODE = 128 + signal.SIGTERM
"""The exit code of `agl train` / `agl dev` stopped by SIGTERM (143, as for a process the signal killed)."""


@contextlib.contextmanager
def _stopped_by_sigterm(command: str) -> Iterator[None]:
    """SIGTERM stops the run the way Ctrl-C does: the algorithm is cancelled, the runners (tasks, or the runner
    processes of ``cs``) are stopped, the store is closed; then the command says so on stderr and exits with
    143. A second SIGTERM interrupts the clean-up itself."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return
    terminated = False
    # Where SIGINT is ignored (a job started with & by a script inherits that), asyncio.run would not install its
    # handler, and SIGTERM could only raise KeyboardInterrupt wherever the main thread happens to be (inside a
    # request the store server is answering, say). With Python's default handler in place, asyncio.run installs
    # its own: SIGTERM then cancels the run's main task, as Ctrl-C does.
    ignored_sigint = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_sigterm(signum: int, frame: Any) -> None:
        nonlocal terminated
        terminated = True
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):  # asyncio's own (it cancels the run's main task), or the default one
            handler(signal.SIGINT, frame)
        else:  # SIGINT was set to be ignored meanwhile: interrupt all the same
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        if not terminated:
            raise
        click.echo(f"agl {command}: stopped by SIGTERM; runners stopped and the store closed", err=True)
        sys.exit(SIGTERM_EXIT_CODE)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if ignored_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------------- commands


@click.command("train")
@_apply(_CONFIG_FLAGS + _RUN_FLAGS + _selection_flags(algorithm=True) + [token_option])
def train_command(**values: Any) -> None:
    """Train an agent: every component by name (`agl plugins`), configured by --config, AGL_<TABLE>__<KEY>
    variables and --set (in rising precedence; the flags above win)."""
    from agl_kernel.trainer import Trainer

    config = _load(values)
    agent = _agent(_required(config.run.agent, "run.agent", "--agent"))
    train = _dataset(_required(config.run.dataset, "run.dataset", "--dataset"), "run.dataset")
    val = None if config.run.val_dataset is None else _dataset(config.run.val_dataset, "run.val_dataset")
    with _stopped_by_sigterm("train"), Trainer.from_config(config) as trainer:
        report = trainer.fit(agent, train, val)
    _print_report(report)


@click.command("dev")
@_apply(_CONFIG_FLAGS + _RUN_FLAGS + _selection_flags(algorithm=False) + [token_option])
def dev_command(**values: Any) -> None:
    """Run an agent on every task of a dataset through the whole loop (the baseline algorithm), to debug it; the
    same selection and configuration as `agl train`. The baseline's options (`agl plugins show baseline`) set how
    rollouts are retried: --set algorithm.max_attempts=1, --set algorithm.unresponsive_seconds=60."""
    import attrs

    from agl_kernel.config import Choice
    from agl_kernel.trainer import Trainer

    config = _load(values)
    agent = _agent(_required(config.run.agent, "run.agent", "--agent"))
    tasks = _dataset(_required(config.run.dataset, "run.dataset", "--dataset"), "run.dataset")
    val = None if config.run.val_dataset is None else _dataset(config.run.val_dataset, "run.val_dataset")
    # Always the baseline: another algorithm named in the run file (and its options) is for `agl train`; the
    # baseline's own options (max_attempts, unresponsive_seconds, ...) apply when the run file names no other.
    chosen = config.choices.get("algorithm")
    options = dict(chosen.options) if chosen is not None and chosen.name in (None, "baseline") else {}
    baseline = Choice("algorithm", "baseline" if options else None, options)
    config = attrs.evolve(config, choices={**config.choices, "algorithm": baseline})
    with _stopped_by_sigterm("dev"), Trainer.from_config(config, algorithm="baseline") as trainer:
        report = trainer.fit(agent, tasks, val)  # the trainer's algorithm: the baseline, with its options
    _print_report(report)


@click.command("config")
@_apply(_CONFIG_FLAGS + _RUN_FLAGS + _selection_flags(algorithm=True))
def config_command(**values: Any) -> None:
    """Print the effective configuration of a run as a TOML run file: every component's name and every option,
    defaults filled in, after the run file, AGL_<TABLE>__<KEY> variables, --set and the flags.

    \b
    A run file has a [run] table (agent, dataset, val_dataset, runners) and one table per kind (store, tracer,
    runner, strategy, algorithm, adapter): `name` picks the component (NAME, NAME@DISTRIBUTION or module:name),
    the other keys are its options (`agl plugins show NAME` lists them).
    """
    from agl_kernel.config import to_toml

    click.echo(to_toml(_load(values).resolved()), nl=False)


@click.command("runner")
@_apply(_CONFIG_FLAGS + _selection_flags(algorithm=False)[:-2])
@token_option
@click.option("--agent", "agent", default=None, help="The agent: module:name or path/to/file.py:name [run.agent].")
@click.option(
    "--runners",
    "runners",
    type=click.IntRange(min=1),
    default=None,
    help="Runners in this process (asyncio tasks) [run.runners; default 1].",
)
@click.option("--worker-id", default=None, help="Worker id (a suffix -N is added for several runners).")
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Exit when this process is gone.")
@click.option("--runner-options", default=None, hidden=True, help="The runner's options as JSON (from a strategy).")
@click.option("--tracer-options", default=None, hidden=True, help="The tracer's options as JSON (from a strategy).")
def runner_command(**values: Any) -> None:
    """Serve rollouts from a store with runners, until Ctrl-C or SIGTERM (e.g. on another machine)."""
    from agl_kernel.plugins import create_component
    from agl_kernel.runner import RunnerSpec, run_runners
    from agl_kernel.store.defaults import describe_store, make_store

    config = _load(values)
    agent_spec = _required(config.run.agent, "run.agent", "--agent")
    agent = _agent(agent_spec)
    config.resolved(("store", "tracer", "runner"))  # what a runner uses, checked before anything starts
    store_choice, tracer_choice, runner_choice = (config.choice(t) for t in ("store", "tracer", "runner"))
    tracer = create_component("tracers", tracer_choice.name or "noop", options=tracer_choice.options)
    runner = RunnerSpec(runner_choice.name or "litagent", runner_choice.options)
    store = make_store(store_choice.name, options=store_choice.options)
    n_runners = config.run.runners
    click.echo(f"agl runner: {n_runners} runner(s) for {agent_spec} on {describe_store(store)}", err=True)

    async def main() -> int:
        try:
            return await run_runners(
                store,
                agent,
                n_runners=n_runners,
                tracer=tracer,
                worker_prefix=values.get("worker_id"),
                parent_pid=values.get("parent_pid"),
                runner=runner,
            )
        finally:
            await store.close()

    done = asyncio.run(main())
    click.echo(f"agl runner: stopped after {done} rollout(s)", err=True)

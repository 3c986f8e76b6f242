"""The Trainer: wires an algorithm, runners, a store, a tracer and an adapter under an execution strategy.

    trainer = Trainer(algorithm="apo", options={"algorithm": {"beam_width": 2}}, n_runners=4)
    report = trainer.fit(agent, train_dataset, val_dataset)
    report = trainer.dev(agent, dataset)                       # the whole loop with the baseline algorithm
    trainer = Trainer.from_config("run.toml", overrides=["algorithm.steps=3"])   # what `agl train` does

Every component is an instance, a class or a registered name (``NAME@DISTRIBUTION`` to pick one of several
distributions); ``options`` holds each named component's options by table (``store``, ``tracer``, ``runner``,
``strategy``, ``algorithm``, ``adapter``), validated by the component's options class. With no ``store`` the run
uses the durable default, the SQLite file ``./.agl/agl.db`` (``store_path`` moves it), so a run can be inspected
afterwards (``agl rollouts``, the dashboard) and survives a crash.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich.console import Console

from agl_kernel.algorithm import Algorithm, Baseline, FailureSummary, failure_lines
from agl_kernel.config import COMPONENT_TABLES, RunConfig, load_run_config
from agl_kernel.errors import ConfigError
from agl_kernel.models import Resource
from agl_kernel.plugins import create_component
from agl_kernel.progress import NoProgress, RichProgress
from agl_kernel.runner import RunnerSpec
from agl_kernel.runs import RunStore, describe_run
from agl_kernel.store.base import LightningStore
from agl_kernel.store.defaults import describe_store, make_store
from agl_kernel.strategy import ExecutionStrategy

__all__ = ["Trainer"]

Spec = str | type | Any | None


class Trainer:
    """Runs training. Components are instances, classes or names registered in their entry-point group.

    - ``algorithm``: ``agl.algorithms`` (default ``baseline``).
    - ``n_runners``: how many runners serve the agent (tasks in one process under ``shm``, processes under ``cs``).
    - ``store``: ``agl.stores`` (default: SQLite at ``store_path`` or ``./.agl/agl.db``).
    - ``tracer``: ``agl.tracers`` (default ``noop``; ``otel`` records every LLM call the agent makes).
    - ``runner``: ``agl.runners`` (default ``litagent``), a name or a class: the strategy makes one per runner.
    - ``adapter``: ``agl.adapters``, handed to the algorithm (``None``: the algorithm's own choice).
    - ``strategy``: ``agl.strategies`` (default ``shm``), made with ``n_runners``.
    - ``options``: options of the components given by name or class, by table: ``{"algorithm": {"steps": 3},
      "store": {"path": "run.db"}}``. A wrong key or value raises :class:`~agl_kernel.errors.ConfigError`.
    - ``initial_resources``: named resources (an ``LLM`` endpoint, a ``PromptTemplate``) the run starts from. Each
      ``fit``/``dev`` is a run with its own id (``run_id`` after it began): its rollouts use what it was given and
      what its algorithm publishes, never an earlier run's resources (see :mod:`agl_kernel.runs`).
    - ``progress``: show a live progress bar on the console.
    """

    def __init__(
        self,
        *,
        algorithm: Spec = "baseline",
        n_runners: int = 1,
        store: Spec = None,
        store_path: str | os.PathLike[str] | None = None,
        tracer: Spec = "noop",
        runner: str | type | None = "litagent",
        adapter: Spec = None,
        strategy: Spec = "shm",
        options: Mapping[str, Mapping[str, Any]] | None = None,
        initial_resources: Mapping[str, Resource] | None = None,
        progress: bool = True,
        console: Console | None = None,
    ) -> None:
        if n_runners < 1:
            raise ConfigError(f"run.runners: must be at least 1, not {n_runners}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(COMPONENT_TABLES))
        if unknown:
            raise ConfigError(f"options: unknown table(s) {unknown}. Valid tables: {', '.join(COMPONENT_TABLES)}")
        self.n_runners = n_runners
        self.algorithm: Algorithm = create_component("algorithms", algorithm, options=options.get("algorithm"))
        self.store: LightningStore = make_store(store, path=store_path, options=options.get("store"))
        self.tracer = create_component("tracers", tracer, options=options.get("tracer"))
        self.runner = RunnerSpec(runner or "litagent", options.get("runner") or {})
        self.adapter = (
            None if adapter is None else create_component("adapters", adapter, options=options.get("adapter"))
        )
        strategy_options = {"n_runners": n_runners} if isinstance(strategy, (str, type)) else {}
        self.strategy: ExecutionStrategy = create_component(
            "strategies", strategy, options=options.get("strategy"), **strategy_options
        )
        self.initial_resources = dict(initial_resources or {})
        self.run_id: str | None = None
        """The id of the run started last (``None`` before the first ``fit``/``dev``)."""
        self.console = console or Console()
        self.progress = progress

    @classmethod
    def from_config(
        cls,
        config: RunConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        overrides: Iterable[str] = (),
        **kwargs: Any,
    ) -> Trainer:
        """A trainer for a run configuration: a :class:`~agl_kernel.config.RunConfig`, the path of a TOML run
        file, or its tables as a mapping, with ``overrides`` (``"algorithm.steps=3"``) and ``AGL_*__*`` environment
        variables on top (see :mod:`agl_kernel.config`). ``kwargs`` go to the constructor (``console=``...)."""
        if not isinstance(config, RunConfig):
            if isinstance(config, Mapping):
                config = load_run_config(data=config, overrides=overrides)
            else:
                config = load_run_config(None if config is None else os.fspath(config), overrides=overrides)
        config.resolved()  # every name and option checked before anything is made
        chosen: dict[str, Any] = {}
        for table, choice in config.choices.items():
            if choice.name is not None:
                chosen[table] = choice.name
        kwargs.setdefault("initial_resources", config.run.initial_resources())
        return cls(
            n_runners=config.run.runners,
            options={table: choice.options for table, choice in config.choices.items() if choice.options},
            **{**chosen, **kwargs},
        )

    def fit(self, agent: Any, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None) -> Any:
        """Train ``agent`` on ``train_dataset`` (validating on ``val_dataset``); returns the algorithm's report."""
        return asyncio.run(self.fit_async(agent, train_dataset, val_dataset))

    def dev(self, agent: Any, dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None) -> Any:
        """Run ``agent`` on every task of ``dataset`` through the whole loop with the baseline algorithm (whatever
        ``algorithm`` was given: the trainer's own when it is a baseline, so ``options={"algorithm":
        {"max_attempts": 1}}`` applies), for debugging an agent before training it. Failed rollouts are summarised
        on the console and in the report's ``failures``."""
        baseline = self.algorithm if isinstance(self.algorithm, Baseline) else Baseline()
        return asyncio.run(self.fit_async(agent, dataset, val_dataset, algorithm=baseline))

    async def fit_async(
        self,
        agent: Any,
        train_dataset: Sequence[Any],
        val_dataset: Sequence[Any] | None = None,
        *,
        algorithm: Algorithm | None = None,
    ) -> Any:
        algorithm = algorithm or self.algorithm
        if self.adapter is not None:
            algorithm.adapter = self.adapter
        algorithm.progress = RichProgress(self.console) if self.progress else NoProgress()
        runners = getattr(self.strategy, "n_runners", self.n_runners)  # the strategy's own option may say more
        self.console.print(
            f"[bold]agl[/bold] {type(algorithm).__name__} with {runners} runner(s) "
            f"({type(self.strategy).__name__}); store [cyan]{describe_store(self.store)}[/cyan]"
        )
        run = RunStore(self.store, algorithm=type(algorithm).__name__)
        self.run_id = run.run_id
        self.console.print(describe_run(run.run_id, await run.begin(self.initial_resources)), highlight=False)
        report = await self.strategy.execute_async(
            store=run,
            algorithm=algorithm,
            agent=agent,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            tracer=self.tracer,
            runner=self.runner,
        )
        self._print_failures(report)
        self.console.print(f"run {run.run_id}: its rollouts: agl rollouts list --run {run.run_id}", highlight=False)
        return report

    def _print_failures(self, report: Any) -> None:
        """The report's failed rollouts (a baseline's ``failures``), in red on the console."""
        from rich.markup import escape

        failures = getattr(report, "failures", None)
        if not isinstance(failures, FailureSummary) or not failures.count:
            return
        lines = failure_lines(failures)
        self.console.print(f"[bold red]{escape(lines[0])}[/bold red]")
        for line in lines[1:]:
            self.console.print(escape(line), soft_wrap=True)

    def close(self) -> None:
        """Close the store (a trainer can run ``fit``/``dev`` any number of times before)."""
        asyncio.run(self.store.close())

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

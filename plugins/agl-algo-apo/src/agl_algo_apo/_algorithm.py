"""APO: automatic prompt optimization with textual gradients and beam search, over several prompt templates.

:class:`APO` checks its inputs and runs a :class:`Search`: ``start`` scores and publishes the seed; each ``round``
runs the beam on a training batch, ``propose``s children (a critique, then edits), scores parents and children
(``evaluate``), keeps the best (``select_beam``), publishes a better best (``promote``) and ``record``s the round;
``finish`` leaves the best as the store's latest resources. Only the rollout and publishing steps touch the store."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console

from agl_algo_apo._beam import Candidate, select_beam
from agl_algo_apo._config import APOConfig, make_config, optimizer_endpoint
from agl_algo_apo._optimizer import OptimizerError, PromptOptimizer, load_template
from agl_algo_apo._report import (
    CANDIDATE_SPAN,
    APOReport,
    CandidateRecord,
    round_metrics,
    round_rows,
    round_table,
    span_attributes,
)
from agl_algo_apo._trajectory import render_trajectory
from agl_kernel.algorithm import Algorithm, RolloutOutcome, collect_outcomes
from agl_kernel.config import to_plain
from agl_kernel.errors import ConfigError
from agl_kernel.models import (
    EnqueueRequest,
    PromptTemplate,
    Resource,
    ResourcesUpdate,
    RolloutConfig,
    RolloutMode,
    RolloutStatus,
)
from agl_kernel.store import LightningStore
from agl_kernel.training_metrics import MetricsRecorder

__all__ = ["APO"]

logger = logging.getLogger(__name__)


class APO(Algorithm):
    """Prompt optimization from traces (entry point ``apo`` in ``agl.algorithms``); options: :class:`APOConfig`.

    The seed prompts are the :class:`PromptTemplate` resources of the store's latest resources (give them with
    ``Trainer(initial_resources=...)``); the other resources there (an LLM, ...) are passed on unchanged. Every
    candidate is a full set of templates, stored as its own resources set, which its rollouts pin. The best set is
    published under ``resources_id`` (default: the seed's id) whenever it improves on the whole validation set,
    and is the store's latest resources when the run ends.

    Selected by name: ``Trainer(algorithm="apo", options={"algorithm": {"beam_width": 2}})``, or ``agl train
    --algorithm apo --set algorithm.beam_width=2``; ``agl plugins show apo`` lists the options.
    """

    Options = APOConfig

    @classmethod
    def from_options(cls, options: APOConfig, **objects: Any) -> APO:
        """APO selected by name: ``options`` built by the kernel, ``objects`` (``rollout_config``, ``console``)."""
        return cls(options, **objects)

    def __init__(
        self,
        config: APOConfig | Mapping[str, Any] | None = None,
        *,
        rollout_config: RolloutConfig | None = None,
        console: Console | bool | None = None,
        **options: Any,
    ) -> None:
        if isinstance(console, bool):  # console=False: the option of that name (no console output)
            options["console"], console = console, None
        self.config = make_config(config, **options)
        self.rollout_config = rollout_config
        self.console = console if console is not None else (Console() if self.config.console else None)
        # The texts of the optimizer's prompts, checked here: a wrong one fails before the run.
        self.critique_template = load_template(self.config.critique_template, "critique")
        self.edit_template = load_template(self.config.edit_template, "edit")

    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Sequence[Any] | None = None
    ) -> APOReport:
        """The search (:class:`Search`) from the store's latest resources; its report."""
        train = list(train_dataset)
        if not train:
            raise ConfigError("APO needs a non-empty training dataset")
        base = await store.get_latest_resources()
        if base is None:
            raise ConfigError(
                "APO found no resources in the store to start from: give the seed prompt(s) with "
                "Trainer(initial_resources={'prompt': PromptTemplate(template=...)}) or store.add_resources(...)"
            )
        return await Search(self, store, base, train, list(val_dataset) if val_dataset else train).run()


Run = tuple[Any, RolloutOutcome]  # a training task and how its rollout ended


class Rejected(NamedTuple):
    """A child that is not run: the template it would have edited, and why."""

    template: str | None
    reason: str


Proposal = tuple[str, PromptTemplate] | Rejected  # one child: a template's name and edited text, or why none


class Search:
    """One run of APO: the state every step shares (the store, the datasets, the optimizer, the beam, the best)."""

    def __init__(
        self, apo: APO, store: LightningStore, base: ResourcesUpdate, train: list[Any], val: list[Any]
    ) -> None:
        self.apo, self.config, self.console, self.store = apo, apo.config, apo.console, store
        self.resources: Mapping[str, Resource] = base.resources  # what is not optimized is passed on unchanged
        self.names = template_names(base.resources, self.config.templates)
        self.publish_id = self.config.resources_id or base.resources_id
        self.train, self.val, self.all_val = train, val, list(range(len(val)))
        self.rng = random.Random(self.config.seed)
        self.train_order = list(range(len(train)))
        self.rng.shuffle(self.train_order)
        self.run_tag = os.urandom(3).hex()
        self.ids = iter(range(1, 1 << 30))  # numbers of the children; c0 is the seed
        prompts: dict[str, Any] = {n: base.resources[n] for n in self.names}
        self.seed = Candidate("c0", prompts, round=0, resources_id=base.resources_id)
        self.seen = {prompts_key(prompts): "c0"}  # every prompt set tried: a repeat is not run again
        self.beam, self.best, self.version = [self.seed], self.seed, base.version
        self.history: list[list[CandidateRecord]] = []
        self.rollouts = 0
        base_url, api_key = optimizer_endpoint(self.config)
        self.optimizer = PromptOptimizer(
            base_url=base_url,
            api_key=api_key,
            critique_model=self.config.critique_model,
            edit_model=self.config.edit_model or self.config.critique_model,
            critique_temperature=self.config.critique_temperature,
            edit_temperature=self.config.edit_temperature,
            critique_template=apo.critique_template,
            edit_template=apo.edit_template,
            timeout=self.config.optimizer_timeout,
            max_tokens=self.config.optimizer_max_tokens,
        )
        self.semaphore = asyncio.Semaphore(self.config.optimizer_concurrency)
        self.recorder = MetricsRecorder(store, algorithm="apo")

    @property
    def best_score(self) -> float:
        """The best candidate's mean reward on the whole validation set."""
        return self.best.score(self.all_val)

    async def run(self) -> APOReport:
        recorded = to_plain(self.config)
        if recorded.get("optimizer_api_key") is not None:
            recorded["optimizer_api_key"] = "(set)"  # a secret: the store does not keep it
        await self.recorder.open({"config": recorded, "templates": self.names})
        succeeded = False
        try:
            await self.start()
            for round_no in range(1, self.config.rounds + 1):
                await self.round(round_no)
            report = await self.finish()
            succeeded = True
            return report
        finally:
            await self.optimizer.close()
            await self.recorder.close(succeeded=succeeded)

    async def start(self) -> None:
        """The seed, scored on the whole validation set, is the first best (version 1 of a new ``resources_id``)."""
        await self.evaluate([self.seed], self.all_val, "seed: validation")
        if self.publish_id == self.seed.resources_id:
            self.version = (await self.store.get_resources(self.publish_id)).version
        else:  # the seed is version 1 of the id the results go to, so its history starts with the seed
            self.version = await self.publish()
        self.write_best()
        row = CandidateRecord(round=0, candidate="c0", parent=None, template=None, score=self.best_score, status="seed")
        await self.record(0, [row], [self.seed], calls=0, started=None)

    async def round(self, round_no: int) -> None:
        """Children of every parent in the beam, scored with their parents on a validation batch; the best stay."""
        started, calls = time.time(), self.optimizer.calls
        label = f"round {round_no}/{self.config.rounds}"
        runs = await self.run_train(self.train_batch(round_no), f"{label}: training batch")
        proposals = await asyncio.gather(*(self.propose(p, runs[p.candidate_id], round_no) for p in self.beam))
        children, rejected = self.children(round_no, proposals)
        for child in children:  # each its own resources set, which its rollouts pin
            child.resources_id = f"apo-{self.run_tag}-{child.candidate_id}"
            await self.store.update_resources(child.resources_id, {**self.resources, **child.prompts})
        pool, tasks = self.beam + children, self.val_batch()
        await self.evaluate(pool, tasks, f"{label}: validation")
        self.beam = select_beam(pool, tasks, self.config.beam_width, pareto=self.config.pareto)
        await self.promote(self.beam[0], round_no)
        rows = round_rows(round_no, pool, self.beam, tasks, rejected)
        await self.record(round_no, rows, pool, calls=self.optimizer.calls - calls, started=started)

    async def finish(self) -> APOReport:
        """The best is the store's latest resources; the report."""
        latest = await self.store.get_latest_resources()
        if latest is None or latest.resources_id != self.publish_id:  # candidates' sets were stored after it
            self.version = await self.publish()
        seed_score, best, output_path = self.seed.score(self.all_val), self.best, self.config.output_path
        if self.console is not None:
            self.console.print(
                f"[bold]APO done[/bold]: best {best.candidate_id} scores {self.best_score:.3f} on {len(self.all_val)} "
                f"validation tasks (seed {seed_score:.3f}); published as {self.publish_id} v{self.version}"
                + (f", written to {output_path}" if output_path else "")
            )
        return APOReport(
            best_prompts={name: template.template for name, template in best.prompts.items()},
            best_candidate=best.candidate_id,
            best_score=self.best_score,
            seed_score=seed_score,
            resources_id=self.publish_id,
            version=self.version,
            rounds=self.history,
            optimizer_calls=self.optimizer.calls,
            rollouts=self.rollouts,
            output_path=output_path,
        )

    def train_batch(self, round_no: int) -> list[Any]:
        """The round's training tasks: the next ``train_batch_size`` of the shuffled set, wrapping around."""
        size, order = min(self.config.train_batch_size, len(self.train)), self.train_order
        start = ((round_no - 1) * self.config.train_batch_size) % len(self.train)
        return [self.train[order[(start + i) % len(self.train)]] for i in range(size)]

    def val_batch(self) -> list[int]:
        """The round's validation tasks (indices): ``val_batch_size`` of them at random, or all."""
        size = self.config.val_batch_size
        return self.all_val if size is None or size >= len(self.val) else sorted(self.rng.sample(self.all_val, size))

    # ------------------------------------------------------------------------------------------------ proposals

    async def propose(self, parent: Candidate, runs: list[Run], round_no: int) -> list[Proposal]:
        """``branch_factor`` children of ``parent``: one critique of its worst and best trajectories, then one edit
        per child (concurrently). A failure rejects the child it concerns (the critique's, all of them)."""
        turn = self.names[(round_no - 1) % len(self.names)]  # round-robin: the template edited this round
        target = None if self.config.template_selection == "blame" else turn
        worst_runs, best_runs = examples(runs, self.config.examples)
        worst = [await self.trajectory(*r) for r in worst_runs]
        best = [await self.trajectory(*r) for r in best_runs]
        try:
            async with self.semaphore:
                critique, blamed = await self.optimizer.critique(
                    templates=parent.prompts, target=target, worst=worst, best=best
                )
        except OptimizerError as exc:
            return [Rejected(target, f"critique failed: {exc}")] * self.config.branch_factor
        name = target or blamed
        if name is None:
            name = turn
            logger.info("APO: the critique of %s blamed no known template; editing %s", parent.candidate_id, name)
        children = range(1, self.config.branch_factor + 1)
        return list(await asyncio.gather(*(self.edit(parent, name, critique, child) for child in children)))

    async def edit(self, parent: Candidate, name: str, critique: str, child: int) -> Proposal:
        """The optimizer's edit of ``parent``'s template ``name`` for one child, or why it was rejected."""
        try:
            async with self.semaphore:
                edited = await self.optimizer.edit(
                    name=name,
                    template=parent.prompts[name],
                    critique=critique,
                    child=child,
                    children=self.config.branch_factor,
                )
        except (OptimizerError, ValueError) as exc:
            return Rejected(name, str(exc))
        return name, edited

    def children(self, round_no: int, proposals: list[list[Proposal]]) -> tuple[list[Candidate], list[CandidateRecord]]:
        """The children to run (from each parent of the beam, its proposals), and a row for each rejected one: its
        edit failed, or it has the prompts of a candidate tried before. Every proposal takes the next number."""
        children, rejected = [], []
        for parent, made in zip(self.beam, proposals):
            for child_no, proposal in enumerate(made, start=1):
                candidate_id = f"c{next(self.ids)}"
                if not isinstance(proposal, Rejected):
                    name, template = proposal
                    prompts = {**parent.prompts, name: template}
                    same = self.seen.setdefault(prompts_key(prompts), candidate_id)
                    if same == candidate_id:
                        children.append(Candidate(candidate_id, prompts, round_no, parent.candidate_id, edited=name))
                        continue
                    proposal = Rejected(name, f"the same prompts as candidate {same}")
                why = (round_no, candidate_id, child_no, parent.candidate_id, proposal.template, proposal.reason)
                logger.warning("APO round %d: candidate %s (child %d of %s, template %s) rejected: %s", *why)
                rejected.append(
                    CandidateRecord(
                        round=round_no,
                        candidate=candidate_id,
                        parent=parent.candidate_id,
                        template=proposal.template,
                        score=None,
                        status="rejected",
                        reason=proposal.reason,
                    )
                )
        return children, rejected

    # ------------------------------------------------------------------------------------------------ rollouts

    async def run_jobs(self, jobs: list[tuple[Candidate, Any, RolloutMode]], label: str) -> list[RolloutOutcome]:
        """Run every (candidate, task) at once; the outcomes in the same order (cancelled at the timeout)."""
        if not jobs:
            return []
        requests = [
            EnqueueRequest(input=task, mode=mode, resources_id=candidate.resources_id, config=self.apo.rollout_config)
            for candidate, task, mode in jobs
        ]
        ids = [r.rollout_id for r in await self.store.enqueue_many_rollouts(requests)]
        self.rollouts += len(ids)
        timeout = self.config.rollout_timeout
        ended = await collect_outcomes(self.store, ids, timeout=timeout, progress=self.apo.progress, label=label)
        outcomes = []
        for rollout_id, (_, task, _) in zip(ids, jobs):
            outcome = ended.get(rollout_id)
            if outcome is None:
                await self.store.cancel_rollout(rollout_id)
                outcome = RolloutOutcome(rollout_id=rollout_id, input=task, status="timed out", reward=None, attempts=0)
            outcomes.append(outcome)
        return outcomes

    async def evaluate(self, candidates: Sequence[Candidate], tasks: Sequence[int], label: str) -> None:
        """Score each candidate on the validation tasks it has no score for yet, all candidates concurrently."""
        keys = [(candidate, index) for candidate in candidates for index in candidate.missing(tasks)]
        outcomes = await self.run_jobs([(c, self.val[index], RolloutMode.VAL) for c, index in keys], label)
        for (candidate, index), outcome in zip(keys, outcomes):
            candidate.scores[index] = outcome_score(outcome)

    async def run_train(self, batch: list[Any], label: str) -> dict[str, list[Run]]:
        """Each parent of the beam on the training batch (concurrently): its (task, outcome) per rollout."""
        jobs = [(parent, task, RolloutMode.TRAIN) for parent in self.beam for task in batch]
        runs: dict[str, list[Run]] = {parent.candidate_id: [] for parent in self.beam}
        for (parent, task, _), outcome in zip(jobs, await self.run_jobs(jobs, label)):
            runs[parent.candidate_id].append((task, outcome))
        return runs

    async def trajectory(self, task: Any, outcome: RolloutOutcome) -> str:
        """A training rollout as the critique reads it (only the worst and best ones are read from the store)."""
        spans = (await self.store.query_spans(outcome.rollout_id, "latest")).items if outcome.attempts else []
        return render_trajectory(spans, task=task, reward=outcome.reward, status=outcome.status)

    # ------------------------------------------------------------------------------------------------ results

    async def promote(self, top: Candidate, round_no: int) -> None:
        """The round's top candidate, scored on the whole validation set, is published if it beats the best."""
        if top.missing(self.all_val):
            await self.evaluate([top], self.all_val, f"round {round_no}: full validation of {top.candidate_id}")
        if top is self.best or top.score(self.all_val) <= self.best_score:
            return
        self.best = top
        self.version = await self.publish()
        self.write_best()
        if self.console is not None:
            self.console.print(
                f"[green]round {round_no}: new best {top.candidate_id} ({self.best_score:.3f} on all "
                f"{len(self.all_val)} validation tasks), published as {self.publish_id} v{self.version}[/green]"
            )

    async def publish(self) -> int:
        """The best prompts (with the other resources) as a new version of ``publish_id``; that version."""
        return (await self.store.update_resources(self.publish_id, {**self.resources, **self.best.prompts})).version

    def write_best(self) -> None:
        """The best prompts to ``output_path`` (if set), replaced whole: a reader never sees half a file."""
        if self.config.output_path is None:
            return
        best, path = self.best, Path(self.config.output_path)
        payload = {
            "candidate": best.candidate_id,
            "round": best.round,
            "score": self.best_score,
            "resources_id": self.publish_id,
            "version": self.version,
            "prompts": {name: template.template for name, template in best.prompts.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)

    async def record(
        self, round_no: int, rows: list[CandidateRecord], pool: list[Candidate], *, calls: int, started: float | None
    ) -> None:
        """The round in the history, as spans and metrics in the store, and as a table on the console."""
        self.history.append(rows)
        by_id = {c.candidate_id: c for c in pool}
        for row in rows:
            await self.recorder.add_span(CANDIDATE_SPAN, span_attributes(row, by_id.get(row.candidate)))
        await self.recorder.record(round_no, round_metrics(rows, self.best_score, calls), started=started)
        if self.console is not None:
            title = "APO seed" if round_no == 0 else f"APO round {round_no}/{self.config.rounds}"
            self.console.print(round_table(title, rows))


def template_names(resources: Mapping[str, Resource], templates: list[str] | None) -> list[str]:
    """The names of the templates to optimize: ``templates`` (option ``templates``), or every PromptTemplate."""
    prompts = [name for name, resource in resources.items() if isinstance(resource, PromptTemplate)]
    if templates is None:
        if not prompts:
            raise ConfigError(
                f"APO found no PromptTemplate in the latest resources (it has: {', '.join(resources) or 'nothing'})"
                "; add the prompt(s) to optimize with Trainer(initial_resources=...)"
            )
        return prompts
    for name in templates:
        if name not in prompts:
            raise ConfigError(
                f"algorithm.templates names {name!r}, which is not a PromptTemplate of the latest resources "
                f"(their prompt templates: {', '.join(prompts) or 'none'})"
            )
    return list(templates)


def examples(runs: Sequence[Run], count: int) -> tuple[list[Run], list[Run]]:
    """The ``count`` worst runs (worst first) and the ``count`` best of the others (best first)."""
    ranked = sorted(runs, key=lambda run: outcome_score(run[1]))
    return ranked[:count], ranked[count:][::-1][:count]


def prompts_key(prompts: Mapping[str, PromptTemplate]) -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted((name, t.engine, t.template) for name, t in prompts.items()))


def outcome_score(outcome: RolloutOutcome) -> float:
    """A rollout's score: its reward when it succeeded with one, else 0."""
    if outcome.status != RolloutStatus.SUCCEEDED.value or outcome.reward is None:
        return 0.0
    return float(outcome.reward)

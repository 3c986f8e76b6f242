"""APO: automatic prompt optimization with textual gradients and beam search, over several prompt templates."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agl_kernel.algorithm import Algorithm, RolloutOutcome, collect_outcomes
from agl_kernel.config import to_plain
from agl_kernel.models import EnqueueRequest, PromptTemplate, Resource, RolloutConfig, RolloutMode, RolloutStatus
from agl_kernel.store import LightningStore
from agl_kernel.training_metrics import MetricsRecorder

from agl_algo_apo._beam import Candidate, select_beam
from agl_algo_apo._config import APOConfig, make_config, optimizer_endpoint
from agl_algo_apo._optimizer import OptimizerError, PromptOptimizer, load_template
from agl_algo_apo._trajectory import render_trajectory

__all__ = ["APO", "APOReport", "CANDIDATE_SPAN", "CandidateRecord"]

logger = logging.getLogger("agl_algo_apo")

CANDIDATE_SPAN = "agl.apo.candidate"
"""One span per candidate and round in the run's training-metrics rollout (see ``agl_kernel.training_metrics``)."""


class CandidateRecord(msgspec.Struct, kw_only=True):
    """One row of a round's table: a candidate that was scored, kept or rejected in that round."""

    round: int
    candidate: str
    parent: Optional[str]
    template: Optional[str]
    score: Optional[float]
    """Mean reward on the round's validation batch (``None`` if it was rejected before being run)."""
    status: str
    """``seed``, ``beam`` (kept), ``dropped``, or ``rejected``."""
    reason: Optional[str] = None


class APOReport(msgspec.Struct, kw_only=True):
    best_prompts: dict[str, str]
    best_candidate: str
    best_score: float
    """Mean reward of the best candidate on the whole validation set."""
    seed_score: float
    resources_id: str
    version: int
    """The version of ``resources_id`` that holds the best prompts (the store's latest resources)."""
    rounds: list[list[CandidateRecord]]
    optimizer_calls: int
    rollouts: int
    output_path: Optional[str] = None


class _Rejected(Exception):
    def __init__(self, template: Optional[str], reason: str) -> None:
        super().__init__(reason)
        self.template = template
        self.reason = reason


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
    def from_options(cls, options: APOConfig, **objects: Any) -> "APO":
        """APO selected by name: ``options`` built by the kernel, ``objects`` (``rollout_config``, ``console``)."""
        return cls(options, **objects)

    def __init__(
        self,
        config: Union[APOConfig, Mapping[str, Any], None] = None,
        *,
        rollout_config: Optional[RolloutConfig] = None,
        console: Union[Console, bool, None] = None,
        **options: Any,
    ) -> None:
        if isinstance(console, bool):  # console=False: the option of that name (no console output)
            options["console"], console = console, None
        self.config = make_config(config, **options)
        self.rollout_config = rollout_config
        self.console = console if console is not None else (Console() if self.config.console else None)
        self._critique_template = load_template(self.config.critique_template, "critique")
        self._edit_template = load_template(self.config.edit_template, "edit")
        self._rollouts = 0

    # ------------------------------------------------------------------------------------------------ the loop

    async def run(
        self, store: LightningStore, train_dataset: Sequence[Any], val_dataset: Optional[Sequence[Any]] = None
    ) -> APOReport:
        config = self.config
        train = list(train_dataset)
        val = list(val_dataset) if val_dataset else train
        if not train:
            raise ValueError("APO needs a non-empty training dataset")
        base = await store.get_latest_resources()
        if base is None:
            raise ValueError(
                "APO found no resources in the store to start from: give the seed prompt(s) with "
                "Trainer(initial_resources={'prompt': PromptTemplate(template=...)}) or store.add_resources(...)"
            )
        names = self._template_names(base.resources)
        publish_id = config.resources_id or base.resources_id
        base_url, api_key = optimizer_endpoint(config)
        optimizer = PromptOptimizer(
            base_url=base_url,
            api_key=api_key,
            critique_model=config.critique_model,
            edit_model=config.edit_model or config.critique_model,
            critique_temperature=config.critique_temperature,
            edit_temperature=config.edit_temperature,
            critique_template=self._critique_template,
            edit_template=self._edit_template,
            timeout=config.optimizer_timeout,
            max_tokens=config.optimizer_max_tokens,
        )
        recorder = MetricsRecorder(store, algorithm="apo")
        recorded = to_plain(config)
        if recorded.get("optimizer_api_key") is not None:
            recorded["optimizer_api_key"] = "(set)"  # a secret: the store does not keep it
        await recorder.open({"config": recorded, "templates": names})
        succeeded = False
        try:
            report = await self._search(
                store, base.resources, base.resources_id, names, publish_id, train, val, optimizer, recorder
            )
            succeeded = True
            return report
        finally:
            await optimizer.close()
            await recorder.close(succeeded=succeeded)

    def _template_names(self, resources: Mapping[str, Resource]) -> list[str]:
        prompts = [name for name, resource in resources.items() if isinstance(resource, PromptTemplate)]
        if self.config.templates is None:
            if not prompts:
                raise ValueError(
                    f"APO found no PromptTemplate in the latest resources (it has: {', '.join(resources) or 'nothing'})"
                    "; add the prompt(s) to optimize with Trainer(initial_resources=...)"
                )
            return prompts
        for name in self.config.templates:
            if name not in prompts:
                raise ValueError(
                    f"APO option templates names {name!r}, which is not a PromptTemplate of the latest resources "
                    f"(their prompt templates: {', '.join(prompts) or 'none'})"
                )
        return list(self.config.templates)

    async def _search(
        self,
        store: LightningStore,
        resources: Mapping[str, Resource],
        seed_resources_id: str,
        names: list[str],
        publish_id: str,
        train: list[Any],
        val: list[Any],
        optimizer: PromptOptimizer,
        recorder: MetricsRecorder,
    ) -> APOReport:
        config = self.config
        rng = random.Random(config.seed)
        run_tag = os.urandom(3).hex()
        counter = iter(range(1, 1 << 30))
        all_val = list(range(len(val)))
        train_order = list(range(len(train)))
        rng.shuffle(train_order)

        seed = Candidate("c0", {n: resources[n] for n in names}, round=0, resources_id=seed_resources_id)  # type: ignore[misc]
        seen = {_prompts_key(seed.prompts): seed.candidate_id}  # every prompt set tried: a repeat is not run again
        await self._evaluate(store, [seed], val, all_val, "seed: validation")
        seed_score = seed.score(all_val)
        best, beam = seed, [seed]
        if publish_id == seed_resources_id:
            version = (await store.get_resources(seed_resources_id)).version
        else:  # the seed is version 1 of the id the results go to, so its history starts with the seed
            version = (await self._publish(store, publish_id, resources, seed)).version
        self._write_best(best, seed_score, publish_id, version)
        seed_row = CandidateRecord(round=0, candidate="c0", parent=None, template=None, score=seed_score, status="seed")
        rounds: list[list[CandidateRecord]] = [[seed_row]]
        await self._record_round(recorder, 0, [seed_row], [seed], best_score=seed_score, calls=0)

        for round_no in range(1, config.rounds + 1):
            started = time.time()
            calls_before = optimizer.calls
            start = ((round_no - 1) * config.train_batch_size) % len(train)
            batch = [
                train[train_order[(start + i) % len(train)]] for i in range(min(config.train_batch_size, len(train)))
            ]
            runs = await self._run_train(store, beam, batch, f"round {round_no}/{config.rounds}: training batch")
            target = None if config.template_selection == "blame" else names[(round_no - 1) % len(names)]
            semaphore = asyncio.Semaphore(config.optimizer_concurrency)
            proposals = await asyncio.gather(
                *(
                    self._propose(
                        store, optimizer, semaphore, parent, runs[parent.candidate_id], names, target, round_no
                    )
                    for parent in beam
                )
            )
            children: list[Candidate] = []
            rows: list[CandidateRecord] = []
            for parent, made in zip(beam, proposals):
                for child_no, result in enumerate(made, start=1):
                    candidate_id = f"c{next(counter)}"
                    if not isinstance(result, _Rejected):
                        name, template = result
                        prompts = {**parent.prompts, name: template}
                        same = seen.setdefault(_prompts_key(prompts), candidate_id)
                        if same != candidate_id:
                            result = _Rejected(name, f"the same prompts as candidate {same}")
                    if isinstance(result, _Rejected):
                        logger.warning(
                            "APO round %d: candidate %s (child %d of %s, template %s) rejected: %s",
                            round_no,
                            candidate_id,
                            child_no,
                            parent.candidate_id,
                            result.template,
                            result.reason,
                        )
                        rows.append(
                            CandidateRecord(
                                round=round_no,
                                candidate=candidate_id,
                                parent=parent.candidate_id,
                                template=result.template,
                                score=None,
                                status="rejected",
                                reason=result.reason,
                            )
                        )
                        continue
                    child = Candidate(candidate_id, prompts, round=round_no, parent=parent.candidate_id, edited=name)
                    child.resources_id = f"apo-{run_tag}-{candidate_id}"
                    await store.update_resources(child.resources_id, {**resources, **child.prompts})
                    children.append(child)
            if config.val_batch_size is None or config.val_batch_size >= len(val):
                val_batch = all_val
            else:
                val_batch = sorted(rng.sample(all_val, config.val_batch_size))
            await self._evaluate(
                store, beam + children, val, val_batch, f"round {round_no}/{config.rounds}: validation"
            )
            pool = beam + children
            beam = select_beam(pool, val_batch, config.beam_width, pareto=config.pareto)
            top = beam[0]
            if top.missing(all_val):
                await self._evaluate(
                    store, [top], val, all_val, f"round {round_no}: full validation of {top.candidate_id}"
                )
            best_score = best.score(all_val)
            if top is not best and top.score(all_val) > best_score:
                best, best_score = top, top.score(all_val)
                version = (await self._publish(store, publish_id, resources, best)).version
                self._write_best(best, best_score, publish_id, version)
                if self.console is not None:
                    self.console.print(
                        f"[green]round {round_no}: new best {best.candidate_id} ({best_score:.3f} on all "
                        f"{len(all_val)} validation tasks), published as {publish_id} v{version}[/green]"
                    )
            kept = {c.candidate_id for c in beam}
            for candidate in pool:
                rows.append(
                    CandidateRecord(
                        round=round_no,
                        candidate=candidate.candidate_id,
                        parent=candidate.parent,
                        template=candidate.edited,
                        score=candidate.score(val_batch),
                        status="beam" if candidate.candidate_id in kept else "dropped",
                    )
                )
            rows.sort(key=lambda r: (r.status == "rejected", -(r.score or 0.0), r.candidate))
            rounds.append(rows)
            await self._record_round(
                recorder,
                round_no,
                rows,
                pool,
                best_score=best_score,
                calls=optimizer.calls - calls_before,
                started=started,
            )

        latest = await store.get_latest_resources()
        if latest is None or latest.resources_id != publish_id:  # candidates' sets were stored after it
            version = (await self._publish(store, publish_id, resources, best)).version
        best_score = best.score(all_val)
        if self.console is not None:
            self.console.print(
                f"[bold]APO done[/bold]: best {best.candidate_id} scores {best_score:.3f} on {len(all_val)} "
                f"validation tasks (seed {seed_score:.3f}); published as {publish_id} v{version}"
                + (f", written to {config.output_path}" if config.output_path else "")
            )
        return APOReport(
            best_prompts={name: template.template for name, template in best.prompts.items()},
            best_candidate=best.candidate_id,
            best_score=best_score,
            seed_score=seed_score,
            resources_id=publish_id,
            version=version,
            rounds=rounds,
            optimizer_calls=optimizer.calls,
            rollouts=self._rollouts,
            output_path=config.output_path,
        )

    # ------------------------------------------------------------------------------------------------ proposals

    async def _propose(
        self,
        store: LightningStore,
        optimizer: PromptOptimizer,
        semaphore: asyncio.Semaphore,
        parent: Candidate,
        runs: list[tuple[Any, RolloutOutcome]],
        names: list[str],
        target: Optional[str],
        round_no: int,
    ) -> list[Union[tuple[str, PromptTemplate], _Rejected]]:
        """``branch_factor`` children of ``parent``: one critique from its worst and best trajectories, then one
        edit per child (concurrently). A failure rejects the child it concerns (the critique's, all of them)."""
        config = self.config
        ranked = sorted(runs, key=lambda run: _score(run[1]))
        worst = [await self._trajectory(store, *run) for run in ranked[: config.examples]]
        best = [await self._trajectory(store, *run) for run in ranked[config.examples :][::-1][: config.examples]]
        try:
            async with semaphore:
                critique, blamed = await optimizer.critique(
                    templates=parent.prompts, target=target, worst=worst, best=best
                )
        except OptimizerError as exc:
            return [_Rejected(target, f"critique failed: {exc}")] * config.branch_factor
        name = target or blamed
        if name is None:
            name = names[(round_no - 1) % len(names)]
            logger.info("APO: the critique of %s blamed no known template; editing %s", parent.candidate_id, name)

        async def edit(child_no: int) -> Union[tuple[str, PromptTemplate], _Rejected]:
            try:
                async with semaphore:
                    edited = await optimizer.edit(
                        name=name,
                        template=parent.prompts[name],
                        critique=critique,
                        child=child_no,
                        children=config.branch_factor,
                    )
            except (OptimizerError, ValueError) as exc:
                return _Rejected(name, str(exc))
            return name, edited

        return list(await asyncio.gather(*(edit(i) for i in range(1, config.branch_factor + 1))))

    # ------------------------------------------------------------------------------------------------ rollouts

    async def _enqueue_and_wait(
        self, store: LightningStore, jobs: list[tuple[Candidate, Any, RolloutMode]], label: str
    ) -> list[RolloutOutcome]:
        """Run every (candidate, task) at once; the outcomes in the same order (cancelled at the timeout)."""
        if not jobs:
            return []
        requests = [
            EnqueueRequest(input=task, mode=mode, resources_id=candidate.resources_id, config=self.rollout_config)
            for candidate, task, mode in jobs
        ]
        rollouts = await store.enqueue_many_rollouts(requests)
        self._rollouts += len(rollouts)
        ids = [r.rollout_id for r in rollouts]
        ended = await collect_outcomes(
            store, ids, timeout=self.config.rollout_timeout, progress=self.progress, label=label
        )
        outcomes = []
        for rollout_id, (_, task, _) in zip(ids, jobs):
            outcome = ended.get(rollout_id)
            if outcome is None:
                await store.cancel_rollout(rollout_id)
                outcome = RolloutOutcome(rollout_id=rollout_id, input=task, status="timed out", reward=None, attempts=0)
            outcomes.append(outcome)
        return outcomes

    async def _evaluate(
        self, store: LightningStore, candidates: Sequence[Candidate], val: list[Any], tasks: Sequence[int], label: str
    ) -> None:
        """Score each candidate on the validation tasks it has no score for yet, all candidates concurrently."""
        jobs, keys = [], []
        for candidate in candidates:
            for index in candidate.missing(tasks):
                jobs.append((candidate, val[index], RolloutMode.VAL))
                keys.append((candidate, index))
        for (candidate, index), outcome in zip(keys, await self._enqueue_and_wait(store, jobs, label)):
            candidate.scores[index] = _score(outcome)

    async def _run_train(
        self, store: LightningStore, parents: Sequence[Candidate], batch: list[Any], label: str
    ) -> dict[str, list[tuple[Any, RolloutOutcome]]]:
        """Each parent on the training batch (concurrently): (task, outcome) per rollout."""
        jobs = [(parent, task, RolloutMode.TRAIN) for parent in parents for task in batch]
        outcomes = await self._enqueue_and_wait(store, jobs, label)
        runs: dict[str, list[tuple[Any, RolloutOutcome]]] = {p.candidate_id: [] for p in parents}
        for (parent, task, _), outcome in zip(jobs, outcomes):
            runs[parent.candidate_id].append((task, outcome))
        return runs

    @staticmethod
    async def _trajectory(store: LightningStore, task: Any, outcome: RolloutOutcome) -> str:
        """A training rollout as the critique reads it (only the worst and best ones are read from the store)."""
        spans = (await store.query_spans(outcome.rollout_id, "latest")).items if outcome.attempts else []
        return render_trajectory(spans, task=task, reward=outcome.reward, status=outcome.status)

    # ------------------------------------------------------------------------------------------------ results

    async def _publish(
        self, store: LightningStore, publish_id: str, resources: Mapping[str, Resource], best: Candidate
    ) -> Any:
        return await store.update_resources(publish_id, {**resources, **best.prompts})

    def _write_best(self, best: Candidate, score: float, resources_id: str, version: int) -> None:
        if self.config.output_path is None:
            return
        path = Path(self.config.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "candidate": best.candidate_id,
            "round": best.round,
            "score": score,
            "resources_id": resources_id,
            "version": version,
            "prompts": {name: template.template for name, template in best.prompts.items()},
        }
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        temporary.replace(path)  # a reader never sees half a file

    async def _record_round(
        self,
        recorder: MetricsRecorder,
        round_no: int,
        rows: list[CandidateRecord],
        pool: Sequence[Candidate],
        *,
        best_score: float,
        calls: int,
        started: Optional[float] = None,
    ) -> None:
        by_id = {c.candidate_id: c for c in pool}
        for row in rows:
            attributes: dict[str, Any] = {
                "agl.apo.round": round_no,
                "agl.apo.candidate": row.candidate,
                "agl.apo.status": row.status,
            }
            for key, value in (
                ("parent", row.parent),
                ("template", row.template),
                ("score", row.score),
                ("reason", row.reason),
            ):
                if value is not None:
                    attributes[f"agl.apo.{key}"] = value
            candidate = by_id.get(row.candidate)
            if candidate is not None:  # the edited template's text; for the seed (no edit), its template(s)
                if row.template is not None:
                    attributes["agl.apo.prompt"] = candidate.prompts[row.template].template
                elif len(candidate.prompts) == 1:
                    attributes["agl.apo.prompt"] = next(iter(candidate.prompts.values())).template
                else:
                    attributes["agl.apo.prompt"] = "\n\n".join(
                        f"[{name}]\n{t.template}" for name, t in candidate.prompts.items()
                    )
            await recorder.add_span(CANDIDATE_SPAN, attributes)
        scored = [r.score for r in rows if r.score is not None]
        metrics = {
            "best_score": max(scored) if scored else 0.0,
            "mean_score": statistics.fmean(scored) if scored else 0.0,
            "best_full_score": best_score,
            "candidates": float(len(rows)),
            "rejected": float(sum(r.status == "rejected" for r in rows)),
            "optimizer_calls": float(calls),
        }
        await recorder.record(round_no, metrics, started=started)
        if self.console is not None:
            self._print_round(round_no, rows)

    def _print_round(self, round_no: int, rows: list[CandidateRecord]) -> None:
        assert self.console is not None
        title = "APO seed" if round_no == 0 else f"APO round {round_no}/{self.config.rounds}"
        table = Table(title=title, title_justify="left")
        for header in ("candidate", "parent", "template", "score", "status"):
            table.add_column(header, justify="right" if header == "score" else "left")
        styles = {"beam": "green", "seed": "green", "rejected": "yellow", "dropped": "dim"}
        for row in rows:
            status = escape(row.status if row.reason is None else f"{row.status}: {row.reason}")
            table.add_row(
                row.candidate,
                row.parent or "",
                row.template or "",
                "" if row.score is None else f"{row.score:.3f}",
                f"[{styles.get(row.status, '')}]{status}[/]" if styles.get(row.status) else status,
            )
        self.console.print(table)


def _prompts_key(prompts: Mapping[str, PromptTemplate]) -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted((name, t.engine, t.template) for name, t in prompts.items()))


def _score(outcome: RolloutOutcome) -> float:
    """A rollout's score: its reward when it succeeded with one, else 0."""
    if outcome.status != RolloutStatus.SUCCEEDED.value or outcome.reward is None:
        return 0.0
    return float(outcome.reward)

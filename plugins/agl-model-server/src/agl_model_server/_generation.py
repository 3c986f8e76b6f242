"""One API request's generation: its choices are submitted to the engine, and engine events become per-choice text
deltas, token ids and logprobs (the same path serves streaming and non-streaming responses)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agl_model_server._detok import TextAssembler
from agl_model_server._engine import Engine, EngineError, TokenEvent
from agl_model_server._protocol import ApiError
from agl_model_server._sampling import SamplingParams

__all__ = ["Choice", "Delta", "RequestRun"]


class _Sink:
    """Delivers a choice's engine events into the request's asyncio queue, as ``(index, [events])`` (the engine
    batches them per loop). ``whole``: hold the events until the last one, so a request that needs no text before
    the end (not streamed, no stop strings) wakes once instead of once per token."""

    __slots__ = ("held", "index", "loop", "queue", "whole")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int, whole: bool) -> None:
        self.loop, self.queue, self.index, self.whole = loop, queue, index, whole
        self.held: list[TokenEvent] = []

    def __call__(self, event: TokenEvent) -> None:
        if not self.whole:
            self.queue.put_nowait((self.index, [event]))
            return
        self.held.append(event)
        if event.finish_reason is not None:
            self.queue.put_nowait((self.index, self.held))
            self.held = []


@dataclass
class Choice:
    """Everything generated for one choice so far."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    assembler: TextAssembler
    seq_id: int = 0
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: Any = None
    done: bool = False

    @property
    def text(self) -> str:
        return self.assembler.text


@dataclass
class Delta:
    """What one choice gained since the last delta."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]] | None] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: Any = None


class RequestRun:
    """The choices of one request: ``prompts[i]`` is generated ``n`` times (choice ``i * n + j``; with a seed,
    choice ``j`` of a prompt uses ``seed + j``)."""

    def __init__(
        self,
        engine: Engine,
        tokenizer: Any,
        prompts: Sequence[list[int]],
        params: SamplingParams,
        *,
        n: int = 1,
        stop: Sequence[str] = (),
        include_stop: bool = False,
        skip_special_tokens: bool = True,
        incremental: bool = True,
        adapter: str | None = None,
        priority: int = 0,
    ) -> None:
        """``incremental=False``: the caller only wants the end result (no stream); without stop strings the
        tokens are then taken in one piece when each choice ends. ``adapter``: the LoRA adapter to generate under
        (``None``: the base model). ``priority``: the engine admits lower first (see :meth:`Engine.submit`)."""
        self.engine = engine
        self.adapter = adapter
        self.priority = priority
        self.whole = not incremental and not any(stop)
        self.prompts = [list(p) for p in prompts]
        self.choices: list[Choice] = []
        for i, prompt in enumerate(self.prompts):
            for j in range(n):
                p = params if params.seed is None or j == 0 else dataclasses.replace(params, seed=params.seed + j)
                assembler = TextAssembler(
                    tokenizer, stop=stop, include_stop=include_stop, skip_special_tokens=skip_special_tokens
                )
                self.choices.append(Choice(index=i * n + j, prompt_ids=prompt, params=p, assembler=assembler))
        self.weights_version: int | None = None
        self._started = False

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)

    def cancel(self) -> None:
        """Abort every choice still generating (the client went away)."""
        for choice in self.choices:
            if not choice.done and choice.seq_id:
                self.engine.abort(choice.seq_id)
                choice.done = True

    async def deltas(self) -> AsyncIterator[list[Delta]]:
        """Submit the choices and yield what they gain, a list of deltas per wake-up, until all have finished.
        An engine failure raises :class:`ApiError` (500)."""
        assert not self._started, "a RequestRun runs once"
        self._started = True
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        try:
            for choice in self.choices:
                sink = _Sink(loop, queue, choice.index, self.whole)
                choice.seq_id = self.engine.submit(
                    choice.prompt_ids, choice.params, sink, adapter=self.adapter, priority=self.priority
                )
        except EngineError as err:
            self.cancel()
            raise ApiError(f"The model server is shutting down: {err}", status=503, code="unavailable") from err
        remaining = len(self.choices)
        try:
            while remaining:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                out: dict[int, Delta] = {}
                for index, events in items:
                    choice = self.choices[index]
                    if choice.done:
                        continue
                    delta = out.get(index)
                    if delta is None:
                        delta = out[index] = Delta(index=index)
                    self._apply(choice, events, delta)
                    if choice.done:
                        remaining -= 1
                if out:
                    yield sorted(out.values(), key=lambda d: d.index)
        finally:
            self.cancel()

    def _apply(self, choice: Choice, events: list[TokenEvent], delta: Delta) -> None:
        """Take a choice's next events (one, or all of them for a ``whole`` run: no stop strings to look for)."""
        event = events[-1]
        if event.error is not None:
            choice.done = True
            raise ApiError(f"Generation failed in the model: {event.error}", status=500, code="generation_failed")
        if event.weights_version >= 0:
            self.weights_version = event.weights_version
        tokens = [e for e in events if e.token_id >= 0]
        if tokens:
            ids = [e.token_id for e in tokens]
            logprobs, model_logprobs = [e.logprob for e in tokens], [e.model_logprob for e in tokens]
            top = [e.top_logprobs for e in tokens]
            choice.token_ids += ids
            choice.logprobs += logprobs
            choice.model_logprobs += model_logprobs
            choice.top_logprobs += top
            delta.token_ids += ids
            delta.logprobs += logprobs
            delta.model_logprobs += model_logprobs
            delta.top_logprobs += top
            delta.text += choice.assembler.add(ids)
            if choice.assembler.stopped:
                choice.finish_reason, choice.stop_reason = "stop", choice.assembler.stop_reason
                if event.finish_reason is None:
                    self.engine.abort(choice.seq_id)
        if choice.finish_reason is None and event.finish_reason is not None:
            choice.finish_reason = event.finish_reason
            if event.finish_reason == "stop" and event.token_id in choice.params.stop_token_ids:
                choice.stop_reason = event.token_id
        if choice.finish_reason is not None:
            delta.text += choice.assembler.finish()
            delta.finish_reason, delta.stop_reason = choice.finish_reason, choice.stop_reason
            choice.done = True

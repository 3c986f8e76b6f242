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
    """Delivers a choice's engine events into the request's asyncio queue (the engine batches them per loop)."""

    __slots__ = ("index", "loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int) -> None:
        self.loop, self.queue, self.index = loop, queue, index

    def __call__(self, event: TokenEvent) -> None:
        self.queue.put_nowait((self.index, event))


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
    ) -> None:
        self.engine = engine
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
                choice.seq_id = self.engine.submit(choice.prompt_ids, choice.params, _Sink(loop, queue, choice.index))
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
                for index, event in items:
                    choice = self.choices[index]
                    if choice.done:
                        continue
                    delta = out.get(index)
                    if delta is None:
                        delta = out[index] = Delta(index=index)
                    self._apply(choice, event, delta)
                    if choice.done:
                        remaining -= 1
                if out:
                    yield sorted(out.values(), key=lambda d: d.index)
        finally:
            self.cancel()

    def _apply(self, choice: Choice, event: TokenEvent, delta: Delta) -> None:
        if event.error is not None:
            choice.done = True
            raise ApiError(f"Generation failed in the model: {event.error}", status=500, code="generation_failed")
        if event.weights_version >= 0:
            self.weights_version = event.weights_version
        if event.token_id >= 0:
            choice.token_ids.append(event.token_id)
            choice.logprobs.append(event.logprob)
            choice.model_logprobs.append(event.model_logprob)
            choice.top_logprobs.append(event.top_logprobs)
            delta.token_ids.append(event.token_id)
            delta.logprobs.append(event.logprob)
            delta.model_logprobs.append(event.model_logprob)
            delta.top_logprobs.append(event.top_logprobs)
            delta.text += choice.assembler.add([event.token_id])
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

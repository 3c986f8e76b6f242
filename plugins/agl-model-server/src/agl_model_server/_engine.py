"""The generation engine: one thread runs batched decode steps for every active sequence (continuous batching).

Between two decode steps the engine thread

1. drops aborted sequences,
2. admits waiting requests (up to ``max_batch_size`` active sequences): their prompts are prefilled together in one
   forward pass, their first token is sampled, and their KV cache rows join the running batch,
3. runs one decode step for the whole batch (one new token per row), samples a token per row and retires the rows
   that finished.

The running batch is either static (:mod:`._static`: a KV cache of fixed slots and, on a GPU, CUDA graphs; the
default for Llama-shaped models) or dynamic (:mod:`._kvcache`: transformers' forward on a left-padded
``DynamicCache``; any model).

Weight changes (:meth:`Engine.run_exclusive`) drain first: no request is admitted, the running ones finish, the
change runs on the engine thread while nothing is in flight, then admission resumes. So every sequence is generated
by one weights version from its first token to its last.

Results go to each sequence's *sink* as :class:`TokenEvent` objects, from the engine thread. A sink with a ``loop``
attribute (an asyncio loop) gets all the step's events for that loop in one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agl_kernel.errors import AglError
from agl_model_server import _kvcache, _static
from agl_model_server._sampling import SamplingParams, sample_batch

__all__ = ["Engine", "EngineError", "TokenEvent"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class TokenEvent:
    """One generated token of a sequence (``token_id`` is ``-1`` on an event that only reports an abort/error)."""

    seq_id: int
    token_id: int
    logprob: float
    model_logprob: float
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None
    """``None`` while generating; ``"stop"`` (EOS or a stop token), ``"length"``, ``"abort"`` or ``"error"``."""
    error: str | None = None
    weights_version: int = -1
    """The weights version that generated the sequence (the same on all its events: weight changes drain first)."""


class EngineError(AglError, RuntimeError):
    """The engine is not running (stopped, or never started)."""


class _Seq:
    __slots__ = ("generated", "generator", "id", "params", "prompt", "sink", "stop_ids", "version")

    def __init__(self, seq_id: int, prompt: list[int], params: SamplingParams, sink: Callable[[TokenEvent], None]):
        self.id = seq_id
        self.prompt = prompt
        self.params = params
        self.sink = sink
        self.generator: torch.Generator | None = None
        self.generated = 0
        self.stop_ids = frozenset(params.stop_token_ids)
        self.version = 0


class Engine:
    """Continuous batching over a Hugging Face causal LM. Thread-safe: ``submit``/``abort``/``run_exclusive`` may
    be called from any thread; the model is only run on the engine's own thread."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Sequence[int],
        max_model_len: int,
        max_batch_size: int = 64,
        max_prefill_tokens: int = 16384,
        pad_token_id: int = 0,
        static: bool | None = None,
        gather_s: float = 0.01,
    ) -> None:
        """``static``: decode on the static path (fixed KV cache slots, CUDA graphs on a GPU); ``None`` = when
        the model supports it. ``True`` on a model it does not support is a ``ValueError``.

        ``gather_s``: with nothing running, admission waits until no request has come for this long (at most ten
        times as long in all), so that requests sent together (a training step's agents) share one prefill
        instead of the first running alone; 0 admits at once."""
        self.model = model
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.max_model_len = int(max_model_len)
        self.max_batch_size = int(max_batch_size)
        self.max_prefill_tokens = int(max_prefill_tokens)
        self.pad_token_id = int(pad_token_id)
        self.gather_s = float(gather_s)
        self.device = next(model.parameters()).device
        self.weights_version = 0
        self._ids = itertools.count(1)
        self._cv = threading.Condition()
        self._incoming: list[_Seq] = []
        self._aborts: set[int] = set()
        self._commands: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._default_generator = torch.Generator(device=self.device)
        self._default_generator.seed()
        # The running batch: its sequences (rows) in order, and their KV cache, positions and next input tokens.
        self._rows: list[_Seq] = []
        if static is None:
            refused = _static.supported(model)
            static = refused is None
            if refused is not None:
                logger.info("decoding on the dynamic path: the static path does not support %s", refused)
        self._batch: _kvcache.DynamicBatch | _static.StaticBatch
        if static:
            decoder = _static.StaticDecoder(model, max_slots=self.max_batch_size, max_len=self.max_model_len)
            self._batch = _static.StaticBatch(decoder)
        else:
            self._batch = _kvcache.DynamicBatch(model, pad_token_id=self.pad_token_id)
        self.static = bool(static)
        self._stats_lock = threading.Lock()
        self.reset_stats()

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> Engine:
        """Start the engine thread (once)."""
        with self._cv:
            if self._thread is not None:
                return self
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="agl-model-engine", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread; sequences still waiting or running end with ``finish_reason="abort"``."""
        with self._cv:
            thread, self._stopping = self._thread, True
            self._cv.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._cv:
            self._thread = None

    # ----------------------------------------------------------------------------------------------- requests
    def submit(self, prompt: list[int], params: SamplingParams, sink: Callable[[TokenEvent], None]) -> int:
        """Queue a sequence; returns its id. ``sink`` receives its :class:`TokenEvent` objects, the last one with a
        ``finish_reason``."""
        if not prompt:
            raise ValueError("the prompt has no tokens")
        seq = _Seq(next(self._ids), list(prompt), params, sink)
        if params.seed is not None:
            seq.generator = torch.Generator(device=self.device)
            seq.generator.manual_seed(int(params.seed) & 0xFFFF_FFFF_FFFF_FFFF)
        with self._cv:
            if not self.running:
                raise EngineError("the model server's engine is not running")
            self._incoming.append(seq)
            self._cv.notify()
        return seq.id

    def abort(self, seq_id: int) -> None:
        """Stop generating ``seq_id`` (its sink gets ``finish_reason="abort"`` unless it already finished)."""
        with self._cv:
            self._aborts.add(seq_id)
            self._cv.notify()

    def run_exclusive(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn`` on the engine thread once no sequence is in flight (admission pauses until then, and resumes
        after ``fn`` returns); the future holds its result. Without a running engine ``fn`` runs right here."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self.running:
                self._commands.append((fn, future))
                self._cv.notify()
                return future
        try:
            future.set_result(fn())
        except BaseException as err:
            future.set_exception(err)
        return future

    # ----------------------------------------------------------------------------------------------- statistics
    def reset_stats(self) -> None:
        with self._stats_lock:
            self._batch_sizes: collections.Counter[int] = collections.Counter()
            self._prefill_sizes: collections.Counter[int] = collections.Counter()
            self._generated = 0
            self._prefill_tokens = 0
            self._step_seconds = 0.0

    def stats(self) -> dict[str, Any]:
        """Counters since the last :meth:`reset_stats`: decode steps by batch size, prefills by number of prompts,
        generated tokens, prompt tokens run through prefill (a prompt shared by several requests counts once), and
        what is running/waiting now."""
        with self._stats_lock:
            sizes = dict(sorted(self._batch_sizes.items()))
            return {
                "decode_steps": sum(sizes.values()),
                "decode_batch_sizes": sizes,
                "max_decode_batch_size": max(sizes, default=0),
                "prefill_batch_sizes": dict(sorted(self._prefill_sizes.items())),
                "generated_tokens": self._generated,
                "prefill_tokens": self._prefill_tokens,
                "busy_seconds": round(self._step_seconds, 4),
                "running": len(self._rows),
                "waiting": len(self._waiting) + len(self._incoming),
                "weights_version": self.weights_version,
            }

    # ----------------------------------------------------------------------------------------------- the loop
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while self._loop_once():
                    pass
        except BaseException:  # pragma: no cover - a bug in the loop itself
            logger.exception("the model server's engine thread crashed")
            raise
        finally:
            self._shutdown()

    def _loop_once(self) -> bool:
        with self._cv:
            while not (self._stopping or self._incoming or self._aborts or self._commands or self._rows):
                self._cv.wait()
            if self._stopping:
                return False
            if not self._rows and self._incoming and not self._commands and self.gather_s > 0:
                self._gather()
            self._waiting.extend(self._incoming)
            self._incoming.clear()
            aborts, self._aborts = self._aborts, set()
            command = self._commands[0] if self._commands else None
        events: list[TokenEvent] = []
        sinks: dict[int, Callable[[TokenEvent], None]] = {}
        if aborts:
            self._apply_aborts(aborts, events, sinks)
        if command is not None:
            if not self._rows:  # drained: run the command with nothing in flight
                with self._cv:
                    self._commands.popleft()
                self._run_command(*command)
        else:
            self._admit(events, sinks)
        if self._rows:
            try:
                self._decode_step(events, sinks)
            except Exception as err:
                logger.exception("decode step failed")
                self._fail_all(f"{type(err).__name__}: {err}", events, sinks)
        self._deliver(events, sinks)
        return True

    def _gather(self) -> None:
        """Called holding the lock, with nothing running: let requests arriving together come in."""
        deadline = time.monotonic() + 10 * self.gather_s
        while len(self._incoming) + len(self._waiting) < self.max_batch_size and not self._stopping:
            left = deadline - time.monotonic()
            count = len(self._incoming)
            if left <= 0 or not self._cv.wait(min(left, self.gather_s)) or len(self._incoming) == count:
                return  # a quiet gap (or the deadline): admit what came

    def _run_command(self, fn: Callable[[], Any], future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            with torch.inference_mode(False):
                result = fn()
            if isinstance(self._batch, _static.StaticBatch):
                self._batch.decoder.refresh()
        except BaseException as err:
            future.set_exception(err)
        else:
            future.set_result(result)

    def _shutdown(self) -> None:
        with self._cv:
            pending = list(self._rows) + list(self._waiting) + list(self._incoming)
            self._incoming.clear()
            self._waiting.clear()
            commands, self._commands = list(self._commands), collections.deque()
        self._clear_batch()
        events: list[TokenEvent] = []
        sinks: dict[int, Callable[[TokenEvent], None]] = {}
        for seq in pending:
            self._finish_only(seq, "abort", events, sinks)
        self._deliver(events, sinks)
        for _fn, future in commands:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineError("the model server's engine stopped"))

    # ----------------------------------------------------------------------------------------------- helpers
    def _finish_only(self, seq: _Seq, reason: str, events: list, sinks: dict, error: str | None = None) -> None:
        events.append(TokenEvent(seq.id, -1, 0.0, 0.0, None, reason, error, seq.version))
        sinks[seq.id] = seq.sink

    def _deliver(self, events: list[TokenEvent], sinks: dict[int, Callable[[TokenEvent], None]]) -> None:
        """Hand events to their sinks; events for asyncio sinks go in one callback per event loop."""
        if not events:
            return
        by_loop: dict[Any, list[tuple[Callable, TokenEvent]]] = {}
        for event in events:
            sink = sinks[event.seq_id]
            loop = getattr(sink, "loop", None)
            if loop is None:
                try:
                    sink(event)
                except Exception:
                    logger.exception("a token sink failed")
            else:
                by_loop.setdefault(loop, []).append((sink, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver_many, items)
            except RuntimeError:  # the loop is closed: its requests are gone
                pass

    def _apply_aborts(self, aborts: set[int], events: list, sinks: dict) -> None:
        kept: collections.deque[_Seq] = collections.deque()
        for seq in self._waiting:
            if seq.id in aborts:
                self._finish_only(seq, "abort", events, sinks)
            else:
                kept.append(seq)
        self._waiting = kept
        keep = [i for i, seq in enumerate(self._rows) if seq.id not in aborts]
        if len(keep) < len(self._rows):
            for seq in self._rows:
                if seq.id in aborts:
                    self._finish_only(seq, "abort", events, sinks)
            self._retire(keep)

    def _fail_all(self, message: str, events: list, sinks: dict, seqs: list[_Seq] | None = None) -> None:
        """End ``seqs`` (default: the running batch, which is then cleared) with ``finish_reason="error"``."""
        finished = {e.seq_id for e in events if e.finish_reason}
        for seq in self._rows if seqs is None else seqs:
            if seq.id not in finished:
                self._finish_only(seq, "error", events, sinks, error=message)
        if seqs is None:
            self._clear_batch()

    def _clear_batch(self) -> None:
        self._rows = []
        self._batch.clear()

    def _finish_reason(self, seq: _Seq, token: int) -> str | None:
        if not seq.params.ignore_eos and token in self.eos_token_ids:
            return "stop"
        if token in seq.stop_ids:
            return "stop"
        if seq.generated >= seq.params.max_tokens or len(seq.prompt) + seq.generated >= self.max_model_len:
            return "length"
        return None

    def _emit(
        self, seqs: list[_Seq], logits: torch.Tensor, events: list, sinks: dict
    ) -> tuple[torch.Tensor, list[int]]:
        """Sample a token for each of ``seqs``, emit it; returns the tokens and the indices of rows still going."""
        chosen = sample_batch(logits, [s.params for s in seqs], [s.generator for s in seqs], self._default_generator)
        alive = []
        for i, seq in enumerate(seqs):
            token = chosen.token_ids[i]
            seq.generated += 1
            reason = self._finish_reason(seq, token)
            events.append(
                TokenEvent(
                    seq.id,
                    token,
                    chosen.logprobs[i],
                    chosen.model_logprobs[i],
                    chosen.top_logprobs[i],
                    reason,
                    None,
                    seq.version,
                )
            )
            sinks[seq.id] = seq.sink
            if reason is None:
                alive.append(i)
        with self._stats_lock:
            self._generated += len(seqs)
        return chosen.tokens, alive

    def _admit(self, events: list, sinks: dict) -> None:
        room = self.max_batch_size - len(self._rows)
        if room <= 0 or not self._waiting:
            return
        new: list[_Seq] = []
        tokens = 0
        while self._waiting and len(new) < room:
            seq = self._waiting[0]
            if new and tokens + len(seq.prompt) > self.max_prefill_tokens:
                break
            new.append(self._waiting.popleft())
            tokens += len(seq.prompt)
        try:
            self._prefill(new, events, sinks)
        except Exception as err:
            logger.exception("prefill failed")
            self._fail_all(f"{type(err).__name__}: {err}", events, sinks, seqs=new)

    def _prefill(self, new: list[_Seq], events: list, sinks: dict) -> None:
        started = time.perf_counter()
        for seq in new:
            seq.version = self.weights_version
        # Identical prompts (a GRPO group: one prompt, several completions) are prefilled once and their KV cache
        # copied, so a group of n costs one prompt's prefill instead of n.
        unique: dict[tuple[int, ...], int] = {}
        sources = [unique.setdefault(tuple(seq.prompt), len(unique)) for seq in new]
        prompts = [list(p) for p in unique]
        before = len(self._rows)
        logits = self._batch.admit(prompts, sources)
        self._rows = self._rows + new
        try:
            next_tokens, alive = self._emit(new, logits, events, sinks)
        except Exception:
            self._retire(list(range(before)))  # the new rows never started (the caller fails them)
            raise
        with self._stats_lock:
            self._prefill_sizes[len(new)] += 1
            self._prefill_tokens += sum(len(p) for p in prompts)
            self._step_seconds += time.perf_counter() - started
        self._batch.set_next(next_tokens, start=before)
        if len(alive) < len(new):
            self._retire(list(range(before)) + [before + i for i in alive])

    def _decode_step(self, events: list, sinks: dict) -> None:
        started = time.perf_counter()
        rows = len(self._rows)
        logits = self._batch.step()
        tokens, alive = self._emit(self._rows, logits, events, sinks)
        self._batch.set_next(tokens)
        with self._stats_lock:
            self._batch_sizes[rows] += 1
            self._step_seconds += time.perf_counter() - started
        if len(alive) < rows:
            self._retire(alive)

    def _retire(self, keep: list[int]) -> None:
        """Keep only the rows at indices ``keep`` of the running batch."""
        if not keep:
            self._clear_batch()
            return
        self._batch.keep(keep)
        self._rows = [self._rows[i] for i in keep]


def _deliver_many(items: list[tuple[Callable[[TokenEvent], None], TokenEvent]]) -> None:
    for sink, event in items:
        try:
            sink(event)
        except Exception:
            logger.exception("a token sink failed")

"""Response bodies and stream chunks, in OpenAI's shapes plus vLLM's extensions.

With ``return_token_ids``: chat responses carry ``prompt_token_ids`` at the top level (streams: on the first chunk)
and ``token_ids`` on each choice (streams: the chunk's tokens); completion responses carry both on each choice, as
vLLM does. ``model_logprobs`` (the plain model's logprob of each token, temperature 1) is on each choice whenever
token ids or logprobs were asked for. ``weights_version`` says which weights generated the response;
``system_fingerprint`` is ``agl-weights-v<version>``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec

from agl_model_server._detok import TokenTexts
from agl_model_server._generation import Choice, Delta, RequestRun

__all__ = ["ChatShape", "CompletionShape"]


def _sse(payload: Any) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def _usage(run: RequestRun) -> dict[str, int]:
    prompt, completion = run.prompt_tokens, run.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Shape:
    object_name = ""
    chunk_name = ""
    id_prefix = ""

    def __init__(self, *, model: str, request: Any, texts: TokenTexts) -> None:
        self.model = model
        self.request = request
        self.texts = texts
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    @property
    def wants_logprobs(self) -> bool:
        raise NotImplementedError

    @property
    def wants_model_logprobs(self) -> bool:
        return self.request.return_token_ids or self.wants_logprobs

    def _head(self, run: RequestRun, object_name: str) -> dict[str, Any]:
        version = run.weights_version
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None if version is None else f"agl-weights-v{version}",
        }

    def _extras(self, target: dict[str, Any], token_ids: list[int], model_logprobs: list[float]) -> None:
        if self.request.return_token_ids:
            target["token_ids"] = token_ids
        if self.wants_model_logprobs:
            target["model_logprobs"] = model_logprobs

    def _usage_chunk(self, run: RequestRun) -> bytes:
        chunk = self._head(run, self.chunk_name)
        chunk["choices"] = []
        chunk["usage"] = _usage(run)
        return _sse(chunk)

    def _include_usage(self) -> bool:
        options = self.request.stream_options
        return bool(options is not None and options.include_usage)


class ChatShape(_Shape):
    object_name = "chat.completion"
    chunk_name = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.request.logprobs)

    def _logprobs(self, ids: Sequence[int], lps: Sequence[float], tops: Sequence[Any]) -> dict[str, Any] | None:
        if not self.wants_logprobs:
            return None
        content = []
        for token, lp, top in zip(ids, lps, tops):
            text, raw = self.texts.get(token)
            entry: dict[str, Any] = {"token": text, "logprob": lp, "bytes": list(raw), "top_logprobs": []}
            for alt, alt_lp in top or ():
                alt_text, alt_raw = self.texts.get(alt)
                entry["top_logprobs"].append({"token": alt_text, "logprob": alt_lp, "bytes": list(alt_raw)})
            content.append(entry)
        return {"content": content}

    def _choice(self, choice: Choice) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": choice.index,
            "message": {"role": "assistant", "content": choice.text},
            "logprobs": self._logprobs(choice.token_ids, choice.logprobs, choice.top_logprobs),
            "finish_reason": choice.finish_reason,
            "stop_reason": choice.stop_reason,
        }
        self._extras(out, choice.token_ids, choice.model_logprobs)
        return out

    def response(self, run: RequestRun) -> dict[str, Any]:
        body = self._head(run, self.object_name)
        body["choices"] = [self._choice(c) for c in run.choices]
        body["usage"] = _usage(run)
        if self.request.return_token_ids:
            body["prompt_token_ids"] = run.prompts[0]
        body["weights_version"] = run.weights_version
        return body

    async def stream(self, run: RequestRun) -> AsyncIterator[bytes]:
        first = self._head(run, self.chunk_name)
        first["choices"] = [
            {"index": c.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
            for c in run.choices
        ]
        if self.request.return_token_ids:
            first["prompt_token_ids"] = run.prompts[0]
        yield _sse(first)
        async for deltas in run.deltas():
            for delta in deltas:
                if not (delta.text or delta.token_ids or delta.finish_reason):
                    continue
                yield _sse(self._chunk(run, delta))
        if self._include_usage():
            yield self._usage_chunk(run)

    def _chunk(self, run: RequestRun, delta: Delta) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": delta.index,
            "delta": {"content": delta.text} if delta.text or not delta.finish_reason else {},
            "logprobs": self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs),
            "finish_reason": delta.finish_reason,
        }
        if delta.finish_reason is not None:
            choice["stop_reason"] = delta.stop_reason
        self._extras(choice, delta.token_ids, delta.model_logprobs)
        chunk = self._head(run, self.chunk_name)
        chunk["choices"] = [choice]
        if delta.finish_reason is not None:
            chunk["weights_version"] = run.weights_version
        return chunk


class CompletionShape(_Shape):
    object_name = "text_completion"
    chunk_name = "text_completion"
    id_prefix = "cmpl"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._offsets: dict[int, int] = {}

    @property
    def wants_logprobs(self) -> bool:
        return self.request.logprobs is not None

    def _logprobs(
        self, index: int, ids: Sequence[int], lps: Sequence[float], tops: Sequence[Any]
    ) -> dict[str, Any] | None:
        if not self.wants_logprobs:
            return None
        tokens, offsets, top_out = [], [], []
        offset = self._offsets.get(index, 0)
        for token, top in zip(ids, tops):
            text, _raw = self.texts.get(token)
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            top_out.append({self.texts.get(alt)[0]: alt_lp for alt, alt_lp in top} if top else None)
        self._offsets[index] = offset
        return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top_out, "text_offset": offsets}

    def _choice(self, run: RequestRun, choice: Choice) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": choice.index,
            "text": choice.text,
            "logprobs": self._logprobs(choice.index, choice.token_ids, choice.logprobs, choice.top_logprobs),
            "finish_reason": choice.finish_reason,
            "stop_reason": choice.stop_reason,
        }
        if self.request.return_token_ids:
            out["prompt_token_ids"] = choice.prompt_ids
        self._extras(out, choice.token_ids, choice.model_logprobs)
        return out

    def response(self, run: RequestRun) -> dict[str, Any]:
        body = self._head(run, self.object_name)
        body["choices"] = [self._choice(run, c) for c in run.choices]
        body["usage"] = _usage(run)
        body["weights_version"] = run.weights_version
        return body

    async def stream(self, run: RequestRun) -> AsyncIterator[bytes]:
        started: set[int] = set()
        async for deltas in run.deltas():
            for delta in deltas:
                if not (delta.text or delta.token_ids or delta.finish_reason):
                    continue
                choice: dict[str, Any] = {
                    "index": delta.index,
                    "text": delta.text,
                    "logprobs": self._logprobs(delta.index, delta.token_ids, delta.logprobs, delta.top_logprobs),
                    "finish_reason": delta.finish_reason,
                }
                if delta.finish_reason is not None:
                    choice["stop_reason"] = delta.stop_reason
                if self.request.return_token_ids and delta.index not in started:
                    choice["prompt_token_ids"] = run.choices[delta.index].prompt_ids
                started.add(delta.index)
                self._extras(choice, delta.token_ids, delta.model_logprobs)
                chunk = self._head(run, self.chunk_name)
                chunk["choices"] = [choice]
                if delta.finish_reason is not None:
                    chunk["weights_version"] = run.weights_version
                yield _sse(chunk)
        if self._include_usage():
            yield self._usage_chunk(run)

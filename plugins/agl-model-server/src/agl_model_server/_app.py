"""The HTTP API (litestar): ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/v1/weights``,
``/v1/engine/stats`` and ``/health``. Bodies are decoded with msgspec; every error is OpenAI-shaped."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from agl_model_server import _format as fmt
from agl_model_server._generation import RequestRun
from agl_model_server._lora import split_model_name
from agl_model_server._protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    WeightsRequest,
    check_common,
    completion_prompts,
    decode_body,
    error_payload,
    stop_list,
)
from agl_model_server._sampling import SamplingParams
from agl_model_server._weights import WeightsError, read_safetensors_bytes, read_weights_path

if TYPE_CHECKING:
    from agl_model_server._server import ModelServer

__all__ = ["create_app"]

logger = logging.getLogger(__name__)
_JSON = "application/json"
_encode = msgspec.json.encode


def _json(payload: Any, status: int = 200) -> Response:
    return Response(content=_encode(payload), status_code=status, media_type=_JSON)


def _error(err: ApiError) -> Response:
    return _json(error_payload(err), err.status)


def _sse(payload: Any) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def _bool_query(value: str | None, name: str) -> bool:
    if value is None or value == "":
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ApiError(f"`{name}` must be true or false.", param=name)


def create_app(server: ModelServer) -> Litestar:
    """The litestar app serving ``server`` (a :class:`~agl_model_server.ModelServer`)."""
    tokenizer = server.tokenizer
    engine = server.engine

    def check_model(name: str | None) -> tuple[str, str | None]:
        """``(the model name to answer with, the LoRA adapter or None)``: ``<model>:<adapter>`` names an adapter
        (loaded with ``ModelServer.load_adapter``)."""
        if name is None or name in server.served_names:
            return server.model_name, None
        base, adapter = split_model_name(name)
        if adapter is not None and base in server.served_names:
            if adapter in engine.adapters:
                return f"{server.model_name}:{adapter}", adapter
            loaded = ", ".join(repr(f"{server.model_name}:{a}") for a in engine.adapters.names) or "none"
            raise ApiError(
                f"The LoRA adapter {adapter!r} is not loaded on this server (adapters: {loaded}).",
                status=404,
                param="model",
                code="model_not_found",
            )
        adapters = "".join(f", {server.model_name}:{a!s}" for a in engine.adapters.names)
        raise ApiError(
            f"The model {name!r} does not exist here. This server serves {server.model_name!r}{adapters}.",
            status=404,
            param="model",
            code="model_not_found",
        )

    def check_length(prompt_len: int, max_tokens: int | None, default: int | None, what: str) -> int:
        limit = engine.max_model_len
        if prompt_len >= limit:
            raise ApiError(
                f"This model's maximum context length is {limit} tokens, and the {what} has {prompt_len} tokens; "
                f"shorten it.",
                param="messages" if what == "messages" else "prompt",
                code="context_length_exceeded",
            )
        room = limit - prompt_len
        if max_tokens is None:
            return min(room, default) if default else room
        if max_tokens > room:
            raise ApiError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the {what}, {max_tokens} in the completion). "
                f"Reduce the length of the {what} or the completion.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return max_tokens

    def sampling(req: Any, max_tokens: int, top_logprobs: int) -> SamplingParams:
        check_common(req)
        if not 0 <= top_logprobs <= 20:
            raise ApiError("Top logprobs must be between 0 and 20.", param="top_logprobs")
        vocab = server.vocab_size
        for token in req.stop_token_ids or ():
            if not 0 <= token < vocab:
                raise ApiError(
                    f"stop token id {token} is outside the vocabulary (0..{vocab - 1}).", param="stop_token_ids"
                )
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else float(req.temperature),
            top_p=1.0 if req.top_p is None else float(req.top_p),
            top_k=0 if req.top_k in (None, -1) else int(req.top_k),
            seed=req.seed,
            top_logprobs=top_logprobs,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            ignore_eos=req.ignore_eos,
        )

    def run_for(req: Any, prompts: list[list[int]], params: SamplingParams, adapter: str | None) -> RequestRun:
        return RequestRun(
            engine,
            tokenizer,
            prompts,
            params,
            n=req.n,
            stop=stop_list(req.stop),
            include_stop=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens,
            incremental=bool(req.stream),
            adapter=adapter,
            priority=req.priority,
        )

    async def finish(run: RequestRun) -> None:
        async for _ in run.deltas():
            pass

    def stream(chunks: AsyncIterator[bytes], run: RequestRun) -> Stream:
        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield chunk
            except ApiError as err:
                yield _sse(error_payload(err))
            finally:
                run.cancel()
            yield b"data: [DONE]\n\n"

        return Stream(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request) -> Response | Stream:
        try:
            req = decode_body(await request.body(), ChatRequest)
            model, adapter = check_model(req.model)
            if not req.messages:
                raise ApiError("`messages` must hold at least one message.", param="messages")
            prompt = server.chat_prompt_ids(
                req.messages,
                add_generation_prompt=req.add_generation_prompt and not req.continue_final_message,
                continue_final_message=req.continue_final_message,
                tools=req.tools,
                template_kwargs=req.chat_template_kwargs,
            )
            wanted = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
            if wanted is not None and wanted < 1:
                name = "max_tokens" if req.max_completion_tokens is None else "max_completion_tokens"
                raise ApiError(f"`{name}` must be at least 1.", param=name)
            max_tokens = check_length(len(prompt), wanted, server.default_max_tokens, "messages")
            if req.top_logprobs is not None and not req.logprobs:
                raise ApiError("`top_logprobs` needs `logprobs: true`.", param="top_logprobs")
            params = sampling(req, max_tokens, req.top_logprobs or 0)
            run = run_for(req, [prompt], params, adapter)
            shape = fmt.ChatShape(model=model, request=req, texts=server.token_texts)
            if req.stream:
                return stream(shape.stream(run), run)
            await finish(run)
            return _json(shape.response(run))
        except ApiError as err:
            return _error(err)

    @post("/v1/completions", status_code=200)
    async def completions(request: Request) -> Response | Stream:
        try:
            req = decode_body(await request.body(), CompletionRequest)
            model, adapter = check_model(req.model)
            if req.echo:
                raise ApiError("`echo` is not supported by this server.", param="echo")
            if req.suffix:
                raise ApiError("`suffix` is not supported by this server.", param="suffix")
            if req.best_of not in (None, req.n):
                raise ApiError("`best_of` is not supported (it must equal `n`).", param="best_of")
            if req.logprobs is not None and not 0 <= req.logprobs <= 20:
                raise ApiError("`logprobs` must be between 0 and 20.", param="logprobs")
            prompts = []
            for prompt in completion_prompts(req.prompt):
                ids = prompt if isinstance(prompt, list) else server.encode(prompt, req.add_special_tokens)
                if not ids:
                    raise ApiError("The prompt is empty after tokenization.", param="prompt")
                if max(ids) >= server.vocab_size or min(ids) < 0:
                    raise ApiError(f"Prompt token ids must be in 0..{server.vocab_size - 1}.", param="prompt")
                prompts.append(ids)
            longest = max(len(p) for p in prompts)
            max_tokens = check_length(longest, req.max_tokens if req.max_tokens is not None else 16, None, "prompt")
            params = sampling(req, max_tokens, req.logprobs or 0)
            run = run_for(req, prompts, params, adapter)
            shape = fmt.CompletionShape(model=model, request=req, texts=server.token_texts)
            if req.stream:
                return stream(shape.stream(run), run)
            await finish(run)
            return _json(shape.response(run))
        except ApiError as err:
            return _error(err)

    @get("/v1/models")
    async def models() -> Response:
        base = server.model_card()
        cards = [base] + [
            {**base, "id": f"{server.model_name}:{name}", "parent": server.model_name, "adapter_version": version}
            for name, version in server.adapters.items()
        ]
        return _json({"object": "list", "data": cards})

    @get("/health")
    async def health() -> Response:
        stats = engine.stats()
        ok = engine.running
        return _json(
            {
                "status": "ok" if ok else "stopped",
                "model": server.model_name,
                "weights_version": engine.weights_version,
                "running": stats["running"],
                "waiting": stats["waiting"],
            },
            200 if ok else 503,
        )

    @get("/v1/engine/stats")
    async def engine_stats() -> Response:
        return _json(engine.stats())

    @get("/v1/weights")
    async def weights_info() -> Response:
        return _json({"object": "weights", "model": server.model_name, "version": engine.weights_version})

    @post("/v1/weights", status_code=200, request_max_body_size=None)
    async def load_weights(request: Request) -> Response:
        """JSON ``{"path", "partial", "version"}``, or a safetensors body (query: ``partial``, ``version``)."""
        try:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            body = await request.body()
            if content_type == _JSON:
                req = decode_body(body, WeightsRequest)
                partial, version, source = req.partial, req.version, req.path
                state = await asyncio.to_thread(read_weights_path, req.path)
            elif content_type in ("application/octet-stream", "application/x-safetensors", "application/safetensors"):
                partial = _bool_query(request.query_params.get("partial"), "partial")
                raw_version = request.query_params.get("version")
                try:
                    version = None if raw_version in (None, "") else int(raw_version)
                except ValueError:
                    raise ApiError("`version` must be an integer.", param="version") from None
                source = f"request body ({len(body)} bytes)"
                state = await asyncio.to_thread(read_safetensors_bytes, body)
            else:
                raise ApiError(
                    'Send JSON {"path": "/dir/or/file.safetensors"} or the bytes of a safetensors file with '
                    "Content-Type: application/octet-stream.",
                    status=415,
                    code="unsupported_media_type",
                )
            started = time.perf_counter()
            previous = engine.weights_version
            result = await asyncio.wrap_future(server.load_state_dict_async(state, partial=partial, version=version))
            return _json(
                {
                    "object": "weights",
                    "model": server.model_name,
                    "version": result["version"],
                    "previous_version": previous,
                    "loaded_tensors": result["loaded_tensors"],
                    "source": source,
                    "seconds": round(time.perf_counter() - started, 4),
                }
            )
        except WeightsError as err:
            return _error(ApiError(str(err), param="weights", code="invalid_weights"))
        except ApiError as err:
            return _error(err)

    def on_http_error(_request: Request, exc: HTTPException) -> Response:
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else str(exc)
        if status == 404:
            detail = (
                f"{detail}. This server has /v1/chat/completions, /v1/completions, /v1/models, /v1/weights, /health."
            )
        return _error(ApiError(detail, status=status, code=str(status)))

    def on_unexpected(_request: Request, exc: Exception) -> Response:
        error_id = uuid.uuid4().hex[:12]
        logger.exception("unexpected error %s", error_id, exc_info=exc)
        return _error(
            ApiError(f"Internal error {error_id}: {type(exc).__name__}: {exc}", status=500, code="internal_error")
        )

    return Litestar(
        route_handlers=[chat_completions, completions, models, health, engine_stats, weights_info, load_weights],
        exception_handlers={HTTPException: on_http_error, Exception: on_unexpected},
        request_max_body_size=64 * 1024 * 1024,
        debug=False,
        logging_config=None,  # a library's app leaves the host process's logging alone (`serve-model` sets its own)
    )

"""The proxy's litestar routes: an attempt's OpenAI API, the backends' models, and the control API. Imported when
the routes are asked for (litestar is the server extra)."""

from typing import Any

from litestar import Request, Response, Router, get, post, put
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from agl_kernel.models import PROXY_ATTEMPT_PATH
from agl_kernel.proxy._forwarding import LLMProxy
from agl_kernel.proxy._openai import MODELS_PATH, OPERATION_PATHS, ProxyError

CONTROL_PATH = "/api/v1/proxy"
_ATTEMPT = PROXY_ATTEMPT_PATH.format(rollout_id="{rollout_id:str}", attempt_id="{attempt_id:str}")  # litestar's form


class _EventStream(Stream):
    """A stream with its own media type: litestar's ``Stream`` takes the handler's (JSON) over its own."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        return super().to_asgi_response(*args, **{**kwargs, "media_type": None})


def _error_response(request: Request[Any, Any, Any], error: ProxyError) -> Response[dict[str, Any]]:
    return Response(content=error.body(), status_code=error.status, media_type="application/json")


def proxy_routes(proxy: LLMProxy) -> list[Any]:
    """The routes of ``proxy``; a :class:`ProxyError` raised in them is answered in OpenAI's error shape."""

    async def forward(operation: str, request: Request[Any, Any, Any], rollout_id: str, attempt_id: str) -> Any:
        _, payload = await proxy.call(operation, rollout_id, attempt_id, await request.body())
        return payload if isinstance(payload, dict) else _EventStream(payload, media_type="text/event-stream")

    # POST handlers answer 201 unless told otherwise; OpenAI's endpoints answer 200, streamed or not.
    @post(_ATTEMPT + OPERATION_PATHS["chat"], summary="OpenAI chat completions, recorded", status_code=200)
    async def chat(request: Request[Any, Any, Any], rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
        return await forward("chat", request, rollout_id, attempt_id)

    @post(_ATTEMPT + OPERATION_PATHS["text_completion"], summary="OpenAI completions, recorded", status_code=200)
    async def completions(request: Request[Any, Any, Any], rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
        return await forward("text_completion", request, rollout_id, attempt_id)

    @get(_ATTEMPT + MODELS_PATH, summary="The backends' models")
    async def attempt_models(rollout_id: FromPath[str], attempt_id: FromPath[str]) -> Any:
        return await proxy.list_models()

    @get("/v1" + MODELS_PATH, summary="The backends' models")
    async def models() -> Any:
        return await proxy.list_models()

    @get(f"{CONTROL_PATH}/backends", summary="The proxy's backends")
    async def get_backends() -> dict[str, Any]:
        return {"backends": proxy.backends, "paused": proxy.paused}

    @put(f"{CONTROL_PATH}/backends", summary="Replace the proxy's backends")
    async def put_backends(data: JSONBody[dict[str, Any]]) -> Any:
        urls = data.get("backends")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise ProxyError(400, 'send {"backends": ["http://host:port/v1", ...]}', param="backends")
        try:
            proxy.set_backends(urls)
        except ValueError as exc:
            raise ProxyError(400, str(exc), param="backends") from exc
        return {"backends": proxy.backends}

    @post(f"{CONTROL_PATH}/pause", summary="Hold new LLM calls; returns when none is in flight", status_code=200)
    async def pause() -> dict[str, Any]:
        await proxy.pause()
        return {"paused": True}

    @post(f"{CONTROL_PATH}/resume", summary="Let LLM calls through again", status_code=200)
    async def resume() -> dict[str, Any]:
        proxy.resume()
        return {"paused": False}

    handlers = [chat, completions, attempt_models, models, get_backends, put_backends, pause, resume]
    return [Router("/", route_handlers=handlers, tags=["llm proxy"], exception_handlers={ProxyError: _error_response})]

"""The LLM proxy: OpenAI-compatible routes per rollout attempt, in front of any OpenAI-compatible servers, recording
every call as an LLM span with token ids and logprobs (the training-grade record RL needs).

    proxy = LLMProxy(store, backends=["http://127.0.0.1:8000/v1"])
    app = create_app(store, route_handlers=proxy.routes())   # or: agl proxy --backend URL

An agent points its OpenAI client at ``<server>/rollout/<rollout_id>/attempt/<attempt_id>/v1`` (a ``ProxyLLM``
resource hands it that URL). The proxy asks the backend for token ids (``return_token_ids``) and logprobs, forwards
the call (streaming or not), and stores a ``chat <model>`` / ``text_completion <model>`` span on that attempt, with
the request, the response, usage, token ids, logprobs, latency, the backend and the resources version; a call that
fails gets a span with status ERROR that says why, and the agent an OpenAI-style error. A request whose body does
not have the shape of an OpenAI request gets a 400 that names the field, and reaches no backend.

One module per concern: ``_openai`` (paths, request checks, the error), ``_backends`` (which backend, health checks,
``pause`` for weight updates), ``_forwarding`` (``LLMProxy``), ``_spans`` (the call's span), ``_routes``.
"""

from agl_kernel.proxy._backends import serve_backends_option
from agl_kernel.proxy._forwarding import LLMProxy
from agl_kernel.proxy._openai import ProxyError, check_request

__all__ = ["LLMProxy", "ProxyError", "check_request", "serve_backends_option"]

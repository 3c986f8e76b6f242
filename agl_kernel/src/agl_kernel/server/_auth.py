"""Bearer-token auth: with a token configured, every route except ``/health`` needs ``Authorization: Bearer <token>``.

A route handler declared with ``opt={PUBLIC: True}`` is served without a token too: it is for static files that hold
no store data (the dashboard's page and scripts, which a browser fetches without headers); the data they show comes
from routes that need the token.

The comparison is constant-time (:func:`hmac.compare_digest`), so response timing does not leak the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from agl_kernel.models import encode_json
from agl_kernel.server._wire import ErrorBody

__all__ = ["OPEN_PATHS", "PUBLIC", "bearer_auth"]

OPEN_PATHS = frozenset({"/health"})
"""Paths anyone may call (load balancers and process supervisors probe them)."""

PUBLIC = "agl_public"
"""The key of a route handler's ``opt`` that serves it without a token (static files with no store data only)."""

ASGIApp = Callable[..., Awaitable[None]]


def _refusal(message: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = encode_json(ErrorBody(error="unauthorized", message=message, status=401))
    start = {
        "type": "http.response.start",
        "status": 401,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="agl"'),
        ],
    }
    return start, {"type": "http.response.body", "body": body}


_MISSING = _refusal("this server needs a bearer token: send the header 'Authorization: Bearer <token>'")
_WRONG = _refusal("the bearer token is wrong; use the token the server was started with (AGL_STORE_TOKEN)")


def bearer_auth(token: str) -> Callable[[ASGIApp], ASGIApp]:
    """An ASGI middleware factory that refuses requests without ``Authorization: Bearer <token>``."""
    if not token:
        raise ValueError("the token must be a non-empty string")
    expected = token.encode("utf-8")

    def factory(app: ASGIApp) -> ASGIApp:
        async def check(scope: Any, receive: Any, send: Any) -> None:
            handler = scope.get("route_handler")  # set by the router before the route's middleware runs
            public = handler is not None and handler.opt.get(PUBLIC) is True
            if scope["type"] != "lifespan" and scope["path"] not in OPEN_PATHS and not public:
                header = b""
                for name, value in scope["headers"]:
                    if name == b"authorization":
                        header = value
                        break
                scheme, _, given = header.partition(b" ")
                refusal = None
                if not header or scheme.lower() != b"bearer":
                    refusal = _MISSING
                elif not hmac.compare_digest(given.strip(), expected):
                    refusal = _WRONG
                if refusal is not None:
                    if scope["type"] == "http":
                        await send(refusal[0])
                        await send(refusal[1])
                    else:  # websocket: close before accepting
                        await send({"type": "websocket.close", "code": 1008})
                    return
            await app(scope, receive, send)

        return check

    return factory

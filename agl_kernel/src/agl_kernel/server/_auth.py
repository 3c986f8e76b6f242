"""Bearer-token auth: with a token configured, every route except ``/health`` needs ``Authorization: Bearer <token>``.

A route handler declared with ``opt={PUBLIC: True}`` is served without a token too: it is for static files that hold
no store data (the dashboard's page and scripts, which a browser fetches without headers); the data they show comes
from routes that need the token.

The comparison is constant-time (:func:`hmac.compare_digest`), so response timing does not leak the token.

The token is checked before the method: a request no route takes (a wrong method, an unknown path) gets 401 without
the token and its 404/405 only with it (:func:`unrouted_refusal`, called by the app's error handler: litestar routes,
and refuses, before any middleware runs), so that nobody learns the API's shape without the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from agl_kernel.models import encode_json
from agl_kernel.server._wire import ErrorBody

__all__ = ["OPEN_PATHS", "PUBLIC", "bearer_auth", "unrouted_refusal"]

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


def _refusal_for(headers: Any, expected: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The 401 answer for a request with these ASGI ``headers``, or ``None`` when it carries the token."""
    header = b""
    for name, value in headers:
        if name == b"authorization":
            header = value
            break
    scheme, _, given = header.partition(b" ")
    if not header or scheme.lower() != b"bearer":
        return _MISSING
    if not hmac.compare_digest(given.strip(), expected):
        return _WRONG
    return None


def unrouted_refusal(scope: Any, token: str | None) -> tuple[int, bytes, dict[str, str]] | None:
    """For a request that no route takes (about to be answered 404 or 405): (status, body, headers) of the 401 it
    gets instead when the server has a token and the request lacks it; ``None`` when it may have its 404/405."""
    if not token or scope.get("type") != "http" or scope.get("path") in OPEN_PATHS:
        return None
    refusal = _refusal_for(scope.get("headers", ()), token.encode("utf-8"))
    if refusal is None:
        return None
    start, body = refusal
    headers = {k.decode(): v.decode() for k, v in start["headers"] if k not in (b"content-length", b"content-type")}
    return start["status"], body["body"], headers


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
                refusal = _refusal_for(scope["headers"], expected)
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

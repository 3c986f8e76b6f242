"""Every failure becomes a JSON :class:`~agl_kernel.server._wire.ErrorBody` with a status code and a message.

Store errors keep their meaning (404 unknown id, 409 invalid status transition, 400 invalid query or argument,
503 store closed); malformed or mistyped bodies get a 400 that names the field; anything unexpected is a 500 with
an error id, logged here with its traceback, and never a traceback to the client.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from agl_kernel.errors import (
    AglError,
    InvalidQueryError,
    InvalidStatusTransitionError,
    NotFoundError,
    StoreClosedError,
    StoreDamagedError,
)
from agl_kernel.models import encode_json
from agl_kernel.server._wire import ErrorBody, _Query

__all__ = ["error_body", "error_response", "handle_exception", "logger"]

logger = logging.getLogger(__name__)

_STATUS_OF: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, 404),
    (InvalidStatusTransitionError, 409),
    (InvalidQueryError, 400),
    (StoreClosedError, 503),
    (StoreDamagedError, 503),
)

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


def _describe_validation(extra: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """A one-line message naming each bad field, and the details as litestar found them."""
    if not isinstance(extra, list) or not extra:
        return "", None
    parts = []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        key = item.get("key")
        source = item.get("source")
        where = f" at `{key}`" if key and f"`{key}`" not in message and f"$.{key}" not in message else ""
        parts.append(f"{message}{where}" + (f" (in the {source})" if source else ""))
    details = [item for item in extra if isinstance(item, dict)]
    return "; ".join(parts), details or None


def error_body(exc: BaseException) -> tuple[int, ErrorBody]:
    """The status code and body for ``exc``; a 500's body carries a fresh error id (the caller logs it)."""
    for cls, status in _STATUS_OF:
        if isinstance(exc, cls):
            return status, ErrorBody(error=type(exc).__name__, message=str(exc) or cls.__name__, status=status)
    if isinstance(exc, HTTPException) and (exc.status_code < 500 or exc.status_code == 503):
        status = exc.status_code
        message, details = _describe_validation(exc.extra) if isinstance(exc, ValidationException) else ("", None)
        detail = exc.detail or _HTTP_CODES.get(status, "request refused")
        message = f"{detail}: {message}" if message else detail
        return status, ErrorBody(
            error=_HTTP_CODES.get(status, f"http_{status}"), message=message, status=status, details=details
        )
    if isinstance(exc, AglError):
        # Another kernel error raised on purpose by the store (e.g. a backend's own): the caller's fault.
        return 400, ErrorBody(error=type(exc).__name__, message=str(exc) or type(exc).__name__, status=400)
    if isinstance(exc, (ValueError, msgspec.ValidationError, msgspec.EncodeError)):
        # Stores raise ValueError for arguments they refuse (limit < 1, a value they cannot encode, ...).
        return 400, ErrorBody(error="invalid_argument", message=str(exc) or type(exc).__name__, status=400)
    if isinstance(exc, RecursionError):
        return 400, ErrorBody(error="invalid_request", message="the request body is nested too deeply", status=400)
    if isinstance(exc, OverflowError):
        # A number in the request that the store cannot keep (e.g. an integer beyond 64 bits).
        return 400, ErrorBody(
            error="invalid_argument", message=f"a number in the request is out of range: {exc}", status=400
        )
    error_id = uuid.uuid4().hex[:12]
    return 500, ErrorBody(
        error="internal",
        message=f"internal server error (error id {error_id}); the server's log has the details",
        status=500,
        error_id=error_id,
    )


def error_response(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(content=encode_json(body), status_code=status, media_type="application/json", headers=headers)


def _decode_error(exc: BaseException) -> BaseException | None:
    """The msgspec error (or litestar's wrapper of one) behind a 400, if any."""
    seen = exc.__cause__
    found = None
    while seen is not None:
        if isinstance(seen, (msgspec.DecodeError, SerializationException)):
            found = seen
        seen = seen.__cause__
    return found


def _body_type(request: Request[Any, Any, Any]) -> Any:
    """The type the route's handler decodes its body into, if it takes one."""
    handler = request.scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    data = signature.parameters.get("data") if signature is not None else None
    return None if data is None else data.annotation


def _choices(kind: Any, field: str) -> list[str]:
    """The values a top-level field of the struct ``kind`` may take, if it is a literal or an enum (or a list or an
    optional one), else []."""
    try:
        info = msgspec.inspect.type_info(kind)
    except Exception:
        return []
    for found in getattr(info, "fields", ()):
        if found.encode_name != field:
            continue
        pending: list[Any] = [found.type]
        values: list[str] = []
        while pending:
            item = pending.pop()
            if isinstance(item, msgspec.inspect.LiteralType):
                values.extend(str(value) for value in item.values)
            elif isinstance(item, msgspec.inspect.EnumType):
                values.extend(str(member.value) for member in item.cls)
            elif isinstance(item, msgspec.inspect.UnionType):
                pending.extend(item.types)
            elif isinstance(item, (msgspec.inspect.ListType, msgspec.inspect.TupleType)):
                pending.append(getattr(item, "item_type", None))
        return values
    return []


def _explain(request: Request[Any, Any, Any], exc: Exception, status: int, body: ErrorBody) -> ErrorBody:
    """Litestar's generic messages for routing and decoding failures, made specific."""
    method, path = request.method, request.scope.get("path", "")
    message = None
    error = body.error
    if status == 404 and isinstance(exc, HTTPException) and "route_handler" not in request.scope:
        message = (
            f"no route {method} {path}: the store API is under /api/v1, OTLP at /v1/traces; the OpenAPI document "
            "at /schema/openapi.json lists every route"
        )
    elif status == 405 and isinstance(exc, HTTPException):
        allowed = (exc.headers or {}).get("allow", "")
        message = f"{method} is not allowed on {path}" + (f"; allowed: {allowed}" if allowed else "")
    elif status == 400 and (root := _decode_error(exc)) is not None:
        text = str(root).replace("`$.data.", "`$.").replace("`$.data`", "`$`")
        if isinstance(root, msgspec.ValidationError) and str(root) == "Object missing required field `data`":
            message = "this route needs a JSON body (Content-Type: application/json); see /schema/openapi.json"
        elif isinstance(root, msgspec.ValidationError):
            sources = {str(getattr(item.get("source"), "value", item.get("source"))) for item in body.details or ()}
            sources -= {"None", "body"}
            where = f"{min(sources)} parameter" if len(sources) == 1 else "request" if sources else "request body"
            message = f"invalid {where}: {text}"
            kind = _body_type(request)
            field = re.search(r"`\$\.([A-Za-z_][A-Za-z0-9_]*)", text)
            if "Invalid enum value" in text and field and (choices := _choices(kind, field.group(1))):
                message += f"; {field.group(1)} may be one of: {', '.join(sorted(choices))}"
            if isinstance(kind, type) and issubclass(kind, _Query):
                error = "InvalidQueryError"  # as a store raises for a query it refuses (the client raises it too)
        else:
            message = f"the request body is not valid JSON: {text}"
    elif status == 413:
        message = "the request body is larger than the server accepts; send smaller batches"
    if message is None:
        return body
    return ErrorBody(error=error, message=message, status=status, details=body.details)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Litestar's exception handler for every exception a route raises."""
    status, body = error_body(exc)
    body = _explain(request, exc, status, body)
    if status >= 500 and body.error_id is not None:
        logger.error(
            "error id %s: %s %s failed: %s: %s",
            body.error_id,
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 405 and isinstance(exc, HTTPException) and exc.headers:
        headers = dict(exc.headers)
    return error_response(status, body, headers)

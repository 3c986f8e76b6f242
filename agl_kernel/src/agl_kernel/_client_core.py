"""The plumbing of :class:`agl_kernel.client.LightningStoreClient`: its errors, requests with retries, the
coalescing of short calls into ``POST /api/v1/batch``, long polls that ``close()`` ends, and per-event-loop state.
The public names are re-exported by :mod:`agl_kernel.client`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import msgspec

from agl_kernel._client_batch import Batcher
from agl_kernel._fasthttp import FastHTTPTransport
from agl_kernel.errors import (
    AglError,
    InvalidQueryError,
    InvalidStatusTransitionError,
    NotFoundError,
    StoreClosedError,
    StoreDamagedError,
)
from agl_kernel.models import StoreCapabilities
from agl_kernel.server import _wire as wire
from agl_kernel.store.waiting import Signal

__all__ = [
    "DEFAULT_URL",
    "ClientCore",
    "StoreAuthError",
    "StoreConnectionError",
    "StoreHTTPError",
    "StoreRequestError",
    "StoreServerError",
    "error_from_body",
]

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:4747"
_P = wire.API_PREFIX
_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(type_)
    if decoder is None:
        decoder = _decoders[type_] = msgspec.json.Decoder(type_)
    return decoder


class StoreHTTPError(AglError):
    """The store server refused a request or could not be reached. ``status_code`` is 0 when no answer came."""

    def __init__(self, message: str, *, status_code: int = 0, error: str = "", error_id: str | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.error_id = error_id


class StoreRequestError(StoreHTTPError, ValueError):
    """A 4xx answer other than the kernel's own errors: the request was malformed or refused."""


class StoreAuthError(StoreHTTPError, PermissionError):
    """401/403: the server needs a bearer token (``token=`` or ``AGL_STORE_TOKEN``), or a different one.

    ``url`` is the server's and ``token_sent`` whether the client sent a token (it was refused) or none (the server
    needs one); the command line turns them into one line naming ``--token`` and ``AGL_STORE_TOKEN``."""

    url: str = ""
    token_sent: bool = False


class StoreServerError(StoreHTTPError):
    """A 5xx answer; ``error_id`` finds the traceback in the server's log."""


class StoreConnectionError(StoreHTTPError, ConnectionError):
    """The server could not be reached, or the connection broke before the answer came (after the retries)."""


_KERNEL_ERRORS: dict[str, type[AglError]] = {
    "NotFoundError": NotFoundError,
    "InvalidStatusTransitionError": InvalidStatusTransitionError,
    "InvalidQueryError": InvalidQueryError,
}
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadTimeout, httpx.WriteTimeout)


def error_from_body(body: wire.ErrorBody, status: int) -> AglError:
    """The exception a client raises for an error answer of the server."""
    kernel = _KERNEL_ERRORS.get(body.error)
    if kernel is not None:
        return kernel(body.message)
    if body.error.endswith("StoreDamagedError"):  # a backend's damaged file: permanent, not a server hiccup
        return StoreDamagedError(body.message)
    kwargs: dict[str, Any] = {"status_code": status, "error": body.error, "error_id": body.error_id}
    if status in (401, 403):
        return StoreAuthError(body.message, **kwargs)
    if status >= 500:
        suffix = f" (error id {body.error_id})" if body.error_id and body.error_id not in body.message else ""
        return StoreServerError(f"the store server failed: {body.message}{suffix}", **kwargs)
    return StoreRequestError(body.message, **kwargs)


def _error_from_answer(status: int, answer: bytes, what: str) -> AglError:
    try:
        body = _decoder(wire.ErrorBody).decode(answer)
    except msgspec.DecodeError:
        text = answer[:300].decode("utf-8", "replace")
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "no reason"
        body = wire.ErrorBody(error=f"http_{status}", message=f"{what}: HTTP {status}: {text or reason}", status=status)
    return error_from_body(body, status)


_Call = tuple[Any, Any, bool]
"""A call waiting for a batch: (the op, the type of its result, whether it is safe to send twice)."""


class _LoopState:
    """What the client keeps per event loop: asyncio objects cannot cross loops."""

    __slots__ = ("batcher", "capabilities", "fast", "transport")

    def __init__(self, transport: httpx.AsyncBaseTransport, batcher: Batcher[_Call]) -> None:
        self.transport = transport
        self.fast = transport if isinstance(transport, FastHTTPTransport) else None
        self.batcher = batcher
        self.capabilities: asyncio.Future[StoreCapabilities] | None = None


class ClientCore:
    """Connection handling of :class:`agl_kernel.client.LightningStoreClient` (its parameters are documented
    there): per-loop transports and batchers, requests with retries, batches, long polls, closing."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 8,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None,
        max_connections: int = 256,
        batch_calls: bool = True,
        max_batch: int = 1000,
    ) -> None:
        url = (url or os.environ.get("AGL_STORE_URL") or DEFAULT_URL).rstrip("/")
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the store server URL must look like http://host:port, not {url!r}")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be positive; retries and backoff must not be negative")
        self.url = url
        token = token if token is not None else os.environ.get("AGL_STORE_TOKEN") or None
        self._token_sent = bool(token)
        self._server_info: wire.ServerInfo | None = None
        self._headers = [
            (b"Accept", b"application/json"),
            (b"Content-Type", b"application/json"),
            (b"User-Agent", b"agl-store-client"),
        ] + ([(b"Authorization", f"Bearer {token}".encode())] if token else [])
        # The fast path writes requests itself: the fixed part of every request head, and where to send it.
        self._key = (parsed.scheme, parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
        self._base_path = parsed.raw_path.decode("ascii").rstrip("/")
        self._header_block = b"Host: %s\r\nAccept: application/json\r\nUser-Agent: agl-store-client\r\n" % (
            parsed.netloc
        ) + (b"Authorization: Bearer %s\r\n" % token.encode() if token else b"")
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._transport_factory = transport_factory or (lambda: FastHTTPTransport(max_connections=max_connections))
        self._batch_calls = batch_calls
        self._max_batch = max_batch
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._loops_lock = threading.Lock()
        self._closed = False
        self._closing = Signal()
        self._server_capabilities: StoreCapabilities | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @property
    def capabilities(self) -> StoreCapabilities:
        """The client is async- and thread-safe, reached over the network, and shared by any number of processes
        (the server dequeues exactly once); ``durable`` is the server's store's, once the first call has asked."""
        durable = bool(self._server_capabilities and self._server_capabilities.durable)
        return StoreCapabilities(thread_safe=True, async_safe=True, durable=durable, multi_process=True, remote=True)

    def describe(self) -> str:
        """The server's URL and the store behind it, for a console line: ``http://127.0.0.1:4747 (sqlite
        /home/me/.agl/agl.db)``. Asks the server (``GET /api/v1/server``, once, for up to 5 s, from a thread of
        its own when an event loop runs here); a server that cannot be reached, or is older than that route, is
        described by its URL alone. A server that refuses the token raises :class:`StoreAuthError`: whatever the
        description was for would be refused next."""
        if self._server_info is None:
            try:
                if _running_loop():
                    with concurrent.futures.ThreadPoolExecutor(1) as pool:
                        self._server_info = pool.submit(self._fetch_server_info).result()
                else:
                    self._server_info = self._fetch_server_info()
            except StoreAuthError:
                raise
            except Exception as exc:
                reason = "not reachable yet" if isinstance(exc, httpx.TransportError) else "store not known"
                return f"{self.url} (agl store server; {reason})"
        info = self._server_info
        return f"{self.url} ({info.backend}{' ' + info.location if info.location else ''})"

    def _fetch_server_info(self) -> wire.ServerInfo:
        headers = {k.decode(): v.decode() for k, v in self._headers if k != b"Content-Type"}
        answer = httpx.get(f"{self.url}{_P}/server", headers=headers, timeout=5.0)
        if answer.status_code >= 300:
            raise self._annotated(_error_from_answer(answer.status_code, answer.content, f"GET {_P}/server"))
        info: wire.ServerInfo = _decoder(wire.ServerInfo).decode(answer.content)
        return info

    def _annotated(self, error: AglError) -> AglError:
        """``error``, with the server's URL and whether a token was sent when it is a refused token."""
        if isinstance(error, StoreAuthError):
            error.url, error.token_sent = self.url, self._token_sent
        return error

    async def server_capabilities(self) -> StoreCapabilities:
        """The capabilities of the store behind the server."""
        caps: StoreCapabilities = await self._call(
            "GET", f"{_P}/capabilities", None, StoreCapabilities, idempotent=True
        )
        self._server_capabilities = caps
        return caps

    # ------------------------------------------------------------------------------------------------ plumbing

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            with self._loops_lock:
                for gone in [other for other in self._loops if other.is_closed()]:
                    del self._loops[gone]  # a thread's loop has ended; its connections go with it
                state = self._loops[loop] = _LoopState(
                    self._transport_factory(), Batcher(self._send_batch, self._max_batch)
                )
        return state

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"this LightningStoreClient for {self.url} is closed; create a new one")

    async def _call(
        self,
        method: str,
        path: str,
        body: Any,
        result_type: Any,
        *,
        idempotent: bool,
        wait: float = 0.0,
        params: dict[str, Any] | None = None,
    ) -> Any:
        """One API call with retries; returns the decoded answer or raises the mapped error."""
        self._check_open()
        state = self._state()
        if self._server_capabilities is None and path != f"{_P}/capabilities":
            await self._first_contact(state)
        content = b"" if body is None else _encoder.encode(body)
        if params:
            path += "?" + urlencode(params)
        timeouts = {
            "connect": self._timeout,
            "read": self._timeout + wait,
            "write": self._timeout,
            "pool": self._timeout,
        }
        attempt = 0
        while True:
            try:
                status, answer = await self._exchange(state, method, path, content, timeouts)
            except _NOT_SENT as exc:
                failure: BaseException = exc
                retry = True
            except _MAYBE_SENT as exc:
                failure, retry = exc, idempotent
            else:
                if status < 300:
                    return _decoder(result_type).decode(answer) if result_type is not None else None
                error = self._annotated(_error_from_answer(status, answer, f"{method} {path}"))
                refused = getattr(error, "error", "") in ("StoreClosedError", "unavailable")
                if not ((status == 503 and refused) or (status in (502, 503, 504) and idempotent)):
                    raise error
                failure, retry = error, True
            if not retry or attempt >= self._retries or self._closed:
                if isinstance(failure, StoreHTTPError):
                    raise failure
                maybe = (
                    ""
                    if isinstance(failure, _NOT_SENT)
                    else (" The request may or may not have taken effect on the server.")
                )
                raise StoreConnectionError(
                    f"{method} {path} to the store server at {self.url} failed after {attempt + 1} tries: "
                    f"{type(failure).__name__}: {failure}.{maybe} Is `agl store serve` running there?"
                ) from failure
            delay = min(self._max_backoff, self._backoff * (2**attempt)) * (0.5 + random.random() / 2)
            attempt += 1
            await asyncio.sleep(delay)

    async def _exchange(
        self, state: _LoopState, method: str, path: str, content: bytes, timeouts: dict[str, float]
    ) -> tuple[int, bytes]:
        """Send one request; (status, body). The default transport gets the request as bytes (no httpx objects)."""
        if state.fast is not None:
            head = f"{method} {self._base_path}{path} HTTP/1.1\r\n".encode() + self._header_block
            if content:
                head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(content)
            status, _, answer, _ = await state.fast.exchange(self._key, method, head + b"\r\n" + content, timeouts)
            return status, answer
        request = httpx.Request(
            method, self.url + path, headers=self._headers, content=content, extensions={"timeout": timeouts}
        )
        response = await state.transport.handle_async_request(request)
        await response.aread()
        return response.status_code, response.content

    async def _batched(self, op: Any, result_type: Any, *, idempotent: bool) -> Any:
        """A short call, sent with whatever other calls are waiting for the wire (``POST /batch``)."""
        self._check_open()
        state = self._state()
        if self._server_capabilities is None:
            await self._first_contact(state)
        return await state.batcher.submit((op, result_type, idempotent))

    async def _first_contact(self, state: _LoopState) -> None:
        """Learn the server's capabilities once (concurrent first calls share the one request)."""
        if state.capabilities is None:
            state.capabilities = asyncio.ensure_future(self.server_capabilities())
        try:
            await asyncio.shield(state.capabilities)
        except BaseException:
            if state.capabilities.done():
                state.capabilities = None  # let a later call try again
            raise

    async def _send_batch(self, calls: list[_Call]) -> list[Any]:
        """One ``POST /batch`` for ``calls``; one outcome (result or exception) per call."""
        safe = all(idempotent for _, _, idempotent in calls)
        body = wire.BatchBody(ops=[op for op, _, _ in calls])
        try:
            answers = await self._call("POST", f"{_P}/batch", body, list[wire.RawOpResult], idempotent=safe)
        except StoreConnectionError as failure:
            retryable = [i for i, (_, _, idempotent) in enumerate(calls) if idempotent]
            if safe or not retryable or self._closed:
                raise
            # The batch may or may not have run: its unsafe calls fail, the safe ones go again on their own.
            outcomes: list[Any] = [failure] * len(calls)
            try:
                again = await self._send_batch([calls[i] for i in retryable])
            except StoreConnectionError as second:
                again = [second] * len(retryable)
            for i, outcome in zip(retryable, again, strict=True):
                outcomes[i] = outcome
            return outcomes
        if len(answers) != len(calls):
            raise StoreServerError(f"the server answered {len(answers)} results for a batch of {len(calls)} calls")
        outcomes = []
        for (_, result_type, _), answer in zip(calls, answers, strict=True):
            if answer.error is not None:
                outcomes.append(error_from_body(answer.error, answer.error.status))
            elif bytes(answer.result) in (b"null", b""):
                outcomes.append(None)
            else:
                try:
                    outcomes.append(_decoder(result_type).decode(answer.result))
                except msgspec.DecodeError as exc:
                    outcomes.append(StoreServerError(f"the server answered a malformed result: {exc}"))
        return outcomes

    async def _waiting_call(
        self, path: str, body: Any, result_type: Any, wait: float, empty: Any, *, idempotent: bool
    ) -> Any:
        """A long poll (``POST path``) that ``close()`` ends at once, answering ``empty``."""
        call = asyncio.ensure_future(self._call("POST", path, body, result_type, idempotent=idempotent, wait=wait))
        closed = asyncio.ensure_future(self._closing.wait_for(lambda: True if self._closed else None, None))
        try:
            await asyncio.wait((call, closed), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled from outside: the request goes too
            call.cancel()
            raise
        finally:
            closed.cancel()
        if call.done():
            return call.result()
        call.cancel()
        return empty

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.notify()
        with self._loops_lock:
            states, self._loops = dict(self._loops), {}
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, state in states.items():
            state.batcher.fail_pending(StoreClosedError(f"the LightningStoreClient for {self.url} was closed"))
            if loop is current:
                await state.transport.aclose()
            elif not loop.is_closed():
                try:
                    asyncio.run_coroutine_threadsafe(state.transport.aclose(), loop)
                except RuntimeError:
                    pass

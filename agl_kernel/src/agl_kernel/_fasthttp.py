"""A lean HTTP/1.1 transport for httpx, used by :class:`agl_kernel.client.LightningStoreClient` by default.

httpx's own pool (httpcore over anyio) costs several milliseconds of CPU per request once a few dozen requests
run at once (encode/httpx#3215), which would make the store client, not the server, the bottleneck. This
transport keeps what the store client needs and nothing else: keep-alive connections, each a plain
``asyncio.Protocol`` that owns its receive buffer, reused last-in first-out in O(1), ``Content-Length``, chunked and
read-to-close bodies, 1xx interim responses skipped, TLS through an ``ssl.SSLContext``, and errors raised as httpx's
own exception types (so retry logic works the same with any httpx transport). benchmarks/http_transport.py
compares it with plain httpx and httpx-aiohttp on the store's cycle (docs/performance.md has the numbers).

An instance belongs to one event loop (its connections do); the client keeps one per loop.
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
import sys
import time
from collections import deque

import httpx

__all__ = ["FastHTTPTransport"]

_MAX_HEADER_BYTES = 64 * 1024

if sys.version_info >= (3, 11):
    _timeout = asyncio.timeout
else:  # pragma: no cover - Python 3.10
    import contextlib
    from collections.abc import AsyncIterator

    @contextlib.asynccontextmanager
    async def _timeout(delay: float | None) -> AsyncIterator[None]:
        # Python 3.10 has no asyncio.timeout: cancel the current task after ``delay`` seconds.
        if delay is None:
            yield
            return
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def fire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        try:
            yield
        except asyncio.CancelledError:
            if fired:
                raise TimeoutError() from None
            raise
        finally:
            handle.cancel()


class _Closed(Exception):
    """The connection ended before the response did."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: an asyncio protocol that keeps what the server sent in ``buffer`` until a
    response is read from it. Owning the buffer is what shows a connection holding bytes that no request asked
    for (a server's parting 408, a response longer than it said): such a connection is out of step and is not
    reused."""

    __slots__ = (
        "_data_waiter",
        "_drain_waiter",
        "buffer",
        "ended",
        "error",
        "idle_since",
        "paused",
        "received",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.received = 0  # bytes that arrived since the current request went out
        self.ended = False  # the server closed its side, or the connection was lost
        self.error: BaseException | None = None  # what the connection was lost to, if anything
        self.idle_since = 0.0
        self.paused = False  # the transport's write buffer is over its high-water mark
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------------ asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received += len(data)
        self._wake_reader()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake_reader()
        return False  # close the transport: an HTTP/1.1 client has nothing to say on a half-closed connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self._data_waiter
        if waiter is not None:
            self._data_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------------ used by the transport

    def usable(self, now: float, expiry: float) -> bool:
        assert self.transport is not None
        return not self.ended and not self.buffer and not self.transport.is_closing() and now - self.idle_since < expiry

    def close(self) -> None:
        assert self.transport is not None
        try:
            self.transport.close()
        except RuntimeError:  # the loop has closed already
            pass

    def send(self, payload: bytes) -> None:
        """Hand a request to the transport (see :meth:`drain` for when its buffer fills up)."""
        assert self.transport is not None
        self.received = 0
        self.transport.write(payload)

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark (``paused``)."""
        while self.paused and not self.ended:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.ended:
            raise _Closed()

    async def _more(self) -> None:
        """Wait until more bytes arrive; :class:`_Closed` once the connection has ended."""
        if self.ended:
            raise _Closed()
        self._data_waiter = asyncio.get_running_loop().create_future()
        await self._data_waiter

    async def read_until(self, separator: bytes, limit: int) -> bytes:
        """The bytes up to and including ``separator``; more than ``limit`` bytes without it are a protocol error."""
        start = 0
        while True:
            end = self.buffer.find(separator, start)
            if end >= 0:
                end += len(separator)
                data = bytes(self.buffer[:end])
                del self.buffer[:end]
                return data
            if len(self.buffer) > limit:
                raise httpx.RemoteProtocolError("the response headers are too large")
            start = max(0, len(self.buffer) - len(separator) + 1)
            await self._more()

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            await self._more()
        if len(self.buffer) == size:  # the usual case: the body is the rest of what came
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def read_to_end(self) -> bytes:
        """Everything until the server closes the connection."""
        while not self.ended:
            self._data_waiter = asyncio.get_running_loop().create_future()
            await self._data_waiter
        if self.error is not None:
            raise _Closed()
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def failure(self, *, writing: bool) -> httpx.TransportError:
        """The httpx error for a connection that ended while writing the request or reading the response."""
        if isinstance(self.error, OSError):
            if writing:
                return httpx.WriteError(f"sending the request failed: {self.error}")
            return httpx.ReadError(f"reading the response failed: {self.error}")
        what = "in the middle of its response" if self.received else "without sending a response"
        return httpx.RemoteProtocolError(f"the server closed the connection {what}")


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections on asyncio's transports and protocols.

    - ``max_connections``: open connections at most (requests beyond it wait, up to the pool timeout).
    - ``keepalive_expiry``: idle seconds after which a connection is not reused. Keep it below the server's
      keep-alive timeout (uvicorn's default is 5 s), so that a request never goes out on a connection the server
      is closing at that moment.
    - ``ssl_context``: for ``https`` URLs (default: ``ssl.create_default_context()``).
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 2.0,
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections!r}")
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    # ------------------------------------------------------------------------------------------------ pool

    async def _acquire(self, key: tuple[str, str, int], timeouts: dict[str, float]) -> tuple[_Connection, bool]:
        """A connection to ``key`` and whether it was reused: an idle one, else a new one while fewer than
        ``max_connections`` are open, else the next one that comes free (up to the pool timeout)."""
        deadline: float | None = None
        while True:
            idle = self._idle.get(key)
            if idle:
                now = time.monotonic()
                while idle:
                    conn = idle.pop()
                    if conn.usable(now, self._expiry):
                        return conn, True
                    self._discard(conn)
            if self._open < self._max:
                return await self._connect(key, timeouts), False
            for other in self._idle.values():  # at the limit with idle connections elsewhere: close one
                if other:
                    self._discard(other.popleft())
                    break
            else:
                pool_timeout = timeouts.get("pool")
                if deadline is None and pool_timeout is not None:
                    deadline = time.monotonic() + pool_timeout
                waiter = asyncio.get_running_loop().create_future()
                self._slot_waiters.append(waiter)
                try:
                    async with _timeout(None if deadline is None else max(0.0, deadline - time.monotonic())):
                        await waiter
                except BaseException as exc:
                    if waiter.done() and not waiter.cancelled():
                        self._notify_one()  # woken, but leaving: the free slot is the next waiter's
                    if isinstance(exc, TimeoutError):
                        raise httpx.PoolTimeout(f"no free connection within {pool_timeout} s") from None
                    raise
                finally:
                    if waiter in self._slot_waiters:
                        self._slot_waiters.remove(waiter)

    async def _connect(self, key: tuple[str, str, int], timeouts: dict[str, float]) -> _Connection:
        self._open += 1
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with _timeout(timeouts.get("connect")):
                if scheme == "https":
                    context = self._ssl or _ssl.create_default_context()
                    _, conn = await loop.create_connection(_Connection, host, port, ssl=context, server_hostname=host)
                else:
                    _, conn = await loop.create_connection(_Connection, host, port)
        except TimeoutError:
            self._release_slot()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            self._release_slot()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        except BaseException:
            self._release_slot()
            raise
        return conn

    def _notify_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release_slot(self) -> None:
        self._open -= 1
        self._notify_one()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._release_slot()

    def _put_back(self, key: tuple[str, str, int], conn: _Connection) -> None:
        if self._closed:
            self._discard(conn)
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, deque()).append(conn)
        self._notify_one()

    # ------------------------------------------------------------------------------------------------ requests

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.scheme
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"FastHTTPTransport speaks http and https, not {scheme!r}")
        port = url.port or (443 if scheme == "https" else 80)
        body = request.content if request.method not in ("GET", "HEAD") or request.content else b""
        head = [f"{request.method} {url.raw_path.decode('ascii')} HTTP/1.1\r\n".encode("ascii")]
        for name, value in request.headers.raw:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"\r\n")
        status, headers, content, reused = await self.exchange(
            (scheme, url.host, port), request.method, b"".join(head) + body, request.extensions.get("timeout", {})
        )
        return httpx.Response(
            status,
            headers=headers,
            content=content,
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reused_connection": reused},
        )

    async def exchange(
        self, key: tuple[str, str, int], method: str, payload: bytes, timeouts: dict[str, float]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one serialized request (head and body) to ``key`` = (scheme, host, port) and read the answer:
        (status, headers, body, whether the connection was reused). The store client calls this directly,
        skipping httpx's request and response objects on its hot path."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        conn, reused = await self._acquire(key, timeouts)
        try:
            conn.send(payload)
            if conn.paused:  # a request larger than the socket takes at once
                try:
                    async with _timeout(timeouts.get("write")):
                        await conn.drain()
                except TimeoutError:
                    raise httpx.WriteTimeout("sending the request timed out") from None
                except _Closed:
                    raise conn.failure(writing=True) from conn.error
            try:
                async with _timeout(timeouts.get("read")):
                    status, headers, content, keep_alive = await _read_response(conn, method)
            except TimeoutError:
                raise httpx.ReadTimeout("the server did not answer in time") from None
            except _Closed:
                raise conn.failure(writing=False) from conn.error
        except BaseException:
            self._discard(conn)
            raise
        if keep_alive:
            self._put_back(key, conn)
        else:
            self._discard(conn)
        return status, headers, content, reused

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.pop())
        self._idle.clear()


async def _read_response(conn: _Connection, method: str) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """(status, headers, body, keep-alive) of one HTTP/1.1 response; 1xx interim responses are skipped."""
    while True:
        raw = await conn.read_until(b"\r\n\r\n", _MAX_HEADER_BYTES)
        if len(raw) > _MAX_HEADER_BYTES:
            raise httpx.RemoteProtocolError("the response headers are too large")
        lines = raw[:-4].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.1 response: {lines[0][:80]!r}")
        status = int(parts[1])
        if 100 <= status < 200 and status != 101:
            continue
        break
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep_alive = parts[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError(f"malformed response header line {line[:80]!r}")
        value = value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise httpx.RemoteProtocolError(f"malformed Content-Length {value[:40]!r}")
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lower == b"connection":
            token = value.lower()
            if b"close" in token:
                keep_alive = False
            elif b"keep-alive" in token:
                keep_alive = True
    if method == "HEAD" or status in (204, 304):
        return status, headers, b"", keep_alive
    if chunked:
        return (
            status,
            [(n, v) for n, v in headers if n.lower() != b"transfer-encoding"],
            await _read_chunked(conn),
            keep_alive,
        )
    if length is not None:
        return status, headers, await conn.read_exactly(length) if length else b"", keep_alive
    return status, headers, await conn.read_to_end(), False  # the body runs to the end of the connection


async def _read_chunked(conn: _Connection) -> bytes:
    body = bytearray()
    while True:
        size_line = await conn.read_until(b"\r\n", _MAX_HEADER_BYTES)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError(f"malformed chunk size {size_line[:40]!r}") from None
        if size == 0:
            while (await conn.read_until(b"\r\n", _MAX_HEADER_BYTES)) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await conn.read_exactly(size)
        if await conn.read_exactly(2) != b"\r\n":
            raise httpx.RemoteProtocolError("a chunk is longer than its size line says")

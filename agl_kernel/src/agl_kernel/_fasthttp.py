"""A lean HTTP/1.1 transport for httpx, used by :class:`agl_kernel.client.LightningStoreClient` by default.

httpx's own pool (httpcore over anyio) costs several milliseconds of CPU per request once a few dozen requests
run at once (encode/httpx#3215), which would make the store client, not the server, the bottleneck. This
transport keeps what the store client needs and nothing else: keep-alive connections on asyncio streams, reused
last-in first-out in O(1), ``Content-Length`` and chunked bodies, TLS through an ``ssl.SSLContext``, and errors
raised as httpx's own exception types (so retry logic works the same with any httpx transport).

An instance belongs to one event loop (asyncio streams do); the client keeps one per loop.
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

    @contextlib.asynccontextmanager
    async def _timeout(delay: float | None):  # type: ignore[no-redef]
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


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return (
            not self.reader.at_eof()
            and not self.writer.is_closing()
            and now - self.idle_since < expiry
            and not self.reader._buffer  # type: ignore[attr-defined] # bytes nobody asked for: out of sync
        )

    def close(self) -> None:
        try:
            self.writer.close()
        except RuntimeError:  # the loop has closed already
            pass


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections on asyncio streams.

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

    async def _acquire(self, key: tuple[str, str, int], timeouts: dict) -> tuple[_Connection, bool]:
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
                except TimeoutError:
                    raise httpx.PoolTimeout(f"no free connection within {pool_timeout} s") from None
                finally:
                    if waiter in self._slot_waiters:
                        self._slot_waiters.remove(waiter)

    async def _connect(self, key: tuple[str, str, int], timeouts: dict) -> _Connection:
        self._open += 1
        scheme, host, port = key
        try:
            async with _timeout(timeouts.get("connect")):
                if scheme == "https":
                    context = self._ssl or _ssl.create_default_context()
                    reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
                else:
                    reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            self._release_slot()
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            self._release_slot()
            raise httpx.ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        except BaseException:
            self._release_slot()
            raise
        return _Connection(reader, writer)

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
        self, key: tuple[str, str, int], method: str, payload: bytes, timeouts: dict
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Send one serialized request (head and body) to ``key`` = (scheme, host, port) and read the answer:
        (status, headers, body, whether the connection was reused). The store client calls this directly,
        skipping httpx's request and response objects on its hot path."""
        if self._closed:
            raise RuntimeError("the transport is closed")
        conn, reused = await self._acquire(key, timeouts)
        try:
            try:
                conn.writer.write(payload)
                if conn.writer.transport.get_write_buffer_size():
                    async with _timeout(timeouts.get("write")):
                        await conn.writer.drain()
            except TimeoutError:
                raise httpx.WriteTimeout("sending the request timed out") from None
            except OSError as exc:
                raise httpx.WriteError(f"sending the request failed: {exc}") from exc
            try:
                async with _timeout(timeouts.get("read")):
                    status, headers, content, keep_alive = await _read_response(conn.reader, method)
            except TimeoutError:
                raise httpx.ReadTimeout("the server did not answer in time") from None
            except asyncio.IncompleteReadError as exc:
                what = "without sending a response" if not exc.partial else "in the middle of its response"
                raise httpx.RemoteProtocolError(f"the server closed the connection {what}") from exc
            except asyncio.LimitOverrunError as exc:
                raise httpx.RemoteProtocolError("the response headers are too large") from exc
            except OSError as exc:
                raise httpx.ReadError(f"reading the response failed: {exc}") from exc
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


async def _read_response(
    reader: asyncio.StreamReader, method: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
    """(status, headers, body, keep-alive) of one HTTP/1.1 response; 1xx interim responses are skipped."""
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
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
            await _read_chunked(reader),
            keep_alive,
        )
    if length is not None:
        return status, headers, await reader.readexactly(length) if length else b"", keep_alive
    return status, headers, await reader.read(), False  # the body runs to the end of the connection


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise httpx.RemoteProtocolError(f"malformed chunk size {size_line[:40]!r}") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)

"""FastHTTPTransport, the store client's HTTP/1.1 transport, against small real servers on 127.0.0.1: what it claims
to handle (Content-Length, chunked and read-to-close bodies, 1xx interim responses, keep-alive reuse, the pool's
limit and waiting, timeouts, TLS) and what a server can do wrong (close or reset mid-response, send bytes nobody
asked for, send garbage). Each server is asyncio.start_server writing raw HTTP bytes, so the edge cases are exact.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio

from agl_kernel._fasthttp import FastHTTPTransport

Respond = Callable[[asyncio.StreamWriter, bytes, int], Awaitable[bool | None]]
"""Writes the answer to one request (the raw request, its number from 1); returns False to close the connection."""

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def answer(data: bytes) -> Respond:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        writer.write(data)

    return respond


class RawServer:
    """An HTTP server on 127.0.0.1 that reads requests (head and Content-Length body) and lets ``respond`` write
    the answer bytes. Counts the connections it accepted and the most it had open at once."""

    def __init__(self, respond: Respond, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.ssl_context = ssl_context
        self.requests: list[bytes] = []
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for handler in self.handlers:  # connections the client keeps open, answers a test left waiting
            handler.cancel()
        await asyncio.gather(*self.handlers)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        handler = asyncio.current_task()
        assert handler is not None
        self.handlers.add(handler)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                keep_open = await self.respond(writer, request, len(self.requests))
                await writer.drain()
                if keep_open is False:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass  # Python 3.11's asyncio logs a handler that ends cancelled as an error: end quietly
        finally:
            self.open_now -= 1
            writer.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let the event loop run until ``condition`` holds (at most 5 s)."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.001)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def get(
    transport: FastHTTPTransport, url: str, *, method: str = "GET", timeout: Any = 5.0, content: bytes | None = None
) -> httpx.Response:
    """One request straight through the transport (an httpx.AsyncClient would close it when it is done)."""
    timeouts = httpx.Timeout(timeout).as_dict()
    request = httpx.Request(method, url, content=content, extensions={"timeout": timeouts})
    return await transport.handle_async_request(request)


@pytest_asyncio.fixture
async def transport() -> AsyncIterator[FastHTTPTransport]:
    transport = FastHTTPTransport()
    yield transport
    await transport.aclose()


# ------------------------------------------------------------------------------------------------ bodies


@pytest.mark.asyncio
async def test_a_content_length_body_and_the_request_as_sent(transport: FastHTTPTransport) -> None:
    created = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX-Thing: a b \r\n\r\nhello"
    async with RawServer(answer(created)) as server, httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"{server.url}/api/v1/things?x=1", content=b'{"a":1}')
    assert response.status_code == 201
    assert response.content == b"hello"
    assert response.headers["x-thing"] == "a b"
    assert response.http_version == "HTTP/1.1"
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v1/things?x=1 HTTP/1.1\r\n")
    assert b"\r\ncontent-length: 7" in head.lower()
    assert body == b'{"a":1}'


@pytest.mark.asyncio
async def test_a_chunked_body_with_extensions_and_trailers_is_joined(transport: FastHTTPTransport) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"1\r\n \r\n"
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    async with RawServer(answer(chunked)) as server:
        first = await get(transport, server.url)
        second = await get(transport, server.url)  # the connection is in step after the trailers
    assert first.content == second.content == b"hello 0123456789"
    assert "transfer-encoding" not in first.headers
    assert first.headers["content-type"] == "text/plain"
    assert server.connections == 1


@pytest.mark.asyncio
async def test_a_chunked_body_arriving_in_pieces(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        for piece in (b"HTTP/1.1 200 OK\r\nTransfer-", b"Encoding: chunked\r\n\r\n3\r", b"\nab", b"c\r\n0\r\n\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)

    async with RawServer(respond) as server:
        assert (await get(transport, server.url)).content == b"abc"


@pytest.mark.asyncio
async def test_a_body_without_length_runs_to_the_close(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nall of ")
        await writer.drain()
        writer.write(b"it")
        return False

    async with RawServer(respond) as server:
        assert (await get(transport, server.url)).content == b"all of it"
        assert (await get(transport, server.url)).content == b"all of it"
    assert server.connections == 2


@pytest.mark.asyncio
async def test_a_request_larger_than_the_socket_buffers_is_sent_whole(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        size = b"%d" % len(request)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(size), size))

    big = bytes(range(256)) * (64 << 10)  # 16 MiB: the transport pauses writing and resumes as the server reads
    async with RawServer(respond) as server:
        response = await get(transport, server.url, method="POST", content=big)
    assert server.requests[0].endswith(big)
    assert int(response.content) == len(server.requests[0])


@pytest.mark.asyncio
async def test_head_204_and_304_have_no_body(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        status = {1: b"200 OK", 2: b"204 No Content", 3: b"304 Not Modified", 4: b"200 OK"}[index]
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 5\r\n\r\n" + (b"hello" if index == 4 else b""))

    async with RawServer(respond) as server:
        assert (await get(transport, server.url, method="HEAD")).content == b""
        assert (await get(transport, server.url)).status_code == 204
        assert (await get(transport, server.url)).status_code == 304
        assert (await get(transport, server.url)).content == b"hello"  # still in step
    assert server.connections == 1


@pytest.mark.asyncio
async def test_interim_1xx_responses_are_skipped(transport: FastHTTPTransport) -> None:
    interim = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone"
    )
    async with RawServer(answer(interim)) as server:
        response = await get(transport, server.url, method="POST", content=b"x")
        assert (response.status_code, response.content) == (200, b"done")
        assert "link" not in response.headers
        assert (await get(transport, server.url)).content == b"done"
    assert server.connections == 1


# ------------------------------------------------------------------------------------------------ keep-alive


@pytest.mark.asyncio
async def test_sequential_requests_reuse_one_connection(transport: FastHTTPTransport) -> None:
    async with RawServer(answer(OK)) as server:
        responses = [await get(transport, f"{server.url}/{i}") for i in range(5)]
    assert server.connections == 1
    assert [r.extensions["reused_connection"] for r in responses] == [False, True, True, True, True]
    assert [r.split(b" ")[1] for r in server.requests] == [b"/0", b"/1", b"/2", b"/3", b"/4"]


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
@pytest.mark.asyncio
async def test_a_connection_the_server_will_close_is_not_reused(transport: FastHTTPTransport, response: bytes) -> None:
    async with RawServer(answer(response)) as server:
        for _ in range(3):
            assert (await get(transport, server.url)).content == b"ok"
    assert server.connections == 3


@pytest.mark.asyncio
async def test_http_1_0_keep_alive_is_reused(transport: FastHTTPTransport) -> None:
    async with RawServer(answer(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nok")) as server:
        for _ in range(3):
            await get(transport, server.url)
    assert server.connections == 1


@pytest.mark.asyncio
async def test_an_idle_connection_the_server_closed_is_replaced(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> bool:
        writer.write(OK)  # says nothing of closing, then closes: like a server's keep-alive timeout
        return index != 1

    async with RawServer(respond) as server:
        await get(transport, server.url)
        await wait_until(lambda: all(conn.ended for idle in transport._idle.values() for conn in idle))
        response = await get(transport, server.url)
    assert response.content == b"ok"
    assert response.extensions["reused_connection"] is False
    assert server.connections == 2


@pytest.mark.asyncio
async def test_a_connection_holding_bytes_nobody_asked_for_is_not_reused(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        if index == 1:  # the answer, then a second one no request asked for: reading on would be out of step
            writer.write(OK + b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")

    async with RawServer(respond) as server:
        assert (await get(transport, server.url)).content == b"ok"
        second = await get(transport, server.url)
    assert (second.status_code, second.content) == (200, b"second")
    assert server.connections == 2


@pytest.mark.asyncio
async def test_an_expired_idle_connection_is_not_reused() -> None:
    transport = FastHTTPTransport(keepalive_expiry=0.0)
    async with RawServer(answer(OK)) as server:
        await get(transport, server.url)
        await get(transport, server.url)
    await transport.aclose()
    assert server.connections == 2


# ------------------------------------------------------------------------------------------------ the pool


@pytest.mark.asyncio
async def test_requests_beyond_the_limit_wait_for_a_free_connection() -> None:
    transport = FastHTTPTransport(max_connections=2)
    release = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        await release.wait()
        writer.write(OK)

    async with RawServer(respond) as server:
        calls = [asyncio.ensure_future(get(transport, f"{server.url}/{i}")) for i in range(6)]
        await wait_until(lambda: len(server.requests) == 2)
        await asyncio.sleep(0.05)  # time for a third connection, were the limit not kept
        assert (server.connections, len(server.requests)) == (2, 2)
        release.set()
        responses = await asyncio.wait_for(asyncio.gather(*calls), 10)
    await transport.aclose()
    assert [r.content for r in responses] == [b"ok"] * 6
    assert (server.connections, server.most_open, len(server.requests)) == (2, 2, 6)


@pytest.mark.asyncio
async def test_no_free_connection_within_the_pool_timeout_is_a_pool_timeout() -> None:
    transport = FastHTTPTransport(max_connections=1)
    release = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        await release.wait()
        writer.write(OK)

    async with RawServer(respond) as server:
        held = asyncio.ensure_future(get(transport, server.url))
        await wait_until(lambda: len(server.requests) == 1)
        with pytest.raises(httpx.PoolTimeout, match="no free connection"):
            await get(transport, server.url, timeout=httpx.Timeout(5.0, pool=0.05))
        release.set()
        assert (await held).content == b"ok"
        assert (await get(transport, server.url)).content == b"ok"  # the slot was not lost
    await transport.aclose()
    assert server.connections == 1


@pytest.mark.asyncio
async def test_a_woken_waiter_that_is_cancelled_passes_the_slot_on() -> None:
    transport = FastHTTPTransport(max_connections=1)
    async with RawServer(answer(OK)) as server:
        key = ("http", "127.0.0.1", server.port)
        conn, _ = await transport._acquire(key, {})
        first = asyncio.ensure_future(transport._acquire(key, {"pool": 5.0}))
        second = asyncio.ensure_future(transport._acquire(key, {"pool": 5.0}))
        await wait_until(lambda: len(transport._slot_waiters) == 2)
        transport._put_back(key, conn)  # wakes the first waiter...
        first.cancel()  # ...which leaves before it runs
        again, reused = await asyncio.wait_for(second, 5)
        assert (again, reused) == (conn, True)
        transport._put_back(key, again)
    await transport.aclose()


@pytest.mark.asyncio
async def test_at_the_limit_an_idle_connection_to_another_server_is_closed() -> None:
    transport = FastHTTPTransport(max_connections=1)
    async with RawServer(answer(OK)) as first, RawServer(answer(OK)) as second:
        assert (await get(transport, first.url)).content == b"ok"
        assert (await get(transport, second.url)).content == b"ok"
        await wait_until(lambda: first.open_now == 0)
        assert (await get(transport, first.url)).content == b"ok"
    await transport.aclose()
    assert (first.connections, second.connections) == (2, 1)


@pytest.mark.asyncio
async def test_a_closed_transport_refuses_and_closes_what_comes_back() -> None:
    transport = FastHTTPTransport()
    release = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        await release.wait()
        writer.write(OK)

    async with RawServer(respond) as server:
        busy = asyncio.ensure_future(get(transport, server.url))
        await wait_until(lambda: len(server.requests) == 1)
        await transport.aclose()
        release.set()
        assert (await busy).content == b"ok"  # an exchange under way finishes...
        await wait_until(lambda: server.open_now == 0)  # ...and its connection is closed, not kept
        with pytest.raises(RuntimeError, match="closed"):
            await get(transport, server.url)


def test_closing_after_the_connections_loop_has_ended() -> None:
    """The store client closes the transports of loops whose threads have ended: their loops are closed."""
    transport = FastHTTPTransport()
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a server outside the loop: it keeps the connection

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(OK)
                done.wait(10)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        port = listener.getsockname()[1]
        response = asyncio.run(get(transport, f"http://127.0.0.1:{port}/"))
        assert response.content == b"ok"
        asyncio.run(transport.aclose())  # the idle connection's loop is closed: closing it raises nothing
        done.set()
        thread.join(10)
    assert transport._open == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FastHTTPTransport(max_connections=0)


@pytest.mark.asyncio
async def test_only_http_and_https(transport: FastHTTPTransport) -> None:
    with pytest.raises(httpx.UnsupportedProtocol, match="ftp"):
        await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/file"))


# ------------------------------------------------------------------------------------------------ timeouts


@pytest.mark.asyncio
async def test_a_server_that_does_not_answer_is_a_read_timeout(transport: FastHTTPTransport) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        if index == 1:
            await asyncio.Event().wait()
        writer.write(OK)

    async with RawServer(respond) as server:
        with pytest.raises(httpx.ReadTimeout):
            await get(transport, server.url, timeout=httpx.Timeout(5.0, read=0.05))
        assert transport._open == 0  # the connection was given up, not put back out of step
        assert (await get(transport, server.url)).content == b"ok"
    assert server.connections == 2


@pytest.mark.asyncio
async def test_a_server_that_does_not_read_is_a_write_timeout(transport: FastHTTPTransport) -> None:
    stalled = asyncio.Event()

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stalled.wait()
        writer.close()

    server = await asyncio.start_server(never_read, sock=_listening(4096))
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.WriteTimeout, match="timed out"):
            big = b"x" * (16 << 20)  # far more than the socket buffers take: the transport's own buffer fills
            await get(transport, f"http://127.0.0.1:{port}/", method="POST", content=big, timeout=_write_timeout)
    finally:
        stalled.set()
        server.close()
        await server.wait_closed()
    assert transport._open == 0


_write_timeout = httpx.Timeout(5.0, write=0.1)


def _listening(rcvbuf: int) -> socket.socket:
    """A socket for asyncio.start_server whose connections have a small receive window (it is inherited)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.asyncio
async def test_a_handshake_that_never_comes_is_a_connect_timeout(transport: FastHTTPTransport) -> None:
    # A TCP server that never speaks TLS: the TLS handshake is part of connecting.
    async with RawServer(answer(OK)) as server:
        with pytest.raises(httpx.ConnectTimeout, match="timed out"):
            await get(transport, f"https://127.0.0.1:{server.port}/", timeout=httpx.Timeout(5.0, connect=0.05))
    assert transport._open == 0


@pytest.mark.asyncio
async def test_a_request_cancelled_while_connecting_gives_its_slot_back() -> None:
    transport = FastHTTPTransport(max_connections=1)
    async with RawServer(answer(OK)) as server:  # speaks no TLS: the https connection hangs in its handshake
        connecting = asyncio.ensure_future(get(transport, f"https://127.0.0.1:{server.port}/"))
        await wait_until(lambda: server.connections == 1)
        connecting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await connecting
        assert transport._open == 0
        assert (await get(transport, server.url)).content == b"ok"
    await transport.aclose()


@pytest.mark.asyncio
async def test_nobody_listening_is_a_connect_error(transport: FastHTTPTransport) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(httpx.ConnectError, match="cannot connect"):
            await get(transport, f"http://127.0.0.1:{port}/")
    assert transport._open == 0


# ------------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificate_authority() -> Any:
    trustme = pytest.importorskip("trustme")
    return trustme.CA()


def _server_context(ca: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.mark.asyncio
async def test_https_against_a_self_signed_server(certificate_authority: Any) -> None:
    client_context = ssl.create_default_context()
    certificate_authority.configure_trust(client_context)
    transport = FastHTTPTransport(ssl_context=client_context)
    async with RawServer(answer(OK), ssl_context=_server_context(certificate_authority)) as server:
        assert server.url.startswith("https://")
        responses = [await get(transport, f"{server.url}/{i}") for i in range(3)]
    await transport.aclose()
    assert [r.content for r in responses] == [b"ok"] * 3
    assert server.connections == 1  # keep-alive over TLS too


@pytest.mark.asyncio
async def test_an_untrusted_certificate_is_a_connect_error(
    certificate_authority: Any, transport: FastHTTPTransport
) -> None:
    async with RawServer(answer(OK), ssl_context=_server_context(certificate_authority)) as server:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await get(transport, server.url)  # the default context does not trust the test CA
    assert transport._open == 0


# ------------------------------------------------------------------------------------------------ broken servers


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"", "without sending a response"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "in the middle of its response"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", "in the middle of its response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nwor", "in the middle"),
    ],
    ids=["before-the-response", "in-the-head", "in-the-body", "in-a-chunk"],
)
@pytest.mark.asyncio
async def test_a_server_closing_mid_response_is_a_clear_error(
    transport: FastHTTPTransport, sent: bytes, message: str
) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> bool:
        writer.write(sent)
        return False

    async with RawServer(respond) as server:
        with pytest.raises(httpx.RemoteProtocolError, match=message):
            await asyncio.wait_for(get(transport, server.url), 10)
    assert transport._open == 0


@pytest.mark.parametrize(
    "sent",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart", b"HTTP/1.0 200 OK\r\n\r\nto the close, but"],
    ids=["content-length", "read-to-close"],
)
@pytest.mark.asyncio
async def test_a_reset_mid_response_is_a_read_error(transport: FastHTTPTransport, sent: bytes) -> None:
    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> bool:
        writer.write(sent)
        await writer.drain()
        await asyncio.sleep(0.01)
        reset(writer)
        return False

    async with RawServer(respond) as server:
        with pytest.raises(httpx.ReadError, match="reading the response failed"):
            await asyncio.wait_for(get(transport, server.url), 10)
    assert transport._open == 0


@pytest.mark.asyncio
async def test_a_reset_while_the_request_is_sent_is_a_write_error(transport: FastHTTPTransport) -> None:
    async def stall_then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1000)  # the request has started to arrive: the client is writing
        reset(writer)

    server = await asyncio.start_server(stall_then_reset, sock=_listening(4096))
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises((httpx.WriteError, httpx.ReadError)):
            await asyncio.wait_for(
                get(transport, f"http://127.0.0.1:{port}/", method="POST", content=b"x" * (16 << 20)), 10
            )
    finally:
        server.close()
        await server.wait_closed()
    assert transport._open == 0


@pytest.mark.parametrize(
    ("sent", "message"),
    [
        (b"SMTP ready\r\n\r\n", "not an HTTP/1.1 response"),
        (b"HTTP/1.1 OK 200\r\n\r\n", "not an HTTP/1.1 response"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed response header"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n", "longer than its size"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024), "headers are too large"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n", "headers are too large"),
    ],
    ids=[
        "not-http",
        "status-not-a-number",
        "header-line",
        "content-length",
        "chunk-size",
        "chunk-overrun",
        "endless-head",
        "large-head",
    ],
)
@pytest.mark.asyncio
async def test_garbage_is_a_protocol_error_not_a_hang(transport: FastHTTPTransport, sent: bytes, message: str) -> None:
    async with RawServer(answer(sent)) as server:  # the server keeps the connection open: only parsing ends it
        with pytest.raises(httpx.RemoteProtocolError, match=message):
            await asyncio.wait_for(get(transport, server.url), 10)
    assert transport._open == 0


# ------------------------------------------------------------------------------------------------ the store client


@pytest.mark.asyncio
async def test_the_store_client_sends_its_calls_through_one_keep_alive_connection() -> None:
    from agl_kernel.client import LightningStoreClient

    capabilities = b'{"thread_safe":true,"async_safe":true,"durable":false,"multi_process":true,"remote":false}'

    async def respond(writer: asyncio.StreamWriter, request: bytes, index: int) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(capabilities)
        )
        writer.write(capabilities)

    async with RawServer(respond) as server:
        client = LightningStoreClient(server.url, token="secret")
        try:
            for _ in range(3):
                assert (await client.server_capabilities()).durable is False
        finally:
            await client.close()
    assert server.connections == 1
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[0] == b"GET /api/v1/capabilities HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in head
    assert b"Authorization: Bearer secret" in head

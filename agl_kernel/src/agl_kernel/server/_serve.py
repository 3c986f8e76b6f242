"""Running the app: :func:`serve` (blocking, for ``agl store serve``) and :class:`ServerThread` (in the background).

Both run uvicorn with uvloop and httptools where they are installed. Shutdown is graceful: the listening socket
closes, long polls return at the end of their current slice, in-flight requests finish (up to
``graceful_timeout`` seconds), and then the app's shutdown closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from litestar import Litestar

from agl_kernel.server._app import create_app, server_context
from agl_kernel.store.base import LightningStore

__all__ = ["ServerThread", "make_server", "running_server", "serve"]


def _fastest(module: str, fast: str, fallback: str) -> str:
    return fast if importlib.util.find_spec(module) is not None else fallback


class _Server(uvicorn.Server):
    """uvicorn's server, telling the app that shutdown has begun as soon as it does (so long polls end)."""

    def __init__(self, config: uvicorn.Config, app: Litestar) -> None:
        super().__init__(config)
        self._agl_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        server_context(self._agl_app).draining = True
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Like uvicorn's, but a SIGINT/SIGTERM that was handled gracefully is not raised again afterwards: the
        # process then exits normally (status 0), after the store has been closed.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _EmbeddedServer(_Server):
    """For a server inside someone else's event loop: the host program keeps its own signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(
    app: Litestar,
    *,
    embedded: bool = False,
    host: str = "127.0.0.1",
    port: int = 4747,
    log_level: str = "warning",
    access_log: bool = False,
    graceful_timeout: float = 10.0,
    keep_alive: int = 30,
) -> uvicorn.Server:
    """A uvicorn server for ``app`` (made by :func:`create_app`), not started."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=_fastest("uvloop", "uvloop", "asyncio"),
        http=_fastest("httptools", "httptools", "h11"),
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        timeout_keep_alive=keep_alive,
        timeout_graceful_shutdown=int(graceful_timeout) or None,
        server_header=False,
    )
    return (_EmbeddedServer if embedded else _Server)(config, app)


def _bound_socket(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP, and without it
    # Nagle's algorithm meets the client's delayed ACKs and every reused connection waits ~40 ms per request.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def running_server(
    store_or_app: LightningStore | Litestar,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    **app_options: Any,
) -> AsyncIterator[str]:
    """Serve a store from the current event loop while the ``async with`` body runs; yields the server's URL.

    ``port=0`` picks a free port. The store stays open afterwards (``close_store=False``): it belongs to the
    caller. Signals are left to the host program.
    """
    if isinstance(store_or_app, Litestar):
        app = store_or_app
    else:
        app_options.setdefault("close_store", False)
        app = create_app(store_or_app, token=token, **app_options)
    sock = _bound_socket(host, port)
    port = sock.getsockname()[1]
    # The host program stops its own clients first (e.g. the cs strategy's runners): a short grace is enough.
    server = make_server(app, host=host, port=port, embedded=True, graceful_timeout=3.0)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError(f"the agl server on {_url(host, port)} stopped while starting")
            await asyncio.sleep(0.005)
        yield _url(host, port)
    finally:
        server_context(app).draining = True
        server.should_exit = True
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            server.force_exit = True
            await task
            raise
        finally:
            sock.close()


def serve(
    store_or_app: LightningStore | Litestar,
    *,
    host: str = "127.0.0.1",
    port: int = 4747,
    token: str | None = None,
    log_level: str = "warning",
    access_log: bool = False,
    **app_options: Any,
) -> None:
    """Serve a store (an app is made for it with :func:`create_app`) or an app until SIGINT/SIGTERM."""
    app = store_or_app if isinstance(store_or_app, Litestar) else create_app(store_or_app, token=token, **app_options)
    make_server(app, host=host, port=port, log_level=log_level, access_log=access_log).run()


class ServerThread:
    """A real uvicorn server for ``app`` on a background thread with its own event loop.

    ``port=0`` picks a free port; :attr:`url` tells which. Use it as a context manager, or call :meth:`start` and
    :meth:`stop`. Used by the tests and by anything that embeds a store server in a process that does other work.
    """

    def __init__(self, app: Litestar, *, host: str = "127.0.0.1", port: int = 0, **server_options: Any) -> None:
        self.app = app
        self.host = host
        self._sock = _bound_socket(host, port)
        self.port: int = self._sock.getsockname()[1]
        self.server = make_server(app, host=host, port=self.port, **server_options)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self._sock])
        except BaseException as exc:
            self._error = exc

    def start(self, timeout: float = 10.0) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name=f"agl-server:{self.port}", daemon=True)
        self._thread.start()
        pause = threading.Event()
        for _ in range(int(timeout / 0.005)):
            if self.server.started or self._error is not None or not self._thread.is_alive():
                break
            pause.wait(0.005)
        if not self.server.started:
            self.stop()
            raise RuntimeError(f"the agl server on {self.url} did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down gracefully (as on SIGTERM) and wait for the thread."""
        server_context(self.app).draining = True
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

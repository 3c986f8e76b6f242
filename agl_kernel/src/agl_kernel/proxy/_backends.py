"""The proxy's backends: which one serves a rollout, which are down, and the gate that holds calls during a pause.

A rollout sticks to one backend (its calls reuse that server's prefix cache); new rollouts go to the least busy one.
A backend is skipped for ``retry_after`` seconds only when it is down, so that one request cannot take it out for
every rollout: when a connection to it cannot be opened (refused, or no answer within 5 s: nothing was sent, so the
request is not to blame), or when a call failed after it was sent (the connection closed, or no answer in time) and
a new connection to it fails too (any HTTP answer will do; calls failing together share one check). Such a call
fails alone (502 / 504). This is an nginx-style passive health check with a connection-level test instead of a
failure count: no threshold to tune, and a crashing request never counts against a backend that still accepts
connections.
"""

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Optional

import httpx

from agl_kernel.proxy._openai import MODELS_PATH, ProxyError

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Backend:
    url: str
    down_until: float = 0.0  # time.monotonic() until which it is skipped
    in_flight: int = 0
    assigned: int = 0  # rollouts assigned so far: spreads new rollouts when none is busier than another
    check: Optional["asyncio.Future[bool]"] = None  # the check under way after a failed call


class BackendPool:
    """The backend half of :class:`~agl_kernel.proxy.LLMProxy`: the backends by URL, the rollouts' choices (the
    ``sticky_rollouts`` most recent), and the gate and count of the calls in flight."""

    def __init__(self, urls: Iterable[str], *, retry_after: float, sticky_rollouts: int) -> None:
        self.retry_after = retry_after
        self._by_url: dict[str, Backend] = {}
        self.set_backends(urls)
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._sticky_size = sticky_rollouts
        # Health checks open a new connection each (no keep-alive): a pooled one says nothing about new ones.
        self._checker = httpx.AsyncClient(timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_keepalive_connections=0))
        self._open, self._drained = asyncio.Event(), asyncio.Event()  # calls may start; no call is in flight
        self._open.set()
        self._drained.set()
        self._in_flight = 0

    @property
    def backends(self) -> list[str]:
        return list(self._by_url)

    def set_backends(self, urls: Iterable[str]) -> None:
        """Replace the set of backends (rollouts on a removed backend move to another on their next call)."""
        urls = [u.rstrip("/") for u in urls]
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"a backend is an http(s) URL such as http://127.0.0.1:8000/v1, not {url!r}")
        self._by_url = {url: self._by_url.get(url) or Backend(url) for url in urls}

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    async def pause(self) -> None:
        """Hold new calls (they wait, they do not fail) and return once the calls in flight have finished."""
        self._open.clear()
        await self._drained.wait()

    def resume(self) -> None:
        self._open.set()

    async def aclose(self) -> None:
        await self._checker.aclose()

    def _healthy(self) -> list[Backend]:
        return [b for b in self._by_url.values() if time.monotonic() >= b.down_until]

    def _pick(self, rollout_id: str) -> Backend:
        """The rollout's backend: the one it used before if that is still here and up, else the least busy."""
        backend = self._by_url.get(self._sticky.get(rollout_id, ""))
        healthy = self._healthy()
        if backend not in healthy:
            if not healthy:
                detail = "no backend is configured" if not self._by_url else "every backend is unreachable"
                raise ProxyError(503, f"the LLM proxy cannot serve the call: {detail}", "service_unavailable")
            backend = min(healthy, key=lambda b: (b.in_flight, b.assigned))
            backend.assigned += 1
            self._sticky[rollout_id] = backend.url
            if len(self._sticky) > self._sticky_size:
                self._sticky.popitem(last=False)
        self._sticky.move_to_end(rollout_id)
        return backend

    async def _enter(self, rollout_id: str) -> Backend:
        """The rollout's backend, once calls are let through; pair with :meth:`_leave` when the call has ended."""
        await self._open.wait()
        backend = self._pick(rollout_id)
        backend.in_flight += 1
        self._in_flight += 1
        self._drained.clear()
        return backend

    def _leave(self, backend: Backend) -> None:
        backend.in_flight -= 1
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()

    def _mark_down(self, backend: Backend) -> None:
        backend.down_until = time.monotonic() + self.retry_after
        log.warning("LLM backend %s is down; skipping it for %g s", backend.url, self.retry_after)

    async def _check(self, backend: Backend) -> bool:
        """Whether ``backend`` still answers a new connection; marks it down if not. Calls failing at the same time
        share one check."""
        if backend.check is None or backend.check.done():
            backend.check = asyncio.ensure_future(self._probe(backend))
        return await asyncio.shield(backend.check)

    async def _probe(self, backend: Backend) -> bool:
        try:
            await self._checker.get(backend.url + MODELS_PATH)  # any HTTP answer, even an error, means it is up
        except httpx.HTTPError:
            self._mark_down(backend)
            return False
        return True


def serve_backends_option(values: Sequence[str]) -> list[str]:
    """``--backend`` values: each a URL, or several separated by commas."""
    return [url.strip() for value in values for url in value.split(",") if url.strip()]

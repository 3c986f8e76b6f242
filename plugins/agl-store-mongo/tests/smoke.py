"""Smoke use of agl-store-mongo installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a
fresh venv's python; it needs nothing else, not even pytest).

Without a server it checks what a user meets first: the store loads by name, its options are checked, and a server
that is not there is a one-line error within seconds. With ``AGL_TEST_MONGO_URI`` set, or ``secantusd-py`` (the
``testing`` extra) installed, it also enqueues a rollout, dequeues it, records a span and reads everything back from
a second store on the same partition.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from agl_kernel.errors import ConfigError
from agl_kernel.models import AttemptStatus, RolloutStatus, Span
from agl_kernel.plugins import create_component
from agl_store_mongo import MongoLightningStore, MongoUnreachableError

sys.path.insert(0, str(Path(__file__).parent))  # _secantus.py beside it (check_plugins_alone copies it too)

from _secantus import SecantusServer, executable, free_port


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


def offline_checks() -> None:
    try:
        create_component("stores", "mongo", options={"partition": "not/allowed"})
    except ConfigError as error:
        check("store.partition" in str(error), f"the error names the option: {error}")
    else:
        check(False, "a bad partition name was accepted")
    started = time.monotonic()
    try:
        create_component("stores", "mongo", uri=f"mongodb://127.0.0.1:{free_port()}/?replicaSet=rs0", connect_timeout=1)
    except MongoUnreachableError as error:
        check("no MongoDB server answered" in str(error), f"the unreachable error says so: {error}")
    else:
        check(False, "a store opened on a port where nothing listens")
    check(time.monotonic() - started < 15, "the unreachable server took too long to report")


async def online_checks(uri: str) -> None:
    store = create_component("stores", "mongo", uri=uri, database="smoke", partition=f"p{os.getpid()}")
    check(isinstance(store, MongoLightningStore), f"the `mongo` store is a {type(store).__name__}")
    async with store:
        queued = await store.enqueue_rollout({"question": "2+2"})
        attempted = await store.dequeue_rollout(worker_id="smoke", timeout=5)
        check(attempted is not None and attempted.rollout_id == queued.rollout_id, "the rollout was not dequeued")
        assert attempted is not None
        now = time.time()
        span = Span(
            rollout_id=attempted.rollout_id, attempt_id=attempted.attempt.attempt_id, trace_id="ab" * 16,
            span_id="cd" * 8, name="smoke", attributes={"answer": 4}, start_time=now, end_time=now,
        )  # fmt: skip
        stored = await store.add_span(span)
        check(stored.sequence_id == 1, f"the span's sequence id is {stored.sequence_id}")
        await store.update_attempt(attempted.rollout_id, attempted.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
    async with MongoLightningStore(uri, database="smoke", partition=f"p{os.getpid()}") as again:
        rollout = await again.get_rollout(queued.rollout_id)
        check(rollout.status is RolloutStatus.SUCCEEDED, f"the rollout is {rollout.status} in a second store")
        spans = (await again.query_spans(queued.rollout_id)).items
        check([(s.name, s.attributes) for s in spans] == [("smoke", {"answer": 4})], f"spans read back: {spans}")
    print(f"agl-store-mongo smoke: ok (rollout {queued.rollout_id}, 1 span, {store.describe()})")


def main() -> None:
    offline_checks()
    uri = os.environ.get("AGL_TEST_MONGO_URI")
    server = None
    if not uri:
        if executable() is None:
            print("agl-store-mongo smoke: ok (offline checks; no server: set AGL_TEST_MONGO_URI or install secantusdb)")
            return
        server = SecantusServer()
        uri = server.uri
    try:
        asyncio.run(online_checks(uri))
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()

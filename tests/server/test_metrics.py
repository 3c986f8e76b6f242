"""Prometheus /metrics: requests and latency by route, store operation latency, queue depth, rollouts by status;
one registry per app, so two servers in one process keep separate counts."""

from __future__ import annotations

import re

import httpx
import pytest

from agl_kernel.client import LightningStoreClient
from agl_kernel.models import AttemptStatus
from agl_kernel.server import ServerThread, create_app
from agl_kernel.store.memory import InMemoryLightningStore


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 if absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return 0.0


@pytest.mark.asyncio
async def test_metrics_of_two_apps_stay_apart() -> None:
    first, second = InMemoryLightningStore(), InMemoryLightningStore()
    with ServerThread(create_app(first, plugins=False)) as a, ServerThread(create_app(second, plugins=False)) as b:
        async with LightningStoreClient(a.url, batch_calls=False) as client:
            for i in range(3):
                await client.enqueue_rollout(i)
            taken = await client.dequeue_rollout(worker_id="w")
            assert taken is not None
            await client.update_attempt(taken.rollout_id, taken.attempt.attempt_id, status=AttemptStatus.SUCCEEDED)
            await client.get_rollout(taken.rollout_id)
        httpx.get(f"{a.url}/api/v1/nowhere")
        text = httpx.get(f"{a.url}/metrics").text
        assert sample(text, "agl_http_requests_total", method="POST", route="/api/v1/rollouts", status="201") == 3
        assert (
            sample(text, "agl_http_requests_total", method="GET", route="/api/v1/rollouts/{rollout_id}", status="200")
            == 1
        )
        assert sample(text, "agl_http_requests_total", route="<unmatched>", status="404") == 1
        assert sample(text, "agl_http_request_duration_seconds_count", method="POST", route="/api/v1/rollouts") == 3
        assert sample(text, "agl_store_operation_duration_seconds_count", operation="enqueue_rollout") == 3
        assert sample(text, "agl_store_operation_duration_seconds_bucket", operation="enqueue_rollout", le="+Inf") == 3
        assert sample(text, "agl_store_queue_depth") == 2
        assert sample(text, "agl_store_rollouts", status="queuing") == 2
        assert sample(text, "agl_store_rollouts", status="succeeded") == 1
        other = httpx.get(f"{b.url}/metrics").text
        assert sample(other, "agl_http_requests_total", method="POST", route="/api/v1/rollouts", status="201") == 0
        assert sample(other, "agl_store_queue_depth") == 0
        assert httpx.get(f"{a.url}/metrics").headers["content-type"].startswith("text/plain")

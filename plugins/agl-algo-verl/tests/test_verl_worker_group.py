"""verl's Ray worker-group glue on a CPU resource pool: a local Ray cluster bound to 127.0.0.1 (dashboard off, usage
statistics off), a worker group of two verl ``Worker`` processes, and one real call through verl's dispatch
(``DP_COMPUTE_PROTO``: the ``DataProto`` is split across the workers and their results concatenated back) with a
``DataProto`` built by the plugin from agl rows."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.verl


def _rows() -> list[Any]:
    from agl_algo_verl import Row

    return [
        Row(prompt_token_ids=[1, 2, 3][: 1 + i % 3], response_token_ids=list(range(10, 12 + i)),
            response_mask=[1] * (2 + i), reward=float(i % 2), uid=f"0-{i // 2}", rollout_id=f"ro-{i}")
        for i in range(6)
    ]  # fmt: skip


def _worker_class() -> type:
    import torch
    from verl import DataProto
    from verl.single_controller.base import Worker
    from verl.single_controller.base.decorator import Dispatch, register

    class RowStats(Worker):  # type: ignore[misc]
        """Per row of its share: the summed token-level reward, the generated tokens, and which worker it was."""

        @register(dispatch_mode=Dispatch.DP_COMPUTE_PROTO)
        def row_stats(self, data: DataProto) -> DataProto:
            return DataProto.from_dict(
                tensors={
                    "score": data.batch["rm_scores"].sum(-1),
                    "tokens": data.batch["response_mask"].sum(-1),
                    "rank": torch.full((len(data),), self.rank),
                    "pid": torch.full((len(data),), os.getpid()),
                }
            )

    return RowStats


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray

    from agl_algo_verl import VERLOptions
    from agl_algo_verl._trainer import ray_init_kwargs

    kwargs = ray_init_kwargs(VERLOptions())  # the algorithm's own settings: loopback, no dashboard, no usage stats
    assert kwargs["_node_ip_address"] == "127.0.0.1" and kwargs["include_dashboard"] is False
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    ray.init(**kwargs, num_cpus=2)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.timeout(900)  # Ray and two worker processes importing verl: minutes on a loaded 2-core machine
def test_a_verl_worker_group_on_a_cpu_pool_takes_a_dataproto_of_agl_rows(ray_cluster: Any) -> None:
    import torch
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    from agl_algo_verl._dataproto import to_dataproto

    ray = ray_cluster
    nodes = [(n.get("NodeManagerAddress"), n.get("Alive")) for n in ray.nodes()]
    assert [address for address, alive in nodes if alive] == ["127.0.0.1"], nodes
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    pool = RayResourcePool(process_on_nodes=[2], use_gpu=False, max_colocate_count=1)
    group = RayWorkerGroup(
        resource_pool=pool, ray_cls_with_init=RayClassWithInitArgs(cls=ray.remote(_worker_class())), device_name="cpu"
    )
    assert group.world_size == 2

    rows = _rows()
    data = to_dataproto(rows, pad_token_id=0).data
    out = group.row_stats(data)

    assert out.batch["score"].tolist() == [r.reward for r in rows]
    assert out.batch["tokens"].tolist() == [len(r.response_token_ids) for r in rows]
    assert out.batch["rank"].tolist() == [0, 0, 0, 1, 1, 1]  # split in order across the two workers, joined back
    pids = set(out.batch["pid"].tolist())
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
    assert torch.equal(out.batch["score"], data.batch["rm_scores"].sum(-1))

"""A batch through a real three-node Redis Cluster on loopback, configured by a
``redis+cluster://`` URL; `payloads.py` reads the payloads back from every node."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid

import pytest
import redis
from temporalio.testing import WorkflowEnvironment

from config import open_redis
from converter import make_data_converter
from models import OrderBatchRequest, workflow_id_for
from tests.support import PROJECT_DIR, RedisServer, client_with, start, undisturbed_summary
from worker import build_worker

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml


async def test_batches_through_a_redis_cluster(
    cluster_nodes: list[RedisServer], temporal_env: WorkflowEnvironment, task_queue: str
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster_nodes[0].port}"
    cluster = await open_redis(url)
    try:
        assert isinstance(cluster, redis.asyncio.RedisCluster)
        # Threshold 0 puts every payload in Redis, so the keys spread over the slots.
        client = client_with(temporal_env, make_data_converter(cluster, payload_size_threshold=0))
        requests = [OrderBatchRequest(f"cluster-{uuid.uuid4().hex[:6]}", 300) for _ in range(2)]
        async with build_worker(client, task_queue=task_queue):
            for request in requests:
                summary = await (await start(client, request, task_queue)).result()
                assert summary == undisturbed_summary(request)
        keys = [k async for k in cluster.scan_iter(match="temporalio:payloads:*")]
    finally:
        await cluster.aclose()

    per_node = []
    for node in cluster_nodes:
        with redis.Redis(port=node.port) as node_client:
            per_node.append(int(node_client.dbsize()))
    assert sum(per_node) == len(keys) >= 8
    assert sum(1 for count in per_node if count) >= 2, per_node  # really spread over nodes

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "REDIS_"))}
    env.update(
        REDIS_URL=url,
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        COLUMNS="250",
    )
    outputs = []
    for command in ("list", "gc"):
        result = await asyncio.to_thread(
            subprocess.run,
            ["uv", "run", "-m", "extras.payloads", command],
            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        for request in requests:
            assert workflow_id_for(request.batch_id) in result.stdout
        outputs.append(result.stdout)
    listed, dry_run = outputs
    assert f" {len(keys):,} " in listed.splitlines()[-2]  # the totals row counts every node
    assert "would delete 0 payloads" in dry_run


async def test_cluster_url_on_a_plain_redis_is_one_clear_sentence(
    redis_server: RedisServer,
) -> None:
    from config import ConfigError

    with pytest.raises(ConfigError) as caught:
        await open_redis(f"redis+cluster://127.0.0.1:{redis_server.port}")
    assert f"Could not reach Redis at redis+cluster://127.0.0.1:{redis_server.port}" in str(
        caught.value
    )

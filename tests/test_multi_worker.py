"""Scaling out: two `uv run worker.py` processes on one task queue share several batches, and
every batch completes with the right summary."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from codec import make_data_converter
from models import OrderBatchRequest
from starter import start_batch, workflow_id_for
from tests.conftest import PROJECT_DIR, RedisServer, client_with
from tests.support import undisturbed_summary
from tests.test_end_to_end import user_env

THRESHOLD = 10_000  # small, so even these small batches go through Redis
BATCHES = 6


@pytest.fixture
def two_workers(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer
) -> Iterator[list[subprocess.Popen[str]]]:
    env = user_env(
        TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        REDIS_URL=redis_server.url,
        PAYLOAD_SIZE_THRESHOLD=str(THRESHOLD),
    )
    workers = [
        subprocess.Popen(
            ["uv", "run", "worker.py"],
            cwd=PROJECT_DIR,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for worker in workers:
            assert worker.stderr is not None
            line = worker.stderr.readline()
            assert "Worker polling task queue" in line, line
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=30)


async def test_two_worker_processes_share_the_batches(
    two_workers: list[subprocess.Popen[str]],
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
) -> None:
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=THRESHOLD)
    )
    requests = [
        OrderBatchRequest(f"scale-{uuid.uuid4().hex[:6]}", 300 + 100 * n) for n in range(BATCHES)
    ]
    handles = [await start_batch(client, request) for request in requests]
    summaries = await asyncio.gather(*(handle.result() for handle in handles))
    identities: set[str] = set()
    for request, summary in zip(requests, summaries, strict=True):
        assert summary == undisturbed_summary(request)
        handle = client.get_workflow_handle(workflow_id_for(request.batch_id))
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                identities.add(event.activity_task_started_event_attributes.identity)
    # Both processes took tasks (the identity is the worker's pid@host).
    assert len(identities) == 2, identities
    # Every batch's order list is in Redis: one key per batch.
    stored = [k async for k in redis_client.scan_iter(match="temporalio:payloads:*")]
    assert len(stored) == BATCHES
    assert all(worker.poll() is None for worker in two_workers)

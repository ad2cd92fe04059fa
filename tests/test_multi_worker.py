"""Scaling out: two `uv run worker.py` processes on one task queue share several batches, and
every batch completes with the right summary."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from converter import make_data_converter
from extras.processes import WorkerProcess
from models import OrderBatchRequest
from tests.support import (
    RedisServer,
    client_with,
    page_handle,
    start,
    start_worker,
    undisturbed_summary,
)

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml

THRESHOLD = 10_000  # small, so even these small batches go through Redis
BATCHES = 6


@pytest.fixture
def two_workers(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, task_queue: str
) -> Iterator[list[WorkerProcess]]:
    address = temporal_env.client.service_client.config.target_host
    workers = [
        start_worker(
            address,
            redis_server.url,
            task_queue,
            via_uv=True,
            PAYLOAD_SIZE_THRESHOLD=str(THRESHOLD),
        )
        for _ in range(2)
    ]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.stop()


async def test_two_worker_processes_share_the_batches(
    two_workers: list[WorkerProcess],
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=THRESHOLD)
    )
    requests = [
        OrderBatchRequest(f"scale-{uuid.uuid4().hex[:6]}", 300 + 100 * n) for n in range(BATCHES)
    ]
    handles = [await start(client, request, task_queue) for request in requests]
    summaries = await asyncio.gather(*(handle.result() for handle in handles))
    identities: set[str] = set()
    for request, summary in zip(requests, summaries, strict=True):
        assert summary == undisturbed_summary(request)
        async for event in page_handle(client, request).fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                identities.add(event.activity_task_started_event_attributes.identity)
    # Both processes took tasks (the identity is the worker's pid@host).
    assert len(identities) == 2, identities
    # Every batch's order list is in Redis: one key per batch.
    stored = [k async for k in redis_client.scan_iter(match="temporalio:payloads:*")]
    assert len(stored) == BATCHES
    assert all(worker.process.poll() is None for worker in two_workers)

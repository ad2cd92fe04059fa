"""Faults a real deployment sees, against a real dev server and real redis-server processes:
Redis going away mid-batch, Redis restarting, a worker killed, a cancel, a replay, a burst."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from codec import make_data_converter
from models import OrderBatchRequest
from starter import start_batch, workflow_id_for
from tests.conftest import PROJECT_DIR, RedisServer, client_with, temporal_cli_path
from tests.support import (
    ACTIVITY_COMPLETED,
    WORKFLOW_TASK_FAILED,
    activity_worker,
    history,
    start_with_fetch_scheduled,
    undisturbed_summary,
    wait_for_attempt,
    wait_for_event,
    workflow_worker,
)
from tests.test_end_to_end import start_worker, user_env
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow

AOF = ("--appendonly", "yes")


@pytest.fixture
async def aof_redis(own_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of a redis-server with AOF persistence that the test may stop and restart."""
    own_redis.start(*AOF)
    client = redis.asyncio.Redis.from_url(own_redis.url)
    yield client
    await client.aclose()


async def test_redis_outage_mid_batch_is_retried_and_the_batch_completes(
    temporal_env: WorkflowEnvironment, own_redis: RedisServer, aof_redis: redis.asyncio.Redis
) -> None:
    client = client_with(temporal_env, make_data_converter(aof_redis))
    handle, request, task_queue = await start_with_fetch_scheduled(client, prefix="outage")

    # Redis goes away just as fetch_orders runs: storing its order list fails and is retried.
    own_redis.stop()
    async with activity_worker(client, task_queue):
        await wait_for_attempt(handle, 2)
        await asyncio.sleep(2)  # a few more seconds of outage
        own_redis.start(*AOF)
        fetched = await wait_for_event(handle, lambda event: event.event_type == ACTIVITY_COMPLETED)

    # Redis goes away again before the workflow reads the order list back: the workflow task
    # fails and is retried; AOF keeps the stored order list across the restart.
    own_redis.stop()
    async with workflow_worker(client, task_queue), activity_worker(client, task_queue):
        failed = await wait_for_event(
            handle, lambda event: event.event_type == WORKFLOW_TASK_FAILED
        )
        await asyncio.sleep(2)
        own_redis.start(*AOF)
        summary = await handle.result()

    assert summary == await undisturbed_summary(request)
    events = await history(handle)
    [fetch_started] = [
        e.activity_task_started_event_attributes
        for e in events
        if e.event_id == fetched.activity_task_completed_event_attributes.started_event_id
    ]
    assert fetch_started.attempt >= 2
    assert "RedisStorageDriver store failed" in str(fetch_started.last_failure)
    assert "RedisStorageDriver retrieve failed" in str(
        failed.workflow_task_failed_event_attributes.failure
    )


async def wait_until_processing(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until process_orders has heartbeated, i.e. it is part-way through the batch."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pending = (await handle.describe()).raw_description.pending_activities
        if pending and pending[0].activity_type.name == "process_orders":
            if pending[0].heartbeat_details.payloads:
                return
        await asyncio.sleep(0.2)
    raise AssertionError("process_orders never heartbeated")


async def test_killed_worker_is_replaced_and_the_batch_completes(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    request = OrderBatchRequest(f"kill-{uuid.uuid4().hex[:8]}", 5_000)
    # About 10 s of pricing, so there is a middle to kill the worker in.
    first = start_worker(temporal_env, redis_server.url, CARRIER_LOOKUP_LATENCY_MS="2")
    try:
        handle = await start_batch(client, request)
        await wait_until_processing(handle)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = start_worker(temporal_env, redis_server.url)
    try:
        summary = await handle.result()
    finally:
        second.send_signal(signal.SIGINT)
        second.wait(timeout=30)

    assert summary == await undisturbed_summary(request)
    started = [
        e.activity_task_started_event_attributes
        for e in await history(handle)
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert started[-1].attempt == 2  # process_orders ran again after the heartbeat timeout
    assert "Heartbeat" in str(started[-1].last_failure), started[-1].last_failure


async def test_cancel_stops_process_orders_and_the_starter_says_cancelled(
    temporal_env: WorkflowEnvironment, redis_server: RedisServer, redis_client: redis.asyncio.Redis
) -> None:
    address = temporal_env.client.service_client.config.target_host
    client = client_with(temporal_env, make_data_converter(redis_client))
    batch_id = f"cancel-{uuid.uuid4().hex[:8]}"
    worker = start_worker(temporal_env, redis_server.url, CARRIER_LOOKUP_LATENCY_MS="5")
    env = user_env(TEMPORAL_ADDRESS=address, REDIS_URL=redis_server.url, COLUMNS="200")
    starter = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", "--batch-id", batch_id, "--orders", "5000",
        cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        handle = client.get_workflow_handle(workflow_id_for(batch_id))
        await wait_for_event_when_started(handle)
        await wait_until_processing(handle)
        cancel = await asyncio.create_subprocess_exec(
            temporal_cli_path(), "workflow", "cancel", "--workflow-id", handle.id,
            "--address", address, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        cancel_output, _ = await cancel.communicate()
        assert cancel.returncode == 0, cancel_output
        output = (await asyncio.wait_for(starter.communicate(), 120))[0].decode()
    finally:
        worker.send_signal(signal.SIGINT)
        worker.wait(timeout=30)
        if starter.returncode is None:
            starter.kill()

    assert starter.returncode == 1
    assert f"Batch {batch_id} was cancelled" in output, output
    assert "Traceback" not in output
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    events = await history(handle)
    requested = next(
        e for e in events if e.HasField("workflow_execution_cancel_requested_event_attributes")
    )
    [stopped] = [e for e in events if e.HasField("activity_task_canceled_event_attributes")]
    assert not any(
        e.HasField("activity_task_completed_event_attributes") and e.event_id > requested.event_id
        for e in events
    )
    seconds = (stopped.event_time.ToDatetime() - requested.event_time.ToDatetime()).total_seconds()
    print(f"process_orders stopped {seconds:.2f}s after the cancel request")


async def wait_for_event_when_started(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the starter has started the workflow."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            await handle.describe()
            return
        except RPCError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id} was never started")


async def test_replay_of_a_finished_batch_resolves_its_references(
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    request = OrderBatchRequest(f"replay-{uuid.uuid4().hex[:8]}", 5_000)
    async with build_worker(client):
        handle = await start_batch(client, request)
        await handle.result()
    workflow_history = await handle.fetch_history()
    replayer = Replayer(workflows=[ProcessOrderBatchWorkflow], data_converter=client.data_converter)

    result = await replayer.replay_workflow(workflow_history)
    assert result.replay_failure is None

    # Replay really reads the order list back from Redis: without it, replay fails.
    await redis_client.flushdb()
    caplog.set_level(logging.ERROR)
    failed = await replayer.replay_workflow(workflow_history, raise_on_replay_failure=False)
    assert failed.replay_failure is not None
    assert "RedisStorageDriver payload not found" in caplog.text


async def test_fifty_batches_at_once_through_one_worker(
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A lower threshold sends each 300-order list (about 28 KiB compressed) to Redis.
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=16 * 1024)
    )
    requests = [OrderBatchRequest(f"load-{uuid.uuid4().hex[:8]}-{n}", 300) for n in range(50)]
    caplog.set_level(logging.WARNING)
    async with build_worker(client):
        handles = [await start_batch(client, request) for request in requests]
        summaries = await asyncio.gather(*(handle.result() for handle in handles))

    for request, summary in zip(requests, summaries, strict=True):
        assert summary == await undisturbed_summary(request)
    # Content addressing: both hops of a batch share one key, and batches never share one.
    keys = [key.decode() async for key in redis_client.scan_iter(match="temporalio:payloads:*")]
    assert len(keys) == len(requests)
    for request in requests:
        scope = f":wi:{workflow_id_for(request.batch_id)}:"
        assert sum(scope in key for key in keys) == 1
    # Nothing logged by the SDK (Python logging) or its core (written straight to stderr).
    assert [record.getMessage() for record in caplog.records] == []
    core_log = capfd.readouterr().err
    assert " WARN" not in core_log and "ERROR" not in core_log, core_log

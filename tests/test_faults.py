"""Faults a real deployment sees, against a real dev server and real redis-server processes:
Redis going away or losing data mid-batch, a worker killed, a cancel, a replay, a burst."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest
import redis.asyncio
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from config import open_redis
from converter import make_data_converter
from extras.codec_server import build_app, serve
from extras.references import storage_reference
from extras.report import payloads_by_hop, unreadable_payloads
from models import OrderBatchRequest, OrderPage, workflow_id_for
from sample_data import generate_orders
from tests.support import (
    ACTIVITY_COMPLETED,
    CHILD_FAILED,
    PROJECT_DIR,
    WORKFLOW_TASK_FAILED,
    RedisServer,
    activity_worker,
    client_with,
    history,
    of_type,
    page_handle,
    run_fetch_only,
    start,
    start_with_fetch_scheduled,
    start_worker,
    temporal_cli_path,
    undisturbed_summary,
    user_env,
    wait_for_attempt,
    wait_for_event,
    wait_until_processing,
    workflow_worker,
)
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

pytestmark = pytest.mark.slow  # real processes and whole batches: see pyproject.toml

AOF = ("--appendonly", "yes")


def address_of(temporal_env: WorkflowEnvironment) -> str:
    return temporal_env.client.service_client.config.target_host


@pytest.fixture
async def aof_redis(own_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client (the sample's, reconnecting) of a redis-server with AOF persistence that the
    test may stop and restart."""
    own_redis.start(*AOF)
    client = await open_redis(own_redis.url)
    yield client  # type: ignore[misc]
    await client.aclose()


def order_list_key(events: list[Any]) -> str:
    [key] = {
        ref.claim_data["key"]
        for _, payload in payloads_by_hop(events, page=True)
        if (ref := storage_reference(payload))
    }
    return key


async def test_redis_outage_mid_page_is_retried_and_the_batch_completes(
    temporal_env: WorkflowEnvironment, own_redis: RedisServer, aof_redis: redis.asyncio.Redis
) -> None:
    client = client_with(temporal_env, make_data_converter(aof_redis))
    handle, page, request, task_queue = await start_with_fetch_scheduled(client, prefix="outage")

    # Redis goes away just as fetch_orders runs, for longer than the client's own retries:
    # storing the order list fails and Temporal retries the activity.
    own_redis.stop()
    async with activity_worker(client, task_queue):
        await wait_for_attempt(page, 2)
        own_redis.start(*AOF)
        fetched = await wait_for_event(page, of_type(ACTIVITY_COMPLETED))

    # Redis goes away again before the page's workflow reads the order list back: the
    # workflow task fails and is retried; AOF keeps the stored order list across the restart.
    own_redis.stop()
    async with workflow_worker(client, task_queue), activity_worker(client, task_queue):
        failed = await wait_for_event(page, of_type(WORKFLOW_TASK_FAILED))
        own_redis.start(*AOF)
        summary = await handle.result()

    assert summary == undisturbed_summary(request)
    events = await history(page)
    [fetch_started] = [
        e.activity_task_started_event_attributes
        for e in events
        if e.event_id == fetched.activity_task_completed_event_attributes.started_event_id
    ]
    assert fetch_started.attempt >= 2
    # The cause is in the message, short enough that history keeps it whole.
    for failure in (
        fetch_started.last_failure,
        failed.workflow_task_failed_event_attributes.failure,
    ):
        assert f"Redis at 127.0.0.1:{own_redis.port}/0 failed" in failure.message, failure
        assert failure.message != "Failure exceeds size limit."


async def test_killed_worker_mid_page_resumes_and_finished_pages_are_not_redone(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    # Six pages, four at a time; about 2 s of pricing a page, so there is a middle to kill in.
    request = OrderBatchRequest(f"kill-{uuid.uuid4().hex[:8]}", 6_000, page_size=1_000)
    first = start_worker(
        address_of(temporal_env), redis_server.url, task_queue, CARRIER_LOOKUP_LATENCY_MS="2"
    )
    try:
        handle = await start(client, request, task_queue)
        # Kill it while page 5 (of the second wave) is part-way through its pricing.
        await wait_until_processing(page_handle(client, request, 5))
    finally:
        first.kill()
    finished_before = {
        p for p in range(1, 7) if await _page_status(client, request, p) == "COMPLETED"
    }
    assert finished_before, "no page had finished before the kill"
    second = start_worker(address_of(temporal_env), redis_server.url, task_queue)
    try:
        summary = await handle.result()
    finally:
        second.stop()

    assert summary == undisturbed_summary(request)
    for number in range(1, 7):
        page = page_handle(client, request, number)
        runs = [r async for r in client.list_workflows(f"WorkflowId = '{page.id}'")]
        assert len(runs) == 1, number  # no page ran twice
        started = [
            e.activity_task_started_event_attributes
            for e in await history(page)
            if e.HasField("activity_task_started_event_attributes")
        ]
        if number in finished_before:
            assert [s.attempt for s in started] == [1, 1], number  # fetched and priced once
    # The page that was killed part-way resumed after its last heartbeat.
    page_five = [
        e.activity_task_started_event_attributes
        for e in await history(page_handle(client, request, 5))
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert page_five[-1].attempt == 2 and "Heartbeat" in str(page_five[-1].last_failure)
    assert "Resuming after order" in " ".join(second.log.split())


async def _page_status(client: Client, request: OrderBatchRequest, number: int) -> str:
    try:
        status = (await page_handle(client, request, number).describe()).status
    except Exception:
        return "NOT STARTED"
    return status.name if status else "?"


async def test_lost_order_list_is_fetched_again_and_the_batch_completes(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    """Worker killed during process_orders, Redis flushed, worker restarted."""
    client = client_with(temporal_env, make_data_converter(redis_client))
    request = OrderBatchRequest(f"lost-{uuid.uuid4().hex[:8]}", 5_000)
    first = start_worker(
        address_of(temporal_env), redis_server.url, task_queue, CARRIER_LOOKUP_LATENCY_MS="2"
    )
    try:
        handle = await start(client, request, task_queue)
        await wait_until_processing(page_handle(client, request))
    finally:
        first.kill()
    await redis_client.flushall()
    second = start_worker(address_of(temporal_env), redis_server.url, task_queue)
    try:
        healed = time.monotonic()
        summary = await handle.result()
        healed = time.monotonic() - healed
    finally:
        second.stop()

    assert summary == undisturbed_summary(request)
    events = await history(handle)
    [failed] = [e for e in events if e.event_type == CHILD_FAILED]
    failure = str(failed.child_workflow_execution_failed_event_attributes.failure)
    assert "PayloadNotFoundError" in failure and "Payload not found in Redis" in failure
    summaries = [
        e.user_metadata.summary.data
        for e in events
        if e.HasField("start_child_workflow_execution_initiated_event_attributes")
    ]
    assert len(summaries) == 2 and b"run 2: fetching the orders again" in summaries[1]
    assert "running it again from fetch_orders (run 2 of 3)" in " ".join(second.log.split())
    print(f"lost order list healed; the batch completed {healed:.1f}s after the new worker")


async def test_order_list_lost_before_the_workflow_reads_it_is_fetched_again(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    handle, page, request, task_queue = await start_with_fetch_scheduled(client, prefix="gone")
    await run_fetch_only(page, client, task_queue)
    first_run = (await page.describe()).run_id
    await redis_client.flushdb()  # e.g. a restart without persistence

    async with workflow_worker(client, task_queue), activity_worker(client, task_queue):
        assert await handle.result() == undisturbed_summary(request)

    # The page's first run failed at once (not retried for minutes) and a second run healed it.
    first = await history(client.get_workflow_handle(page.id, run_id=first_run))
    assert first[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    assert "PayloadNotFoundError" in str(first[-1])


async def test_tampered_order_list_fails_the_batch_naming_the_key(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    handle, page, _, task_queue = await start_with_fetch_scheduled(client, prefix="tamper")
    await run_fetch_only(page, client, task_queue)
    key = order_list_key(await history(page))
    stored = cast("bytes", await redis_client.get(key))
    await redis_client.set(key, stored[:-1] + bytes([stored[-1] ^ 1]))  # flip one bit

    async with workflow_worker(client, task_queue), activity_worker(client, task_queue):
        with pytest.raises(WorkflowFailureError) as caught:
            await handle.result()

    error = caught.value.cause
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert error.type == "PayloadIntegrityError"
    assert key in str(error) and "changed after it was written" in str(error)
    runs = [r async for r in client.list_workflows(f"WorkflowId = '{page.id}'")]
    assert len(runs) == 1  # never fetched again silently


@pytest.mark.parametrize("persistence", ["aof", "none"])
async def test_redis_killed_mid_batch_and_restarted_the_starter_reports_cleanly(
    temporal_env: WorkflowEnvironment, own_redis: RedisServer, persistence: str, task_queue: str
) -> None:
    """SIGKILL during fetch_orders of a large batch, restarted on the same port; the starter
    runs as a user runs it and must end with the summary, exit 0 and no traceback."""
    options = AOF if persistence == "aof" else ()
    own_redis.start(*options)
    address = address_of(temporal_env)
    worker = start_worker(address, own_redis.url, task_queue)
    batch_id = f"sigkill-{persistence}-{uuid.uuid4().hex[:8]}"
    request = OrderBatchRequest(batch_id, 30_000)
    starter = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", "--batch-id", batch_id, "--orders", "30000",
        "--page-size", "10000", cwd=PROJECT_DIR,
        env=user_env(TEMPORAL_ADDRESS=address, REDIS_URL=own_redis.url, COLUMNS="200",
                     TEMPORAL_TASK_QUEUE=task_queue),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = client_with(temporal_env, make_data_converter(await open_redis(own_redis.url)))
        # Kill Redis once a fetch has completed and others are still fetching.
        await wait_for_event(page_handle(client, request, 1), of_type(ACTIVITY_COMPLETED))
        own_redis.kill()
        own_redis.start(*options)
        output = (await asyncio.wait_for(starter.communicate(), 240))[0].decode()
    finally:
        worker.stop()
        if starter.returncode is None:
            starter.kill()

    assert starter.returncode == 0, output
    assert "Traceback" not in output + worker.log, output + worker.log
    expected = undisturbed_summary(request)
    assert f"${expected.total_shipping_cost_cents / 100:,.2f} │" in output  # the undisturbed total


async def test_redis_restarted_while_the_starter_reports(
    temporal_env: WorkflowEnvironment, own_redis: RedisServer, task_queue: str
) -> None:
    own_redis.start(*AOF)
    address = address_of(temporal_env)
    request = OrderBatchRequest(f"report-{uuid.uuid4().hex[:8]}", 20_000, page_size=1_000)
    redis_client = await open_redis(own_redis.url)
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=16 * 1024)
    )
    async with build_worker(client, task_queue=task_queue):
        await (await start(client, request, task_queue)).result()
    await redis_client.aclose()
    # The starter reports the finished batch: 20 order lists to read back from Redis. Kill
    # Redis as soon as the summary is printed, i.e. while the report is being built.
    starter = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "extras.starter", "--batch-id", request.batch_id, cwd=PROJECT_DIR,
        env=user_env(TEMPORAL_ADDRESS=address, REDIS_URL=own_redis.url, COLUMNS="200",
                     PAYLOAD_SIZE_THRESHOLD=str(16 * 1024), TEMPORAL_TASK_QUEUE=task_queue),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert starter.stdout is not None
    lines = []
    while line := (await asyncio.wait_for(starter.stdout.readline(), 120)).decode():
        lines.append(line)
        if "Top destinations" in line:
            own_redis.kill()
            threading.Timer(0.5, own_redis.start, AOF).start()
    await asyncio.wait_for(starter.wait(), 120)
    output = "".join(lines)
    assert starter.returncode == 0, output
    assert "Traceback" not in output
    assert "Payloads in history" in output, output


async def test_cancel_stops_process_orders_and_the_starter_says_cancelled(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    address = address_of(temporal_env)
    client = client_with(temporal_env, make_data_converter(redis_client))
    batch_id = f"cancel-{uuid.uuid4().hex[:8]}"
    request = OrderBatchRequest(batch_id, 5_000)
    worker = start_worker(address, redis_server.url, task_queue, CARRIER_LOOKUP_LATENCY_MS="5")
    env = user_env(TEMPORAL_ADDRESS=address, REDIS_URL=redis_server.url, COLUMNS="200",
                   TEMPORAL_TASK_QUEUE=task_queue)  # fmt: skip
    starter = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", "--batch-id", batch_id, "--orders", "5000",
        cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        page = page_handle(client, request)
        await wait_until_processing(page)
        cancel = await asyncio.create_subprocess_exec(
            temporal_cli_path(), "workflow", "cancel", "--workflow-id", workflow_id_for(batch_id),
            "--address", address, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        cancel_output, _ = await cancel.communicate()
        assert cancel.returncode == 0, cancel_output
        output = (await asyncio.wait_for(starter.communicate(), 120))[0].decode()
    finally:
        worker.stop()
        if starter.returncode is None:
            starter.kill()

    assert starter.returncode == 1
    assert f"Batch {batch_id} was cancelled" in output, output
    assert "Traceback" not in output
    handle = client.get_workflow_handle(workflow_id_for(batch_id))
    assert (await handle.describe()).status == WorkflowExecutionStatus.CANCELED
    events = await history(page)
    requested = next(
        e for e in events if e.HasField("workflow_execution_cancel_requested_event_attributes")
    )
    [stopped] = [e for e in events if e.HasField("activity_task_canceled_event_attributes")]
    assert not any(
        e.HasField("activity_task_completed_event_attributes") and e.event_id > requested.event_id
        for e in events
    )
    seconds = (stopped.event_time.ToDatetime() - requested.event_time.ToDatetime()).total_seconds()
    assert seconds < 10  # within the heartbeat timeout
    print(f"process_orders stopped {seconds:.2f}s after the cancel request")


async def test_replay_of_a_paged_batch_resolves_its_references(
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    task_queue: str,
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    request = OrderBatchRequest(f"replay-{uuid.uuid4().hex[:8]}", 15_000)
    async with build_worker(client, task_queue=task_queue):
        handle = await start(client, request, task_queue)
        await handle.result()
    replayer = Replayer(
        workflows=[ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow],
        data_converter=client.data_converter,
    )
    batch_history = await handle.fetch_history()
    page_histories = [await page_handle(client, request, n).fetch_history() for n in (1, 2)]

    for workflow_history in [batch_history, *page_histories]:
        result = await replayer.replay_workflow(workflow_history)
        assert result.replay_failure is None

    # With the order lists gone from Redis, replay still passes (the workflows only pass them
    # on, and a lost one reads back as a placeholder), so a replay check in CI never blames
    # the workflow code; the report names what is missing instead.
    await redis_client.flushdb()
    for workflow_history in [batch_history, *page_histories]:
        result = await replayer.replay_workflow(workflow_history)
        assert result.replay_failure is None
    errors = await unreadable_payloads(page_histories[0].events, client.data_converter)
    assert len(errors) == 2  # fetch_orders' result and process_orders' input: one key
    assert {e.type for e in errors} == {"PayloadNotFoundError"}
    assert "Payload not found in Redis" in str(errors[0])


async def test_fifty_batches_at_once_through_one_worker(
    temporal_env: WorkflowEnvironment,
    redis_client: redis.asyncio.Redis,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    task_queue: str,
) -> None:
    # A lower threshold sends each 300-order list (about 28 KiB compressed) to Redis.
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=16 * 1024)
    )
    requests = [OrderBatchRequest(f"load-{uuid.uuid4().hex[:8]}-{n}", 300) for n in range(50)]
    caplog.set_level(logging.WARNING)
    async with build_worker(client, task_queue=task_queue):
        handles = [await start(client, request, task_queue) for request in requests]
        summaries = await asyncio.gather(*(handle.result() for handle in handles))

    for request, summary in zip(requests, summaries, strict=True):
        assert summary == undisturbed_summary(request)
    # Content addressing: both hops of a page share one key, and pages never share one.
    keys = [key.decode() async for key in redis_client.scan_iter(match="temporalio:payloads:*")]
    assert len(keys) == len(requests)
    for request in requests:
        scope = f":wi:{workflow_id_for(request.batch_id)}-page-1:"
        assert sum(scope in key for key in keys) == 1
    # Nothing logged by the SDK (Python logging) or its core (written straight to stderr).
    assert [record.getMessage() for record in caplog.records] == []
    core_log = capfd.readouterr().err
    assert " WARN" not in core_log and "ERROR" not in core_log, core_log


def restart(server: RedisServer, *options: str) -> None:
    """SIGKILL a redis-server and start it again on the same port, as a crash and a
    supervisor would."""
    server.kill()
    server.start(*options)


async def test_codec_server_answers_the_first_request_after_a_redis_restart(
    own_redis: RedisServer,
) -> None:
    own_redis.start(*AOF)
    redis_client = await open_redis(own_redis.url)
    try:
        converter = make_data_converter(redis_client, payload_size_threshold=8 * 1024)
        values = [OrderPage("codec-restart", 1, 0, generate_orders("codec-restart", 0, 300))]
        [stored] = await converter.encode(values)
        assert storage_reference(stored) is not None
        body = {"payloads": [json_format.MessageToDict(stored)]}
        async with (
            serve(build_app(converter), "127.0.0.1", 0) as url,
            aiohttp.ClientSession() as http,
        ):
            async with http.post(f"{url}/decode", json=body) as before:
                assert before.status == 200
            restart(own_redis, *AOF)  # the server's pooled connection is now dead
            async with http.post(f"{url}/decode", json=body) as after:
                assert after.status == 200, await after.text()
                [decoded] = (await after.json())["payloads"]
        assert (
            json_format.ParseDict(decoded, Payload())
            == converter.payload_converter.to_payloads(values)[0]
        )
    finally:
        await redis_client.aclose()


async def test_ctrl_c_on_the_worker_lets_running_activities_finish(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    request = OrderBatchRequest(f"graceful-{uuid.uuid4().hex[:8]}", 3_000)
    # About 6 s of pricing: Ctrl+C lands in the middle of it.
    worker = start_worker(
        address_of(temporal_env), redis_server.url, task_queue, CARRIER_LOOKUP_LATENCY_MS="2"
    )
    try:
        handle = await start(client, request, task_queue)
        page = page_handle(client, request)
        await wait_until_processing(page)
        code = await asyncio.to_thread(worker.stop)
    finally:
        worker.kill()
    assert code == 0, worker.log
    log = " ".join(worker.log.split())
    assert "running activities get up to 30 s to finish" in log and "Worker stopped." in log
    # process_orders finished its first attempt on the stopping worker: nothing was cancelled.
    events = await history(page)
    [completed] = [
        e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    ][1:]
    started = next(
        e.activity_task_started_event_attributes
        for e in events
        if e.event_id == completed.activity_task_completed_event_attributes.started_event_id
    )
    assert started.attempt == 1
    # Someone has to finish the batch's workflow tasks.
    async with build_worker(client, task_queue=task_queue):
        assert await handle.result() == undisturbed_summary(request)


async def test_ctrl_c_on_the_starter_says_the_batch_keeps_running(
    temporal_env: WorkflowEnvironment,
    redis_server: RedisServer,
    redis_client: redis.asyncio.Redis,
    task_queue: str,
) -> None:
    client = client_with(temporal_env, make_data_converter(redis_client))
    batch_id = f"ctrl-c-{uuid.uuid4().hex[:8]}"
    worker = start_worker(
        address_of(temporal_env), redis_server.url, task_queue, CARRIER_LOOKUP_LATENCY_MS="2"
    )
    starter = await asyncio.create_subprocess_exec(
        sys.executable, "starter.py", "--batch-id", batch_id, "--orders", "3000",
        cwd=PROJECT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=user_env(TEMPORAL_ADDRESS=address_of(temporal_env), REDIS_URL=redis_server.url,
                     COLUMNS="200", TEMPORAL_TASK_QUEUE=task_queue),
    )  # fmt: skip
    try:
        assert starter.stdout is not None
        first = (await asyncio.wait_for(starter.stdout.readline(), 60)).decode()
        assert first.startswith(f"Started batch {batch_id}"), first
        starter.send_signal(signal.SIGINT)
        output = first + (await asyncio.wait_for(starter.communicate(), 60))[0].decode()
        handle = client.get_workflow_handle_for(
            ProcessOrderBatchWorkflow.run, workflow_id_for(batch_id)
        )
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        summary = await handle.result()
    finally:
        worker.stop()
    assert starter.returncode == 130
    assert "Traceback" not in output
    text = " ".join(output.split())
    assert f"Batch {batch_id} keeps running; see it with:" in text, text
    assert f"uv run starter.py --batch-id {batch_id} --orders 3000 --page-size 5000" in text
    assert summary.order_count == 3_000

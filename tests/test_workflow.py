"""A batch through a real dev server and a real redis-server, with the shared DataConverter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
import redis.asyncio
from rich.console import Console
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from converter import make_data_converter
from extras.references import storage_reference
from extras.report import payload_report, payloads_by_hop
from models import DEFAULT_ORDER_COUNT, BatchSummary, OrderBatchRequest, workflow_id_for
from starter import run_batch, start_or_find
from tests.support import client_with, history, page_handle, undisturbed_summary
from worker import build_worker
from workflows import PAGES_PER_RUN, ProcessOrderBatchWorkflow


@pytest.fixture
async def client(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> AsyncIterator[Client]:
    """A client with the sample's DataConverter, and the sample's worker running on it."""
    client = client_with(temporal_env, make_data_converter(redis_client))
    async with build_worker(client, task_queue=task_queue):
        yield client


async def run(client: Client, request: OrderBatchRequest, task_queue: str) -> BatchSummary:
    return await client.execute_workflow(
        ProcessOrderBatchWorkflow.run,
        request,
        id=workflow_id_for(request.batch_id),
        task_queue=task_queue,
    )


async def test_default_batch_offloads_only_the_order_list(
    client: Client, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    request = OrderBatchRequest(f"it-{uuid.uuid4().hex[:8]}", DEFAULT_ORDER_COUNT)
    summary = await run(client, request, task_queue)
    assert summary == undisturbed_summary(request)

    # The default batch is one page: the batch's history holds only small values...
    handle = client.get_workflow_handle(workflow_id_for(request.batch_id))
    batch_hops = payloads_by_hop(await history(handle), page=False)
    assert [hop for hop, _ in batch_hops] == [
        "batch input",
        "page input",
        "page result",
        "batch result",
    ]
    assert not any(storage_reference(payload) for _, payload in batch_hops)

    # ...and the page's history holds the order list as a reference, both hops one key.
    page = page_handle(client, request)
    page_run = (await page.describe()).run_id
    hops = {hop: storage_reference(p) for hop, p in payloads_by_hop(await history(page), page=True)}
    assert list(hops) == [
        "fetch_orders input",
        "fetch_orders output",
        "process_orders input",
        "process_orders output",
    ]
    external = {hop for hop, reference in hops.items() if reference is not None}
    assert external == {"fetch_orders output", "process_orders input"}
    keys = {hops[hop].claim_data["key"] for hop in external}  # type: ignore[union-attr]
    assert len(keys) == 1
    [key] = keys
    assert key.startswith("temporalio:payloads:v0:ns:default:wt:ProcessOrderPageWorkflow:")
    assert f":wi:{quote(page.id, safe='')}:ri:{page_run}:" in key
    stored = [k.decode() async for k in redis_client.scan_iter(match="temporalio:payloads:*")]
    assert stored == [key]

    description = await handle.describe()
    report = await payload_report(client, handle.id, description.run_id, client.data_converter)
    rows = {row.hop: row for row in report.hops}
    order_list = rows["fetch_orders output"]
    assert order_list.in_redis and order_list.redis_keys == [key]
    assert order_list.stored_bytes > 256 * 1024
    assert order_list.original_bytes is not None
    assert order_list.original_bytes > 5 * order_list.stored_bytes
    assert order_list.history_bytes < 1024
    assert not rows["batch result"].in_redis
    assert report.problem is None


async def test_paged_and_unpaged_runs_of_a_batch_give_the_same_summary(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis, task_queue: str
) -> None:
    # A lower threshold still sends each 400-order page (about 37 KiB compressed) to Redis.
    client = client_with(
        temporal_env, make_data_converter(redis_client, payload_size_threshold=16 * 1024)
    )
    batch_id = f"paged-{uuid.uuid4().hex[:8]}"
    async with build_worker(client, task_queue=task_queue):
        whole = await run(client, OrderBatchRequest(batch_id, 2_000, page_size=2_000), task_queue)
        # Same batch id, so the same orders; another workflow id, so it runs again.
        paged = await client.execute_workflow(
            ProcessOrderBatchWorkflow.run,
            OrderBatchRequest(batch_id, 2_000, page_size=400),
            id=workflow_id_for(batch_id) + "-paged",
            task_queue=task_queue,
        )
    assert paged == whole == undisturbed_summary(OrderBatchRequest(batch_id, 2_000))
    pages = [
        k.decode() async for k in redis_client.scan_iter(match="temporalio:payloads:*-paged-page-*")
    ]
    assert len(pages) == 5  # every page's order list went through Redis


@pytest.mark.slow
async def test_a_batch_of_many_pages_continues_as_new_and_keeps_history_bounded(
    client: Client,
    task_queue: str,
) -> None:
    pages = PAGES_PER_RUN + 5
    request = OrderBatchRequest(f"many-{uuid.uuid4().hex[:8]}", pages * 10, page_size=10)
    assert await run(client, request, task_queue) == undisturbed_summary(request)

    handle = client.get_workflow_handle(workflow_id_for(request.batch_id))
    description = await handle.describe()
    first_run = description.raw_description.workflow_execution_info.first_run_id
    assert first_run != description.run_id  # the batch continued as new once
    first = await history(client.get_workflow_handle(handle.id, run_id=first_run))
    started = [
        e for e in first if e.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED
    ]
    assert len(started) == PAGES_PER_RUN
    assert first[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert len(await history(handle)) < len(first)  # the last run holds the other 5 pages


@pytest.mark.parametrize(
    ("orders", "page_size", "in_flight"), [(0, 10, 1), (-1, 10, 1), (10, 0, 1), (10, 5, 0)]
)
async def test_non_positive_order_count_page_size_or_pages_in_flight_fails_at_once(
    client: Client, orders: int, page_size: int, in_flight: int, task_queue: str
) -> None:
    request = OrderBatchRequest(f"bad-{uuid.uuid4().hex[:8]}", orders, page_size, in_flight)
    with pytest.raises(WorkflowFailureError) as caught:
        await run(client, request, task_queue)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable and cause.type == "InvalidOrderBatch"
    assert "cannot run: --" in str(cause) and "is not a whole number from 1 to" in str(cause)


async def test_same_batch_started_twice_runs_once(client: Client, task_queue: str) -> None:
    request = OrderBatchRequest(f"twice-{uuid.uuid4().hex[:8]}", 300)
    handle, started = await start_or_find(client, request, task_queue=task_queue)
    assert started
    first: BatchSummary = await handle.result()

    again, started_again = await start_or_find(client, request, task_queue=task_queue)
    assert not started_again
    assert await again.result() == first
    runs = [r async for r in client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) == 1

    console = Console(record=True, width=200)
    assert await run_batch(client, request, console, task_queue) == 0
    output = console.export_text()
    assert f"Batch {request.batch_id} ran or runs already; reporting workflow {handle.id}" in output
    address = client.service_client.config.target_host
    shows = [line for line in output.splitlines() if "temporal workflow show" in line]
    assert [line.partition("temporal ")[2] for line in shows] == [
        f"workflow show --workflow-id {handle.id}{page} --address {address}"
        for page in ("", "-page-1")
    ]

"""A batch through a real dev server and a real redis-server, with the shared DataConverter."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
import redis.asyncio
from rich.console import Console
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities import generate_orders, shipping_quote
from codec import make_data_converter
from models import TASK_QUEUE, BatchSummary, OrderBatchRequest
from report import payload_report, payloads_by_hop, storage_reference
from starter import DEFAULT_ORDER_COUNT, run_batch, start_or_find, workflow_id_for
from worker import build_worker
from workflows import ProcessOrderBatchWorkflow


@pytest.fixture
async def client(
    temporal_env: WorkflowEnvironment, redis_client: redis.asyncio.Redis
) -> AsyncIterator[Client]:
    """A client with the sample's DataConverter, and the sample's worker running on it."""
    config = temporal_env.client.config()
    config["data_converter"] = make_data_converter(redis_client)
    client = Client(**config)
    async with build_worker(client):
        yield client


def expected_summary(batch_id: str, count: int) -> tuple[int, int]:
    orders = generate_orders(batch_id, count)
    quotes = [shipping_quote(order) for order in orders]
    return sum(q[0] for q in quotes), sum(q[1] for q in quotes)


async def test_default_batch_offloads_only_the_order_list(
    client: Client, redis_client: redis.asyncio.Redis
) -> None:
    batch_id = f"it-{uuid.uuid4().hex[:8]}"
    summary = await client.execute_workflow(
        ProcessOrderBatchWorkflow.run,
        OrderBatchRequest(batch_id, DEFAULT_ORDER_COUNT),
        id=workflow_id_for(batch_id),
        task_queue=TASK_QUEUE,
    )
    cost, grams = expected_summary(batch_id, DEFAULT_ORDER_COUNT)
    assert summary.batch_id == batch_id
    assert summary.order_count == DEFAULT_ORDER_COUNT
    assert (summary.total_shipping_cost_cents, summary.total_weight_grams) == (cost, grams)
    assert sum(summary.orders_per_state.values()) == DEFAULT_ORDER_COUNT

    handle = client.get_workflow_handle(workflow_id_for(batch_id))
    run_id = (await handle.describe()).run_id
    events = [event async for event in handle.fetch_history_events()]
    hops = {hop: storage_reference(payload) for hop, payload in payloads_by_hop(events)}
    assert list(hops) == [
        "workflow input",
        "fetch_orders input",
        "fetch_orders output",
        "process_orders input",
        "process_orders output",
        "workflow result",
    ]
    external = {hop for hop, reference in hops.items() if reference is not None}
    assert external == {"fetch_orders output", "process_orders input"}

    # Both hops carry the same compressed bytes, so they share one key in this run's scope.
    keys = {hops[hop].claim_data["key"] for hop in external}  # type: ignore[union-attr]
    assert len(keys) == 1
    [key] = keys
    assert f":wi:{quote(workflow_id_for(batch_id), safe='')}:ri:{run_id}:" in key
    assert key.startswith("temporalio:payloads:v0:ns:default:wt:ProcessOrderBatchWorkflow:")
    assert [k.decode() async for k in redis_client.scan_iter(match="temporalio:payloads:*")] == [
        key
    ]

    report = {row.hop: row for row in await payload_report(handle, client.data_converter)}
    order_list = report["fetch_orders output"]
    assert order_list.in_redis and order_list.redis_key == key
    assert order_list.compressed_bytes > 256 * 1024
    assert order_list.original_bytes > 5 * order_list.compressed_bytes
    assert order_list.history_bytes < 1024
    assert not report["workflow result"].in_redis


async def test_non_positive_order_count_fails_at_once(client: Client) -> None:
    batch_id = f"bad-{uuid.uuid4().hex[:8]}"
    with pytest.raises(WorkflowFailureError) as caught:
        await client.execute_workflow(
            ProcessOrderBatchWorkflow.run,
            OrderBatchRequest(batch_id, 0),
            id=workflow_id_for(batch_id),
            task_queue=TASK_QUEUE,
        )
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.non_retryable and cause.type == "InvalidOrderBatch"
    assert "must be a positive number" in str(cause)


async def test_same_batch_started_twice_runs_once(client: Client) -> None:
    request = OrderBatchRequest(f"twice-{uuid.uuid4().hex[:8]}", 300)
    handle, started = await start_or_find(client, request)
    assert started
    first: BatchSummary = await handle.result()

    again, started_again = await start_or_find(client, request)
    assert not started_again
    assert await again.result() == first
    runs = [r async for r in client.list_workflows(f"WorkflowId = '{handle.id}'")]
    assert len(runs) == 1

    console = Console(record=True, width=200)
    assert await run_batch(client, request, console) == 0
    output = console.export_text()
    assert "already has workflow" in output
    assert f"temporal workflow show --workflow-id {handle.id} --run-id {runs[0].run_id}" in output

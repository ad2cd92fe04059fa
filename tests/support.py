"""Helpers for the fault, bad-input and security tests: a batch the test can pause between
its two activities (to break Redis exactly there), and the summary an undisturbed run gives."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities import fetch_orders, generate_orders, process_orders
from models import BatchSummary, OrderBatch, OrderBatchRequest
from starter import DEFAULT_ORDER_COUNT, start_batch
from workflows import ProcessOrderBatchWorkflow

FETCH_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
ACTIVITY_COMPLETED = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
WORKFLOW_TASK_FAILED = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED


async def undisturbed_summary(request: OrderBatchRequest) -> BatchSummary:
    """What process_orders returns for this batch when nothing goes wrong."""
    batch = OrderBatch(request.batch_id, generate_orders(request.batch_id, request.order_count))
    summary: BatchSummary = await ActivityEnvironment().run(process_orders, batch)
    return summary


def workflow_worker(client: Client, task_queue: str) -> Worker:
    """Workflow tasks only; no cache, so no sticky queue holds the next task when it stops."""
    return Worker(
        client, task_queue=task_queue, workflows=[ProcessOrderBatchWorkflow], max_cached_workflows=0
    )


def activity_worker(client: Client, task_queue: str) -> Worker:
    return Worker(client, task_queue=task_queue, activities=[fetch_orders, process_orders])


async def history(handle: WorkflowHandle[Any, Any]) -> list[HistoryEvent]:
    return [event async for event in handle.fetch_history_events()]


async def wait_for_event(
    handle: WorkflowHandle[Any, Any],
    matches: Callable[[HistoryEvent], bool],
    within: float = 120,
) -> HistoryEvent:
    """Poll the history until an event matches; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for event in await history(handle):
            if matches(event):
                return event
        await asyncio.sleep(0.2)
    raise AssertionError(f"no matching event in {handle.id}'s history within {within}s")


async def wait_for_attempt(
    handle: WorkflowHandle[Any, Any], attempt: int, within: float = 60
) -> None:
    """Wait until the pending activity is on ``attempt`` (or later): earlier ones failed."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pending = (await handle.describe()).raw_description.pending_activities
        if pending and pending[0].attempt >= attempt:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id}'s activity did not reach attempt {attempt} in {within}s")


async def start_with_fetch_scheduled(
    client: Client, order_count: int = DEFAULT_ORDER_COUNT, prefix: str = "paused"
) -> tuple[WorkflowHandle[Any, BatchSummary], OrderBatchRequest, str]:
    """Start a batch on a fresh task queue and stop once fetch_orders is scheduled.

    The default order count makes the order list big enough to go to Redis.

    Nothing polls the queue afterwards, so the test decides what runs next and when.
    Returns the handle, the request and the task queue.
    """
    task_queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    request = OrderBatchRequest(f"{prefix}-{uuid.uuid4().hex[:8]}", order_count)
    handle = await start_batch(client, request, task_queue=task_queue)
    async with workflow_worker(client, task_queue):
        await wait_for_event(handle, lambda event: event.event_type == FETCH_SCHEDULED)
    return handle, request, task_queue


async def run_fetch_only(handle: WorkflowHandle[Any, Any], client: Client, task_queue: str) -> None:
    """Run activities until fetch_orders has completed; no workflow worker reads its result."""
    async with activity_worker(client, task_queue):
        await wait_for_event(handle, lambda event: event.event_type == ACTIVITY_COMPLETED)

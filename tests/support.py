"""Helpers for the fault, bad-input and security tests: a batch the test can pause inside a
page (to break Redis exactly there), and the summary an undisturbed run gives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from converter import SamplePayloadConverter
from extras.sample_data import generate_orders
from models import BatchSummary, OrderBatchRequest, OrderPage, PageSummary
from starter import DEFAULT_ORDER_COUNT, start_batch, workflow_id_for
from tests.conftest import PROJECT_DIR
from worker import ORDERS, activity_executor
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

ACTIVITY_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
ACTIVITY_COMPLETED = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
WORKFLOW_TASK_FAILED = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
CHILD_FAILED = EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED


CONVERTER = SamplePayloadConverter()


def activity_env() -> ActivityEnvironment:
    """An activity environment whose payload converter is the sample's."""
    env = ActivityEnvironment()
    env.payload_converter = CONVERTER
    return env


def as_payload(page: OrderPage) -> RawValue:
    """An order page as the activities pass it: its JSON payload."""
    return RawValue(CONVERTER.to_payload(page))


def from_payload(value: RawValue) -> OrderPage:
    page: OrderPage = CONVERTER.from_payload(value.payload, OrderPage)
    return page


def price(page: OrderPage) -> PageSummary:
    """process_orders on one page."""
    summary: PageSummary = activity_env().run(ORDERS.process_orders, as_payload(page))
    return summary


def undisturbed_summary(request: OrderBatchRequest) -> BatchSummary:
    """What the batch returns when nothing goes wrong: every order priced in one go."""
    orders = generate_orders(request.batch_id, 0, request.order_count)
    total = price(OrderPage(request.batch_id, 1, 0, orders))
    return BatchSummary(
        batch_id=request.batch_id,
        order_count=total.order_count,
        total_shipping_cost_cents=total.total_shipping_cost_cents,
        total_weight_grams=total.total_weight_grams,
        average_delivery_days=round(total.total_delivery_days / total.order_count, 2),
        orders_per_state=total.orders_per_state,
    )


def page_handle(
    client: Client, request: OrderBatchRequest, page: int = 1
) -> WorkflowHandle[Any, Any]:
    """The latest run of one page's workflow."""
    return client.get_workflow_handle(f"{workflow_id_for(request.batch_id)}-page-{page}")


def workflow_worker(client: Client, task_queue: str) -> Worker:
    """Workflow tasks only; no cache, so no sticky queue holds the next task when it stops."""
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow],
        max_cached_workflows=0,
    )


def activity_worker(client: Client, task_queue: str) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        activities=[ORDERS.fetch_orders, ORDERS.process_orders],
        activity_executor=activity_executor(),
    )


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
        try:
            for event in await history(handle):
                if matches(event):
                    return event
        except Exception:  # the workflow (a page) may not exist yet
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"no matching event in {handle.id}'s history within {within}s")


def of_type(event_type: EventType.ValueType) -> Callable[[HistoryEvent], bool]:
    return lambda event: event.event_type == event_type


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


async def wait_until_processing(handle: WorkflowHandle[Any, Any], within: float = 120) -> None:
    """Wait until a page's process_orders has heartbeated, i.e. it is part-way through."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            pending = list((await handle.describe()).raw_description.pending_activities)
        except Exception:  # the page may not exist yet
            pending = []
        if pending and pending[0].activity_type.name == "process_orders":
            if pending[0].heartbeat_details.payloads:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{handle.id}'s process_orders never heartbeated")


async def start_with_fetch_scheduled(
    client: Client, order_count: int = DEFAULT_ORDER_COUNT, prefix: str = "paused"
) -> tuple[WorkflowHandle[Any, BatchSummary], WorkflowHandle[Any, Any], OrderBatchRequest, str]:
    """Start a one-page batch on a fresh task queue and stop once its fetch_orders is
    scheduled. The default order count makes the order list big enough to go to Redis.

    Nothing polls the queue afterwards, so the test decides what runs next and when.
    Returns the batch's handle, its page's handle, the request and the task queue.
    """
    task_queue = f"{prefix}-{uuid.uuid4().hex[:8]}"
    request = OrderBatchRequest(f"{prefix}-{uuid.uuid4().hex[:8]}", order_count)
    handle = await start_batch(client, request, task_queue=task_queue)
    page = page_handle(client, request)
    async with workflow_worker(client, task_queue):
        await wait_for_event(page, of_type(ACTIVITY_SCHEDULED))
    return handle, page, request, task_queue


async def run_fetch_only(page: WorkflowHandle[Any, Any], client: Client, task_queue: str) -> None:
    """Run activities until fetch_orders has completed; no workflow worker reads its result."""
    async with activity_worker(client, task_queue):
        await wait_for_event(page, of_type(ACTIVITY_COMPLETED))


# ------------------------------------------------------------------- the scripts as processes


def user_env(**overrides: str) -> dict[str, str]:
    """The test's environment without any TEMPORAL_* or REDIS_* setting, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "REDIS_"))}
    env.update(overrides)
    return env


class WorkerProcess:
    """`worker.py` as its own process; its stderr is collected as it goes, so a chatty worker
    never blocks on a full pipe."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # so a kill reaches the worker under `uv run` too
        )
        self.lines: list[str] = []
        self._polling = threading.Event()
        threading.Thread(target=self._collect, daemon=True).start()
        if not self._polling.wait(60):
            self.kill()
            raise AssertionError(f"the worker never polled: {self.log}")

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if "Worker polling task queue" in line:
                self._polling.set()
        self._polling.set()  # it exited

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, within: float = 30) -> str:
        """The first line of its log that contains ``text``, waiting for it if need be."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"the worker never logged {text!r}: {self.log}")

    def stop(self, timeout: float = 60) -> int:
        """Ctrl+C, then wait for it to finish its work and exit."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # what a terminal's Ctrl+C sends
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the worker and anything it started, as a crash would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


def start_worker(
    address: str, redis_url: str, *args: str, via_uv: bool = False, **env: str
) -> WorkerProcess:
    """`worker.py [args]` as its own process, returned once it polls.

    ``via_uv`` runs it exactly as the README says; without it the process is Python itself."""
    script = ["worker.py", *args]
    command = ["uv", "run", *script] if via_uv else [sys.executable, *script]
    return WorkerProcess(command, user_env(TEMPORAL_ADDRESS=address, REDIS_URL=redis_url, **env))

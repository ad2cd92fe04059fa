"""Start one order batch and report on it: `uv run starter.py [--orders N] [--batch-id ID]`."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from config import ConfigError, connected_client, exit_without_finalizing, load_settings
from models import TASK_QUEUE, BatchSummary, OrderBatchRequest
from report import payload_report, payload_table, redis_keys, summary_table
from workflows import ProcessOrderBatchWorkflow

# Large enough that the order list stays over 256 KiB after compression and goes to Redis.
DEFAULT_ORDER_COUNT = 5_000
MAX_ORDER_COUNT = 1_000_000
MAX_BATCH_ID_LENGTH = 100


def workflow_id_for(batch_id: str) -> str:
    """One workflow id per batch, so the same batch is never processed twice."""
    return f"order-batch-{batch_id}"


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a batch; the demo shares them."""
    parser.add_argument(
        "--orders",
        type=_order_count,
        default=DEFAULT_ORDER_COUNT,
        help=f"orders in the batch (default {DEFAULT_ORDER_COUNT:,})",
    )
    parser.add_argument(
        "--batch-id",
        type=_batch_id,
        default=None,
        help="batch id (default: BATCH-<current UTC time>); the same id never runs twice",
    )


def request_from_args(args: argparse.Namespace) -> OrderBatchRequest:
    batch_id = args.batch_id or datetime.now(UTC).strftime("BATCH-%Y%m%d-%H%M%S")
    return OrderBatchRequest(batch_id=batch_id, order_count=args.orders)


def _order_count(raw: str) -> int:
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_ORDER_COUNT:
        raise argparse.ArgumentTypeError(
            f"{raw!r} is not a whole number from 1 to {MAX_ORDER_COUNT:,}; pass how many "
            "orders the batch holds, e.g. --orders 5000"
        )
    return count


def _batch_id(raw: str) -> str:
    if not raw.strip() or len(raw) > MAX_BATCH_ID_LENGTH or not raw.isprintable():
        raise argparse.ArgumentTypeError(
            f"a batch id must be 1 to {MAX_BATCH_ID_LENGTH} printable characters and not "
            f"only spaces, but this one has {len(raw)} characters; pass a visible id of at most "
            f"{MAX_BATCH_ID_LENGTH} characters"
        )
    return raw


async def start_batch(
    client: Client, request: OrderBatchRequest, *, task_queue: str = TASK_QUEUE, **options: Any
) -> WorkflowHandle[ProcessOrderBatchWorkflow, BatchSummary]:
    """Start the batch's workflow under the id derived from its batch id."""
    return await client.start_workflow(
        ProcessOrderBatchWorkflow.run,
        request,
        id=workflow_id_for(request.batch_id),
        task_queue=task_queue,
        **options,
    )


async def start_or_find(
    client: Client, request: OrderBatchRequest
) -> tuple[WorkflowHandle[Any, BatchSummary], bool]:
    """Start the batch's workflow, or return the run that already has its id.

    Returns the handle and whether this call started it. A failed or cancelled batch may
    be started again; a running or completed one never is.
    """
    workflow_id = workflow_id_for(request.batch_id)
    try:
        existing = await client.get_workflow_handle(workflow_id).describe()
        already = existing.status in (
            WorkflowExecutionStatus.RUNNING,
            WorkflowExecutionStatus.COMPLETED,
        )
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
        already = False
    try:
        handle = await start_batch(
            client,
            request,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except WorkflowAlreadyStartedError:
        return client.get_workflow_handle_for(ProcessOrderBatchWorkflow.run, workflow_id), False
    return handle, not already


async def wait_with_status(handle: WorkflowHandle[Any, BatchSummary], console: Console) -> None:
    """Show what the batch is doing until it closes."""
    started = time.monotonic()
    result = asyncio.ensure_future(handle.result())
    with console.status(f"Batch {handle.id}: starting") as status:
        while not result.done():
            description = await handle.describe()
            pending = description.raw_description.pending_activities
            doing = ", ".join(
                f"{activity.activity_type.name} (attempt {activity.attempt})"
                for activity in pending
            )
            status.update(
                f"{handle.id}: {doing or 'waiting for a worker'} · "
                f"{time.monotonic() - started:.0f}s"
            )
            await asyncio.wait([result], timeout=0.5)
    result.exception()  # the caller reads the outcome from handle.result()


async def run_batch(client: Client, request: OrderBatchRequest, console: Console) -> int:
    """Run (or find) one batch, print its summary and payload report; return an exit code."""
    handle, started = await start_or_find(client, request)
    if started:
        console.print(
            f"Started batch [bold]{request.batch_id}[/] ({request.order_count:,} orders) "
            f"as workflow {handle.id}"
        )
    else:
        console.print(
            f"Batch [bold]{request.batch_id}[/] already has workflow {handle.id}; "
            "reporting that run instead of processing it again."
        )
    await wait_with_status(handle, console)
    try:
        summary = await handle.result()
    except WorkflowFailureError as err:
        if isinstance(err.cause, CancelledError):
            console.print(
                f"[yellow]Batch {request.batch_id} was cancelled before it completed; start it "
                "again with the same --batch-id to process it from the beginning.[/]"
            )
            return 1
        console.print(f"[red]Batch {request.batch_id} did not complete: {err.cause}[/]")
        return 1
    description = await handle.describe()
    run_handle = client.get_workflow_handle(handle.id, run_id=description.run_id)
    console.print(summary_table(summary))
    report = await payload_report(run_handle, client.data_converter)
    console.print(payload_table(report))
    for number, key in enumerate(redis_keys(report), start=1):
        console.print(f"key {number}: {key}", soft_wrap=True, highlight=False)
    console.print("See the history yourself:")
    console.print(
        show_command(client, handle.id, description.run_id), soft_wrap=True, highlight=False
    )
    return 0


def show_command(client: Client, workflow_id: str, run_id: str) -> str:
    """The `temporal workflow show` command for this run, with the connection flags it needs."""
    command = f"temporal workflow show --workflow-id {workflow_id} --run-id {run_id}"
    address = client.service_client.config.target_host
    if address not in ("localhost:7233", "127.0.0.1:7233") and "TEMPORAL_ADDRESS" not in os.environ:
        command += f" --address {address}"
    if client.namespace != "default" and "TEMPORAL_NAMESPACE" not in os.environ:
        command += f" --namespace {client.namespace}"
    return command


async def main(request: OrderBatchRequest) -> int:
    console = Console()
    async with connected_client(load_settings()) as client:
        return await run_batch(client, request, console)


if __name__ == "__main__":
    arg_parser = argparse.ArgumentParser(description=__doc__)
    add_batch_arguments(arg_parser)
    batch_request = request_from_args(arg_parser.parse_args())
    try:
        exit_code = asyncio.run(main(batch_request))
    except ConfigError as err:
        Console(stderr=True).print(f"[red]starter: {err}[/]")
        exit_code = 1
    except KeyboardInterrupt:
        exit_code = 130
    exit_without_finalizing(exit_code)

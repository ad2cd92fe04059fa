"""Start one order batch, show its progress and print its summary:
`uv run starter.py [--orders N] [--page-size N] [--pages-in-flight N] [--batch-id ID]`.

The batch id is the idempotency key: the same id again reports the run that has it instead
of processing the orders twice. `uv run -m extras.starter` adds the payload report,
encryption and Schedules on top of these functions.

Neighbours: config.py, workflows.py, models.py. Packages: temporalio, redis, rich.
"""

import argparse
import asyncio
import shlex
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.client import WorkflowQueryFailedError as QueryFailed
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from config import connected_client, load_settings, run_script, temporal_command
from models import TASK_QUEUE, BatchSummary, OrderBatchRequest, workflow_id_for
from workflows import ProcessOrderBatchWorkflow

BatchHandle = WorkflowHandle[Any, BatchSummary]


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a batch; read them back with :func:`request_from_args`."""
    default = OrderBatchRequest("")
    parser.add_argument("--orders", type=_whole_number, default=default.order_count)
    parser.add_argument("--page-size", type=_whole_number, default=default.page_size)
    parser.add_argument("--pages-in-flight", type=_whole_number, default=default.pages_in_flight)
    parser.add_argument("--batch-id", help="default: BATCH-<UTC time>; an id never runs twice")


def _whole_number(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()):  # int() also takes "1_000", " 7" and "٣"
        raise argparse.ArgumentTypeError(f"{raw[:40]!r} is not a whole number")
    return int(raw[:9])  # the limits are checked by OrderBatchRequest.problem


def request_from_args(parser: argparse.ArgumentParser, args: Any) -> OrderBatchRequest:
    """The batch the flags ask for; one that cannot run ends in ``parser.error``."""
    batch_id = args.batch_id or datetime.now(UTC).strftime("BATCH-%Y%m%d-%H%M%S")
    request = OrderBatchRequest(batch_id, args.orders, args.page_size, args.pages_in_flight)
    if problem := request.problem():
        parser.error(problem)
    return request


async def start_or_find(
    client: Client, request: OrderBatchRequest, *, task_queue: str = TASK_QUEUE
) -> tuple[BatchHandle, bool]:
    """Start the batch's workflow, or find the run that has its id: returns the handle and
    whether this call started it. A failed or cancelled batch runs again; a running or
    completed one never does."""
    try:
        handle = await client.start_workflow(
            ProcessOrderBatchWorkflow.run,
            request,
            id=workflow_id_for(request.batch_id),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )
    except WorkflowAlreadyStartedError:
        workflow_id = workflow_id_for(request.batch_id)
        return client.get_workflow_handle_for(ProcessOrderBatchWorkflow.run, workflow_id), False
    return handle, True


async def watch(handle: BatchHandle, console: Console) -> BatchSummary:
    """Show how far the batch has got until it closes; return its summary."""
    started, result = time.monotonic(), asyncio.ensure_future(handle.result())
    with console.status(Text(f"{handle.id}: starting")) as status:
        while not result.done():
            try:
                done, total = await handle.query(
                    ProcessOrderBatchWorkflow.progress, rpc_timeout=timedelta(seconds=2)
                )
                doing = f"{done:,} of {total:,} pages done"
            except (RPCError, QueryFailed):
                doing = "waiting for a worker (uv run worker.py)"
            status.update(Text(f"{handle.id}: {doing} · {time.monotonic() - started:.0f}s"))
            await asyncio.wait([result], timeout=0.5)
    return await result


def summary_table(summary: BatchSummary) -> Table:
    """The batch's result: totals and the five states with the most orders."""
    table = Table(title=Text(f"Batch {summary.batch_id}"), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("Orders", f"{summary.order_count:,}")
    table.add_row("Total shipping cost", f"${summary.total_shipping_cost_cents / 100:,.2f}")
    table.add_row("Total weight", f"{summary.total_weight_grams / 1000:,.1f} kg")
    table.add_row("Average delivery", f"{summary.average_delivery_days:.2f} days")
    busiest = sorted(summary.orders_per_state.items(), key=lambda item: -item[1])[:5]
    table.add_row("Top destinations", ", ".join(f"{state} {n:,}" for state, n in busiest))
    return table


async def run_batch(
    client: Client, request: OrderBatchRequest, console: Console, task_queue: str = TASK_QUEUE
) -> int:
    """Start (or find) the batch, watch it, print its summary; return the exit code."""
    handle, started = await start_or_find(client, request, task_queue=task_queue)
    did = f"Started batch {request.batch_id} ({request.order_count:,} orders) as"
    if not started:
        did = f"Batch {request.batch_id} ran or runs already; reporting"
    console.print(Text(f"{did} workflow {handle.id}"))
    again = shlex.join(["uv", "run", "starter.py", "--batch-id", request.batch_id, "--orders",
                        str(request.order_count), "--page-size", str(request.page_size),
                        "--pages-in-flight", str(request.pages_in_flight)])  # fmt: skip
    try:
        summary = await watch(handle, console)
    except asyncio.CancelledError:  # Ctrl+C
        console.print(
            Text(f"Stopped watching. Batch {request.batch_id} keeps running; see it with:")
        )
        console.print(Text(again), soft_wrap=True)
        return 130
    except WorkflowFailureError as err:
        what = "was cancelled" if isinstance(err.cause, CancelledError) else f"failed ({err.cause})"
        console.print(Text(f"Batch {request.batch_id} {what}; run it again with:", "red"))
        console.print(Text(again), soft_wrap=True)
        return 1
    console.print(summary_table(summary))
    console.print("See the histories of the batch and of its first page, with its order list:")
    for workflow_id in (handle.id, f"{handle.id}-page-1"):
        show = f"workflow show --workflow-id {shlex.quote(workflow_id)}"
        console.print(Text(temporal_command(client, show)), soft_wrap=True)
    return 0


async def main(request: OrderBatchRequest) -> int:
    settings = load_settings()
    async with connected_client(settings) as client:
        return await run_batch(client, request, Console(highlight=False), settings.task_queue)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("`", ""))
    add_batch_arguments(parser)
    run_script("starter", main(request_from_args(parser, parser.parse_args())))

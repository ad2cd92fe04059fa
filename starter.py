"""Start one order batch and report on it:
`uv run starter.py [--orders N] [--page-size N] [--pages-in-flight N] [--batch-id ID]`.
Add `--schedule CRON`, `--every DURATION` or `--start-at TIME` to run batches on a Temporal
Schedule instead (extras/schedules.py).

Neighbours: workflows.py, models.py; extras: settings, report, schedules.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.text import Text
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import CancelledError, TerminatedError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from extras.report import payload_report, payload_table, summary_table
from extras.schedules import (
    add_schedule_arguments,
    batch_schedule_command,
    temporal_command,
    when_from_args,
)
from extras.settings import (
    ArgumentParser,
    ConfigError,
    connected_client,
    exit_without_finalizing,
    load_settings,
    one_line,
)
from models import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_PAGES_IN_FLIGHT,
    TASK_QUEUE,
    BatchSummary,
    OrderBatchRequest,
    workflow_id_for,
)
from workflows import ProcessOrderBatchWorkflow

# Large enough that the order list stays over 256 KiB after compression and goes to Redis.
DEFAULT_ORDER_COUNT = 5_000
MAX_ORDER_COUNT = 1_000_000
# A page's JSON must stay under the driver's 50 MiB max_payload_size: 25,000 orders are ~28 MiB.
MAX_PAGE_SIZE = 25_000
MAX_PAGES_IN_FLIGHT = 64
# A batch is at most this many pages (child workflows), so it finishes in minutes, not hours.
MAX_PAGES = 1_000
MAX_BATCH_ID_LENGTH = 100


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a batch; the demo shares them."""
    parser.add_argument(
        "--orders",
        type=_whole_number("--orders", MAX_ORDER_COUNT, "5000"),
        default=DEFAULT_ORDER_COUNT,
        help=f"orders in the batch (default {DEFAULT_ORDER_COUNT:,}, at most {MAX_ORDER_COUNT:,})",
    )
    parser.add_argument(
        "--page-size",
        type=_whole_number("--page-size", MAX_PAGE_SIZE, "10000"),
        default=DEFAULT_PAGE_SIZE,
        help=f"orders per page (default {DEFAULT_PAGE_SIZE:,}, at most {MAX_PAGE_SIZE:,}; "
        f"a batch is at most {MAX_PAGES:,} pages)",
    )
    parser.add_argument(
        "--pages-in-flight",
        type=_whole_number("--pages-in-flight", MAX_PAGES_IN_FLIGHT, "8"),
        default=DEFAULT_PAGES_IN_FLIGHT,
        help=f"pages processed at once (default {DEFAULT_PAGES_IN_FLIGHT}; with more workers, "
        "about 6 per worker process)",
    )
    parser.add_argument(
        "--batch-id",
        type=_batch_id,
        default=None,
        help="batch id (default: BATCH-<current UTC time>); the same id never runs twice",
    )


def check_batch_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, in one sentence, a batch of more than MAX_PAGES pages."""
    pages = -(-args.orders // args.page_size)
    if pages > MAX_PAGES:
        parser.error(
            f"--orders {args.orders} in pages of {args.page_size} makes {pages:,} pages, over "
            f"this sample's {MAX_PAGES:,}; pass --page-size "
            f"{-(-args.orders // MAX_PAGES)} or more"
        )


def request_from_args(args: argparse.Namespace) -> OrderBatchRequest:
    batch_id = args.batch_id or datetime.now(UTC).strftime("BATCH-%Y%m%d-%H%M%S")
    return OrderBatchRequest(batch_id, args.orders, args.page_size, args.pages_in_flight)


def _whole_number(flag: str, maximum: int, example: str) -> Any:
    def parse(raw: str) -> int:
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw[:10]) <= maximum:
            raise argparse.ArgumentTypeError(
                f"{raw[:40]!r} is not a whole number from 1 to {maximum:,}; "
                f"pass e.g. {flag} {example}"
            )
        return int(raw)

    return parse


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
            WorkflowExecutionStatus.CONTINUED_AS_NEW,
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
    """Show how far the batch has got until it closes."""
    started = time.monotonic()
    result = asyncio.ensure_future(handle.result())
    with console.status(Text(f"Batch {handle.id}: starting")) as status:
        while not result.done():
            try:
                done, total = await handle.query(
                    ProcessOrderBatchWorkflow.progress, rpc_timeout=timedelta(seconds=2)
                )
                doing = f"{done:,} of {total:,} pages done"
            except (RPCError, WorkflowQueryFailedError):
                doing = "waiting for a worker (uv run worker.py)"
            status.update(Text(f"{handle.id}: {doing} · {time.monotonic() - started:.0f}s"))
            await asyncio.wait([result], timeout=0.5)
    result.exception()  # the caller reads the outcome from handle.result()


async def run_batch(client: Client, request: OrderBatchRequest, console: Console) -> int:
    """Run (or find) one batch, print its summary and payload report; return an exit code."""
    handle, started = await start_or_find(client, request)
    batch = Text(request.batch_id, "bold")
    if started:
        console.print(
            Text.assemble(
                "Started batch ",
                batch,
                f" ({request.order_count:,} orders, pages of {request.page_size:,}) "
                f"as workflow {handle.id}",
            )
        )
    else:
        console.print(
            Text.assemble(
                "Batch ",
                batch,
                f" already has workflow {handle.id}; reporting that run instead of "
                "processing it again.",
            )
        )
    try:
        await wait_with_status(handle, console)
    except asyncio.CancelledError:
        console.print(
            Text(
                f"Stopped watching. Batch {request.batch_id} keeps running on the worker; "
                "see its result with: "
                f"uv run starter.py --batch-id {shlex.quote(request.batch_id)}"
            )
        )
        return 130
    try:
        summary = await handle.result()
    except WorkflowFailureError as err:
        return _report_failure(console, request, err)
    console.print(summary_table(summary))
    description = await handle.describe()
    first_run = description.raw_description.workflow_execution_info.first_run_id
    await _print_payload_report(client, console, handle.id, first_run or description.run_id)
    return 0


def _report_failure(console: Console, request: OrderBatchRequest, err: WorkflowFailureError) -> int:
    if isinstance(err.cause, CancelledError):
        message = (
            f"Batch {request.batch_id} was cancelled before it completed; start it again "
            "with the same --batch-id to process it from the beginning."
        )
    elif isinstance(err.cause, TerminatedError):
        message = f"Batch {request.batch_id} was terminated: {err.cause}"
    else:
        message = f"Batch {request.batch_id} did not complete: {err.cause}"
    console.print(Text(message, "red"))
    return 1


async def _print_payload_report(
    client: Client, console: Console, workflow_id: str, first_run_id: str
) -> None:
    """The payload report, or one sentence on why it could not be built: the batch ran."""
    try:
        report = await payload_report(client, workflow_id, first_run_id, client.data_converter)
    except (RPCError, ConfigError) as err:
        console.print(Text(f"The payload report could not be built ({one_line(err)}).", "yellow"))
        return
    console.print(payload_table(report))
    if report.redis_pages:
        count = len(report.redis_keys)
        console.print(
            Text(
                f"The order lists are in Redis under {count:,} key{'s' if count > 1 else ''}; "
                "print a page's keys with:"
            )
        )
        quoted = shlex.quote(report.redis_pages[0])
        command = f"uv run -m extras.payloads list --keys --workflow-id {quoted}"
        console.print(Text(command), soft_wrap=True)
    if report.problem:
        console.print(Text(report.problem, "yellow"))
    console.print("See the history yourself (the batch, then a page with its order list):")
    console.print(Text(show_command(client, workflow_id)), soft_wrap=True)
    if report.redis_pages or report.pages:
        page_id = report.redis_pages[0] if report.redis_pages else report.pages[0][0]
        console.print(Text(show_command(client, page_id)), soft_wrap=True)


def show_command(client: Client, workflow_id: str) -> str:
    """The `temporal workflow show` command for a workflow, with the connection flags it needs."""
    return temporal_command(client, f"workflow show --workflow-id {shlex.quote(workflow_id)}")


async def main(request: OrderBatchRequest) -> int:
    console = Console()
    async with connected_client(load_settings()) as client:
        return await run_batch(client, request, console)


if __name__ == "__main__":
    arg_parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    add_batch_arguments(arg_parser)
    add_schedule_arguments(arg_parser, one_off=True)
    cli_args = arg_parser.parse_args()
    check_batch_arguments(arg_parser, cli_args)
    when = when_from_args(arg_parser, cli_args)
    if when is not None:
        exit_without_finalizing(
            batch_schedule_command(
                arg_parser, cli_args, when, max_batch_id_length=MAX_BATCH_ID_LENGTH
            )
        )
    batch_request = request_from_args(cli_args)
    errors = Console(stderr=True)
    try:
        exit_code = asyncio.run(main(batch_request))
    except ConfigError as err:
        errors.print(Text(f"starter: {err}", "red"))
        exit_code = 1
    except KeyboardInterrupt:
        errors.print(
            Text(
                f"Stopped. If batch {batch_request.batch_id} started, it keeps running; see it "
                f"with: uv run starter.py --batch-id {shlex.quote(batch_request.batch_id)}"
            )
        )
        exit_code = 130
    except Exception as err:  # anything else still ends in one sentence, never a traceback
        errors.print(Text(f"starter: stopped by an unexpected error ({one_line(err)}).", "red"))
        exit_code = 1
    exit_without_finalizing(exit_code)

"""Paged batches of growing size end to end, as a user runs them: `starter.py` and `worker.py`
as processes of their own (a fresh worker per batch, so its peak RSS is that batch's), on a
dev server and a redis-server of the benchmark's own.

    uv run python -m bench.scale [--orders 10000,100000,1000000] [--page-size 5000] [--json]

For each batch: its wall time (first run's start to last run's close, from history), the
worker's and the starter's peak RSS, the slowest workflow task of the batch and its pages,
and the order lists' JSON and compressed size.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

from rich.table import Table
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from bench._common import (
    Machine,
    Servers,
    add_json_flag,
    emit,
    machine,
    machine_line,
    positive_int,
    positive_ints,
    servers,
    worker_process,
)
from config import ConfigError, run_script
from extras.cli import ArgumentParser
from extras.processes import PROJECT_DIR
from extras.report import batch_histories, payload_report
from models import DEFAULT_PAGE_SIZE, workflow_id_for

DEFAULT_SIZES = [10_000, 100_000, 1_000_000]


@dataclass(frozen=True)
class ScaleRun:
    orders: int
    pages: int
    wall_seconds: float
    worker_peak_rss_bytes: int
    starter_peak_rss_bytes: int
    slowest_workflow_task_ms: float
    order_list_json_bytes: int
    order_list_stored_bytes: int


@dataclass(frozen=True)
class ScaleResult:
    machine: Machine
    page_size: int
    runs: list[ScaleRun]
    largest_over_previous_time: float | None
    largest_over_previous_orders: float | None


def run_starter(temporal_address: str, redis_url: str, args: list[str]) -> int:
    """Run `starter.py` to the end; return its peak RSS in bytes."""
    env = os.environ | {"TEMPORAL_ADDRESS": temporal_address, "REDIS_URL": redis_url}
    process = subprocess.Popen(
        [sys.executable, "starter.py", *args],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise ConfigError(f"The starter failed: {' '.join(stderr.split())[-300:]}")
    return usage.ru_maxrss * 1024  # Linux reports KiB


def slowest_workflow_task_ms(histories: list[list[HistoryEvent]]) -> float:
    """The longest time from a workflow task's start to its completion, in milliseconds."""
    slowest = 0.0
    for events in histories:
        started = {
            e.event_id: e.event_time.ToDatetime()
            for e in events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED
        }
        for event in events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                attrs = event.workflow_task_completed_event_attributes
                took = event.event_time.ToDatetime() - started[attrs.started_event_id]
                slowest = max(slowest, took.total_seconds() * 1000)
    return round(slowest, 1)


async def measure(running: Servers, orders: int, page_size: int) -> ScaleRun:
    client, temporal_address, redis_url = running.client, running.address, running.redis_url
    batch_id = f"SCALE-{orders}-{uuid.uuid4().hex[:6]}"
    args = ["--orders", str(orders), "--page-size", str(page_size), "--batch-id", batch_id]
    with worker_process(temporal_address, redis_url) as worker:
        starter_rss = await asyncio.to_thread(run_starter, temporal_address, redis_url, args)
        worker_rss = worker.peak_rss_bytes()
    workflow_id = workflow_id_for(batch_id)
    description = await client.get_workflow_handle(workflow_id).describe()
    first_run = description.raw_description.workflow_execution_info.first_run_id
    runs, pages = await batch_histories(client, workflow_id, first_run)
    page_runs = []
    for page_id, run_id in pages:
        handle = client.get_workflow_handle(page_id, run_id=run_id)
        page_runs.append([event async for event in handle.fetch_history_events()])
    began, ended = runs[0][0].event_time.ToDatetime(), runs[-1][-1].event_time.ToDatetime()
    report = await payload_report(client, workflow_id, first_run, client.data_converter)
    order_lists = next(hop for hop in report.hops if hop.hop == "fetch_orders output")
    return ScaleRun(
        orders=orders,
        pages=len(pages),
        wall_seconds=round((ended - began).total_seconds(), 2),
        worker_peak_rss_bytes=worker_rss,
        starter_peak_rss_bytes=starter_rss,
        slowest_workflow_task_ms=slowest_workflow_task_ms(runs + page_runs),
        order_list_json_bytes=order_lists.original_bytes or 0,
        order_list_stored_bytes=order_lists.stored_bytes,
    )


async def run(sizes: list[int], page_size: int) -> ScaleResult:
    from bench._common import console

    results = []
    async with servers() as running:
        with console.status("scale") as status:
            for orders in sizes:
                status.update(f"{orders:,} orders in pages of {page_size:,}")
                await running.redis.flushdb()
                results.append(await measure(running, orders, page_size))
    time_ratio = orders_ratio = None
    if len(results) >= 2:
        time_ratio = round(results[-1].wall_seconds / results[-2].wall_seconds, 2)
        orders_ratio = round(results[-1].orders / results[-2].orders, 2)
    return ScaleResult(machine(), page_size, results, time_ratio, orders_ratio)


def table(result: ScaleResult) -> Table:
    caption = machine_line(result.machine)
    if result.largest_over_previous_time is not None:
        caption = (
            f"largest/previous batch: {result.largest_over_previous_orders}x the orders in "
            f"{result.largest_over_previous_time}x the time\n{caption}"
        )
    out = Table(
        title=f"Paged batches, pages of {result.page_size:,}",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    for column in ("orders", "wall s", "worker MiB", "starter MiB", "slowest task",
                   "JSON MiB", "stored MiB"):  # fmt: skip
        out.add_column(column, justify="right")
    for run_ in result.runs:
        out.add_row(
            f"{run_.orders:,}",
            f"{run_.wall_seconds:,.1f}",
            f"{run_.worker_peak_rss_bytes / 2**20:,.0f}",
            f"{run_.starter_peak_rss_bytes / 2**20:,.0f}",
            f"{run_.slowest_workflow_task_ms:,.0f} ms",
            f"{run_.order_list_json_bytes / 2**20:,.1f}",
            f"{run_.order_list_stored_bytes / 2**20:,.1f}",
        )
    return out


async def main() -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--orders",
        type=positive_ints,
        default=DEFAULT_SIZES,
        help="comma-separated batch sizes (default 10000,100000,1000000)",
    )
    parser.add_argument(
        "--page-size",
        type=positive_int,
        default=DEFAULT_PAGE_SIZE,
        help=f"orders per page (default {DEFAULT_PAGE_SIZE:,})",
    )
    add_json_flag(parser)
    args = parser.parse_args()
    result = await run(args.orders, args.page_size)
    emit(args.json, result, [table(result)])
    return 0


if __name__ == "__main__":
    run_script("bench", main())

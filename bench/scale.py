"""End-to-end batches of growing size on a dev server and a redis-server of the benchmark's own,
with `worker.py` in a process of its own (a fresh one per batch, so its peak RSS is that
batch's), and the largest batch that still completes with External Storage off.

    uv run python -m bench.scale [--orders 1000,10000,50000] [--off-max 50000] [--json]

"Off" is the same worker with PAYLOAD_SIZE_THRESHOLD above any payload, so the compressed
order list stays inline in history until the service's 2 MB payload limit rejects it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from bench._common import (
    Machine,
    RedisClient,
    add_json_flag,
    emit,
    machine,
    machine_line,
    mib,
    positive_int,
    positive_ints,
    redis_server,
    run_main,
    temporal_dev_server,
    worker_process,
)
from codec import make_data_converter
from config import ConfigError, open_redis
from models import TASK_QUEUE, BatchSummary, OrderBatchRequest
from report import payload_report
from workflows import ProcessOrderBatchWorkflow

STORAGE_OFF = {"PAYLOAD_SIZE_THRESHOLD": str(2**62)}
OFF_STEP = 1_000  # the search for the largest inline batch stops at this resolution
BATCH_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class BatchRun:
    orders: int
    external_storage: bool
    completed: bool
    wall_seconds: float
    worker_peak_rss_bytes: int
    order_list_bytes: int
    compressed_bytes: int
    redis_bytes: int
    redis_keys: int
    failure: str | None


@dataclass(frozen=True)
class ScaleResult:
    machine: Machine
    runs: list[BatchRun]
    time_ratio_largest_over_previous: float | None
    largest_inline_orders: int
    first_failing_inline_orders: int | None
    first_failing_inline_error: str | None
    largest_with_storage_orders: int


async def _wait(handle: WorkflowHandle[Any, BatchSummary]) -> str | None:
    """Wait for the batch; None when it completes, else why it cannot (a retried task)."""
    deadline = time.monotonic() + BATCH_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        description = await handle.describe()
        if description.status == WorkflowExecutionStatus.COMPLETED:
            await handle.result()
            return None
        if description.status != WorkflowExecutionStatus.RUNNING:
            return f"workflow {description.status.name.lower() if description.status else '?'}"
        raw = description.raw_description
        for activity in raw.pending_activities:
            if activity.attempt > 1:
                return " ".join(activity.last_failure.message.split())[:200]
        if raw.pending_workflow_task.attempt > 1:
            return "workflow task failed and is being retried"
        await asyncio.sleep(0.2)
    return f"not done after {BATCH_TIMEOUT_SECONDS:.0f}s"


async def run_batch(
    client: Client, redis_client: RedisClient, orders: int, external_storage: bool
) -> BatchRun:
    """One batch on the running worker, from a flushed Redis."""
    await redis_client.flushdb()
    batch_id = f"SCALE-{orders}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    handle = await client.start_workflow(
        ProcessOrderBatchWorkflow.run,
        OrderBatchRequest(batch_id, orders),
        id=f"order-batch-{batch_id}",
        task_queue=TASK_QUEUE,
    )
    failure = await _wait(handle)
    wall_seconds = time.monotonic() - started
    order_list_bytes = compressed_bytes = 0
    if failure is None:
        run_id = (await handle.describe()).raw_description.workflow_execution_info.first_run_id
        report = await payload_report(client, handle.id, run_id, client.data_converter)
        order_list = next(row for row in report.hops if row.hop == "fetch_orders output")
        order_list_bytes = order_list.original_bytes or 0
        compressed_bytes = order_list.stored_bytes
    else:
        await handle.terminate("bench.scale: the batch cannot complete")
    keys = [key async for key in redis_client.scan_iter(match="temporalio:payloads:*")]
    redis_bytes = sum([await redis_client.strlen(key) for key in keys])
    return BatchRun(
        orders=orders,
        external_storage=external_storage,
        completed=failure is None,
        wall_seconds=round(wall_seconds, 2),
        worker_peak_rss_bytes=0,
        order_list_bytes=order_list_bytes,
        compressed_bytes=compressed_bytes,
        redis_bytes=redis_bytes,
        redis_keys=len(keys),
        failure=failure,
    )


async def _largest_inline(
    client: Client, redis_client: RedisClient, off_max: int, progress: Callable[[str], None]
) -> tuple[BatchRun | None, BatchRun | None]:
    """The largest batch that completes with External Storage off, and the smallest that
    fails: doubling up to the first failure, then halving the gap down to OFF_STEP orders."""
    largest_ok: BatchRun | None = None
    smallest_failed: BatchRun | None = None
    candidate = min(8 * OFF_STEP, off_max)
    while True:
        progress(f"{candidate:,} orders with External Storage off")
        batch = await run_batch(client, redis_client, candidate, False)
        if batch.completed:
            largest_ok = batch
        else:
            smallest_failed = batch
        ok = largest_ok.orders if largest_ok else 0
        if smallest_failed is None:
            if candidate >= off_max:
                return largest_ok, None
            candidate = min(candidate * 2, off_max)
            continue
        if smallest_failed.orders - ok <= OFF_STEP:
            return largest_ok, smallest_failed
        candidate = max(ok + OFF_STEP, (ok + smallest_failed.orders) // 2 // OFF_STEP * OFF_STEP)


async def run(sizes: list[int], off_max: int, progress: Callable[[str], None]) -> ScaleResult:
    with redis_server() as redis_url, temporal_dev_server() as address:
        redis_client = await open_redis(redis_url)
        try:
            client = await Client.connect(address, data_converter=make_data_converter(redis_client))
            runs = []
            for orders in sizes:
                progress(f"{orders:,} orders with External Storage on")
                with worker_process(address, redis_url) as worker:
                    batch = await run_batch(client, redis_client, orders, True)
                    runs.append(_with_rss(batch, worker.peak_rss_bytes()))
            if not all(run.completed for run in runs):
                failed = next(run for run in runs if not run.completed)
                raise ConfigError(f"{failed.orders:,} orders did not complete: {failed.failure}")
            with worker_process(address, redis_url, **STORAGE_OFF):
                inline_ok, inline_fail = await _largest_inline(
                    client, redis_client, off_max, progress
                )
            runs += [run for run in (inline_ok, inline_fail) if run is not None]
        finally:
            await redis_client.aclose()
    on_runs = [run for run in runs if run.external_storage]
    ratio = None
    if len(on_runs) >= 2:
        ratio = round(on_runs[-1].wall_seconds / on_runs[-2].wall_seconds, 2)
    return ScaleResult(
        machine=machine(),
        runs=runs,
        time_ratio_largest_over_previous=ratio,
        largest_inline_orders=inline_ok.orders if inline_ok else 0,
        first_failing_inline_orders=inline_fail.orders if inline_fail else None,
        first_failing_inline_error=inline_fail.failure if inline_fail else None,
        largest_with_storage_orders=max(run.orders for run in on_runs),
    )


def _with_rss(batch: BatchRun, rss: int) -> BatchRun:
    return replace(batch, worker_peak_rss_bytes=rss)


def tables(result: ScaleResult) -> list[Table]:
    runs = Table(title=f"End-to-end batches ({machine_line(result.machine)})", title_justify="left")
    for column in ("orders", "External Storage", "result", "wall time", "worker peak RSS",
                   "order list JSON", "compressed", "bytes in Redis", "Redis keys"):  # fmt: skip
        runs.add_column(column, justify="right")
    for run in result.runs:
        runs.add_row(
            f"{run.orders:,}",
            "on" if run.external_storage else "off",
            "completed" if run.completed else "[red]failed[/]",
            f"{run.wall_seconds:.2f} s",
            mib(run.worker_peak_rss_bytes) if run.external_storage else "-",
            mib(run.order_list_bytes) if run.completed else "-",
            mib(run.compressed_bytes) if run.completed else "-",
            f"{run.redis_bytes:,}",
            str(run.redis_keys),
        )
    limits = Table(title="Largest batch that completes", title_justify="left")
    limits.add_column("External Storage")
    limits.add_column("orders", justify="right")
    limits.add_column("what stops it")
    failed = result.first_failing_inline_orders
    limits.add_row(
        "off",
        f"{result.largest_inline_orders:,}",
        f"{failed:,} orders: {result.first_failing_inline_error}" if failed else "-",
    )
    limits.add_row("on", f"{result.largest_with_storage_orders:,}", "not reached")
    if result.time_ratio_largest_over_previous is not None:
        on_runs = [run for run in result.runs if run.external_storage]
        runs.caption = (
            f"{on_runs[-1].orders:,} orders took {result.time_ratio_largest_over_previous}x "
            f"the time of {on_runs[-2].orders:,}"
        )
        runs.caption_justify = "left"
    return [runs, limits]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--orders",
        type=positive_ints,
        default=[1_000, 10_000, 50_000],
        help="comma-separated batch sizes, run with External Storage on (default 1000,10000,50000)",
    )
    parser.add_argument(
        "--off-max",
        type=positive_int,
        default=50_000,
        help="largest batch to try with External Storage off (default 50000)",
    )
    add_json_flag(parser)
    args = parser.parse_args()
    from bench._common import console

    with console.status("scale") as status:
        result = asyncio.run(run(args.orders, args.off_max, status.update))
    emit(args.json, result, tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
